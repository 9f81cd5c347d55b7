#include "core/co_sync.h"

#include <cstdlib>

namespace libblock {
namespace {

void ScheduleOnCurrentLoop(std::coroutine_handle<> h) {
  EventLoop* loop = EventLoop::Current();
  // Locks are only touched from coroutines, which only run inside a loop.
  if (!loop) std::abort();
  loop->Schedule(h);
}

}  // namespace

bool CoQueue::WakeOne() {
  Awaiter* a = head_;
  if (!a) return false;
  head_ = a->next;
  if (!head_) tail_ = nullptr;
  --size_;
  ScheduleOnCurrentLoop(a->handle);  // `a` may be gone once its coroutine runs
  return true;
}

bool CoQueue::WakeAll() {
  bool any = head_ != nullptr;
  while (WakeOne()) {
  }
  return any;
}

Task<CoMutex::Guard> CoMutex::ScopedLock() {
  co_await Lock();
  co_return Guard(this);
}

bool CoMutex::TryLock() {
  if (locked_) return false;
  locked_ = true;
  return true;
}

void CoMutex::Unlock() {
  if (waiters_.empty()) {
    locked_ = false;
    return;
  }
  // Hand the lock straight to the first waiter: it stays locked across the hand-over.
  std::coroutine_handle<> h = waiters_.front();
  waiters_.pop_front();
  ScheduleOnCurrentLoop(h);
}

bool CoRwLock::TryAcquire(bool write) {
  if (write) {
    if (writer_ || readers_ > 0 || !waiters_.empty()) return false;
    writer_ = true;
    return true;
  }
  if (writer_ || !waiters_.empty()) return false;
  ++readers_;
  return true;
}

void CoRwLock::Unlock() {
  if (writer_) {
    writer_ = false;
  } else if (readers_ > 0) {
    --readers_;
  }
  Grant();
}

void CoRwLock::Grant() {
  // Wake the head of the queue if it can run; consecutive readers are woken together.
  while (!waiters_.empty()) {
    Waiter w = waiters_.front();
    if (w.write) {
      if (writer_ || readers_ > 0) return;
      writer_ = true;
      waiters_.pop_front();
      ScheduleOnCurrentLoop(w.h);
      return;
    }
    if (writer_) return;
    ++readers_;
    waiters_.pop_front();
    ScheduleOnCurrentLoop(w.h);
  }
}

}  // namespace libblock
