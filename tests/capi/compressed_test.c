/* LB_REQ_COMPRESSED (0.3) and lb_check through libblock.so: a qcow2 cluster written compressed
 * reads back and counts as a compressed cluster in the check; partial clusters fail with
 * -EINVAL, formats that cannot compress with -ENOTSUP, unknown flags stay refused. */
#define _DEFAULT_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "libblock.h"
#include "check.h"

int main(void) {
  char dir[] = "/tmp/lb-compressed-XXXXXX";
  if (!mkdtemp(dir)) return 1;
  char qcow2[256], raw[256];
  snprintf(qcow2, sizeof qcow2, "%s/c.qcow2", dir);
  snprintf(raw, sizeof raw, "%s/c.raw", dir);
  enum { kCluster = 65536 };
  static unsigned char buf[2 * kCluster], back[2 * kCluster];
  for (int i = 0; i < 2 * kCluster; ++i) buf[i] = (unsigned char)("libblock"[i % 8] + i / 4096);

  lb_context *ctx = NULL;
  CHECK(lb_context_new(0, &ctx) == 0);
  if (!ctx) return 1;
  /* The formats that compress: qcow2, and not raw. */
  char *list = lb_driver_list(ctx, LB_DRIVER_FORMATS | LB_DRIVER_COMPRESSED);
  CHECK(list != NULL);
  if (list) {
    CHECK(strstr(list, "qcow2") != NULL);
    CHECK(strstr(list, "raw") == NULL);
    lb_free(list);
  }
  CHECK(lb_create(ctx, qcow2, "qcow2", NULL, 4 * kCluster, 0) == 0);
  CHECK(lb_create(ctx, raw, "raw", NULL, 4 * kCluster, 0) == 0);

  lb_backend *be = NULL;
  CHECK(lb_open(ctx, qcow2, "driver=qcow2", LB_OPEN_RDWR, &be) == 0);
  if (be) {
    CHECK(lb_pwrite(be, buf, 2 * kCluster, kCluster, LB_REQ_COMPRESSED) == 0);
    CHECK(lb_pread(be, back, 2 * kCluster, kCluster, 0) == 0);
    CHECK(memcmp(buf, back, sizeof buf) == 0);
    /* Not a whole cluster. */
    CHECK(lb_pwrite(be, buf, 4096, 0, LB_REQ_COMPRESSED) == -EINVAL);
    /* Compression is for writes only; unknown bits stay refused. */
    CHECK(lb_pread(be, back, kCluster, 0, LB_REQ_COMPRESSED) == -EINVAL);
    CHECK(lb_pwrite(be, buf, kCluster, 0, 0x80000000u) == -EINVAL);
    CHECK(lb_close(be) == 0);
  }
  lb_open_args args = LB_OPEN_ARGS_INIT;
  args.filename = qcow2;
  args.format = "qcow2";
  lb_check_result res = LB_CHECK_RESULT_INIT;
  CHECK(lb_check(ctx, &args, 0, NULL, NULL, &res) == 0);
  CHECK(res.corruptions == 0 && res.leaks == 0 && res.check_errors == 0);
  CHECK(res.compressed_clusters == 2);
  CHECK(res.allocated_clusters == 2);

  be = NULL;
  CHECK(lb_open(ctx, raw, "driver=raw", LB_OPEN_RDWR, &be) == 0);
  if (be) {
    CHECK(lb_pwrite(be, buf, kCluster, 0, LB_REQ_COMPRESSED) == -ENOTSUP);
    CHECK(lb_close(be) == 0);
  }
  lb_context_free(ctx);
  unlink(qcow2);
  unlink(raw);
  rmdir(dir);
  return check_report("compressed");
}
