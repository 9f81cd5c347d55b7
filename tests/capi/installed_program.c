/* Built against the installed libblock by check_install.sh. */
#include <stdio.h>

#include "libblock.h"

int main(void) {
  lb_context *ctx = NULL;
  if (lb_context_new(0, &ctx) != 0) return 1;
  printf("%s\n", lb_version());
  lb_context_free(ctx);
  return 0;
}
