// EventLoop: drives coroutine completions for one thread (QEMU's AioContext).
//
// Sources, all multiplexed by one epoll instance:
//   * the ready queue of coroutines scheduled to resume (CoMutex hand-offs, null-aio, yields);
//   * an eventfd that other threads write to (worker-pool completions, cross-thread posts);
//   * the io_uring ring's fd, readable when completions are pending (file I/O);
//   * file descriptors awaited with WaitFd (libnbd/libiscsi/libssh sessions);
//   * timers (Sleep).
// The loop starts no thread. The worker pool behind RunInThread (aio=threads, and the fallback
// when io_uring is unavailable) is created on first use.
//
// Run() is reentrant: control-plane code (open, close, permission changes that need I/O) may
// run the loop until its own task completes while other coroutines are suspended, the same
// way QEMU's AIO_WAIT_WHILE polls a nested aio_poll. A coroutine must never Run a task that
// awaits the coroutine itself.
#ifndef LIBBLOCK_CORE_EVENT_LOOP_H_
#define LIBBLOCK_CORE_EVENT_LOOP_H_

#include <atomic>
#include <coroutine>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "core/task.h"

namespace libblock {

class Uring;
class ThreadPool;

struct LoopOptions {
  // Create an io_uring ring. When the kernel refuses (old kernel, seccomp), the loop works
  // without one and file I/O uses the worker pool.
  bool use_io_uring = true;
  unsigned uring_entries = 256;
  // Upper bound on worker threads (created lazily, on demand).
  int max_worker_threads = 16;
};

class EventLoop {
 public:
  static absl::StatusOr<std::unique_ptr<EventLoop>> Create(const LoopOptions& options = {});
  ~EventLoop();
  EventLoop(const EventLoop&) = delete;
  EventLoop& operator=(const EventLoop&) = delete;

  // The loop running on this thread (innermost Run), or nullptr outside any Run.
  static EventLoop* Current();

  // --- Running -------------------------------------------------------------------------
  // Runs the loop until `task` completes and returns its value.
  template <typename T>
  T Run(Task<T> task);

  // Starts `task` now; it runs until its first suspension before Spawn returns. `done` (if
  // any) is called with the result when it finishes.
  template <typename T, typename F>
  void Spawn(Task<T> task, F done);
  void Spawn(Task<void> task);

  // One iteration: resume ready coroutines, submit/reap I/O, wait (if `block` and nothing is
  // ready) for events and timers, but no longer than `max_wait_ms` (< 0: no limit). Returns
  // true if anything was dispatched.
  bool RunOnce(bool block, int max_wait_ms = -1);

  // Runs iterations until `pred()` is true.
  void RunUntil(const std::function<bool()>& pred);

  // --- Scheduling ----------------------------------------------------------------------
  // Resume `h` from the loop on its next iteration (this thread only).
  void Schedule(std::coroutine_handle<> h) { ready_.push_back(h); }

  // Run `fn` on the loop thread; callable from any thread. Wakes the loop.
  void Post(std::function<void()> fn);

  // ---- Embedding ---------------------------------------------------------------------------
  // The epoll fd: readable whenever the loop has something to do (I/O completions, expired
  // timers, posts, kicks). An embedder polls it and then calls RunOnce(false).
  int fd() const { return epoll_fd_; }
  // Makes fd() readable now (e.g. completions are waiting to be collected).
  void Kick();
  // Before control returns to an embedder that will poll fd(): submit prepared io_uring
  // operations, and kick if coroutines are ready to run.
  void PrepareForPoll();

  // Awaitable: reschedule the current coroutine behind everything already ready.
  auto Yield() {
    struct Awaiter {
      EventLoop* loop;
      bool await_ready() const noexcept { return false; }
      void await_suspend(std::coroutine_handle<> h) { loop->Schedule(h); }
      void await_resume() const noexcept {}
    };
    return Awaiter{this};
  }

  // --- Timers --------------------------------------------------------------------------
  // Monotonic nanoseconds.
  static int64_t NowNs();

  class Timer;
  // Calls `fn` on the loop once `deadline_ns` has passed. The returned id cancels it.
  uint64_t AddTimer(int64_t deadline_ns, std::function<void()> fn);
  bool CancelTimer(uint64_t id);

  // Awaitable sleep.
  Task<void> Sleep(int64_t ns);

  // --- File descriptors ----------------------------------------------------------------
  // Awaitable: suspends until `fd` reports any of `events` (EPOLLIN/EPOLLOUT); yields revents.
  Task<uint32_t> WaitFd(int fd, uint32_t events);

  // --- I/O engines ---------------------------------------------------------------------
  // The io_uring ring, or nullptr when the loop has none.
  Uring* uring() const { return uring_.get(); }
  // The worker pool, created on first call.
  ThreadPool& thread_pool();
  bool has_thread_pool() const { return pool_ != nullptr; }

  // Runs `fn` on a worker thread; yields its result. For blocking syscalls (aio=threads).
  Task<int64_t> RunInThread(std::function<int64_t()> fn);

  // Number of coroutines suspended on timers, fds and worker jobs (for tests and drain checks).
  int pending_waits() const;

 private:
  EventLoop() = default;
  absl::Status Init(const LoopOptions& options);
  void DrainRemote();
  void FireTimers();
  void ArmTimerFd();
  int TimeoutMs(bool block) const;

  struct FdWatch {
    uint32_t registered = 0;  // events currently in epoll
    std::coroutine_handle<> in_waiter, out_waiter;
    // Where each waiter's revents go (its awaiter, alive while it is suspended).
    uint32_t* in_revents = nullptr;
    uint32_t* out_revents = nullptr;
  };
  void UpdateFdWatch(int fd, FdWatch& w);
  void DispatchFd(int fd, uint32_t revents);

  int epoll_fd_ = -1;
  int event_fd_ = -1;
  int timer_fd_ = -1;
  int64_t armed_deadline_ = -1;  // deadline the timerfd is armed for, -1 when disarmed
  std::deque<std::coroutine_handle<>> ready_;

  std::mutex remote_mu_;
  std::vector<std::function<void()>> remote_;
  std::atomic<bool> remote_pending_{false};

  struct TimerEntry {
    uint64_t id;
    std::function<void()> fn;
  };
  std::map<std::pair<int64_t, uint64_t>, TimerEntry> timers_;
  std::map<uint64_t, int64_t> timer_deadlines_;
  uint64_t next_timer_id_ = 1;

  std::map<int, FdWatch> fd_watches_;
  int fd_waiters_ = 0;

  std::unique_ptr<Uring> uring_;
  std::unique_ptr<ThreadPool> pool_;
  int max_workers_ = 16;
  int thread_jobs_ = 0;
};

// ---------------------------------------------------------------------------------------
// Template implementations.

namespace internal {
// A wrapper coroutine that owns `task` and reports its result through `done`.
template <typename T, typename F>
DetachedTask RunDetached(Task<T> task, F done) {
  if constexpr (std::is_void_v<T>) {
    co_await task;
    done();
  } else {
    // A named value, not co_await inside the call: GCC 12 mishandles co_await in call
    // arguments and conditional operands (see NOTES.md).
    T value = co_await task;
    done(std::move(value));
  }
}

// Marks the loop current for the duration of a Run (restored on exit for nested runs).
class CurrentLoopScope {
 public:
  explicit CurrentLoopScope(EventLoop* loop);
  ~CurrentLoopScope();

 private:
  EventLoop* saved_;
};
}  // namespace internal

template <typename T>
T EventLoop::Run(Task<T> task) {
  internal::CurrentLoopScope scope(this);
  bool finished = false;
  if constexpr (std::is_void_v<T>) {
    internal::RunDetached(std::move(task), [&finished] { finished = true; });
    while (!finished) RunOnce(true);
  } else {
    std::optional<T> result;
    internal::RunDetached(std::move(task), [&](T v) {
      result.emplace(std::move(v));
      finished = true;
    });
    while (!finished) RunOnce(true);
    return std::move(*result);
  }
}

template <typename T, typename F>
void EventLoop::Spawn(Task<T> task, F done) {
  internal::CurrentLoopScope scope(this);
  internal::RunDetached(std::move(task), std::move(done));
}

inline void EventLoop::Spawn(Task<void> task) {
  Spawn(std::move(task), [] {});
}

}  // namespace libblock

#endif  // LIBBLOCK_CORE_EVENT_LOOP_H_
