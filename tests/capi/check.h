/* The C ABI tests' check macro: a failed CHECK prints the condition and lb_get_error() and
 * counts, without stopping the test; check_report() turns the count into the exit code. */
#ifndef LIBBLOCK_TESTS_CAPI_CHECK_H_
#define LIBBLOCK_TESTS_CAPI_CHECK_H_

#include <stdio.h>

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

/* main's exit code: 1 when a check failed, else 0 (with "NAME: all checks passed"). */
static inline int check_report(const char *name) {
  if (failures) {
    fprintf(stderr, "%d check(s) failed\n", failures);
    return 1;
  }
  printf("%s: all checks passed\n", name);
  return 0;
}

#endif /* LIBBLOCK_TESTS_CAPI_CHECK_H_ */
