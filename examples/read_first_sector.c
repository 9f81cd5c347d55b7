/* read_first_sector: the smallest useful libblock program.
 *
 * It shows the basic life cycle every embedder goes through:
 *   lb_context_new -> lb_open_ex -> lb_pread -> lb_close -> lb_context_free
 * and how errors are reported (a negative errno, then lb_get_error() for the message).
 *
 *   read_first_sector IMAGE [FORMAT]   print the image's first 512 bytes as a hexdump
 *                                      (FORMAT e.g. "raw"; without it the format is probed)
 *   read_first_sector --selftest DIR   create DIR/first_sector.raw with known bytes, read it
 *                                      back both ways and check bytes and output
 *
 * The dump has the layout of `hexdump -C`: offset, 16 bytes in hex, the same bytes as
 * text, and a "*" line in place of lines identical to the previous one.
 * Exit status: 0 success, 1 failure (message on stderr), 2 usage. */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "libblock.h"

#define SECTOR_SIZE 512
#define BYTES_PER_LINE 16

/* Formats one hexdump line of `count` bytes (at most 16) at `offset` into `out`, which has
 * room for `size` characters (80 is enough). snprintf never writes past `size`. */
static void format_hex_line(const unsigned char *bytes, size_t count, unsigned long offset,
                            char *out, size_t size) {
  size_t i, pos;
  pos = (size_t)snprintf(out, size, "%08lx ", offset);
  for (i = 0; i < BYTES_PER_LINE && pos < size; i++) {
    const char *gap = i == 8 ? " " : ""; /* the gap between the two halves */
    if (i < count) {
      pos += (size_t)snprintf(out + pos, size - pos, "%s %02x", gap, bytes[i]);
    } else {
      pos += (size_t)snprintf(out + pos, size - pos, "%s   ", gap);
    }
  }
  if (pos < size) pos += (size_t)snprintf(out + pos, size - pos, "  |");
  for (i = 0; i < count && pos + 2 < size; i++) {
    /* only printable ASCII goes into the text column */
    out[pos++] = (bytes[i] >= 0x20 && bytes[i] < 0x7f) ? (char)bytes[i] : '.';
  }
  if (pos < size) snprintf(out + pos, size - pos, "|");
}

/* Prints `count` bytes like hexdump -C, collapsing runs of identical lines into "*". */
static void print_hexdump(const unsigned char *bytes, size_t count) {
  char line[96];
  size_t off;
  int starred = 0;
  for (off = 0; off < count; off += BYTES_PER_LINE) {
    size_t n = count - off < BYTES_PER_LINE ? count - off : BYTES_PER_LINE;
    if (off > 0 && n == BYTES_PER_LINE &&
        memcmp(bytes + off, bytes + off - BYTES_PER_LINE, BYTES_PER_LINE) == 0) {
      if (!starred) puts("*");
      starred = 1;
      continue;
    }
    starred = 0;
    format_hex_line(bytes + off, n, (unsigned long)off, line, sizeof line);
    puts(line);
  }
  printf("%08lx\n", (unsigned long)count);
}

/* Opens `filename` read-only (as `format`, or probed when NULL) and reads its first sector
 * into `sector`. Returns 0, or 1 after printing why it failed. */
static int read_first_sector(lb_context *ctx, const char *filename, const char *format,
                             unsigned char sector[SECTOR_SIZE]) {
  lb_open_args args = LB_OPEN_ARGS_INIT; /* always start from the INIT macro */
  lb_backend *be = NULL;
  int ret;

  args.filename = filename;
  args.format = format; /* NULL: probe the format (a warning is printed if it guesses raw) */
  args.flags = 0;       /* read-only: other programs may keep using the image */
  ret = lb_open_ex(ctx, &args, &be);
  if (ret < 0) {
    fprintf(stderr, "read_first_sector: cannot open %s: %s\n", filename, lb_get_error());
    return 1;
  }
  if (lb_get_size(be) < SECTOR_SIZE) {
    fprintf(stderr, "read_first_sector: %s is smaller than one sector\n", filename);
    lb_close(be);
    return 1;
  }
  /* lb_pread is synchronous: it runs the context's event loop until the read completes. */
  ret = lb_pread(be, sector, SECTOR_SIZE, 0, 0);
  if (ret < 0) {
    fprintf(stderr, "read_first_sector: read failed: %s\n", lb_get_error());
    lb_close(be);
    return 1;
  }
  lb_close(be);
  return 0;
}

/* The known content the self-test writes: a signature, then a counting pattern. */
static void fill_expected(unsigned char sector[SECTOR_SIZE]) {
  size_t i;
  for (i = 0; i < SECTOR_SIZE; i++) sector[i] = (unsigned char)(i * 7 + 3);
  memcpy(sector, "libblock", 8);
}

/* Creates `path` as a 1 MiB raw image whose first sector holds fill_expected()'s bytes. */
static int create_test_image(lb_context *ctx, const char *path) {
  unsigned char sector[SECTOR_SIZE];
  lb_open_args args = LB_OPEN_ARGS_INIT;
  lb_backend *be = NULL;

  if (lb_create(ctx, path, "raw", NULL, 1024 * 1024, 0) < 0) {
    fprintf(stderr, "read_first_sector: create: %s\n", lb_get_error());
    return 1;
  }
  args.filename = path;
  args.format = "raw"; /* naming the format explicitly is what allows writing sector 0 */
  args.flags = LB_OPEN_RDWR;
  if (lb_open_ex(ctx, &args, &be) < 0) {
    fprintf(stderr, "read_first_sector: open for writing: %s\n", lb_get_error());
    return 1;
  }
  fill_expected(sector);
  if (lb_pwrite(be, sector, SECTOR_SIZE, 0, 0) < 0) {
    fprintf(stderr, "read_first_sector: write: %s\n", lb_get_error());
    lb_close(be);
    return 1;
  }
  /* lb_close flushes and reports a failed flush */
  if (lb_close(be) < 0) {
    fprintf(stderr, "read_first_sector: close: %s\n", lb_get_error());
    return 1;
  }
  return 0;
}

static int selftest(lb_context *ctx, const char *dir) {
  static const char *const kFormats[] = {"raw", NULL}; /* explicit, then probed */
  /* what hexdump -C prints for the first 16 bytes fill_expected() produces */
  static const char kFirstLine[] =
      "00000000  6c 69 62 62 6c 6f 63 6b  3b 42 49 50 57 5e 65 6c  |libblock;BIPW^el|";
  unsigned char expected[SECTOR_SIZE], actual[SECTOR_SIZE];
  char path[4096], line[96];
  size_t i;

  snprintf(path, sizeof path, "%s/first_sector.raw", dir);
  if (create_test_image(ctx, path)) return 1;
  fill_expected(expected);
  for (i = 0; i < 2; i++) {
    memset(actual, 0, sizeof actual);
    if (read_first_sector(ctx, path, kFormats[i], actual)) return 1;
    if (memcmp(actual, expected, SECTOR_SIZE) != 0) {
      fprintf(stderr, "read_first_sector: sector 0 differs (format %s)\n",
              kFormats[i] ? kFormats[i] : "probed");
      return 1;
    }
  }
  format_hex_line(actual, BYTES_PER_LINE, 0, line, sizeof line);
  if (strcmp(line, kFirstLine) != 0) {
    fprintf(stderr, "read_first_sector: hexdump line\n  got      %s\n  expected %s\n", line,
            kFirstLine);
    return 1;
  }
  print_hexdump(actual, SECTOR_SIZE);
  unlink(path);
  printf("selftest passed\n");
  return 0;
}

int main(int argc, char **argv) {
  lb_context *ctx = NULL;
  unsigned char sector[SECTOR_SIZE];
  int ret;

  if (argc < 2 || argc > 3) {
    fprintf(stderr, "usage: read_first_sector IMAGE [FORMAT] | --selftest DIR\n");
    return 2;
  }
  if (lb_context_new(0, &ctx) < 0) {
    fprintf(stderr, "read_first_sector: %s\n", lb_get_error());
    return 1;
  }
  if (strcmp(argv[1], "--selftest") == 0) {
    ret = argc == 3 ? selftest(ctx, argv[2]) : 2;
  } else {
    ret = read_first_sector(ctx, argv[1], argc == 3 ? argv[2] : NULL, sector);
    if (ret == 0) print_hexdump(sector, SECTOR_SIZE);
  }
  lb_context_free(ctx); /* also closes anything still open in the context */
  return ret;
}
