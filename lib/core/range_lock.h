// RangeLock: coroutine-side locking of byte ranges, with its own granularity and ranges that
// can be widened while held (QEMU's tracked requests and "serialising request widened to the
// cluster", as qcow2 needs for cluster-granular allocation).
//
// A range is shared or exclusive. Two ranges conflict when they overlap and at least one is
// exclusive. Entering a range (Add) never waits; Wait then suspends until no conflicting range
// stands in the way:
//   * an earlier range (entered before this one) always stands in the way;
//   * a later range stands in the way only while it is running (it passed its own Wait and has
//     not re-entered waiting since, by widening).
// Waits therefore only point at earlier ranges or at running ones, and a running range waits
// for nothing, so there are no wait cycles: when a running range widens, it becomes waiting
// and wakes the ranges waiting for it, which then stop counting it.
//
// Every range is aligned out to the lock's granularity when it is entered (the node request
// tracker uses granularity 1 and aligns its requests itself). Widen aligns an entered range out
// to a coarser granularity and makes it exclusive; the holder then Waits again.
//
// Offsets are a strong type (GuestOffset for a node's request ranges, HostOffset for ranges of
// a file a format allocates in). Single-threaded: one loop's coroutines only.
#ifndef LIBBLOCK_CORE_RANGE_LOCK_H_
#define LIBBLOCK_CORE_RANGE_LOCK_H_

#include <cerrno>
#include <cstdint>
#include <list>

#include "absl/status/status.h"
#include "core/co_sync.h"
#include "core/offset.h"
#include "core/task.h"
#include "util/status.h"

namespace libblock {

template <typename Offset>
class RangeLock {
 public:
  // One entered range. It leaves the lock when released or destroyed (waking whoever waits
  // for it). Not movable: the lock points at it.
  class Range {
   public:
    Range() = default;
    ~Range() { Release(); }
    Range(const Range&) = delete;
    Range& operator=(const Range&) = delete;

    bool entered() const { return lock_ != nullptr; }
    Offset offset() const { return Offset(start_); }
    int64_t bytes() const { return end_ - start_; }
    bool exclusive() const { return exclusive_; }
    // Passed its Wait (and has not widened since).
    bool running() const { return running_; }

    void Release() {
      if (!lock_) return;
      lock_->ranges_.erase(it_);
      if (exclusive_) --lock_->exclusive_count_;
      lock_ = nullptr;
      running_ = false;
      waiters_.WakeAll();
    }

   private:
    friend class RangeLock;
    RangeLock* lock_ = nullptr;
    typename std::list<Range*>::iterator it_;
    int64_t start_ = 0, end_ = 0;
    bool exclusive_ = false;
    bool running_ = false;
    uint64_t seq_ = 0;
    CoQueue waiters_;  // ranges waiting for this one
  };

  explicit RangeLock(int64_t granularity = 1) : granularity_(granularity) {}
  RangeLock(const RangeLock&) = delete;
  RangeLock& operator=(const RangeLock&) = delete;

  int64_t granularity() const { return granularity_; }
  size_t size() const { return ranges_.size(); }
  bool has_exclusive() const { return exclusive_count_ > 0; }

  // Enters [offset, offset + bytes), aligned out to the granularity, without waiting.
  void Add(Range& r, Offset offset, int64_t bytes, bool exclusive) {
    r.Release();
    r.lock_ = this;
    r.start_ = offset.AlignDown(granularity_).value();
    r.end_ = (offset + bytes).AlignUp(granularity_).value();
    r.exclusive_ = exclusive;
    r.running_ = false;
    r.seq_ = next_seq_++;
    if (exclusive) ++exclusive_count_;
    r.it_ = ranges_.insert(ranges_.end(), &r);
  }

  // Suspends until no conflicting range stands in the way of `r` (see the top of the file);
  // with `no_wait`, fails with EBUSY instead of waiting.
  Task<absl::Status> Wait(Range& r, bool no_wait = false) {
    for (;;) {
      Range* blocker = exclusive_count_ == 0 ? nullptr : FindBlocker(r);
      if (!blocker) break;
      if (no_wait) co_return ErrnoError(EBUSY, "an overlapping request is in flight");
      co_await blocker->waiters_.Wait();
    }
    r.running_ = true;
    co_return absl::OkStatus();
  }

  // Wait without suspending: true (and `r` is running) when nothing stands in its way now.
  // Lets a caller that usually finds the lock free skip a coroutine frame.
  bool TryWait(Range& r) {
    if (exclusive_count_ != 0 && FindBlocker(r)) return false;
    r.running_ = true;
    return true;
  }

  // Add, then Wait.
  Task<absl::Status> Lock(Range& r, Offset offset, int64_t bytes, bool exclusive,
                          bool no_wait = false) {
    Add(r, offset, bytes, exclusive);
    co_return co_await Wait(r, no_wait);
  }

  // Aligns the entered range `r` out to `granularity` (e.g. a cluster) and makes it exclusive.
  // `r` is waiting again: call Wait before touching the widened range.
  void Widen(Range& r, int64_t granularity) {
    if (!r.lock_) return;
    r.start_ = Offset(r.start_).AlignDown(granularity).value();
    r.end_ = Offset(r.end_).AlignUp(granularity).value();
    if (!r.exclusive_) {
      r.exclusive_ = true;
      ++exclusive_count_;
    }
    if (r.running_) {
      r.running_ = false;
      // Ranges waiting for us may now stop counting us (we no longer run): let them look again.
      r.waiters_.WakeAll();
    }
  }

 private:
  Range* FindBlocker(const Range& r) const {
    for (Range* o : ranges_) {
      if (o == &r) continue;
      if (!o->exclusive_ && !r.exclusive_) continue;
      if (o->seq_ > r.seq_ && !o->running_) continue;
      if (o->start_ < r.end_ && r.start_ < o->end_) return o;
    }
    return nullptr;
  }

  int64_t granularity_;
  std::list<Range*> ranges_;
  int exclusive_count_ = 0;
  uint64_t next_seq_ = 1;
};

}  // namespace libblock

#endif  // LIBBLOCK_CORE_RANGE_LOCK_H_
