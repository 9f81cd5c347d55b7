// The "file" and "host_device" protocols (QEMU's file-posix): regular files and block devices.
#ifndef LIBBLOCK_PROTOCOLS_FILE_FILE_DRIVER_H_
#define LIBBLOCK_PROTOCOLS_FILE_FILE_DRIVER_H_

#include <sys/types.h>
#include <sys/uio.h>

#include <cstdint>

#include "core/driver.h"

namespace libblock::file {

extern const Driver kFileDriver;
extern const Driver kHostDeviceDriver;

namespace internal {

// The system calls of the inline (non-blocking) transfer path. Tests replace them to
// simulate would-block, short transfers and descriptors without RWF_NOWAIT; nothing else
// should. Not thread-safe: replace them only while no loop runs I/O.
struct FileSyscalls {
  ssize_t (*preadv2)(int fd, const struct iovec* iov, int iovcnt, off_t offset, int flags);
  ssize_t (*pwritev2)(int fd, const struct iovec* iov, int iovcnt, off_t offset, int flags);
  // One buffer without flags (a memory file system).
  ssize_t (*pread)(int fd, void* buf, size_t count, off_t offset);
  ssize_t (*pwrite)(int fd, const void* buf, size_t count, off_t offset);
};
FileSyscalls& FileSyscallsForTest();

// How transfers went, for every file node in the process (tests read them; plain counters,
// exact only while one thread does I/O). A transfer is one driver read or write.
struct FileIoStats {
  uint64_t inline_transfers = 0;   // done entirely on the loop thread
  uint64_t partial_transfers = 0;  // begun inline, finished asynchronously
  uint64_t async_transfers = 0;    // through io_uring or the worker pool (partial ones included)
};
FileIoStats& FileIoStatsForTest();

}  // namespace internal

}  // namespace libblock::file

#endif  // LIBBLOCK_PROTOCOLS_FILE_FILE_DRIVER_H_
