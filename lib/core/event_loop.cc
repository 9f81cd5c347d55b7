#include "core/event_loop.h"

#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <climits>

#include "core/thread_pool.h"
#include "core/uring.h"
#include "util/status.h"

namespace libblock {
namespace {

thread_local EventLoop* current_loop = nullptr;

// epoll user data for the loop's own fds; other fds are stored as themselves (>= 0).
constexpr uint64_t kEventFdTag = UINT64_MAX;
constexpr uint64_t kUringTag = UINT64_MAX - 1;
constexpr uint64_t kTimerFdTag = UINT64_MAX - 2;

}  // namespace

namespace internal {
CurrentLoopScope::CurrentLoopScope(EventLoop* loop) : saved_(current_loop) { current_loop = loop; }
CurrentLoopScope::~CurrentLoopScope() { current_loop = saved_; }
}  // namespace internal

EventLoop* EventLoop::Current() { return current_loop; }

int64_t EventLoop::NowNs() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

absl::StatusOr<std::unique_ptr<EventLoop>> EventLoop::Create(const LoopOptions& options) {
  std::unique_ptr<EventLoop> loop(new EventLoop());
  LB_RETURN_IF_ERROR(loop->Init(options));
  return loop;
}

absl::Status EventLoop::Init(const LoopOptions& options) {
  max_workers_ = options.max_worker_threads;
  epoll_fd_ = epoll_create1(EPOLL_CLOEXEC);
  if (epoll_fd_ < 0) return ErrnoStatus(errno, "epoll_create1");
  event_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (event_fd_ < 0) return ErrnoStatus(errno, "eventfd");
  struct epoll_event ev = {};
  ev.events = EPOLLIN;
  ev.data.u64 = kEventFdTag;
  if (epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, event_fd_, &ev) < 0) return ErrnoStatus(errno, "epoll_ctl");
  // Timers also live in a timerfd, so that the epoll fd alone tells an embedder polling it
  // that a deadline has passed.
  timer_fd_ = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
  if (timer_fd_ < 0) return ErrnoStatus(errno, "timerfd_create");
  ev.data.u64 = kTimerFdTag;
  if (epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, timer_fd_, &ev) < 0) return ErrnoStatus(errno, "epoll_ctl");
  if (options.use_io_uring) {
    auto ring = Uring::Create(options.uring_entries);
    if (ring.ok()) {
      uring_ = std::move(*ring);
      ev.events = EPOLLIN;
      ev.data.u64 = kUringTag;
      if (epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, uring_->fd(), &ev) < 0) {
        return ErrnoStatus(errno, "epoll_ctl(io_uring)");
      }
    }
  }
  return absl::OkStatus();
}

EventLoop::~EventLoop() {
  pool_.reset();  // joins workers; their completions land in remote_ and are dropped
  uring_.reset();
  if (event_fd_ >= 0) close(event_fd_);
  if (timer_fd_ >= 0) close(timer_fd_);
  if (epoll_fd_ >= 0) close(epoll_fd_);
}

ThreadPool& EventLoop::thread_pool() {
  if (!pool_) pool_ = std::make_unique<ThreadPool>(this, max_workers_);
  return *pool_;
}

void EventLoop::Post(std::function<void()> fn) {
  {
    std::lock_guard<std::mutex> lock(remote_mu_);
    remote_.push_back(std::move(fn));
  }
  // Only the post that makes the queue non-empty wakes the loop: a burst of completions
  // costs one eventfd write. (The loop clears the flag before it takes the queue, so a post
  // racing with that either lands in this round or sets the flag and writes again.)
  if (remote_pending_.exchange(true, std::memory_order_acq_rel)) return;
  Kick();
}

void EventLoop::Kick() {
  uint64_t one = 1;
  // A full eventfd counter (EAGAIN) already means "wake up"; nothing to do then.
  ssize_t ignored = write(event_fd_, &one, sizeof(one));
  (void)ignored;
}

void EventLoop::PrepareForPoll() {
  if (uring_) uring_->Submit();
  if (!ready_.empty()) Kick();
}

void EventLoop::ArmTimerFd() {
  struct itimerspec its = {};
  if (!timers_.empty()) {
    int64_t deadline = timers_.begin()->first.first;
    if (deadline == armed_deadline_) return;
    // An absolute deadline; one already passed fires at once (a zero value would disarm).
    its.it_value.tv_sec = deadline / 1000000000;
    its.it_value.tv_nsec = deadline % 1000000000;
    if (its.it_value.tv_sec == 0 && its.it_value.tv_nsec == 0) its.it_value.tv_nsec = 1;
    armed_deadline_ = deadline;
  } else {
    if (armed_deadline_ < 0) return;
    armed_deadline_ = -1;
  }
  timerfd_settime(timer_fd_, TFD_TIMER_ABSTIME, &its, nullptr);
}

void EventLoop::DrainRemote() {
  if (!remote_pending_.exchange(false, std::memory_order_acq_rel)) return;
  std::vector<std::function<void()>> fns;
  {
    std::lock_guard<std::mutex> lock(remote_mu_);
    fns.swap(remote_);
  }
  for (auto& fn : fns) fn();
}

uint64_t EventLoop::AddTimer(int64_t deadline_ns, std::function<void()> fn) {
  uint64_t id = next_timer_id_++;
  timers_.emplace(std::make_pair(deadline_ns, id), TimerEntry{id, std::move(fn)});
  timer_deadlines_[id] = deadline_ns;
  ArmTimerFd();
  return id;
}

bool EventLoop::CancelTimer(uint64_t id) {
  auto it = timer_deadlines_.find(id);
  if (it == timer_deadlines_.end()) return false;
  timers_.erase(std::make_pair(it->second, id));
  timer_deadlines_.erase(it);
  ArmTimerFd();
  return true;
}

void EventLoop::FireTimers() {
  if (timers_.empty()) return;
  int64_t now = NowNs();
  while (!timers_.empty() && timers_.begin()->first.first <= now) {
    auto node = timers_.extract(timers_.begin());
    timer_deadlines_.erase(node.mapped().id);
    node.mapped().fn();
  }
  ArmTimerFd();
}

Task<void> EventLoop::Sleep(int64_t ns) {
  struct Awaiter {
    EventLoop* loop;
    int64_t deadline;
    bool await_ready() const noexcept { return false; }
    void await_suspend(std::coroutine_handle<> h) {
      loop->AddTimer(deadline, [h] { h.resume(); });
    }
    void await_resume() const noexcept {}
  };
  co_await Awaiter{this, NowNs() + (ns > 0 ? ns : 0)};
}

int EventLoop::TimeoutMs(bool block) const {
  if (!block || !ready_.empty()) return 0;
  if (remote_pending_.load(std::memory_order_acquire)) return 0;
  if (timers_.empty()) return -1;
  int64_t delta = timers_.begin()->first.first - NowNs();
  if (delta <= 0) return 0;
  int64_t ms = (delta + 999999) / 1000000;
  return ms > INT_MAX ? INT_MAX : static_cast<int>(ms);
}

void EventLoop::UpdateFdWatch(int fd, FdWatch& w) {
  uint32_t want = (w.in_waiter ? uint32_t{EPOLLIN} : 0u) | (w.out_waiter ? uint32_t{EPOLLOUT} : 0u);
  if (want == w.registered) return;
  struct epoll_event ev = {};
  ev.events = want;
  ev.data.u64 = static_cast<uint64_t>(fd);
  if (want == 0) {
    epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, fd, nullptr);
  } else if (w.registered == 0) {
    epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &ev);
  } else {
    epoll_ctl(epoll_fd_, EPOLL_CTL_MOD, fd, &ev);
  }
  w.registered = want;
}

Task<uint32_t> EventLoop::WaitFd(int fd, uint32_t events) {
  struct Awaiter {
    EventLoop* loop;
    int fd;
    uint32_t events;
    uint32_t revents = 0;
    bool await_ready() const noexcept { return false; }
    void await_suspend(std::coroutine_handle<> h) {
      FdWatch& w = loop->fd_watches_[fd];
      if (events & EPOLLIN) {
        w.in_waiter = h;
        w.in_revents = &revents;
      } else {
        w.out_waiter = h;
        w.out_revents = &revents;
      }
      ++loop->fd_waiters_;
      loop->UpdateFdWatch(fd, w);
    }
    // DispatchFd stored the result here (and dropped the watch once nobody waits): the
    // first of two waiters woken by one event must not discard the other's revents.
    uint32_t await_resume() const noexcept { return revents; }
  };
  // A named awaiter: DispatchFd writes into it, so it must be the one object that is
  // suspended (see RunInThread on GCC 12 and temporary awaiters).
  Awaiter awaiter{this, fd, events};
  co_return co_await awaiter;
}

void EventLoop::DispatchFd(int fd, uint32_t revents) {
  auto it = fd_watches_.find(fd);
  if (it == fd_watches_.end()) return;
  FdWatch& w = it->second;
  std::coroutine_handle<> in, out;
  constexpr uint32_t kErr = EPOLLERR | EPOLLHUP;
  if (w.in_waiter && (revents & (EPOLLIN | kErr))) {
    in = std::exchange(w.in_waiter, {});
    *std::exchange(w.in_revents, nullptr) = revents;
    --fd_waiters_;
  }
  if (w.out_waiter && (revents & (EPOLLOUT | kErr))) {
    out = std::exchange(w.out_waiter, {});
    *std::exchange(w.out_revents, nullptr) = revents;
    --fd_waiters_;
  }
  UpdateFdWatch(fd, w);
  if (!w.in_waiter && !w.out_waiter) fd_watches_.erase(it);
  if (in) in.resume();
  if (out) out.resume();
}

Task<int64_t> EventLoop::RunInThread(std::function<int64_t()> fn) {
  struct Awaiter {
    EventLoop* loop;
    std::function<int64_t()> fn;
    int64_t result = 0;
    bool await_ready() const noexcept { return false; }
    void await_suspend(std::coroutine_handle<> h) {
      ++loop->thread_jobs_;
      loop->thread_pool().Submit(std::move(fn), [this, h](int64_t r) {
        result = r;
        --loop->thread_jobs_;
        h.resume();
      });
    }
    int64_t await_resume() const noexcept { return result; }
  };
  // A named awaiter, not a braced temporary: GCC 12 copies a temporary awaiter bytewise and
  // destroys both copies, which double-frees a std::function that holds its callable on the
  // heap (any lambda capturing more than 16 bytes, as aio=threads' I/O lambdas do).
  Awaiter awaiter{this, std::move(fn)};
  co_return co_await awaiter;
}

int EventLoop::pending_waits() const {
  return static_cast<int>(timers_.size()) + fd_waiters_ + thread_jobs_ +
         (uring_ ? uring_->in_flight() : 0);
}

bool EventLoop::RunOnce(bool block, int max_wait_ms) {
  internal::CurrentLoopScope scope(this);
  bool progress = false;

  // Resume what is ready. Coroutines scheduled while we do so run in the next round, so one
  // busy coroutine that keeps yielding cannot starve I/O completions.
  size_t n = ready_.size();
  for (size_t i = 0; i < n && !ready_.empty(); ++i) {
    std::coroutine_handle<> h = ready_.front();
    ready_.pop_front();
    h.resume();
    progress = true;
  }
  DrainRemote();

  if (uring_) {
    uring_->Submit();
    if (uring_->Reap() > 0) {
      progress = true;
      block = false;
    }
  }

  struct epoll_event events[64];
  int timeout = TimeoutMs(block && !progress);
  if (max_wait_ms >= 0 && (timeout < 0 || timeout > max_wait_ms)) timeout = max_wait_ms;
  int nev = epoll_wait(epoll_fd_, events, 64, timeout);
  for (int i = 0; i < nev; ++i) {
    uint64_t tag = events[i].data.u64;
    if (tag == kEventFdTag) {
      uint64_t count;
      ssize_t ignored = read(event_fd_, &count, sizeof(count));
      (void)ignored;
      DrainRemote();
    } else if (tag == kUringTag) {
      if (uring_) uring_->Reap();
    } else if (tag == kTimerFdTag) {
      uint64_t expirations;
      ssize_t ignored = read(timer_fd_, &expirations, sizeof(expirations));
      (void)ignored;
      armed_deadline_ = -1;  // the timerfd is disarmed after firing
    } else {
      DispatchFd(static_cast<int>(tag), events[i].events);
    }
    progress = true;
  }
  size_t before = timers_.size();
  FireTimers();
  if (timers_.size() != before) progress = true;
  return progress;
}

void EventLoop::RunUntil(const std::function<bool()>& pred) {
  internal::CurrentLoopScope scope(this);
  while (!pred()) RunOnce(true);
}

}  // namespace libblock
