/* The C ABI's 0.2 additions and the array rules, from C, through libblock.so only:
 *   - arrays of extensible structs are stepped by the caller's struct_size, and the library
 *     writes only the first struct_size bytes of each element (lb_create_options,
 *     lb_reap_events);
 *   - lb_parse_size gives qemu-img 7.2's values (the table was taken from
 *     `qemu-img create -f raw x SIZE`);
 *   - lb_create_ex: the size may be left unset, and the size used is reported;
 *   - lb_reap_events and lb_context_run: extensible events, the loop run without requests;
 *   - lb_extent.node_name names the node holding the data, within the caller's struct_size.
 * Each test names what it checks; a failed CHECK prints the line and lb_get_error(). */
#include <errno.h>
#include <poll.h>
#include <sys/stat.h>
#include <time.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "libblock.h"
#include "check.h"


static lb_context *g_ctx;
static char dir[64], img[128];

/* lb_option_desc as a binary built against an older, shorter header sees it: a prefix,
 * without `choices`. */
typedef struct old_option_desc {
  size_t struct_size;
  const char *name;
  const char *type;
  const char *default_value;
  const char *help;
} old_option_desc;

/* An array of old_option_desc, each element followed by guard bytes that are not part of it
 * (the caller's struct_size is the stride; only a prefix of it is the struct). */
#define GUARD 0xA5
static void test_create_options_stride(void) {
  lb_option_desc full[8];
  unsigned char buf[8 * sizeof(old_option_desc) + 64];
  const size_t prefix = offsetof(old_option_desc, help) + sizeof(const char *);
  size_t i, j;
  int n, m;
  for (i = 0; i < 8; i++) full[i].struct_size = sizeof(lb_option_desc);
  n = lb_create_options(g_ctx, "raw", img, full, 8);
  CHECK(n == 4);
  if (n != 4) return;

  /* 1: stride == struct_size == sizeof(old_option_desc): entries are packed, and nothing
   * is written past the n-th */
  memset(buf, GUARD, sizeof buf);
  ((old_option_desc *)buf)->struct_size = sizeof(old_option_desc);
  m = lb_create_options(g_ctx, "raw", img, (lb_option_desc *)buf, 4);
  CHECK(m == 4);
  for (i = 0; i < 4; i++) {
    old_option_desc d;
    memcpy(&d, buf + i * sizeof(old_option_desc), sizeof d);
    CHECK(d.struct_size == sizeof(old_option_desc));
    CHECK(d.name && strcmp(d.name, full[i].name) == 0);
    CHECK(d.type && strcmp(d.type, full[i].type) == 0);
    CHECK(d.help == full[i].help);
  }
  for (j = 4 * sizeof(old_option_desc); j < sizeof buf; j++) CHECK(buf[j] == GUARD);

  /* 2: a stride larger than the struct the library knows the prefix of: struct_size 64
   * (the caller's element), of which the library writes only what it knows, and none of
   * the caller's bytes beyond sizeof(lb_option_desc); max 2 of 4 */
  memset(buf, GUARD, sizeof buf);
  {
    size_t stride = 64;
    size_t size0 = stride;
    memcpy(buf, &size0, sizeof size0);
    m = lb_create_options(g_ctx, "raw", img, (lb_option_desc *)buf, 2);
    CHECK(m == 4);
    for (i = 0; i < 2; i++) {
      lb_option_desc d;
      memcpy(&d, buf + i * stride, sizeof d);
      CHECK(d.struct_size == stride);
      CHECK(d.name && strcmp(d.name, full[i].name) == 0);
      CHECK(d.choices == full[i].choices);
      for (j = i * stride + sizeof(lb_option_desc); j < (i + 1) * stride; j++) {
        CHECK(buf[j] == GUARD);
      }
    }
    for (j = 2 * stride; j < sizeof buf; j++) CHECK(buf[j] == GUARD);
  }

  /* 3: struct_size shorter than sizeof: only `prefix` bytes of each element are written,
   * elements at a stride of `prefix` */
  memset(buf, GUARD, sizeof buf);
  memcpy(buf, &prefix, sizeof prefix);
  m = lb_create_options(g_ctx, "raw", img, (lb_option_desc *)buf, 4);
  CHECK(m == 4);
  for (i = 0; i < 4; i++) {
    old_option_desc d;
    memcpy(&d, buf + i * prefix, prefix);
    CHECK(d.struct_size == prefix);
    CHECK(d.name && strcmp(d.name, full[i].name) == 0);
  }
  for (j = 4 * prefix; j < sizeof buf; j++) CHECK(buf[j] == GUARD);

  /* a struct_size below the fields every caller has is refused */
  memset(buf, GUARD, sizeof buf);
  {
    size_t tiny = offsetof(lb_option_desc, help);
    memcpy(buf, &tiny, sizeof tiny);
    CHECK(lb_create_options(g_ctx, "raw", img, (lb_option_desc *)buf, 4) == -EINVAL);
    for (j = sizeof tiny; j < sizeof buf; j++) CHECK(buf[j] == GUARD);
  }
}

static const struct {
  const char *text;
  int ret;        /* lb_parse_size's return */
  uint64_t value; /* when ret >= 0 */
} kSizes[] = {
    {"1.5G", 0, 1610612736u},
    {"1.5M", 0, 1572864u},
    {"1.", 0, 1},
    {"1.k", 0, 1024},
    {"1.e", 0, 1152921504606846976u},
    {"1.5e", 0, 1729382256910270464u},
    {"0x10", 0, 16},
    {"0X10", 0, 16},
    {" +0x10", 0, 16},
    {"0x10k", 1, 16384},
    {" 5", 0, 5},
    {"\t7", 0, 7},
    {"+5", 0, 5},
    {"010", 0, 10},
    {"00000000000000000000000000000001", 0, 1},
    {"1.99999999999999999999k", 0, 1024}, /* the fraction rounds to 1.0, which QEMU drops */
    {"1.9999999999999999k", 0, 2048},
    {"1.0000000000000000001k", 0, 1024},
    {"0.1k", 0, 102},
    {"0.3k", 0, 307},
    {"0.0005k", 0, 1}, /* 0.512: rounded half up */
    {"0.0004k", 0, 0},
    {"0.0000000001T", 0, 110},
    {"0.00000000000000000000000000001k", 0, 0},
    {"0.123456789012345678901234567890E", 0, 142335986942043632u},
    {"0.99999999999999999999E", 0, 0},
    {"7.99999999999999999E", 0, 8070450532247928832u},
    {"7.9999999999999999E", 0, 9223372036854775680u},
    {"0.5e", 0, 576460752303423488u},
    {"1.0", 0, 1},
    {"1b", 0, 1},
    {"1B", 0, 1},
    {"1K", 0, 1024},
    {"1m", 0, 1048576},
    {"1t", 0, 1099511627776u},
    {"1p", 0, 1125899906842624u},
    {"8E", 0, 9223372036854775808u},
    {"9223372036854775807", 0, 9223372036854775807u},
    {"18446744073709551615", 0, 18446744073709551615u},
    {"0xffffffffffffffff", 0, 18446744073709551615u},
    {"1.5", -EINVAL, 0},
    {"1.5b", -EINVAL, 0},
    {"1.5e3", -EINVAL, 0},
    {"1.5e+3", -EINVAL, 0},
    {"1.5E+", -EINVAL, 0},
    {"1.e5", -EINVAL, 0},
    {"0x1.8k", -EINVAL, 0},
    {"0x10.5", -EINVAL, 0},
    {"0x1.k", -EINVAL, 0},
    {".5k", -EINVAL, 0},
    {"", -EINVAL, 0},
    {"abc", -EINVAL, 0},
    {"k", -EINVAL, 0},
    {"1kk", -EINVAL, 0},
    {"1k ", -EINVAL, 0},
    {"1k5", -EINVAL, 0},
    {"1.5x", -EINVAL, 0},
    {"0x", -EINVAL, 0},
    {"00x10", -EINVAL, 0},
    {"0x 10", -EINVAL, 0},
    {"-5", -EINVAL, 0},
    {"-0", -EINVAL, 0},
    {" -1", -EINVAL, 0},
    {"18446744073709551616k", -EINVAL, 0}, /* trailing characters win over the range */
    {"0x10000000000000000k", -EINVAL, 0},
    {"99999999999999999999999x", -EINVAL, 0},
    {"18446744073709551616", -ERANGE, 0},
    {"16E", -ERANGE, 0},
    {"0x10000000000000000", -ERANGE, 0},
    {"-99999999999999999999", -ERANGE, 0},
};

static void test_parse_size(void) {
  size_t i;
  char underflow[400];
  uint64_t v;
  for (i = 0; i < sizeof kSizes / sizeof kSizes[0]; i++) {
    int r;
    v = 12345;
    r = lb_parse_size(kSizes[i].text, &v);
    if (r != kSizes[i].ret || (r >= 0 && v != kSizes[i].value) || (r < 0 && v != 12345)) {
      fprintf(stderr, "lb_parse_size(\"%s\") = %d, %llu; expected %d, %llu\n", kSizes[i].text, r,
              (unsigned long long)v, kSizes[i].ret, (unsigned long long)kSizes[i].value);
      failures++;
    }
    if (r < 0) CHECK(lb_get_errno() == -r && strstr(lb_get_error(), kSizes[i].text) != NULL);
  }
  /* a fraction below the double range: QEMU drops it and skips the next character */
  memset(underflow, '0', sizeof underflow);
  memcpy(underflow, "1.", 2);
  memcpy(underflow + 340, "1k", 3);
  CHECK(lb_parse_size(underflow, &v) == 0 && v == 1);
  underflow[341] = '\0';
  CHECK(lb_parse_size(underflow, &v) == -EINVAL);
  CHECK(lb_parse_size(NULL, &v) == -EINVAL);
  CHECK(lb_parse_size("1", NULL) == -EINVAL);
}

static int exists(const char *path) {
  struct stat st;
  return stat(path, &st) == 0;
}

static long long file_size(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 ? (long long)st.st_size : -1;
}

static void test_create_ex(void) {
  char path[192];
  lb_create_args args = LB_CREATE_ARGS_INIT;
  uint64_t size = 7;
  snprintf(path, sizeof path, "%s/new.raw", dir);
  CHECK(args.size == LB_CREATE_SIZE_UNSET && args.struct_size == sizeof(lb_create_args));
  args.filename = path;
  args.format = "raw";

  /* no size anywhere: qemu-img's message, nothing created, size_out untouched */
  CHECK(lb_create_ex(g_ctx, &args, &size) == -EINVAL);
  CHECK(strstr(lb_get_error(), "new.raw: Image creation needs a size parameter") != NULL);
  CHECK(size == 7 && !exists(path));
  args.format = "file";
  CHECK(lb_create_ex(g_ctx, &args, &size) == -EINVAL);
  CHECK(strstr(lb_get_error(), "Image creation needs a size parameter") != NULL);
  args.format = "raw";

  /* the options are checked first: an unknown one, a backing file raw cannot have */
  args.options = "bogus=1";
  CHECK(lb_create_ex(g_ctx, &args, &size) == -EINVAL);
  CHECK(strstr(lb_get_error(), "Invalid parameter 'bogus'") != NULL);
  args.options = "backing_file=base.raw,backing_fmt=raw";
  CHECK(lb_create_ex(g_ctx, &args, &size) == -ENOTSUP);
  CHECK(strstr(lb_get_error(), "Backing file not supported for file format 'raw'") != NULL);
  CHECK(size == 7 && !exists(path));

  /* the options' size, parsed as QEMU does, reported; validate-only creates nothing */
  args.options = "size=1.5M";
  args.flags = LB_CREATE_VALIDATE_ONLY;
  CHECK(lb_create_ex(g_ctx, &args, &size) == 0 && size == 1572864 && !exists(path));
  args.flags = 0;
  size = 0;
  CHECK(lb_create_ex(g_ctx, &args, &size) == 0 && size == 1572864);
  CHECK(file_size(path) == 1572864);
  unlink(path);

  /* an explicit size, NULL size_out; a "size" option overrides it (as lb_create's does) */
  args.options = NULL;
  args.size = 65536;
  CHECK(lb_create_ex(g_ctx, &args, NULL) == 0 && file_size(path) == 65536);
  unlink(path);
  args.options = "size=4k";
  CHECK(lb_create_ex(g_ctx, &args, &size) == 0 && size == 4096 && file_size(path) == 4096);
  unlink(path);

  /* bad arguments */
  args.size = -5;
  args.options = NULL;
  CHECK(lb_create_ex(g_ctx, &args, &size) == -EINVAL);
  args.size = 512;
  args.flags = 0x80;
  CHECK(lb_create_ex(g_ctx, &args, &size) == -EINVAL);
  args.flags = 0;
  args.struct_size = offsetof(lb_create_args, size);
  CHECK(lb_create_ex(g_ctx, &args, &size) == -EINVAL);
  CHECK(lb_create_ex(g_ctx, NULL, &size) == -EINVAL);
  CHECK(!exists(path));
}

/* lb_event as a binary that knew only the fields up to `result` sees it */
typedef struct short_event {
  size_t struct_size;
  uint32_t kind;
  uint32_t flags;
  void *user_data;
  int64_t result;
} short_event;

static int fd_readable(void) {
  struct pollfd p;
  p.fd = lb_get_fd(g_ctx);
  p.events = POLLIN;
  p.revents = 0;
  return poll(&p, 1, 0) == 1 && (p.revents & POLLIN);
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void test_events_and_run(void) {
  lb_backend *be = NULL;
  unsigned char buf[4096], data[3][512];
  lb_event ev[4];
  lb_completion c;
  int tags[3];
  size_t i, j;
  double t0;
  int n, rounds;
  CHECK(lb_open(g_ctx, img, "driver=raw", LB_OPEN_RDWR, &be) == 0);
  if (!be) return;

  /* a short struct_size: stride and written bytes are the caller's, guards stay */
  for (i = 0; i < 3; i++) CHECK(lb_aio_pread(be, data[i], 512, i * 512, 0, &tags[i]) == 0);
  memset(buf, GUARD, sizeof buf);
  {
    short_event first;
    memset(&first, 0, sizeof first);
    first.struct_size = sizeof(short_event); /* the stride: elements packed at this size */
    memcpy(buf, &first, sizeof first);
    n = lb_reap_events(g_ctx, 3, 3, 5000000000LL, (lb_event *)buf);
    CHECK(n == 3);
    for (i = 0; i < 3 && (int)i < n; i++) {
      short_event e;
      memcpy(&e, buf + i * sizeof(short_event), sizeof e);
      CHECK(e.struct_size == sizeof(short_event));
      CHECK(e.kind == LB_EVENT_REQUEST && e.flags == 0 && e.result == 0);
      CHECK(e.user_data == &tags[0] || e.user_data == &tags[1] || e.user_data == &tags[2]);
    }
    for (j = 3 * sizeof(short_event); j < sizeof buf; j++) CHECK(buf[j] == GUARD);
  }
  CHECK(lb_context_get_inflight(g_ctx) == 0);

  /* the full struct: reserved fields zero; lb_reap and lb_reap_events share one queue */
  CHECK(lb_aio_pwrite(be, data[0], 512, 0, 0, &tags[0]) == 0);
  CHECK(lb_aio_flush(be, 0, &tags[1]) == 0);
  CHECK(lb_reap(g_ctx, 1, 1, 5000000000LL, &c) == 1 && c.ret == 0);
  CHECK(c.user_data == &tags[0] || c.user_data == &tags[1]);
  memset(ev, 0xff, sizeof ev);
  ev[0].struct_size = sizeof(lb_event);
  CHECK(lb_reap_events(g_ctx, 1, 4, 5000000000LL, ev) == 1);
  CHECK(ev[0].struct_size == sizeof(lb_event) && ev[0].kind == LB_EVENT_REQUEST);
  CHECK(ev[0].user_data == (c.user_data == &tags[0] ? &tags[1] : &tags[0]));
  CHECK(ev[0].result == 0 && ev[0].flags == 0);
  CHECK(ev[0].reserved[0] == 0 && ev[0].reserved[3] == 0);
  CHECK(ev[1].struct_size == (size_t)-1); /* not written */
  /* a failed request's errno in `result` */
  CHECK(lb_aio_pread(be, data[0], 512, (1 << 20) - 256, 0, &tags[2]) == 0);
  CHECK(lb_reap_events(g_ctx, 1, 1, 5000000000LL, ev) == 1 && ev[0].result == -EIO &&
        ev[0].user_data == &tags[2]);

  /* lb_context_run with nothing in flight waits for the timeout (lb_reap would return at
   * once: it runs the loop only while requests are in flight) */
  t0 = now_s();
  CHECK(lb_reap(g_ctx, 1, 1, 200000000LL, &c) == 0);
  CHECK(now_s() - t0 < 0.15);
  t0 = now_s();
  CHECK(lb_context_run(g_ctx, 30000000LL) == 0);
  CHECK(now_s() - t0 >= 0.025);
  CHECK(lb_context_run(g_ctx, 0) == 0);

  /* requests driven by lb_context_run alone: their events wait, the fd says so */
  CHECK(lb_aio_pwrite(be, data[1], 512, 4096, 0, &tags[0]) == 0);
  CHECK(lb_aio_pread(be, data[2], 512, 0, 0, &tags[1]) == 0);
  /* once one event waits, lb_context_run returns at once (the fd stays readable): bound the
   * loop by time, not by rounds */
  n = 0;
  t0 = now_s();
  for (rounds = 0; n < 2 && now_s() - t0 < 20; rounds++) n = lb_context_run(g_ctx, 1000000000LL);
  CHECK(n == 2);
  CHECK(rounds >= 1);
  CHECK(lb_context_get_inflight(g_ctx) == 2); /* completed, not yet reaped */
  CHECK(fd_readable());
  ev[0].struct_size = sizeof(lb_event);
  CHECK(lb_reap_events(g_ctx, 0, 4, 0, ev) == 2);
  CHECK(lb_context_get_inflight(g_ctx) == 0);
  CHECK(memcmp(data[2], data[0], 512) == 0); /* the write before it landed */

  /* bad arguments */
  ev[0].struct_size = offsetof(lb_event, result);
  CHECK(lb_reap_events(g_ctx, 0, 1, 0, ev) == -EINVAL);
  CHECK(lb_reap_events(g_ctx, 2, 1, 0, ev) == -EINVAL);
  CHECK(lb_reap_events(NULL, 0, 1, 0, ev) == -EINVAL);
  CHECK(lb_reap_events(g_ctx, 0, 1, 0, NULL) == -EINVAL);
  CHECK(lb_reap_events(g_ctx, 0, 0, 0, NULL) == 0);
  CHECK(lb_context_run(NULL, 0) == -EINVAL);
  lb_close(be);
}

static void test_extent_node_name(void) {
  lb_backend *be = NULL;
  lb_extent ext = LB_EXTENT_INIT;
  unsigned char buf[sizeof(lb_extent) + 32];
  size_t old_size = offsetof(lb_extent, node_name), j;
  CHECK(sizeof ext.node_name == 32 && ext.node_name[0] == '\0');
  CHECK(lb_open(g_ctx, img, "driver=raw,node-name=fmt0,file.node-name=proto0", 0, &be) == 0);
  if (!be) return;
  CHECK(lb_block_status(be, 0, 4096, 0, &ext) == 0);
  CHECK(strcmp(ext.node_name, "proto0") == 0); /* raw's data lives in its file */
  CHECK(ext.filename && strcmp(ext.filename, img) == 0);

  /* a 0.1 caller's lb_extent ends before node_name: nothing is written there */
  memset(buf, GUARD, sizeof buf);
  memcpy(buf, &old_size, sizeof old_size);
  CHECK(lb_block_status(be, 0, 4096, 0, (lb_extent *)buf) == 0);
  for (j = old_size; j < sizeof buf; j++) CHECK(buf[j] == GUARD);
  lb_close(be);

  /* through a filter, the node holding the data is still the file */
  be = NULL;
  {
    char opts[256];
    snprintf(opts, sizeof opts, "driver=raw,file.driver=preallocate,file.node-name=filter0,"
             "file.file.driver=file,file.file.node-name=file0,file.file.filename=%s", img);
    CHECK(lb_open(g_ctx, NULL, opts, 0, &be) == 0);
    if (be) {
      lb_extent e2 = LB_EXTENT_INIT;
      CHECK(lb_block_status(be, 0, 4096, 0, &e2) == 0);
      CHECK(strcmp(e2.node_name, "file0") == 0);
      lb_close(be);
    }
  }
}

int main(void) {
  snprintf(dir, sizeof dir, "/tmp/lb-abi02-XXXXXX");
  if (!mkdtemp(dir)) return 1;
  snprintf(img, sizeof img, "%s/disk.raw", dir);
  CHECK(lb_context_new(0, &g_ctx) == 0);
  CHECK(lb_create(g_ctx, img, "raw", NULL, 1 << 20, 0) == 0);

  test_create_options_stride();
  test_parse_size();
  test_create_ex();
  test_events_and_run();
  test_extent_node_name();

  lb_context_free(g_ctx);
  unlink(img);
  rmdir(dir);
  return check_report("abi02");
}
