// ThreadPool: worker threads. The loop has two: one for blocking syscalls (aio=threads, the
// fallback without io_uring) and one for CPU-heavy work (compression, encryption: RunCpu),
// so that neither can starve the other. Threads are created on demand up to a cap; lowering
// the cap lets idle threads beyond it exit. Results are delivered to the owning EventLoop
// with Post, so completion callbacks run on the loop thread.
#ifndef LIBBLOCK_CORE_THREAD_POOL_H_
#define LIBBLOCK_CORE_THREAD_POOL_H_

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/functional/any_invocable.h"

namespace libblock {

class EventLoop;

class ThreadPool {
 public:
  ThreadPool(EventLoop* loop, int max_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  // Runs `work` on a worker; `done(result)` then runs on the loop thread.
  void Submit(std::function<int64_t()> work, std::function<void(int64_t)> done);
  // Runs `job` on a worker; the job reports back itself (EventLoop::Post).
  void Submit(absl::AnyInvocable<void()> job);

  // Changes the cap. Takes effect for new jobs; idle threads above a lower cap exit.
  void SetMaxThreads(int max_threads);

  // Threads currently alive.
  int thread_count() const;

 private:
  void Worker();

  EventLoop* loop_;
  int max_threads_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<absl::AnyInvocable<void()>> jobs_;
  std::vector<std::thread> threads_;  // joined at destruction (including exited ones)
  int live_ = 0;
  int idle_ = 0;
  bool stopping_ = false;
};

}  // namespace libblock

#endif  // LIBBLOCK_CORE_THREAD_POOL_H_
