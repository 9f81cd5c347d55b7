/* The C ABI v0 rules, from C, through libblock.so only:
 *   - closing/freeing NULL is a no-op;
 *   - every failure returns -errno and sets a (new) message and lb_get_errno();
 *   - extensible structs: INIT macros, shorter struct_size from older callers;
 *   - options objects, node handles, image info, create options, driver list, objects;
 *   - async requests complete exactly once; rejected submissions never complete;
 *     lb_get_fd() becomes readable when there is something to reap. */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "libblock.h"
#include "check.h"


/* Every failing call must set a fresh message and errno. A sentinel failure with a known
 * message goes first; the call under test must replace it. */
static lb_context *g_ctx;
static void sentinel(void) {
  lb_options *o = NULL;
  lb_options_new(&o);
  (void)lb_options_parse(o, "=sentinel"); /* fails: empty key */
  lb_options_free(o);
}
#define CHECK_FAILS(call, err)                                                              \
  do {                                                                                      \
    char before[4096];                                                                      \
    int r_;                                                                                 \
    sentinel();                                                                             \
    snprintf(before, sizeof before, "%s", lb_get_error());                                  \
    r_ = (call);                                                                            \
    CHECK(r_ == -(err));                                                                    \
    CHECK(lb_get_errno() == (err));                                                         \
    CHECK(lb_get_error()[0] != '\0' && strcmp(lb_get_error(), before) != 0);                \
  } while (0)

static char dir[64], img[128];

static void test_null_and_messages(void) {
  lb_backend *be = (lb_backend *)0x1;
  lb_node *node = (lb_node *)0x1;
  lb_options *o = NULL;
  lb_extent ext = LB_EXTENT_INIT;
  lb_open_args args = LB_OPEN_ARGS_INIT;
  lb_option_desc desc;
  lb_completion c;
  lb_image_info *info = (lb_image_info *)0x1;

  /* NULL closes */
  CHECK(lb_close(NULL) == 0);
  lb_node_close(NULL);
  lb_context_free(NULL);
  lb_options_free(NULL);
  lb_image_info_free(NULL);
  lb_free(NULL);

  /* failure paths */
  CHECK_FAILS(lb_context_new(0x80, NULL), EINVAL);
  CHECK_FAILS(lb_open(g_ctx, "/nonexistent/x.img", NULL, 0, &be), ENOENT);
  CHECK(be == NULL);
  CHECK_FAILS(lb_open(g_ctx, img, "driver=raw,bogus=1", 0, &be), EINVAL);
  CHECK_FAILS(lb_open(g_ctx, img, NULL, LB_OPEN_RDWR | LB_OPEN_FORCE_SHARE, &be), EINVAL);
  CHECK_FAILS(lb_open(g_ctx, img, NULL, 0x80000000u, &be), EINVAL);
  CHECK_FAILS(lb_open(g_ctx, img, "driver=raw,file.aio=carrier-pigeon", 0, &be), EINVAL);
  args.filename = img;
  args.format = "qcow2";
  args.options = "driver=raw";
  CHECK_FAILS(lb_open_ex(g_ctx, &args, &be), EINVAL); /* format and driver disagree */
  args.struct_size = 4;
  CHECK_FAILS(lb_open_ex(g_ctx, &args, &be), EINVAL); /* struct_size too small */
  CHECK_FAILS(lb_node_open(g_ctx, NULL, &node), EINVAL);
  CHECK(node == NULL);
  CHECK_FAILS(lb_create(g_ctx, img, "nosuch", NULL, 1024, 0), EINVAL);
  CHECK_FAILS(lb_create(g_ctx, img, "raw", "bogus=1", 1024, 0), EINVAL);
  CHECK(strstr(lb_get_error(), "Invalid parameter 'bogus'") != NULL);
  CHECK_FAILS(lb_create(g_ctx, img, "raw", "backing_file=x", 1024, LB_CREATE_VALIDATE_ONLY),
              ENOTSUP);
  CHECK_FAILS(lb_create_options(g_ctx, "nosuch", NULL, NULL, 0), EINVAL);
  CHECK_FAILS(lb_create_options(g_ctx, "raw", NULL, NULL, 1), EINVAL); /* out NULL, max 1 */
  desc.struct_size = 1;
  CHECK_FAILS(lb_create_options(g_ctx, "raw", NULL, &desc, 1), EINVAL);
  CHECK_FAILS(lb_context_add_object(g_ctx, "secret,id=s0"), EINVAL);       /* no data */
  CHECK_FAILS(lb_context_add_object(g_ctx, "nonsense,id=s0,data=x"), EINVAL);
  CHECK_FAILS(lb_options_new(NULL), EINVAL);
  lb_options_new(&o);
  CHECK_FAILS(lb_options_set(o, "", "x"), EINVAL);
  CHECK_FAILS(lb_options_parse(o, ",a=1"), EINVAL);
  CHECK_FAILS(lb_options_parse(o, "json:{nope"), EINVAL);
  lb_options_free(o);
  CHECK_FAILS(lb_context_set_max_inflight(g_ctx, 0), EINVAL);
  CHECK_FAILS(lb_reap(g_ctx, 2, 1, 0, &c), EINVAL);
  CHECK_FAILS(lb_node_get_info(NULL, 0, &info), EINVAL);
  CHECK_FAILS(lb_node_has_zero_init(NULL), EINVAL);
  CHECK(info == NULL);
  CHECK_FAILS(lb_block_status(NULL, 0, 1, 0, &ext), EINVAL);
  CHECK_FAILS(lb_pread(NULL, &c, 1, 0, 0), EINVAL);
  CHECK_FAILS(lb_aio_pread(NULL, &c, 1, 0, 0, NULL), EINVAL);
  CHECK(lb_driver_list(g_ctx, 0x80) == NULL);
  CHECK(lb_get_errno() == EINVAL);
}

static void test_options_and_drivers(void) {
  lb_options *o = NULL;
  char *s;
  const char *v;
  lb_option_desc descs[8];
  int i, n;
  char *list;

  CHECK(lb_options_new(&o) == 0);
  CHECK(lb_options_parse(o, "driver=raw,file.filename=a,,b.img") == 0);
  CHECK(lb_options_set(o, "file.locking", "off") == 0);
  CHECK(lb_options_parse(o, "json:{\"file\":{\"aio\":\"threads\"}}") == 0);
  v = lb_options_get(o, "file.filename");
  CHECK(v && strcmp(v, "a,b.img") == 0);
  CHECK(lb_options_get(o, "file.aio") != NULL && strcmp(lb_options_get(o, "file.aio"), "threads") == 0);
  /* a second get does not invalidate the first */
  CHECK(strcmp(v, "a,b.img") == 0);
  CHECK(lb_options_get(o, "nosuch") == NULL);
  s = lb_options_to_string(o);
  CHECK(s && strstr(s, "file.filename=a,,b.img") && strstr(s, "file.locking=off"));
  lb_free(s);
  /* a failed parse leaves the object unchanged */
  CHECK(lb_options_parse(o, "x=1,,y,,,z") < 0);
  CHECK(lb_options_get(o, "x") == NULL);
  lb_options_free(o);

  /* creation options: raw alone has size; with a file name the protocol's join */
  for (i = 0; i < 8; i++) descs[i].struct_size = sizeof(lb_option_desc);
  n = lb_create_options(g_ctx, "raw", NULL, descs, 8);
  CHECK(n == 1 && strcmp(descs[0].name, "size") == 0 && strcmp(descs[0].type, "size") == 0);
  n = lb_create_options(g_ctx, "raw", img, descs, 8);
  CHECK(n == 4);
  for (i = 0; i < n && i < 8; i++) {
    if (strcmp(descs[i].name, "preallocation") == 0) {
      CHECK(strcmp(descs[i].type, "enum") == 0);
      CHECK(descs[i].choices && strstr(descs[i].choices, "falloc"));
      CHECK(descs[i].help && strstr(descs[i].help, "Preallocation mode"));
    }
  }
  CHECK(lb_create_options(g_ctx, "raw", img, NULL, 0) == 4); /* count only */

  list = lb_driver_list(g_ctx, LB_DRIVER_FORMATS);
  CHECK(list && strstr(list, "raw") && strstr(list, "qcow2") && !strstr(list, "vmdk")); /* vmdk: recognized, not built */
  lb_free(list);
  list = lb_driver_list(g_ctx, LB_DRIVER_PROTOCOLS | LB_DRIVER_FILTERS);
  CHECK(list && strstr(list, "file") && strstr(list, "null-co") && strstr(list, "preallocate"));
  lb_free(list);

  /* objects: secrets by data, base64, duplicates refused */
  CHECK(lb_context_add_object(g_ctx, "secret,id=sec0,data=letmein") == 0);
  CHECK(lb_context_add_object(g_ctx, "secret,id=sec1,data=bGV0bWVpbg==,format=base64") == 0);
  CHECK(lb_context_add_object(g_ctx, "secret,id=sec0,data=again") == -EEXIST);
}

static void test_nodes_and_info(void) {
  lb_open_args args = LB_OPEN_ARGS_INIT;
  lb_node *node = NULL, *node2 = NULL;
  lb_backend *be = NULL, *ro = NULL;
  lb_image_info *info = NULL;
  lb_extent ext = LB_EXTENT_INIT;
  lb_extent old_ext;
  unsigned char buf[4096];

  CHECK(args.struct_size == sizeof(lb_open_args) && args.flags == 0 && args.filename == NULL);
  args.filename = img;
  args.format = "raw";
  args.flags = LB_OPEN_RDWR | LB_OPEN_CACHE_NONE | LB_OPEN_AIO_THREADS | LB_OPEN_UNMAP;
  CHECK(lb_node_open(g_ctx, &args, &node) == 0 && node != NULL);
  CHECK(lb_node_has_zero_init(node) == 1); /* a regular file */
  {
    lb_open_args null_args = LB_OPEN_ARGS_INIT;
    lb_node *null_node = NULL;
    null_args.options = "driver=null-co,size=1M";
    CHECK(lb_node_open(g_ctx, &null_args, &null_node) == 0);
    CHECK(lb_node_has_zero_init(null_node) == 0); /* nothing guarantees what it reads */
    lb_node_close(null_node);
  }
  CHECK(lb_node_get_info(node, 0, &info) == 0 && info != NULL);
  CHECK(info->struct_size == sizeof(lb_image_info));
  CHECK(strcmp(info->format, "raw") == 0);
  CHECK(strcmp(info->filename, img) == 0);
  CHECK(info->virtual_size == 1 << 20);
  CHECK(info->actual_size >= 0);
  CHECK(info->backing == NULL && info->backing_filename == NULL && !info->dirty);
  CHECK(info->json && strstr(info->json, "\"virtual-size\": 1048576"));
  lb_image_info_free(info);

  /* backends on the node: a writer, then a reader that shares write */
  CHECK(lb_backend_new(node, LB_OPEN_RDWR, &be) == 0);
  memset(buf, 0xa5, sizeof buf);
  CHECK(lb_pwrite(be, buf, sizeof buf, 8192, 0) == 0);
  CHECK(lb_backend_new(node, 0, &ro) == -EPERM); /* doesn't share write with a writer */
  CHECK(strstr(lb_get_error(), "Permission conflict") != NULL);
  CHECK(lb_backend_get_node(be, &node2) == 0 && node2 != NULL);
  lb_node_close(node2);
  /* discard=unmap (LB_OPEN_UNMAP) makes the discard a hole */
  CHECK(lb_discard(be, 8192, 4096, 0) == 0);
  CHECK(lb_block_status(be, 8192, 4096, 0, &ext) == 0);
  CHECK((ext.flags & LB_STATUS_ZERO) && ext.depth == 0 && ext.has_host_offset &&
        ext.host_offset == 8192);
  /* an older caller whose lb_extent ends before `depth` gets the fields it knows only */
  memset(&old_ext, 0x77, sizeof old_ext);
  old_ext.struct_size = offsetof(lb_extent, depth);
  CHECK(lb_block_status(be, 0, 4096, 0, &old_ext) == 0);
  CHECK(old_ext.struct_size == offsetof(lb_extent, depth) && old_ext.length == 4096);
  CHECK(old_ext.depth == 0x77777777u); /* not written */
  CHECK(lb_close(be) == 0);
  lb_node_close(node); /* the last reference: the node closes */

  /* reopening the file read-write succeeds: nothing holds it any more */
  args.flags = LB_OPEN_RDWR;
  CHECK(lb_open_ex(g_ctx, &args, &be) == 0);
  CHECK(lb_get_length(be) == 1 << 20 && lb_get_size(be) == 1 << 20);
  lb_close(be);
}

struct tag {
  int completions;
};

static void test_async(void) {
  lb_backend *be = NULL;
  struct tag tags[64];
  lb_completion done[64];
  static unsigned char bufs[64][4096];
  struct pollfd pfd;
  int i, got = 0, r, rejected;
  struct iovec iov[2];

  CHECK(lb_open(g_ctx, img, "driver=raw", LB_OPEN_RDWR, &be) == 0);
  memset(tags, 0, sizeof tags);
  CHECK(lb_context_set_max_inflight(g_ctx, 48) == 0);
  rejected = 0;
  for (i = 0; i < 64; i++) {
    memset(bufs[i], i, sizeof bufs[i]);
    r = lb_aio_pwrite(be, bufs[i], sizeof bufs[i], (uint64_t)i * 4096, 0, &tags[i]);
    if (r == -EAGAIN) {
      rejected++;
      tags[i].completions = -100; /* must never complete */
    } else {
      CHECK(r == 0);
    }
  }
  CHECK(rejected == 16);
  CHECK(lb_context_get_inflight(g_ctx) == 48);
  /* the completion fd tells us to come back */
  pfd.fd = lb_get_fd(g_ctx);
  pfd.events = POLLIN;
  CHECK(pfd.fd >= 0);
  CHECK(poll(&pfd, 1, 5000) == 1);
  while (got < 48) {
    r = lb_reap(g_ctx, 1, 64, 5000000000LL, done);
    CHECK(r > 0);
    if (r <= 0) break;
    for (i = 0; i < r; i++) ((struct tag *)done[i].user_data)->completions++;
    for (i = 0; i < r; i++) CHECK(done[i].ret == 0);
    got += r;
  }
  CHECK(got == 48);
  CHECK(lb_context_get_inflight(g_ctx) == 0);
  /* nothing more to reap: returns at once with 0, even with min > 0 */
  CHECK(lb_reap(g_ctx, 1, 64, 1000000LL, done) == 0);
  for (i = 0; i < 64; i++) CHECK(tags[i].completions == (i < 48 ? 1 : -100));
  /* vectored, zeroes, discard, flush, and a failing request report their result */
  iov[0].iov_base = bufs[1];
  iov[0].iov_len = 100;
  iov[1].iov_base = bufs[2];
  iov[1].iov_len = 412;
  CHECK(lb_aio_preadv(be, iov, 2, 4096, 0, &tags[0]) == 0);
  CHECK(lb_aio_pwrite_zeroes(be, 0, 4096, 0, &tags[1]) == 0);
  CHECK(lb_aio_discard(be, 0, 4096, 0, &tags[2]) == 0);
  CHECK(lb_aio_flush(be, 0, &tags[3]) == 0);
  CHECK(lb_aio_pread(be, bufs[4], 4096, (1 << 20) - 100, 0, &tags[4]) == 0); /* past the end */
  CHECK(lb_aio_pwrite(be, bufs[5], 16, 0, 0x40, &tags[5]) == -EINVAL);     /* rejected */
  r = lb_reap(g_ctx, 5, 64, -1, done);
  CHECK(r == 5);
  for (i = 0; i < r; i++) {
    if (done[i].user_data == &tags[4]) {
      CHECK(done[i].ret == -EIO);
    } else {
      CHECK(done[i].ret == 0);
    }
    CHECK(done[i].user_data != &tags[5]);
  }
  CHECK(bufs[1][0] == 1 && bufs[2][0] == 1); /* read back what the first round wrote */
  /* the fd stays readable while completions wait: after a reap that took only some of them,
   * and after a synchronous call whose loop run finished the asynchronous ones */
  for (i = 0; i < 4; i++) CHECK(lb_aio_pread(be, bufs[i], 4096, (uint64_t)i * 4096, 0, &tags[i]) == 0);
  CHECK(lb_reap(g_ctx, 4, 2, -1, done) == -EINVAL); /* min > max */
  CHECK(lb_reap(g_ctx, 2, 2, -1, done) == 2);
  CHECK(poll(&pfd, 1, 5000) == 1);
  CHECK(lb_pread(be, bufs[8], 512, 0, 0) == 0);
  CHECK(poll(&pfd, 1, 5000) == 1);
  CHECK(lb_reap(g_ctx, 2, 2, -1, done) == 2);
  for (i = 0; i < 4; i++) CHECK(lb_aio_pread(be, bufs[i], 4096, (uint64_t)i * 4096, 0, &tags[i]) == 0);
  CHECK(lb_reap(g_ctx, 4, 4, -1, done) == 4); /* all of them, so everything is now waiting... */
  CHECK(lb_aio_pread(be, bufs[0], 4096, 0, 0, &tags[0]) == 0);
  CHECK(lb_aio_pread(be, bufs[1], 4096, 4096, 0, &tags[1]) == 0);
  CHECK(lb_pread(be, bufs[8], 512, 0, 0) == 0); /* ...finished by this call's loop run */
  CHECK(lb_pread(be, bufs[8], 512, 0, 0) == 0); /* a second run must not swallow the wake-up */
  CHECK(poll(&pfd, 1, 5000) == 1);
  CHECK(lb_reap(g_ctx, 2, 64, -1, done) == 2);
  /* reads the page cache answers may complete inside lb_aio_pread: the fd says so at once,
   * and once they are reaped, the lb_reap an embedder makes on a wake-up leaves it quiet */
  for (i = 0; i < 4; i++) CHECK(lb_aio_pread(be, bufs[i], 4096, (uint64_t)i * 4096, 0, &tags[i]) == 0);
  CHECK(poll(&pfd, 1, 5000) == 1);
  CHECK(lb_reap(g_ctx, 4, 64, -1, done) == 4);
  CHECK(lb_reap(g_ctx, 0, 64, 0, done) == 0);
  CHECK(poll(&pfd, 1, 0) == 0);
  /* requests still in flight when the backend closes complete, and are reaped afterwards */
  CHECK(lb_context_set_max_inflight(g_ctx, 1024) == 0);
  for (i = 0; i < 8; i++) CHECK(lb_aio_pread(be, bufs[i], 4096, (uint64_t)i * 4096, 0, &tags[i]) == 0);
  CHECK(lb_close(be) == 0);
  CHECK(lb_reap(g_ctx, 8, 64, 0, done) == 8);
  CHECK(lb_context_get_inflight(g_ctx) == 0);
}

int main(void) {
  snprintf(dir, sizeof dir, "/tmp/lb-abi-XXXXXX");
  if (!mkdtemp(dir)) return 1;
  snprintf(img, sizeof img, "%s/disk.raw", dir);
  CHECK(LB_VERSION_NUMBER >= 100);
  CHECK(lb_get_errno() == 0);
  CHECK(lb_context_new(0, &g_ctx) == 0);
  CHECK(lb_create(g_ctx, img, "raw", NULL, 1 << 20, 0) == 0);

  test_null_and_messages();
  test_options_and_drivers();
  test_nodes_and_info();
  test_async();

  lb_context_free(g_ctx);
  unlink(img);
  rmdir(dir);
  return check_report("abi");
}
