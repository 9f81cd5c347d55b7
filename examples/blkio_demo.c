/* blkio_demo: a small C program against the installed libblock.h.
 *
 *   blkio_demo create IMAGE SIZE_MIB     create a raw image
 *   blkio_demo write  IMAGE OFFSET BYTE  write 64 KiB of BYTE at OFFSET, zero the next 64 KiB
 *   blkio_demo verify IMAGE OFFSET BYTE  check 64 KiB of BYTE at OFFSET
 *   blkio_demo map    IMAGE              print the allocation map (like qemu-img map)
 *   blkio_demo hold   IMAGE SECONDS      keep the image open read-write, then close it
 *   blkio_demo selftest DIR              all of the above on DIR/demo.raw
 *
 * IMAGE may be a filename (its format is probed) or an option string starting with
 * "driver=" or "json:". Exit status: 0 success, 1 failure (message on stderr). */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "libblock.h"

#define CHUNK (64 * 1024)

static int fail(const char *what) {
  fprintf(stderr, "blkio_demo: %s: %s\n", what, lb_get_error());
  return 1;
}

static int open_image(lb_context *ctx, const char *image, uint32_t flags, lb_backend **be) {
  int is_opts = strncmp(image, "driver=", 7) == 0;
  /* A plain filename names a raw image explicitly, so sector 0 is writable. */
  char opts[4096];
  if (!is_opts && strncmp(image, "json:", 5) != 0) {
    snprintf(opts, sizeof opts, "driver=raw,file.filename=%s", image);
    return lb_open(ctx, NULL, opts, flags, be);
  }
  return lb_open(ctx, is_opts ? NULL : image, is_opts ? image : NULL, flags, be);
}

static int cmd_create(lb_context *ctx, const char *image, uint64_t mib) {
  if (lb_create(ctx, image, "raw", NULL, mib << 20, 0) < 0) return fail("create");
  printf("created %s (%" PRIu64 " MiB)\n", image, mib);
  return 0;
}

static int cmd_write(lb_context *ctx, const char *image, uint64_t offset, int byte) {
  lb_backend *be;
  static unsigned char buf[CHUNK];
  if (open_image(ctx, image, LB_OPEN_RDWR, &be) < 0) return fail("open");
  memset(buf, byte, sizeof buf);
  if (lb_pwrite(be, buf, sizeof buf, offset, 0) < 0) return fail("write");
  if (lb_pwrite_zeroes(be, offset + CHUNK, CHUNK, 0) < 0) return fail("write-zeroes");
  if (lb_flush(be, 0) < 0) return fail("flush");
  if (lb_close(be) < 0) return fail("close");
  printf("wrote 64 KiB of 0x%02x at %" PRIu64 " and 64 KiB of zeroes after it\n", byte, offset);
  return 0;
}

static int cmd_verify(lb_context *ctx, const char *image, uint64_t offset, int byte) {
  lb_backend *be;
  static unsigned char buf[CHUNK];
  size_t i;
  if (open_image(ctx, image, 0, &be) < 0) return fail("open");
  if (lb_pread(be, buf, sizeof buf, offset, 0) < 0) return fail("read");
  lb_close(be);
  for (i = 0; i < sizeof buf; i++) {
    if (buf[i] != (unsigned char)byte) {
      fprintf(stderr, "blkio_demo: byte %zu is 0x%02x, expected 0x%02x\n", i, buf[i], byte);
      return 1;
    }
  }
  printf("verified 64 KiB of 0x%02x at %" PRIu64 "\n", byte, offset);
  return 0;
}

static int cmd_map(lb_context *ctx, const char *image) {
  lb_backend *be;
  uint64_t off = 0;
  int64_t size;
  if (open_image(ctx, image, 0, &be) < 0) return fail("open");
  size = lb_get_size(be);
  printf("%-16s %-16s %s\n", "Offset", "Length", "Status");
  while ((int64_t)off < size) {
    lb_extent e = LB_EXTENT_INIT;
    if (lb_block_status(be, off, (uint64_t)size - off, 0, &e) < 0) return fail("block status");
    printf("0x%-14" PRIx64 " 0x%-14" PRIx64 " %s\n", off, e.length,
           (e.flags & LB_STATUS_ZERO) ? "zero" : "data");
    off += e.length;
  }
  lb_close(be);
  return 0;
}

static int cmd_hold(lb_context *ctx, const char *image, unsigned seconds) {
  lb_backend *be;
  if (open_image(ctx, image, LB_OPEN_RDWR, &be) < 0) return fail("open");
  printf("holding %s read-write for %u s\n", image, seconds);
  fflush(stdout);
  sleep(seconds);
  return lb_close(be) < 0 ? fail("close") : 0;
}

static int selftest(lb_context *ctx, const char *dir) {
  char image[1024];
  lb_backend *a, *b;
  snprintf(image, sizeof image, "%s/demo.raw", dir);
  if (cmd_create(ctx, image, 8) || cmd_write(ctx, image, 1 << 20, 0xab) ||
      cmd_verify(ctx, image, 1 << 20, 0xab) || cmd_verify(ctx, image, (1 << 20) + CHUNK, 0) ||
      cmd_map(ctx, image)) {
    return 1;
  }
  /* two read-write opens conflict on the image lock */
  if (open_image(ctx, image, LB_OPEN_RDWR, &a) < 0) return fail("open");
  if (open_image(ctx, image, LB_OPEN_RDWR, &b) != -EAGAIN) {
    fprintf(stderr, "blkio_demo: a second writer was not refused\n");
    return 1;
  }
  printf("second writer refused: %s\n", lb_get_error());
  lb_close(a);
  unlink(image);
  return 0;
}

int main(int argc, char **argv) {
  lb_context *ctx;
  int ret = 2;
  if (argc < 3) {
    fprintf(stderr, "usage: blkio_demo create|write|verify|map|hold|selftest IMAGE [ARGS]\n");
    return 2;
  }
  if (lb_context_new(0, &ctx) < 0) return fail("context");
  if (!strcmp(argv[1], "create") && argc == 4) ret = cmd_create(ctx, argv[2], strtoull(argv[3], NULL, 0));
  else if (!strcmp(argv[1], "write") && argc == 5)
    ret = cmd_write(ctx, argv[2], strtoull(argv[3], NULL, 0), (int)strtol(argv[4], NULL, 0));
  else if (!strcmp(argv[1], "verify") && argc == 5)
    ret = cmd_verify(ctx, argv[2], strtoull(argv[3], NULL, 0), (int)strtol(argv[4], NULL, 0));
  else if (!strcmp(argv[1], "map") && argc == 3) ret = cmd_map(ctx, argv[2]);
  else if (!strcmp(argv[1], "hold") && argc == 4) ret = cmd_hold(ctx, argv[2], (unsigned)atoi(argv[3]));
  else if (!strcmp(argv[1], "selftest") && argc == 3) ret = selftest(ctx, argv[2]);
  else fprintf(stderr, "blkio_demo: bad arguments\n");
  lb_context_free(ctx);
  return ret;
}
