// Coroutine-aware locks and wait queues (QEMU's CoMutex, CoRwlock, CoQueue).
//
// All of them are loop-affine: the coroutines that use one object run on one EventLoop
// thread. Waking never resumes a waiter inline; it is scheduled on the current loop, so an
// Unlock() deep inside one coroutine cannot recurse into another. Ownership is handed over
// in FIFO order, so a steady stream of new lockers cannot starve an earlier waiter.
#ifndef LIBBLOCK_CORE_CO_SYNC_H_
#define LIBBLOCK_CORE_CO_SYNC_H_

#include <coroutine>
#include <deque>

#include "core/event_loop.h"

namespace libblock {

// A FIFO of suspended coroutines. Intrusive: each waiter's link lives in its awaiter (in
// the suspended frame), so waiting allocates nothing and an empty queue costs two pointers —
// a request range holds one (RangeLock), and the request path makes one per request.
class CoQueue {
 public:
  CoQueue() = default;
  CoQueue(const CoQueue&) = delete;
  CoQueue& operator=(const CoQueue&) = delete;

  struct [[nodiscard]] Awaiter {
    CoQueue* q;
    Awaiter* next = nullptr;
    std::coroutine_handle<> handle;
    bool await_ready() const noexcept { return false; }
    void await_suspend(std::coroutine_handle<> h) {
      handle = h;
      q->Push(this);
    }
    void await_resume() const noexcept {}
  };
  Awaiter Wait() { return Awaiter{this}; }
  // Schedule the first / every waiter; return whether anyone was woken.
  bool WakeOne();
  bool WakeAll();
  bool empty() const { return head_ == nullptr; }
  size_t size() const { return size_; }

 private:
  void Push(Awaiter* a) {
    if (tail_) {
      tail_->next = a;
    } else {
      head_ = a;
    }
    tail_ = a;
    ++size_;
  }
  Awaiter* head_ = nullptr;
  Awaiter* tail_ = nullptr;
  size_t size_ = 0;
};

class CoMutex {
 public:
  class [[nodiscard]] Guard {
   public:
    explicit Guard(CoMutex* m) : m_(m) {}
    Guard(Guard&& o) noexcept : m_(std::exchange(o.m_, nullptr)) {}
    Guard& operator=(Guard&&) = delete;
    ~Guard() { Unlock(); }
    void Unlock() {
      if (m_) std::exchange(m_, nullptr)->Unlock();
    }

   private:
    CoMutex* m_;
  };

  // co_await m.Lock(); ... m.Unlock();
  auto Lock() {
    struct Awaiter {
      CoMutex* m;
      bool await_ready() noexcept {
        if (m->locked_) return false;
        m->locked_ = true;
        return true;
      }
      // Ownership is transferred by Unlock before the waiter is scheduled.
      void await_suspend(std::coroutine_handle<> h) { m->waiters_.push_back(h); }
      void await_resume() const noexcept {}
    };
    return Awaiter{this};
  }
  // auto guard = co_await m.ScopedLock();
  Task<Guard> ScopedLock();
  bool TryLock();
  void Unlock();
  bool locked() const { return locked_; }

 private:
  bool locked_ = false;
  std::deque<std::coroutine_handle<>> waiters_;
};

// Readers share, writers exclude. A queued writer blocks later readers (no writer starvation).
class CoRwLock {
 public:
  auto ReadLock() { return Awaiter{this, false}; }
  auto WriteLock() { return Awaiter{this, true}; }
  void Unlock();
  int readers() const { return readers_; }
  bool write_locked() const { return writer_; }

 private:
  struct Waiter {
    std::coroutine_handle<> h;
    bool write;
  };
  struct Awaiter {
    CoRwLock* l;
    bool write;
    bool await_ready() noexcept { return l->TryAcquire(write); }
    void await_suspend(std::coroutine_handle<> h) { l->waiters_.push_back({h, write}); }
    void await_resume() const noexcept {}
  };
  bool TryAcquire(bool write);
  void Grant();

  int readers_ = 0;
  bool writer_ = false;
  std::deque<Waiter> waiters_;
};

}  // namespace libblock

#endif  // LIBBLOCK_CORE_CO_SYNC_H_
