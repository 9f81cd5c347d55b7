// Image locking compatible with QEMU's file-posix: byte-range read locks on the image file.
//
//   byte 100 + i  locked  =  "I hold permission bit i"
//   byte 200 + i  locked  =  "I do not share permission bit i"
//
// for i = bit index of consistent-read (0), write (1), write-unchanged (2), resize (3). Every
// lock is a shared (F_RDLCK) lock; conflicts are found by testing whether an exclusive lock
// could be taken: holding bit i conflicts with anyone's byte 200+i, not sharing bit i
// conflicts with anyone's byte 100+i. Bytes 104/204 (QEMU's retired graph-mod bit) are never
// touched. OFD locks belong to the open file description, so two opens in one process
// conflict exactly as two processes do; POSIX locks (the fallback) belong to the process and
// are silently dropped when any descriptor of the file is closed.
#ifndef LIBBLOCK_PROTOCOLS_FILE_FILE_LOCK_H_
#define LIBBLOCK_PROTOCOLS_FILE_FILE_LOCK_H_

#include <optional>
#include <string_view>

#include "absl/status/status.h"
#include "core/perm.h"

namespace libblock::file {

inline constexpr int kLockPermBase = 100;
inline constexpr int kLockSharedBase = 200;

enum class LockKind { kOfd, kPosix };

// Whether the kernel offers OFD locks (probed once).
bool OfdLocksAvailable();
// Tests force the POSIX fallback with false; nullopt restores probing.
void OverrideOfdLocksForTesting(std::optional<bool> available);

// Locks byte 100+i for every bit in `held` and 200+i for every bit in `unshared`; with
// `unlock`, releases the bytes of the other bits. Fails with the byte that could not be locked.
absl::Status ApplyLockBytes(int fd, LockKind kind, Perm held, Perm unshared, bool unlock);

// Fails with QEMU's wording when another holder conflicts with holding `perm` while sharing
// only `shared`: Failed to get "write" lock / Failed to get shared "write" lock.
absl::Status CheckLockBytes(int fd, LockKind kind, Perm perm, Perm shared);

}  // namespace libblock::file

#endif  // LIBBLOCK_PROTOCOLS_FILE_FILE_LOCK_H_
