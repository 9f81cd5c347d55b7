// libblock.h must compile alone as C++ too.
#include "libblock.h"

int main() {
  lb_extent e = LB_EXTENT_INIT;
  return e.struct_size == 0;
}
