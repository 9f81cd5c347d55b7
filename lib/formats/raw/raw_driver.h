// The raw format: the image is the guest disk, optionally a window [offset, offset+size) of it.
#ifndef LIBBLOCK_FORMATS_RAW_RAW_DRIVER_H_
#define LIBBLOCK_FORMATS_RAW_RAW_DRIVER_H_

#include "core/driver.h"

namespace libblock::raw {

extern const Driver kDriver;

// raw's probe: the lowest positive score, so raw is chosen only when no format claims an image.
int Probe(const uint8_t* buf, size_t len, std::string_view filename);

}  // namespace libblock::raw

#endif  // LIBBLOCK_FORMATS_RAW_RAW_DRIVER_H_
