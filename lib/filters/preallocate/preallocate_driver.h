// The preallocate filter: grows its file in big steps ahead of the data written past its end.
#ifndef LIBBLOCK_FILTERS_PREALLOCATE_PREALLOCATE_DRIVER_H_
#define LIBBLOCK_FILTERS_PREALLOCATE_PREALLOCATE_DRIVER_H_

#include "core/driver.h"

namespace libblock::preallocate {

extern const Driver kDriver;

}  // namespace libblock::preallocate

#endif  // LIBBLOCK_FILTERS_PREALLOCATE_PREALLOCATE_DRIVER_H_
