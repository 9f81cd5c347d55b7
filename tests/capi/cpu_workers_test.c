/* lb_context_set_cpu_workers (LIBBLOCK_0.2), through libblock.so only: the default is the
 * number of online CPUs, an explicit size is taken as given, and bad arguments fail with
 * -EINVAL and a message. */
#define _DEFAULT_SOURCE
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "libblock.h"

static int failures = 0;
#define CHECK(cond)                                                                \
  do {                                                                             \
    if (!(cond)) {                                                                 \
      fprintf(stderr, "%s:%d: CHECK(%s) failed; lb_get_error: %s\n", __FILE__,     \
              __LINE__, #cond, lb_get_error());                                    \
      failures++;                                                                  \
    }                                                                              \
  } while (0)

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
  if (failures) {
    fprintf(stderr, "%d check(s) failed\n", failures);
    return 1;
  }
  printf("ok\n");
  return 0;
}
