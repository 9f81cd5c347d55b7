/* convert_to_raw: copy any image libblock can open into a new raw image, sparsely.
 *
 * It shows
 *   - opening an image whose format is probed, with lb_context_set_warning_handler
 *     routing libblock's non-fatal warnings to the program instead of stderr (probing
 *     only warns when it guesses raw for a read-write open; the source here is read-only),
 *   - walking the allocation map with lb_block_status, as `qemu-img map` does: extents
 *     that read as zeroes are not copied at all, because a freshly created raw image
 *     already reads as zeroes there and stays sparse,
 *   - copying the data extents in bounded chunks, then verifying the copy by reading both.
 *
 *   convert_to_raw SOURCE DEST         convert SOURCE (any supported format) to raw DEST
 *   convert_to_raw --selftest DIR      build a sparse source in DIR, convert and check it
 *
 * Exit status: 0 success, 1 failure (message on stderr), 2 usage. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "libblock.h"

#define CHUNK_SIZE (1024u * 1024) /* the most one read/write moves */

/* What a conversion did, for the report and the self-test. */
struct copy_stats {
  uint64_t data_bytes; /* copied */
  uint64_t zero_bytes; /* skipped */
  unsigned warnings;   /* messages from the warning handler */
};

/* Receives libblock's non-fatal diagnostics, e.g. "probing guessed raw". */
static void on_warning(const char *message, void *user_data) {
  struct copy_stats *stats = user_data;
  stats->warnings++;
  printf("warning from libblock: %s\n", message);
}

static int fail(const char *what) {
  fprintf(stderr, "convert_to_raw: %s: %s\n", what, lb_get_error());
  return 1;
}

static int open_image(lb_context *ctx, const char *path, const char *format, uint32_t flags,
                      lb_backend **be) {
  lb_open_args args = LB_OPEN_ARGS_INIT;
  args.filename = path;
  args.format = format;
  args.flags = flags;
  return lb_open_ex(ctx, &args, be);
}

/* Copies [offset, offset+length) from `src` to `dst` through `buf` (CHUNK_SIZE bytes). */
static int copy_range(lb_backend *src, lb_backend *dst, uint64_t offset, uint64_t length,
                      unsigned char *buf) {
  while (length > 0) {
    size_t n = length < CHUNK_SIZE ? (size_t)length : CHUNK_SIZE;
    if (lb_pread(src, buf, n, offset, 0) < 0) return fail("read source");
    if (lb_pwrite(dst, buf, n, offset, 0) < 0) return fail("write destination");
    offset += n;
    length -= n;
  }
  return 0;
}

/* Walks the source's map and copies only the extents that do not read as zeroes. */
static int copy_sparse(lb_backend *src, lb_backend *dst, uint64_t size,
                       struct copy_stats *stats) {
  unsigned char *buf = malloc(CHUNK_SIZE);
  uint64_t offset = 0;
  int ret = 0;

  if (buf == NULL) return 1;
  while (offset < size && ret == 0) {
    lb_extent extent = LB_EXTENT_INIT; /* struct_size tells the library our layout */
    if (lb_block_status(src, offset, size - offset, 0, &extent) < 0) {
      ret = fail("block status");
      break;
    }
    if (extent.flags & LB_STATUS_ZERO) {
      /* Reads return zeroes here: the new raw image already does, so write nothing. */
      stats->zero_bytes += extent.length;
    } else {
      ret = copy_range(src, dst, offset, extent.length, buf);
      stats->data_bytes += extent.length;
    }
    offset += extent.length;
  }
  free(buf);
  return ret;
}

/* Reads both images completely and compares them. */
static int verify_copy(lb_backend *src, lb_backend *dst, uint64_t size) {
  unsigned char *a = malloc(CHUNK_SIZE), *b = malloc(CHUNK_SIZE);
  uint64_t offset;
  int ret = 0;

  if (a == NULL || b == NULL) ret = 1;
  for (offset = 0; offset < size && ret == 0; offset += CHUNK_SIZE) {
    size_t n = size - offset < CHUNK_SIZE ? (size_t)(size - offset) : CHUNK_SIZE;
    if (lb_pread(src, a, n, offset, 0) < 0 || lb_pread(dst, b, n, offset, 0) < 0) {
      ret = fail("verify read");
    } else if (memcmp(a, b, n) != 0) {
      fprintf(stderr, "convert_to_raw: copy differs in the MiB at %" PRIu64 "\n", offset);
      ret = 1;
    }
  }
  free(a);
  free(b);
  return ret;
}

static int convert(lb_context *ctx, const char *source, const char *dest,
                   struct copy_stats *stats) {
  lb_backend *src = NULL, *dst = NULL;
  int64_t size;
  int ret;

  if (open_image(ctx, source, NULL, 0, &src) < 0) return fail("open source");
  size = lb_get_size(src);
  if (size < 0) {
    lb_close(src);
    return fail("source size");
  }
  if (lb_create(ctx, dest, "raw", NULL, (uint64_t)size, 0) < 0 ||
      open_image(ctx, dest, "raw", LB_OPEN_RDWR, &dst) < 0) {
    lb_close(src);
    return fail("create destination");
  }
  ret = copy_sparse(src, dst, (uint64_t)size, stats);
  if (ret == 0 && lb_flush(dst, 0) < 0) ret = fail("flush destination");
  if (ret == 0) ret = verify_copy(src, dst, (uint64_t)size);
  if (ret == 0) {
    printf("converted %s -> %s: %" PRId64 " bytes, %" PRIu64 " copied, %" PRIu64
           " skipped as zeroes, verified\n",
           source, dest, size, stats->data_bytes, stats->zero_bytes);
  }
  lb_close(src);
  if (lb_close(dst) < 0 && ret == 0) ret = fail("close destination");
  return ret;
}

/* Writes `byte` over [offset, offset+length) of `be`. */
static int fill(lb_backend *be, uint64_t offset, size_t length, int byte) {
  unsigned char *buf = malloc(length);
  int ret;
  if (buf == NULL) return -1;
  memset(buf, byte, length);
  ret = lb_pwrite(be, buf, length, offset, 0);
  free(buf);
  return ret;
}

/* Counts the bytes of `path` (opened as raw) whose extents are reported as data. */
static int count_data(lb_context *ctx, const char *path, uint64_t *data_bytes) {
  lb_backend *be = NULL;
  uint64_t offset = 0, size;
  if (open_image(ctx, path, "raw", 0, &be) < 0) return fail("open for map");
  size = (uint64_t)lb_get_size(be);
  *data_bytes = 0;
  while (offset < size) {
    lb_extent extent = LB_EXTENT_INIT;
    if (lb_block_status(be, offset, size - offset, 0, &extent) < 0) {
      lb_close(be);
      return fail("block status");
    }
    if (!(extent.flags & LB_STATUS_ZERO)) *data_bytes += extent.length;
    offset += extent.length;
  }
  lb_close(be);
  return 0;
}

static int selftest(lb_context *ctx, const char *dir) {
  /* 16 MiB with data in three places; the rest is holes (zero extents). */
  static const struct { uint64_t offset; size_t length; int byte; } kWrites[] = {
      {0, 64 * 1024, 0x11},
      {3 * 1024 * 1024 + 4096, 2 * 1024 * 1024, 0x22},
      {16 * 1024 * 1024 - 4096, 4096, 0x33},
  };
  struct copy_stats stats = {0, 0, 0};
  char source[4096], dest[4096];
  lb_backend *be = NULL;
  uint64_t written = 0, dest_data = 0;
  size_t i;

  snprintf(source, sizeof source, "%s/convert_source.img", dir);
  snprintf(dest, sizeof dest, "%s/convert_dest.raw", dir);
  unlink(dest);
  if (lb_create(ctx, source, "raw", NULL, 16 * 1024 * 1024, 0) < 0) return fail("create");
  if (open_image(ctx, source, "raw", LB_OPEN_RDWR, &be) < 0) return fail("open");
  for (i = 0; i < sizeof kWrites / sizeof kWrites[0]; i++) {
    if (fill(be, kWrites[i].offset, kWrites[i].length, kWrites[i].byte) < 0) {
      lb_close(be);
      return fail("write source");
    }
    written += kWrites[i].length;
  }
  if (lb_close(be) < 0) return fail("close source");

  if (convert(ctx, source, dest, &stats)) return 1;
  /* The source was probed read-only: libblock has nothing to warn about (qemu-img too
   * warns about guessing raw only when it may write). */
  if (stats.warnings != 0) {
    fprintf(stderr, "convert_to_raw: unexpected warning for a read-only probe\n");
    return 1;
  }
  /* Data extents are at least what was written (file systems may round them up), and the
   * holes were skipped: most of the 16 MiB must not have been copied. */
  if (stats.data_bytes < written || stats.zero_bytes < 8 * 1024 * 1024) {
    fprintf(stderr, "convert_to_raw: copied %" PRIu64 ", skipped %" PRIu64 "\n",
            stats.data_bytes, stats.zero_bytes);
    return 1;
  }
  /* The destination is as sparse as the source: only copied extents hold data. */
  if (count_data(ctx, dest, &dest_data)) return 1;
  if (dest_data > stats.data_bytes) {
    fprintf(stderr, "convert_to_raw: destination has %" PRIu64 " data bytes, copied %" PRIu64
            "\n", dest_data, stats.data_bytes);
    return 1;
  }
  unlink(source);
  unlink(dest);
  printf("selftest passed\n");
  return 0;
}

int main(int argc, char **argv) {
  struct copy_stats stats = {0, 0, 0};
  lb_context *ctx = NULL;
  int ret = 2;

  if (argc != 3) {
    fprintf(stderr, "usage: convert_to_raw SOURCE DEST | --selftest DIR\n");
    return 2;
  }
  if (lb_context_new(0, &ctx) < 0) return fail("context");
  lb_context_set_warning_handler(ctx, on_warning, &stats);
  if (strcmp(argv[1], "--selftest") == 0) {
    ret = selftest(ctx, argv[2]);
  } else {
    ret = convert(ctx, argv[1], argv[2], &stats);
  }
  lb_context_free(ctx);
  return ret;
}
