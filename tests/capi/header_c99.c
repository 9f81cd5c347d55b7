/* libblock.h must compile alone as C99 with -pedantic -Werror (built with those flags). */
#include "libblock.h"

int main(void) {
  lb_extent e = LB_EXTENT_INIT;
  return (int)e.struct_size == 0;
}
