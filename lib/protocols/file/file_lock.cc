#include "protocols/file/file_lock.h"

#include <fcntl.h>
#include <paths.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <mutex>

#include "absl/strings/str_format.h"
#include "util/status.h"

namespace libblock::file {
namespace {

std::atomic<int> ofd_override{-1};  // -1: probe, 0/1: forced

int LockCommand(LockKind kind, bool test) {
  if (kind == LockKind::kOfd) return test ? F_OFD_GETLK : F_OFD_SETLK;
  return test ? F_GETLK : F_SETLK;
}

// Sets (or clears, with F_UNLCK) a one-byte lock at `offset`. Returns 0 or -errno.
int LockByte(int fd, LockKind kind, int offset, short type) {
  struct flock fl = {};
  fl.l_whence = SEEK_SET;
  fl.l_start = offset;
  fl.l_len = 1;
  fl.l_type = type;
  fl.l_pid = 0;  // required for OFD locks
  int ret;
  do {
    ret = fcntl(fd, LockCommand(kind, false), &fl);
  } while (ret < 0 && errno == EINTR);
  return ret < 0 ? -errno : 0;
}

// 0 if an exclusive lock on the byte could be taken (nobody else holds it), -EAGAIN if not,
// -errno if the test itself failed.
int TestByte(int fd, LockKind kind, int offset) {
  struct flock fl = {};
  fl.l_whence = SEEK_SET;
  fl.l_start = offset;
  fl.l_len = 1;
  fl.l_type = F_WRLCK;
  fl.l_pid = 0;
  int ret;
  do {
    ret = fcntl(fd, LockCommand(kind, true), &fl);
  } while (ret < 0 && errno == EINTR);
  if (ret < 0) return -errno;
  return fl.l_type == F_UNLCK ? 0 : -EAGAIN;
}

}  // namespace

bool OfdLocksAvailable() {
  int forced = ofd_override.load();
  if (forced >= 0) return forced == 1;
  static const bool available = [] {
    int fd = open(_PATH_DEVNULL, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return false;
    struct flock fl = {};
    fl.l_whence = SEEK_SET;
    fl.l_type = F_RDLCK;
    bool ok = fcntl(fd, F_OFD_GETLK, &fl) == 0 || errno != EINVAL;
    close(fd);
    return ok;
  }();
  return available;
}

void OverrideOfdLocksForTesting(std::optional<bool> available) {
  ofd_override.store(available ? (*available ? 1 : 0) : -1);
}

absl::Status ApplyLockBytes(int fd, LockKind kind, Perm held, Perm unshared, bool unlock) {
  for (int i = 0; i < kPermBits; ++i) {
    Perm bit = Perm{1} << i;
    int off = kLockPermBase + i;
    if (held & bit) {
      if (int r = LockByte(fd, kind, off, F_RDLCK); r < 0) {
        return ErrnoStatus(-r, absl::StrFormat("Failed to lock byte %d", off));
      }
    } else if (unlock) {
      if (int r = LockByte(fd, kind, off, F_UNLCK); r < 0) {
        return ErrnoStatus(-r, absl::StrFormat("Failed to unlock byte %d", off));
      }
    }
    off = kLockSharedBase + i;
    if (unshared & bit) {
      if (int r = LockByte(fd, kind, off, F_RDLCK); r < 0) {
        return ErrnoStatus(-r, absl::StrFormat("Failed to lock byte %d", off));
      }
    } else if (unlock) {
      if (int r = LockByte(fd, kind, off, F_UNLCK); r < 0) {
        return ErrnoStatus(-r, absl::StrFormat("Failed to unlock byte %d", off));
      }
    }
  }
  return absl::OkStatus();
}

absl::Status CheckLockBytes(int fd, LockKind kind, Perm perm, Perm shared) {
  for (int i = 0; i < kPermBits; ++i) {
    Perm bit = Perm{1} << i;
    if (perm & bit) {
      if (int r = TestByte(fd, kind, kLockSharedBase + i); r < 0) {
        std::string msg = absl::StrFormat("Failed to get \"%s\" lock", PermNames(bit));
        return r == -EAGAIN ? ErrnoError(EAGAIN, msg) : ErrnoStatus(-r, msg);
      }
    }
    if (!(shared & bit)) {
      if (int r = TestByte(fd, kind, kLockPermBase + i); r < 0) {
        std::string msg = absl::StrFormat("Failed to get shared \"%s\" lock", PermNames(bit));
        return r == -EAGAIN ? ErrnoError(EAGAIN, msg) : ErrnoStatus(-r, msg);
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace libblock::file
