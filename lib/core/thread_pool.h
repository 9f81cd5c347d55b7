// ThreadPool: worker threads for blocking syscalls (aio=threads) and, later, CPU-heavy work.
// Threads are created on demand up to a cap and live until the pool is destroyed. Results are
// delivered to the owning EventLoop with Post, so completion callbacks run on the loop thread.
#ifndef LIBBLOCK_CORE_THREAD_POOL_H_
#define LIBBLOCK_CORE_THREAD_POOL_H_

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

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

  int thread_count() const;

 private:
  struct Job {
    std::function<int64_t()> work;
    std::function<void(int64_t)> done;
  };
  void Worker();

  EventLoop* loop_;
  int max_threads_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Job> jobs_;
  std::vector<std::thread> threads_;
  int idle_ = 0;
  bool stopping_ = false;
};

}  // namespace libblock

#endif  // LIBBLOCK_CORE_THREAD_POOL_H_
