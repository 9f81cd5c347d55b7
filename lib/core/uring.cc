#include "core/uring.h"

#include <algorithm>
#include <cerrno>

#include "util/status.h"

namespace libblock {

#if LIBBLOCK_HAVE_IO_URING

absl::StatusOr<std::unique_ptr<Uring>> Uring::Create(unsigned entries) {
  std::unique_ptr<Uring> u(new Uring());
  int ret = io_uring_queue_init(entries, &u->ring_, 0);
  if (ret < 0) return ErrnoStatus(-ret, "io_uring_queue_init");
  u->initialized_ = true;
  u->cq_entries_ = u->ring_.cq.ring_entries;
  if (struct io_uring_probe* probe = io_uring_get_probe_ring(&u->ring_)) {
    u->has_fallocate_ = io_uring_opcode_supported(probe, IORING_OP_FALLOCATE);
    bool has_rw = io_uring_opcode_supported(probe, IORING_OP_READV) &&
                  io_uring_opcode_supported(probe, IORING_OP_WRITEV) &&
                  io_uring_opcode_supported(probe, IORING_OP_FSYNC);
    io_uring_free_probe(probe);
    if (!has_rw) return ErrnoError(ENOSYS, "io_uring lacks readv/writev/fsync");
  }
  return u;
}

Uring::~Uring() {
  if (initialized_) io_uring_queue_exit(&ring_);
}

int Uring::fd() const { return ring_.ring_fd; }

void Uring::RwOp::Prepare(struct io_uring_sqe* sqe) {
  if (write) {
    io_uring_prep_writev(sqe, fd, iov, static_cast<unsigned>(niov), static_cast<uint64_t>(offset));
  } else {
    io_uring_prep_readv(sqe, fd, iov, static_cast<unsigned>(niov), static_cast<uint64_t>(offset));
  }
  sqe->rw_flags = flags;
}

void Uring::FsyncOp::Prepare(struct io_uring_sqe* sqe) {
  io_uring_prep_fsync(sqe, fd, datasync ? IORING_FSYNC_DATASYNC : 0);
}

void Uring::FallocateOp::Prepare(struct io_uring_sqe* sqe) {
  io_uring_prep_fallocate(sqe, fd, mode, static_cast<uint64_t>(offset), static_cast<uint64_t>(len));
}

bool Uring::PrepareOne(Op* op) {
  // Never have more operations in flight than the completion queue holds: completions past
  // that go to the kernel's overflow list, which peeking the ring never flushes.
  if (in_flight_ >= static_cast<int>(cq_entries_)) return false;
  struct io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
  if (!sqe) return false;
  op->Prepare(sqe);
  io_uring_sqe_set_data(sqe, op);
  ++unsubmitted_;
  ++in_flight_;
  return true;
}

void Uring::Queue(Op* op) {
  if (overflow_.empty() && PrepareOne(op)) return;
  // The submission queue is full: submit what is there and try once more before parking
  // the op until completions free space.
  if (overflow_.empty()) {
    Submit();
    if (PrepareOne(op)) return;
  }
  overflow_.push_back(op);
}

int Uring::Submit() {
  while (!overflow_.empty() && PrepareOne(overflow_.front())) overflow_.pop_front();
  if (unsubmitted_ == 0) return 0;
  int ret;
  do {
    ret = io_uring_submit(&ring_);
  } while (ret == -EINTR);
  if (ret > 0) unsubmitted_ -= std::min(ret, unsubmitted_);
  return ret;
}

int Uring::Reap() {
  // Collect first, then resume: a resumed coroutine may queue new SQEs or even run a nested
  // loop iteration, which must not see CQEs we are still holding. Batches on the stack (no
  // allocation per iteration); a nested iteration takes whatever the batch left.
  struct Completion {
    Op* op;
    int res;
  };
  constexpr unsigned kBatch = 64;
  int total = 0;
  for (;;) {
    Completion done[kBatch];
    unsigned n = 0;
    struct io_uring_cqe* cqe;
    unsigned head;
    io_uring_for_each_cqe(&ring_, head, cqe) {
      done[n++] = {static_cast<Op*>(io_uring_cqe_get_data(cqe)), cqe->res};
      if (n == kBatch) break;
    }
    if (n == 0) break;
    io_uring_cq_advance(&ring_, n);
    in_flight_ -= static_cast<int>(n);
    total += static_cast<int>(n);
    // Room in the completion queue again: prepare parked operations (submitted by the loop).
    while (!overflow_.empty() && PrepareOne(overflow_.front())) overflow_.pop_front();
    for (unsigned i = 0; i < n; ++i) {
      done[i].op->result = done[i].res;
      done[i].op->waiter.resume();
    }
    if (n < kBatch) break;
  }
  return total;
}

#else  // !LIBBLOCK_HAVE_IO_URING

absl::StatusOr<std::unique_ptr<Uring>> Uring::Create(unsigned) {
  return ErrnoError(ENOSYS, "libblock was built without io_uring");
}
Uring::~Uring() = default;
int Uring::fd() const { return -1; }
int Uring::Submit() { return 0; }
int Uring::Reap() { return 0; }
void Uring::Queue(Op*) { std::abort(); }
bool Uring::PrepareOne(Op*) { return false; }

#endif

}  // namespace libblock
