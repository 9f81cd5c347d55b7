// EventLoop: drives coroutine completions for one thread (QEMU's AioContext).
//
// Sources, all multiplexed by one epoll instance:
//   * the ready queue of coroutines scheduled to resume (CoMutex hand-offs, null-aio, yields);
//   * an eventfd that other threads write to (worker-pool completions, cross-thread posts);
//   * the io_uring ring's fd, readable when completions are pending (file I/O);
//   * file descriptors with persistent handlers (AddFdHandler: libnbd/libiscsi/libssh
//     sessions) or awaited once (WaitFd);
//   * timers (AddTimer, Sleep, WaitFd timeouts).
//
// Per-fd state and fd-number reuse: each watched fd has one record (a handler, its waiters,
// the events registered in epoll, and the file's identity: st_dev/st_ino). epoll's user data
// carries the fd and the record's generation, so an event from a registration that belongs
// to a record since dropped is ignored. A record whose fd was closed behind its back (and the
// number reused for another file) is recognised by the file identity when the number is next
// registered (for anonymous-inode files, which share one identity: by an EPOLL_CTL_MOD that
// answers ENOENT): the old record is retired (its handler goes inert, its waiters fail with
// EBADF) and the new one starts clean. An ADD that meets EEXIST becomes a MOD; a MOD that
// meets ENOENT marks the record stale instead of registering the number again, which would
// give the old callbacks the new file.
//
// The loop starts no thread. The worker pool behind RunInThread (aio=threads, and the fallback
// when io_uring is unavailable) and the CPU pool behind RunCpu are created on first use.
//
// Run() is reentrant: control-plane code (open, close, permission changes that need I/O) may
// run the loop until its own task completes while other coroutines are suspended, the same
// way QEMU's AIO_WAIT_WHILE polls a nested aio_poll. A coroutine must never Run a task that
// awaits the coroutine itself.
#ifndef LIBBLOCK_CORE_EVENT_LOOP_H_
#define LIBBLOCK_CORE_EVENT_LOOP_H_

#include <sys/types.h>

#include <atomic>
#include <coroutine>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <stop_token>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/status/statusor.h"
#include "core/task.h"
#include "core/thread_pool.h"

namespace libblock {

class Uring;
class EventLoop;

// Options of EventLoop::WaitFd.
struct FdWaitOptions {
  int64_t timeout_ns = -1;  // < 0: no timeout (ETIMEDOUT once it has passed)
  std::stop_token stop;     // default: not cancellable (ECANCELED once stop is requested)
};

// The registration of a persistent fd handler (EventLoop::AddFdHandler). Move-only;
// destroying or resetting it unregisters the fd at once (no callback runs afterwards, not
// even for events already collected in the same iteration). A default-constructed or reset
// handle is empty. A handle whose fd was closed and whose number was registered again for
// another file is inert: SetEvents fails with EBADF and Reset does nothing.
class FdHandler {
 public:
  FdHandler() = default;
  FdHandler(FdHandler&& other) noexcept
      : loop_(std::exchange(other.loop_, nullptr)), fd_(std::exchange(other.fd_, -1)),
        generation_(other.generation_) {}
  FdHandler& operator=(FdHandler&& other) noexcept {
    if (this != &other) {
      Reset();
      loop_ = std::exchange(other.loop_, nullptr);
      fd_ = std::exchange(other.fd_, -1);
      generation_ = other.generation_;
    }
    return *this;
  }
  FdHandler(const FdHandler&) = delete;
  FdHandler& operator=(const FdHandler&) = delete;
  ~FdHandler() { Reset(); }

  // Changes the interest (EPOLLIN, EPOLLOUT, EPOLLPRI, any mix; 0 pauses). Takes effect for
  // the next epoll_wait; waiters on the same fd are unaffected.
  absl::Status SetEvents(uint32_t events);
  // The current interest (0 for an empty or inert handle).
  uint32_t events() const;
  // True while the handle is registered (not empty, not retired).
  bool active() const;
  int fd() const { return fd_; }
  void Reset();

 private:
  friend class EventLoop;
  FdHandler(EventLoop* loop, int fd, uint32_t generation)
      : loop_(loop), fd_(fd), generation_(generation) {}
  EventLoop* loop_ = nullptr;
  int fd_ = -1;
  uint32_t generation_ = 0;
};

struct LoopOptions {
  // Create an io_uring ring. When the kernel refuses (old kernel, seccomp), the loop works
  // without one and file I/O uses the worker pool.
  bool use_io_uring = true;
  unsigned uring_entries = 256;
  // Upper bound on I/O worker threads (created lazily, on demand).
  int max_worker_threads = 16;
  // Upper bound on CPU worker threads (RunCpu; created lazily). 0: the number of CPUs.
  unsigned cpu_worker_threads = 0;
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
  // Makes fd() readable now (e.g. completions are waiting to be collected). Callable from any
  // thread; only the first kick after the loop last consumed one makes a system call.
  void Kick();
  // True when an iteration could find nothing to do: no coroutine ready, no post, no I/O,
  // worker or CPU job in flight, no timer and no fd watched. (fd() may still be readable
  // from a kick nobody consumed; the next RunOnce consumes it.)
  bool Idle() const;
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

  // Awaitable sleep (not cancellable).
  Task<void> Sleep(int64_t ns);
  // Cancellable sleep: OK once `ns` have passed, ECANCELED as soon as `stop` is requested
  // (from any thread; the sleeper resumes on the loop's next iteration).
  Task<absl::Status> Sleep(int64_t ns, std::stop_token stop);

  // --- File descriptors ----------------------------------------------------------------
  // Persistent handlers (QEMU's aio_set_fd_handler), for sessions that multiplex their own
  // socket (libnbd: nbd_aio_get_direction / nbd_aio_notify_read|write; libiscsi:
  // iscsi_which_events / iscsi_service; libssh). The callback runs on the loop thread with
  // the ready events (a subset of the interest, plus EPOLLERR/EPOLLHUP, which are always
  // reported while the interest is not empty), level-triggered, on every iteration in which
  // the fd is ready, until the interest changes. It may change the interest, reset its own
  // handler, or register others.
  using FdCallback = absl::AnyInvocable<void(uint32_t revents)>;
  // Registers `fd` with interest `events` (EPOLLIN, EPOLLOUT, EPOLLPRI; 0: registered but
  // paused). One handler per fd: EEXIST if `fd` already has one. EBADF for a closed fd,
  // EPERM for a file that epoll cannot watch (a regular file). The handle unregisters on
  // destruction and must not outlive the loop; reset it before closing the fd.
  absl::StatusOr<FdHandler> AddFdHandler(int fd, uint32_t events, FdCallback callback);

  // Awaitable one-shot wait (on top of the same per-fd state, so waiters and a handler can
  // share an fd): resumes with the ready events once `fd` reports any of `events`
  // (EPOLLIN, EPOLLOUT or both, EPOLLPRI; EPOLLERR/EPOLLHUP always end the wait). Any number
  // of coroutines may wait on one fd, in either direction or both. Errors: ECANCELED when
  // `options.stop` is requested, ETIMEDOUT after `options.timeout_ns`, EBADF when the fd is
  // closed (or its number reused for another file) while waited on.
  using WaitOptions = FdWaitOptions;
  Task<absl::StatusOr<uint32_t>> WaitFd(int fd, uint32_t events, WaitOptions options = {});

  // --- I/O engines ---------------------------------------------------------------------
  // The io_uring ring, or nullptr when the loop has none.
  Uring* uring() const { return uring_.get(); }
  // The worker pool, created on first call.
  ThreadPool& thread_pool();
  bool has_thread_pool() const { return pool_ != nullptr; }

  // Runs `fn` on a worker thread; yields its result. For blocking syscalls (aio=threads).
  Task<int64_t> RunInThread(std::function<int64_t()> fn);

  // --- CPU work ------------------------------------------------------------------------
  // Runs `fn()` (compression, encryption) on the CPU pool and yields its result; `fn` may be
  // move-only, and so may its result. (GCC 12: pass a lambda with move-only captures as a
  // named variable, `co_await loop.RunCpu(std::move(job))`, not as a temporary.) The CPU pool is separate from the I/O pool behind
  // RunInThread, so CPU-bound jobs never keep blocking I/O calls waiting, nor the reverse.
  // An exception thrown by `fn` is rethrown in the awaiting coroutine.
  template <typename F>
  Task<std::invoke_result_t<F&>> RunCpu(F fn);
  // Sets the CPU pool's size (0: the number of CPUs). Takes effect at once: extra idle
  // threads exit, running jobs finish.
  void SetCpuWorkers(unsigned n);
  unsigned cpu_workers() const { return cpu_workers_; }
  ThreadPool& cpu_pool();
  bool has_cpu_pool() const { return cpu_pool_ != nullptr; }

  // Number of coroutines suspended on timers, fds, worker and CPU jobs (for tests and drain
  // checks). Persistent fd handlers are not waits and are not counted.
  int pending_waits() const;

 private:
  EventLoop() = default;
  absl::Status Init(const LoopOptions& options);
  void DrainRemote();
  // Reads the eventfd and clears the kick flag.
  void ConsumeKick();
  void FireTimers();
  void ArmTimerFd();
  int TimeoutMs(bool block) const;

  friend class FdHandler;
  friend void internal::ReportDetachedException(std::exception_ptr e) noexcept;

  // A suspended Sleep(ns, stop) or WaitFd: lives in the waiting coroutine's frame; found by
  // id from timers and cancellation posts, so that a late one finds nothing.
  struct Waiter {
    uint64_t id = 0;
    std::coroutine_handle<> handle;
    int fd = -1;  // fd waits: the record (fd, generation) it is queued on
    uint32_t generation = 0;
    uint32_t events = 0;
    uint64_t timer_id = 0;  // 0: no timer
    absl::Status status;    // the result, set when finished
    uint32_t revents = 0;
  };
  struct FdRecord {
    int fd = -1;
    uint32_t generation = 0;
    dev_t dev = 0;  // the file's identity when the record was made
    ino_t ino = 0;
    uint32_t registered = 0;  // events currently in epoll (0: not in epoll)
    // The file was found closed (its registration vanished): the handler is inert and the
    // record is replaced when the number is next registered.
    bool stale = false;
    bool has_handler = false;
    uint32_t handler_events = 0;
    // Shared so that a callback that resets its own handler is not destroyed while it runs.
    std::shared_ptr<FdCallback> callback;
    std::vector<Waiter*> waiters;
  };
  // The record of `fd`, made if needed; retires a record whose file is no longer the one
  // behind `fd`. EBADF when `fd` is not open.
  absl::StatusOr<FdRecord*> RecordFor(int fd);
  FdRecord* FindRecord(int fd, uint32_t generation);
  void RetireRecord(FdRecord* rec);
  // Brings epoll in line with the record; drops the record when nothing uses it any more.
  absl::Status SyncFd(FdRecord* rec);
  void DropRecordIfUnused(FdRecord* rec);
  void MarkStale(FdRecord* rec);
  void DispatchFd(uint64_t tag, uint32_t revents);
  // Ends a wait: unlinks it from its record and timer; the caller resumes it.
  void FinishWaiter(Waiter* w, absl::Status status, uint32_t revents);
  void FinishWaiterById(uint64_t id, absl::Status status);
  uint64_t NextWaiterId() { return next_waiter_id_++; }
  struct CancelPost {
    EventLoop* loop;
    uint64_t id;
    void operator()() const noexcept;
  };
  template <typename T>
  struct CpuAwaiter;
  template <typename T>
  Task<T> RunCpuJob(absl::AnyInvocable<T()> fn);

  int epoll_fd_ = -1;
  int event_fd_ = -1;
  int timer_fd_ = -1;
  int64_t armed_deadline_ = -1;  // deadline the timerfd is armed for, -1 when disarmed
  std::deque<std::coroutine_handle<>> ready_;

  std::mutex remote_mu_;
  std::vector<std::function<void()>> remote_;
  std::atomic<bool> remote_pending_{false};
  std::atomic<bool> kicked_{false};  // the eventfd was written and not yet read

  struct TimerEntry {
    uint64_t id;
    std::function<void()> fn;
  };
  std::map<std::pair<int64_t, uint64_t>, TimerEntry> timers_;
  std::map<uint64_t, int64_t> timer_deadlines_;
  uint64_t next_timer_id_ = 1;

  std::unordered_map<int, std::unique_ptr<FdRecord>> fds_;
  uint32_t next_generation_ = 1;
  std::unordered_map<uint64_t, Waiter*> waiters_;
  uint64_t next_waiter_id_ = 1;
  int waiter_timers_ = 0;  // timers owned by waiters (counted once, as waiters)
  // An exception that left a detached root coroutine; RunOnce rethrows it.
  std::exception_ptr pending_exception_;

  std::unique_ptr<Uring> uring_;
  std::unique_ptr<ThreadPool> pool_;
  int max_workers_ = 16;
  int thread_jobs_ = 0;
  std::unique_ptr<ThreadPool> cpu_pool_;
  unsigned cpu_workers_ = 1;
  int cpu_jobs_ = 0;
};

// ---------------------------------------------------------------------------------------
// Template implementations.

namespace internal {
// A wrapper coroutine that owns `task` and reports its result through `done`, or the
// exception it threw through `fail`. (An exception thrown by `done` itself leaves the
// detached coroutine and goes to the loop: ReportDetachedException.)
template <typename T, typename Done, typename Fail>
DetachedTask RunDetached(Task<T> task, Done done, Fail fail) {
  std::exception_ptr error;
  if constexpr (std::is_void_v<T>) {
    try {
      co_await task;
    } catch (...) {
      error = std::current_exception();
    }
    if (error) {
      fail(std::move(error));
    } else {
      done();
    }
  } else {
    std::optional<T> result;
    try {
      // A named value, not co_await inside the call: GCC 12 mishandles co_await in call
      // arguments and conditional operands (see NOTES.md).
      T value = co_await task;
      result.emplace(std::move(value));
    } catch (...) {
      error = std::current_exception();
    }
    if (error) {
      fail(std::move(error));
    } else {
      done(std::move(*result));
    }
  }
}

// Spawned tasks: an exception goes to the loop, whose next RunOnce rethrows it.
struct ReportToLoop {
  void operator()(std::exception_ptr e) const noexcept { ReportDetachedException(std::move(e)); }
};

// Marks the loop current for the duration of a Run (restored on exit for nested runs).
class CurrentLoopScope {
 public:
  explicit CurrentLoopScope(EventLoop* loop);
  ~CurrentLoopScope();

 private:
  EventLoop* saved_;
};

// The outcome of a Run, on the heap: when Run leaves early (RunOnce rethrew an exception of
// another spawned task), its task may still finish later and must find this alive.
template <typename T>
struct RunState {
  bool finished = false;
  std::exception_ptr error;
  std::optional<T> value;
};
template <>
struct RunState<void> {
  bool finished = false;
  std::exception_ptr error;
};
}  // namespace internal

template <typename T>
T EventLoop::Run(Task<T> task) {
  internal::CurrentLoopScope scope(this);
  auto state = std::make_shared<internal::RunState<T>>();
  auto fail = [state](std::exception_ptr e) {
    state->error = std::move(e);
    state->finished = true;
  };
  if constexpr (std::is_void_v<T>) {
    internal::RunDetached(std::move(task), [state] { state->finished = true; }, fail);
  } else {
    internal::RunDetached(std::move(task), [state](T v) {
      state->value.emplace(std::move(v));
      state->finished = true;
    }, fail);
  }
  while (!state->finished) RunOnce(true);
  if (state->error) std::rethrow_exception(state->error);
  if constexpr (!std::is_void_v<T>) return std::move(*state->value);
}

template <typename T, typename F>
void EventLoop::Spawn(Task<T> task, F done) {
  internal::CurrentLoopScope scope(this);
  internal::RunDetached(std::move(task), std::move(done), internal::ReportToLoop{});
}

inline void EventLoop::Spawn(Task<void> task) {
  Spawn(std::move(task), [] {});
}

// ---------------------------------------------------------------------------------------
// CPU jobs.

template <typename T>
struct EventLoop::CpuAwaiter {
  EventLoop* loop;
  absl::AnyInvocable<T()> fn;
  std::conditional_t<std::is_void_v<T>, bool, std::optional<T>> value{};
  std::exception_ptr error;

  bool await_ready() const noexcept { return false; }
  void await_suspend(std::coroutine_handle<> h) {
    ++loop->cpu_jobs_;
    // Runs on a CPU worker; the awaiter (in the suspended frame) outlives it. Post's mutex
    // orders the worker's writes before the loop thread's reads.
    loop->cpu_pool().Submit([this, h] {
      try {
        if constexpr (std::is_void_v<T>) {
          fn();
        } else {
          value.emplace(fn());
        }
      } catch (...) {
        error = std::current_exception();
      }
      loop->Post([this, h] {
        --loop->cpu_jobs_;
        h.resume();
      });
    });
  }
  T await_resume() {
    if (error) std::rethrow_exception(error);
    if constexpr (!std::is_void_v<T>) return std::move(*value);
  }
};

template <typename T>
Task<T> EventLoop::RunCpuJob(absl::AnyInvocable<T()> fn) {
  // A named awaiter: the worker writes into it (see RunInThread on GCC 12).
  CpuAwaiter<T> awaiter{this, std::move(fn)};
  if constexpr (std::is_void_v<T>) {
    co_await awaiter;
  } else {
    T result = co_await awaiter;
    co_return std::move(result);
  }
}

// Not a coroutine itself: one coroutine per result type, not per callable. (Callers: GCC 12
// destroys a lambda temporary with non-trivial captures twice when it is an argument inside
// a co_await expression; name such a lambda first, see NOTES.md.)
template <typename F>
Task<std::invoke_result_t<F&>> EventLoop::RunCpu(F fn) {
  using T = std::invoke_result_t<F&>;
  return RunCpuJob<T>(absl::AnyInvocable<T()>(std::move(fn)));
}

}  // namespace libblock

#endif  // LIBBLOCK_CORE_EVENT_LOOP_H_
