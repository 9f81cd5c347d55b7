/* create_and_write: create an image, write to it, and ask libblock what it is.
 *
 * It shows
 *   - lb_create with creation options in qemu-img's "-o" syntax ("preallocation=falloc"),
 *   - opening read-write with lb_open_ex and an explicit format,
 *   - lb_pwrite, lb_pwrite_zeroes and lb_flush, then reading back to verify,
 *   - lb_backend_get_node + lb_node_get_info: what `qemu-img info` would print.
 *
 *   create_and_write IMAGE [OPTIONS]   create a 4 MiB raw IMAGE (OPTIONS default to
 *                                      "preallocation=falloc"), write, verify, print info
 *   create_and_write --selftest DIR    the same on DIR/create_and_write.raw, then remove it
 *
 * Exit status: 0 success, 1 failure (message on stderr), 2 usage. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "libblock.h"

#define IMAGE_SIZE (4u * 1024 * 1024)
#define DATA_OFFSET (1024u * 1024)    /* where the pattern goes */
#define DATA_LENGTH (256u * 1024)     /* how much pattern */
#define ZERO_OFFSET (1024u * 1024 + 64 * 1024) /* a hole punched into the pattern */
#define ZERO_LENGTH (64u * 1024)

static int fail(const char *what) {
  /* lb_get_error() describes the last failure on this thread; never NULL */
  fprintf(stderr, "create_and_write: %s: %s (errno %d)\n", what, lb_get_error(),
          lb_get_errno());
  return 1;
}

/* The byte the pattern holds at image offset `off`, before the zeroing. */
static unsigned char pattern_byte(uint64_t off) { return (unsigned char)(off % 251 + 1); }

/* What a read of offset `off` must return after the write and the zeroing. */
static unsigned char expected_byte(uint64_t off) {
  if (off >= ZERO_OFFSET && off < ZERO_OFFSET + ZERO_LENGTH) return 0;
  if (off >= DATA_OFFSET && off < DATA_OFFSET + DATA_LENGTH) return pattern_byte(off);
  return 0; /* never written: a new image reads as zeroes */
}

static int write_and_verify(lb_backend *be) {
  unsigned char *buf = malloc(IMAGE_SIZE);
  uint64_t i;
  if (buf == NULL) return 1;

  for (i = 0; i < DATA_LENGTH; i++) buf[i] = pattern_byte(DATA_OFFSET + i);
  if (lb_pwrite(be, buf, DATA_LENGTH, DATA_OFFSET, 0) < 0) goto failed_write;
  /* Writing zeroes needs no buffer; formats may store it as a hole instead of data. */
  if (lb_pwrite_zeroes(be, ZERO_OFFSET, ZERO_LENGTH, 0) < 0) goto failed_zero;
  /* Until a flush, completed writes may still sit in the host's page cache. */
  if (lb_flush(be, 0) < 0) goto failed_flush;

  /* Read the whole image back and check every byte. */
  if (lb_pread(be, buf, IMAGE_SIZE, 0, 0) < 0) goto failed_read;
  for (i = 0; i < IMAGE_SIZE; i++) {
    if (buf[i] != expected_byte(i)) {
      fprintf(stderr, "create_and_write: byte at %" PRIu64 " is 0x%02x, expected 0x%02x\n", i,
              buf[i], expected_byte(i));
      free(buf);
      return 1;
    }
  }
  printf("wrote %u bytes at %u, zeroed %u at %u, read back %u bytes: all correct\n",
         DATA_LENGTH, DATA_OFFSET, ZERO_LENGTH, ZERO_OFFSET, IMAGE_SIZE);
  free(buf);
  return 0;

failed_write:
  free(buf);
  return fail("write");
failed_zero:
  free(buf);
  return fail("write zeroes");
failed_flush:
  free(buf);
  return fail("flush");
failed_read:
  free(buf);
  return fail("read");
}

/* Prints what lb_node_get_info says and checks the format and size. */
static int print_info(lb_backend *be) {
  lb_node *node = NULL;
  lb_image_info *info = NULL;
  int ok;

  /* Information belongs to nodes; a backend hands out a reference to its node. */
  if (lb_backend_get_node(be, &node) < 0) return fail("get node");
  if (lb_node_get_info(node, 0, &info) < 0) {
    lb_node_close(node);
    return fail("get info");
  }
  printf("format: %s\nvirtual size: %" PRIu64 " bytes\nactual size: %" PRId64 " bytes\n",
         info->format, info->virtual_size, info->actual_size);
  printf("as qemu-img info --output=json: %s\n", info->json);
  ok = strcmp(info->format, "raw") == 0 && info->virtual_size == IMAGE_SIZE;
  if (!ok) fprintf(stderr, "create_and_write: unexpected format or size\n");
  lb_image_info_free(info);
  lb_node_close(node);
  return ok ? 0 : 1;
}

static int create_and_write(lb_context *ctx, const char *path, const char *options) {
  lb_open_args args = LB_OPEN_ARGS_INIT;
  lb_backend *be = NULL;
  int ret;

  /* Options are what `qemu-img create -o` takes; a bad one fails with -EINVAL. */
  if (lb_create(ctx, path, "raw", options, IMAGE_SIZE, 0) < 0) return fail("create");
  printf("created %s (raw, %u bytes, options \"%s\")\n", path, IMAGE_SIZE,
         options ? options : "");

  args.filename = path;
  args.format = "raw"; /* never probe an image you are about to write */
  args.flags = LB_OPEN_RDWR;
  if (lb_open_ex(ctx, &args, &be) < 0) return fail("open");
  ret = write_and_verify(be);
  if (ret == 0) ret = print_info(be);
  if (lb_close(be) < 0 && ret == 0) ret = fail("close");
  return ret;
}

/* falloc preallocation reserves every byte on the host: the image is not sparse. */
static int check_preallocated(lb_context *ctx, const char *path) {
  lb_node *node = NULL;
  lb_image_info *info = NULL;
  lb_open_args args = LB_OPEN_ARGS_INIT;
  int ok;

  args.filename = path;
  args.format = "raw";
  if (lb_node_open(ctx, &args, &node) < 0) return fail("node open");
  if (lb_node_get_info(node, 0, &info) < 0) {
    lb_node_close(node);
    return fail("get info");
  }
  ok = info->actual_size >= (int64_t)IMAGE_SIZE;
  if (!ok) {
    fprintf(stderr, "create_and_write: actual size %" PRId64 " < %u after falloc\n",
            info->actual_size, IMAGE_SIZE);
  }
  lb_image_info_free(info);
  lb_node_close(node);
  return ok ? 0 : 1;
}

int main(int argc, char **argv) {
  lb_context *ctx = NULL;
  char path[4096];
  int ret;

  if (argc < 2 || argc > 3) {
    fprintf(stderr, "usage: create_and_write IMAGE [OPTIONS] | --selftest DIR\n");
    return 2;
  }
  if (lb_context_new(0, &ctx) < 0) return fail("context");
  if (strcmp(argv[1], "--selftest") == 0) {
    if (argc != 3) {
      lb_context_free(ctx);
      return 2;
    }
    snprintf(path, sizeof path, "%s/create_and_write.raw", argv[2]);
    ret = create_and_write(ctx, path, "preallocation=falloc");
    if (ret == 0) ret = check_preallocated(ctx, path);
    if (ret == 0) {
      unlink(path);
      printf("selftest passed\n");
    }
  } else {
    ret = create_and_write(ctx, argv[1], argc == 3 ? argv[2] : "preallocation=falloc");
  }
  lb_context_free(ctx);
  return ret;
}
