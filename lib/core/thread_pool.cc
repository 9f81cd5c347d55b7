#include "core/thread_pool.h"

#include "core/event_loop.h"

namespace libblock {

ThreadPool::ThreadPool(EventLoop* loop, int max_threads)
    : loop_(loop), max_threads_(max_threads < 1 ? 1 : max_threads) {}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  for (std::thread& t : threads_) t.join();
}

int ThreadPool::thread_count() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int>(threads_.size());
}

void ThreadPool::Submit(std::function<int64_t()> work, std::function<void(int64_t)> done) {
  std::lock_guard<std::mutex> lock(mu_);
  jobs_.push_back({std::move(work), std::move(done)});
  if (idle_ == 0 && static_cast<int>(threads_.size()) < max_threads_) {
    threads_.emplace_back([this] { Worker(); });
  } else {
    cv_.notify_one();
  }
}

void ThreadPool::Worker() {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    ++idle_;
    cv_.wait(lock, [this] { return stopping_ || !jobs_.empty(); });
    --idle_;
    if (jobs_.empty()) return;  // stopping and nothing left
    Job job = std::move(jobs_.front());
    jobs_.pop_front();
    lock.unlock();
    int64_t result = job.work();
    loop_->Post([done = std::move(job.done), result] { done(result); });
    lock.lock();
  }
}

}  // namespace libblock
