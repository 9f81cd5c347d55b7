/* lb_context_set_cpu_workers (LIBBLOCK_0.2), through libblock.so only: the default is the
 * number of online CPUs, an explicit size is taken as given, and bad arguments fail with
 * -EINVAL and a message. */
#define _DEFAULT_SOURCE
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "libblock.h"
#include "check.h"


int main(void) {
  lb_context *ctx = NULL;
  long cpus = sysconf(_SC_NPROCESSORS_ONLN);
  CHECK(lb_context_new(0, &ctx) == 0);
  if (!ctx) return 1;
  CHECK(lb_context_set_cpu_workers(ctx, 3) == 3);
  CHECK(lb_context_set_cpu_workers(ctx, 1) == 1);
  CHECK(lb_context_set_cpu_workers(ctx, 0) == (int)(cpus > 0 ? cpus : 1));
  CHECK(lb_context_set_cpu_workers(ctx, 1024) == 1024);
  CHECK(lb_context_set_cpu_workers(ctx, 1025) == -EINVAL);
  CHECK(lb_get_errno() == EINVAL);
  CHECK(strstr(lb_get_error(), "1024") != NULL);
  CHECK(lb_context_set_cpu_workers(NULL, 2) == -EINVAL);
  /* The context still works after resizing. */
  CHECK(lb_context_set_cpu_workers(ctx, 2) == 2);
  CHECK(lb_context_get_inflight(ctx) == 0);
  lb_context_free(ctx);
  return check_report("cpu_workers");
}
