// Task<T>: the coroutine type of every I/O operation (QEMU's coroutine_fn).
//
// A Task is lazy: it runs when first awaited, or when handed to EventLoop::Run / Spawn.
// Awaiting starts the child inline from await_suspend. If the child finishes without ever
// suspending, the parent continues immediately (await_suspend returns false), so long loops of
// synchronously-completing awaits never nest resume() calls and never grow the native stack,
// whether or not the compiler turns symmetric transfer into a tail call (it may not under
// ASan or at -O0). A child that does suspend hands control back to its parent by symmetric
// transfer when it finishes; that nesting is bounded by the depth of the await chain.
//
// Tasks are single-threaded: a task and everything it awaits run on one EventLoop thread.
// Exceptions are not used for control flow (errors are absl::Status), but one thrown inside a
// task is carried, not fatal: the promise keeps it and `co_await` rethrows it in the awaiting
// coroutine, up to EventLoop::Run, which rethrows it to its caller. An exception leaving a
// detached root (EventLoop::Spawn) is handed to the loop, and the next RunOnce rethrows it to
// whoever is running the loop. (A Catch2 REQUIRE failing inside a coroutine is thus reported
// as a test failure instead of std::terminate.) Without an exception the cost is one null
// pointer test per await.
#ifndef LIBBLOCK_CORE_TASK_H_
#define LIBBLOCK_CORE_TASK_H_

#include <coroutine>
#include <cstdlib>
#include <exception>
#include <optional>
#include <utility>

namespace libblock {

template <typename T = void>
class Task;

namespace internal {

enum class TaskState { kIdle, kRunningInline, kCompletedInline, kSuspended };

struct PromiseBase {
  std::coroutine_handle<> continuation;
  TaskState state = TaskState::kIdle;

  std::suspend_always initial_suspend() noexcept { return {}; }

  struct FinalAwaiter {
    bool await_ready() noexcept { return false; }
    template <typename P>
    std::coroutine_handle<> await_suspend(std::coroutine_handle<P> h) noexcept {
      PromiseBase& p = h.promise();
      if (p.state == TaskState::kRunningInline) {
        // Finished inside the parent's await_suspend: return there, the parent resumes itself.
        p.state = TaskState::kCompletedInline;
        return std::noop_coroutine();
      }
      if (p.continuation) return p.continuation;
      return std::noop_coroutine();
    }
    void await_resume() noexcept {}
  };
  FinalAwaiter final_suspend() noexcept { return {}; }
  // The coroutine body threw: keep the exception for the awaiter (the task then completes
  // normally through final_suspend).
  void unhandled_exception() noexcept { exception = std::current_exception(); }
  void RethrowIfFailed() {
    if (exception) [[unlikely]] std::rethrow_exception(std::exchange(exception, nullptr));
  }

  std::exception_ptr exception;
};

template <typename T>
struct Promise : PromiseBase {
  std::optional<T> value;
  Task<T> get_return_object() noexcept;
  template <typename U>
  void return_value(U&& v) { value.emplace(std::forward<U>(v)); }
  T take() {
    RethrowIfFailed();
    return std::move(*value);
  }
};

template <>
struct Promise<void> : PromiseBase {
  Task<void> get_return_object() noexcept;
  void return_void() noexcept {}
  void take() { RethrowIfFailed(); }
};

}  // namespace internal

template <typename T>
class [[nodiscard]] Task {
 public:
  using promise_type = internal::Promise<T>;
  using Handle = std::coroutine_handle<promise_type>;

  Task() = default;
  explicit Task(Handle h) : handle_(h) {}
  Task(Task&& other) noexcept : handle_(std::exchange(other.handle_, {})) {}
  Task& operator=(Task&& other) noexcept {
    if (this != &other) {
      Reset();
      handle_ = std::exchange(other.handle_, {});
    }
    return *this;
  }
  Task(const Task&) = delete;
  Task& operator=(const Task&) = delete;
  ~Task() { Reset(); }

  bool valid() const { return static_cast<bool>(handle_); }
  bool done() const { return handle_ && handle_.done(); }

  // Awaiting a task runs it to completion and yields its value.
  bool await_ready() const noexcept { return false; }
  bool await_suspend(std::coroutine_handle<> caller) noexcept {
    auto& p = handle_.promise();
    p.continuation = caller;
    p.state = internal::TaskState::kRunningInline;
    handle_.resume();
    if (p.state == internal::TaskState::kCompletedInline) return false;
    p.state = internal::TaskState::kSuspended;
    return true;
  }
  T await_resume() { return handle_.promise().take(); }

 private:
  template <typename U>
  friend class TaskRunner;

  void Reset() {
    if (handle_) handle_.destroy();
    handle_ = {};
  }

  Handle handle_;
};

namespace internal {
template <typename T>
Task<T> Promise<T>::get_return_object() noexcept {
  return Task<T>(std::coroutine_handle<Promise<T>>::from_promise(*this));
}
inline Task<void> Promise<void>::get_return_object() noexcept {
  return Task<void>(std::coroutine_handle<Promise<void>>::from_promise(*this));
}
}  // namespace internal

namespace internal {
// Hands an exception that left a detached root to the loop running on this thread (rethrown
// by its next RunOnce); terminates when no loop is running. Defined in event_loop.cc.
void ReportDetachedException(std::exception_ptr e) noexcept;
}  // namespace internal

// A coroutine that starts eagerly and frees itself when it finishes: the root of a spawned
// (fire-and-forget) task. Used by EventLoop::Spawn and EventLoop::Run.
struct DetachedTask {
  struct promise_type {
    DetachedTask get_return_object() noexcept { return {}; }
    std::suspend_never initial_suspend() noexcept { return {}; }
    std::suspend_never final_suspend() noexcept { return {}; }
    void return_void() noexcept {}
    void unhandled_exception() noexcept {
      internal::ReportDetachedException(std::current_exception());
    }
  };
};

}  // namespace libblock

#endif  // LIBBLOCK_CORE_TASK_H_
