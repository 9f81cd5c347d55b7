/* errors: how libblock reports failures, one typical mistake at a time.
 *
 * Every libblock function returns a negative errno on failure (constructors also set
 * their *out to NULL). Right after a failure, on the same thread,
 *   lb_get_error()  describes it (QEMU's wording, so messages match qemu-img's), and
 *   lb_get_errno()  repeats the errno as a positive number.
 * The program provokes each failure, prints what the library said and checks that the
 * errno is the documented one:
 *   - opening a file that does not exist                    ENOENT
 *   - an option the driver does not know (open and create)  EINVAL
 *   - a format no driver provides                           EINVAL
 *   - reading beyond the end of the device                  EIO
 *   - writing through a read-only backend                   EPERM
 *   - resizing without asking for the resize permission     EPERM
 *   - two writers on one node in this process               EPERM (permission conflict)
 *   - two writers opening the same file separately          EAGAIN (QEMU's image locks)
 *
 *   errors --selftest DIR    run every case on images created in DIR
 *
 * Exit status: 0 when every case failed as documented, 1 otherwise, 2 usage. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "libblock.h"

static int failures = 0;

/* Checks one failing call: `ret` is what it returned; `expected` the errno it should have
 * failed with; `needle` (may be NULL) a phrase the message must contain. */
static void expect_error(const char *what, int ret, int expected, const char *needle) {
  const char *message = lb_get_error(); /* read it before any other libblock call */
  int err = lb_get_errno();
  int ok = ret == -expected && err == expected && message[0] != '\0' &&
           (needle == NULL || strstr(message, needle) != NULL);

  printf("%-34s -> %d (%s)\n   lb_get_errno() = %d, lb_get_error() = \"%s\"\n", what, ret,
         ret < 0 ? strerror(-ret) : "success", err, message);
  if (!ok) {
    printf("   WRONG: expected -%d (%s)%s%s\n", expected, strerror(expected),
           needle ? " and a message containing " : "", needle ? needle : "");
    failures++;
  }
}

/* Opens `path` as raw with `flags`; NULL on failure (the caller reports it). */
static lb_backend *open_raw(lb_context *ctx, const char *path, const char *options,
                            uint32_t flags, int *ret) {
  lb_open_args args = LB_OPEN_ARGS_INIT;
  lb_backend *be = NULL;
  args.filename = path;
  args.format = "raw";
  args.options = options;
  args.flags = flags;
  *ret = lb_open_ex(ctx, &args, &be);
  return be;
}

static void bad_open_calls(lb_context *ctx, const char *dir, const char *image) {
  char missing[4096];
  lb_backend *be;
  int ret;

  snprintf(missing, sizeof missing, "%s/no-such-image.raw", dir);
  be = open_raw(ctx, missing, NULL, 0, &ret);
  expect_error("open a missing file", ret, ENOENT, "No such file or directory");
  if (be != NULL) failures++; /* *out is NULL after a failure */

  be = open_raw(ctx, image, "bogus-option=on", 0, &ret);
  expect_error("open with an unknown option", ret, EINVAL, "bogus-option");
  lb_close(be);

  ret = lb_create(ctx, image, "raw", "bogus-option=on", 1024 * 1024, 0);
  expect_error("create with an unknown option", ret, EINVAL, "Invalid parameter 'bogus-option'");

  ret = lb_create(ctx, image, "no-such-format", NULL, 1024 * 1024, 0);
  expect_error("create an unknown format", ret, EINVAL, "no-such-format");
}

static void bad_io_calls(lb_context *ctx, const char *image) {
  unsigned char buf[512] = {0};
  lb_backend *be;
  int64_t size;
  int ret;

  be = open_raw(ctx, image, NULL, 0, &ret); /* read-only */
  if (be == NULL) {
    expect_error("open the test image", ret, 0, NULL);
    return;
  }
  size = lb_get_size(be);
  ret = lb_pread(be, buf, sizeof buf, (uint64_t)size, 0);
  expect_error("read past the end", ret, EIO, NULL);

  ret = lb_pwrite(be, buf, sizeof buf, 0, 0);
  expect_error("write to a read-only backend", ret, EPERM, NULL);

  ret = lb_truncate(be, (uint64_t)size * 2, NULL, 0);
  expect_error("truncate without LB_OPEN_RESIZE", ret, EPERM, NULL);
  lb_close(be);
}

static void conflicting_writers(lb_context *ctx, const char *image) {
  lb_open_args args = LB_OPEN_ARGS_INIT;
  lb_node *node = NULL;
  lb_backend *first = NULL, *second = NULL, *other = NULL;
  int ret;

  /* One node, two backends that both want to write: the permission system refuses the
   * second because the first does not share "write" (QEMU's default for devices). */
  args.filename = image;
  args.format = "raw";
  args.flags = LB_OPEN_RDWR;
  ret = lb_node_open(ctx, &args, &node);
  if (ret < 0) {
    expect_error("open the node", ret, 0, NULL);
    return;
  }
  ret = lb_backend_new(node, LB_OPEN_RDWR, &first);
  if (ret < 0) expect_error("first writer", ret, 0, NULL);
  ret = lb_backend_new(node, LB_OPEN_RDWR, &second);
  expect_error("second writer on the same node", ret, EPERM, "Permission conflict on node");
  lb_close(second);

  /* A separate open of the same file is a separate node: the file lock refuses it, as it
   * would refuse a QEMU process. */
  other = open_raw(ctx, image, NULL, LB_OPEN_RDWR, &ret);
  expect_error("second writer opening the file", ret, EAGAIN, "Failed to get \"write\" lock");
  lb_close(other);

  lb_close(first);
  lb_node_close(node);
}

int main(int argc, char **argv) {
  lb_context *ctx = NULL;
  char image[4096];

  if (argc != 3 || strcmp(argv[1], "--selftest") != 0) {
    fprintf(stderr, "usage: errors --selftest DIR\n");
    return 2;
  }
  /* Even creating the context reports errors the same way. */
  expect_error("context with unknown flags", lb_context_new(0x80000000u, &ctx), EINVAL, NULL);
  if (lb_context_new(0, &ctx) < 0) {
    fprintf(stderr, "errors: %s\n", lb_get_error());
    return 1;
  }
  snprintf(image, sizeof image, "%s/errors.raw", argv[2]);
  if (lb_create(ctx, image, "raw", NULL, 1024 * 1024, 0) < 0) {
    fprintf(stderr, "errors: create: %s\n", lb_get_error());
    lb_context_free(ctx);
    return 1;
  }
  bad_open_calls(ctx, argv[2], image);
  bad_io_calls(ctx, image);
  conflicting_writers(ctx, image);
  lb_context_free(ctx);
  unlink(image);

  if (failures) {
    printf("%d case(s) did not fail as documented\n", failures);
    return 1;
  }
  printf("selftest passed: every error was reported as documented\n");
  return 0;
}
