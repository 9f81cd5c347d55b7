// The null-co and null-aio protocols: a disk of a given size that stores nothing, for tests
// and benchmarks (QEMU's block/null.c by behaviour).
#ifndef LIBBLOCK_PROTOCOLS_NULL_NULL_DRIVER_H_
#define LIBBLOCK_PROTOCOLS_NULL_NULL_DRIVER_H_

#include "core/driver.h"

namespace libblock::null {

extern const Driver kNullCoDriver;
extern const Driver kNullAioDriver;

}  // namespace libblock::null

#endif  // LIBBLOCK_PROTOCOLS_NULL_NULL_DRIVER_H_
