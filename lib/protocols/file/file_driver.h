// The "file" and "host_device" protocols (QEMU's file-posix): regular files and block devices.
#ifndef LIBBLOCK_PROTOCOLS_FILE_FILE_DRIVER_H_
#define LIBBLOCK_PROTOCOLS_FILE_FILE_DRIVER_H_

#include "core/driver.h"

namespace libblock::file {

extern const Driver kFileDriver;
extern const Driver kHostDeviceDriver;

}  // namespace libblock::file

#endif  // LIBBLOCK_PROTOCOLS_FILE_FILE_DRIVER_H_
