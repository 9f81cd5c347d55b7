// The blklogwrites filter (QEMU's block/blklogwrites.c by behaviour and options): passes every
// request to its file and records each write (with its data), write-zeroes, discard and flush
// that reached the file, in completion order, into a second child, the log, in the Linux
// dm-log-writes format (log_format.h).
#ifndef LIBBLOCK_FILTERS_BLKLOGWRITES_BLKLOGWRITES_DRIVER_H_
#define LIBBLOCK_FILTERS_BLKLOGWRITES_BLKLOGWRITES_DRIVER_H_

#include "core/driver.h"

namespace libblock::blklogwrites {

extern const Driver kDriver;

}  // namespace libblock::blklogwrites

#endif  // LIBBLOCK_FILTERS_BLKLOGWRITES_BLKLOGWRITES_DRIVER_H_
