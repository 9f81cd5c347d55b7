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
  return live_;
}

void ThreadPool::SetMaxThreads(int max_threads) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    max_threads_ = max_threads < 1 ? 1 : max_threads;
  }
  cv_.notify_all();  // idle threads above the cap exit
}

void ThreadPool::Submit(std::function<int64_t()> work, std::function<void(int64_t)> done) {
  Submit([this, work = std::move(work), done = std::move(done)]() mutable {
    int64_t result = work();
    loop_->Post([done = std::move(done), result] { done(result); });
  });
}

void ThreadPool::Submit(absl::AnyInvocable<void()> job) {
  std::lock_guard<std::mutex> lock(mu_);
  jobs_.push_back(std::move(job));
  if (idle_ == 0 && live_ < max_threads_) {
    ++live_;
    threads_.emplace_back([this] { Worker(); });
  } else {
    cv_.notify_one();
  }
}

void ThreadPool::Worker() {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    ++idle_;
    cv_.wait(lock, [this] { return stopping_ || !jobs_.empty() || live_ > max_threads_; });
    --idle_;
    if (live_ > max_threads_ || jobs_.empty()) {  // over the cap, or stopping with nothing left
      --live_;
      return;
    }
    absl::AnyInvocable<void()> job = std::move(jobs_.front());
    jobs_.pop_front();
    lock.unlock();
    job();
    job = nullptr;  // destroy the job's captures off the lock
    lock.lock();
  }
}

}  // namespace libblock
