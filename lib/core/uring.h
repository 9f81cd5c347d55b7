// Uring: the loop's io_uring ring (liburing). File I/O is submitted here in batches: SQEs are
// prepared as coroutines suspend, submitted once per loop iteration, and each completion
// resumes the coroutine that issued it with the raw result (bytes or -errno).
#ifndef LIBBLOCK_CORE_URING_H_
#define LIBBLOCK_CORE_URING_H_

#include <sys/uio.h>

#include <coroutine>
#include <cstdint>
#include <deque>
#include <memory>

#include "absl/status/statusor.h"
#include "libblock_config.h"

#if LIBBLOCK_HAVE_IO_URING
#include <liburing.h>
#endif

namespace libblock {

class Uring {
 public:
  // Fails (and the loop falls back to the worker pool) when built without liburing or when
  // the kernel refuses to create a ring.
  static absl::StatusOr<std::unique_ptr<Uring>> Create(unsigned entries);
  ~Uring();

  int fd() const;
  bool SupportsFallocate() const { return has_fallocate_; }

  // Submits prepared SQEs. Returns the number submitted (or -errno).
  int Submit();
  // Resumes the coroutines of all available completions. Returns how many were reaped.
  int Reap();
  int in_flight() const { return in_flight_; }
  bool has_unsubmitted() const { return unsubmitted_ > 0 || !overflow_.empty(); }

  // One operation, awaited by a coroutine. Subclasses say how to fill the SQE.
  struct Op {
    virtual ~Op() = default;
#if LIBBLOCK_HAVE_IO_URING
    virtual void Prepare(struct io_uring_sqe* sqe) = 0;
#endif
    std::coroutine_handle<> waiter;
    int result = 0;
  };

  // Awaitables; each yields the CQE result: >= 0 on success, -errno on failure.
  auto Readv(int fd, const struct iovec* iov, int niov, int64_t offset, int rw_flags = 0) {
    return Awaiter<RwOp>(this, RwOp(/*write=*/false, fd, iov, niov, offset, rw_flags));
  }
  auto Writev(int fd, const struct iovec* iov, int niov, int64_t offset, int rw_flags = 0) {
    return Awaiter<RwOp>(this, RwOp(/*write=*/true, fd, iov, niov, offset, rw_flags));
  }
  auto Fsync(int fd, bool datasync) { return Awaiter<FsyncOp>(this, FsyncOp(fd, datasync)); }
  auto Fallocate(int fd, int mode, int64_t offset, int64_t len) {
    return Awaiter<FallocateOp>(this, FallocateOp(fd, mode, offset, len));
  }

 private:
  struct RwOp : Op {
    RwOp(bool w, int f, const struct iovec* v, int n, int64_t o, int fl)
        : write(w), fd(f), iov(v), niov(n), offset(o), flags(fl) {}
#if LIBBLOCK_HAVE_IO_URING
    void Prepare(struct io_uring_sqe* sqe) override;
#endif
    bool write;
    int fd;
    const struct iovec* iov;
    int niov;
    int64_t offset;
    int flags;
  };
  struct FsyncOp : Op {
    FsyncOp(int f, bool d) : fd(f), datasync(d) {}
#if LIBBLOCK_HAVE_IO_URING
    void Prepare(struct io_uring_sqe* sqe) override;
#endif
    int fd;
    bool datasync;
  };
  struct FallocateOp : Op {
    FallocateOp(int f, int m, int64_t o, int64_t l) : fd(f), mode(m), offset(o), len(l) {}
#if LIBBLOCK_HAVE_IO_URING
    void Prepare(struct io_uring_sqe* sqe) override;
#endif
    int fd, mode;
    int64_t offset, len;
  };

  template <typename O>
  struct Awaiter {
    Awaiter(Uring* r, O o) : ring(r), op(std::move(o)) {}
    bool await_ready() const noexcept { return false; }
    void await_suspend(std::coroutine_handle<> h) {
      op.waiter = h;
      ring->Queue(&op);
    }
    int await_resume() const noexcept { return op.result; }
    Uring* ring;
    O op;
  };

  Uring() = default;
  void Queue(Op* op);
  bool PrepareOne(Op* op);

#if LIBBLOCK_HAVE_IO_URING
  struct io_uring ring_;
#endif
  bool initialized_ = false;
  unsigned cq_entries_ = 0;
  bool has_fallocate_ = false;
  int unsubmitted_ = 0;
  int in_flight_ = 0;
  std::deque<Op*> overflow_;  // ops waiting for a free SQE or completion slot
};

}  // namespace libblock

#endif  // LIBBLOCK_CORE_URING_H_
