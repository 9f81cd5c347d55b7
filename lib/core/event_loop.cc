#include "core/event_loop.h"

#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <thread>

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
void ReportDetachedException(std::exception_ptr e) noexcept {
  EventLoop* loop = current_loop;
  if (!loop) std::terminate();
  if (!loop->pending_exception_) loop->pending_exception_ = std::move(e);  // keep the first
}

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
  SetCpuWorkers(options.cpu_worker_threads);
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
  cpu_pool_.reset();
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

namespace {
unsigned CpuCount() {
  unsigned n = std::thread::hardware_concurrency();
  return n ? n : 1;
}
}  // namespace

void EventLoop::SetCpuWorkers(unsigned n) {
  cpu_workers_ = n ? n : CpuCount();
  if (cpu_pool_) cpu_pool_->SetMaxThreads(static_cast<int>(cpu_workers_));
}

ThreadPool& EventLoop::cpu_pool() {
  if (!cpu_pool_) cpu_pool_ = std::make_unique<ThreadPool>(this, static_cast<int>(cpu_workers_));
  return *cpu_pool_;
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
  // One write until the loop consumes it: a burst of kicks (a completion per request) costs
  // one system call.
  if (kicked_.exchange(true, std::memory_order_acq_rel)) return;
  uint64_t one = 1;
  // A full eventfd counter (EAGAIN) already means "wake up"; nothing to do then.
  ssize_t ignored = write(event_fd_, &one, sizeof(one));
  (void)ignored;
}

void EventLoop::ConsumeKick() {
  uint64_t count;
  ssize_t ignored = read(event_fd_, &count, sizeof(count));
  (void)ignored;
  // After the read: a kick racing with it either landed before (and was read) or sees the
  // flag clear and writes again. One that found the flag still set skipped its write, but
  // what it announced (a post) is drained right after this, by the caller.
  kicked_.store(false, std::memory_order_release);
}

bool EventLoop::Idle() const {
  if (!ready_.empty() || remote_pending_.load(std::memory_order_acquire)) return false;
  if (uring_ && (uring_->in_flight() > 0 || uring_->has_unsubmitted())) return false;
  if (thread_jobs_ > 0 || cpu_jobs_ > 0) return false;
  return fds_.empty() && timers_.empty();
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

// ---- Waiters (cancellable sleeps and fd waits) ----------------------------------------

void EventLoop::CancelPost::operator()() const noexcept {
  // Runs on whichever thread requests the stop: hand over to the loop thread, where the
  // waiter is found by id (or not at all, once it has finished).
  EventLoop* l = loop;
  uint64_t waiter_id = id;
  l->Post([l, waiter_id] { l->FinishWaiterById(waiter_id, ErrnoStatus(ECANCELED, "wait cancelled")); });
}

void EventLoop::FinishWaiter(Waiter* w, absl::Status status, uint32_t revents) {
  waiters_.erase(w->id);
  if (w->timer_id != 0) {
    CancelTimer(w->timer_id);  // false when the timer itself is finishing us
    w->timer_id = 0;
    --waiter_timers_;
  }
  if (w->fd >= 0) {
    if (FdRecord* rec = FindRecord(w->fd, w->generation)) {
      auto& v = rec->waiters;
      for (size_t i = 0; i < v.size(); ++i) {
        if (v[i] == w) {
          v.erase(v.begin() + static_cast<ptrdiff_t>(i));
          break;
        }
      }
      (void)SyncFd(rec);  // may drop the record
    }
    w->fd = -1;
  }
  w->status = std::move(status);
  w->revents = revents;
}

void EventLoop::FinishWaiterById(uint64_t id, absl::Status status) {
  auto it = waiters_.find(id);
  if (it == waiters_.end()) return;  // already finished
  Waiter* w = it->second;
  FinishWaiter(w, std::move(status), 0);
  w->handle.resume();
}

Task<absl::Status> EventLoop::Sleep(int64_t ns, std::stop_token stop) {
  struct Awaiter {
    EventLoop* loop;
    int64_t deadline;
    std::stop_token stop;
    Waiter w;
    std::optional<std::stop_callback<CancelPost>> on_stop;
    bool await_ready() const noexcept { return false; }
    void await_suspend(std::coroutine_handle<> h) {
      w.id = loop->NextWaiterId();
      w.handle = h;
      loop->waiters_.emplace(w.id, &w);
      uint64_t id = w.id;
      EventLoop* l = loop;
      w.timer_id = loop->AddTimer(deadline, [l, id] { l->FinishWaiterById(id, absl::OkStatus()); });
      ++loop->waiter_timers_;
      // Last: a stop already requested posts the cancellation at once.
      on_stop.emplace(stop, CancelPost{loop, w.id});
    }
    absl::Status await_resume() { return std::move(w.status); }
  };
  Awaiter awaiter{this, NowNs() + (ns > 0 ? ns : 0), std::move(stop)};
  absl::Status status = co_await awaiter;
  co_return status;
}

// ---- File descriptors -------------------------------------------------------------------

namespace {
constexpr uint32_t kFdEvents = EPOLLIN | EPOLLOUT | EPOLLPRI;
constexpr uint32_t kAlwaysReported = EPOLLERR | EPOLLHUP;
// Tags of the loop's own fds sit at the top of the range; a record's generation never
// reaches them.
constexpr uint32_t kMaxGeneration = 0xfffffff0u;

uint64_t FdTag(int fd, uint32_t generation) {
  return (static_cast<uint64_t>(generation) << 32) | static_cast<uint32_t>(fd);
}
}  // namespace

EventLoop::FdRecord* EventLoop::FindRecord(int fd, uint32_t generation) {
  auto it = fds_.find(fd);
  if (it == fds_.end() || it->second->generation != generation) return nullptr;
  return it->second.get();
}

absl::StatusOr<EventLoop::FdRecord*> EventLoop::RecordFor(int fd) {
  if (fd < 0) return ErrnoStatus(EBADF, "invalid file descriptor");
  struct stat st;
  if (fstat(fd, &st) < 0) return ErrnoStatus(errno, "fstat");
  auto it = fds_.find(fd);
  if (it != fds_.end()) {
    FdRecord* rec = it->second.get();
    bool same = rec->dev == st.st_dev && rec->ino == st.st_ino;
    if (same && rec->registered != 0) {
      // Files on an anonymous inode (eventfd, timerfd, ...) share one identity; the kernel
      // tells whether the registered file is still the one behind this number.
      struct epoll_event ev = {};
      ev.events = rec->registered;
      ev.data.u64 = FdTag(fd, rec->generation);
      if (epoll_ctl(epoll_fd_, EPOLL_CTL_MOD, fd, &ev) < 0 && errno == ENOENT) same = false;
    }
    if (same && !rec->stale) return rec;
    // The fd this record was made for was closed and its number now names another file.
    RetireRecord(rec);
  }
  auto rec = std::make_unique<FdRecord>();
  rec->fd = fd;
  rec->generation = next_generation_++;
  if (next_generation_ > kMaxGeneration) next_generation_ = 1;
  rec->dev = st.st_dev;
  rec->ino = st.st_ino;
  FdRecord* raw = rec.get();
  fds_[fd] = std::move(rec);
  return raw;
}

void EventLoop::RetireRecord(FdRecord* rec) {
  // Whatever the kernel still holds for the old file under this number is not ours to touch
  // (the number now names another file; EPOLL_CTL_DEL would hit that one). If the old file
  // was closed for good the kernel already dropped it; if it lives on in a duplicate, its
  // events carry the old generation and are ignored.
  std::vector<Waiter*> waiters = std::move(rec->waiters);
  std::unique_ptr<FdRecord> owned = std::move(fds_[rec->fd]);
  fds_.erase(rec->fd);
  for (Waiter* w : waiters) {
    w->fd = -1;  // unlinked already
    FinishWaiter(w, ErrnoStatus(EBADF, "file descriptor closed while waited on"), 0);
    Schedule(w->handle);  // not from inside the caller's registration
  }
}

absl::Status EventLoop::SyncFd(FdRecord* rec) {
  uint32_t want = rec->has_handler ? rec->handler_events : 0;
  for (const Waiter* w : rec->waiters) want |= w->events;
  if (want != rec->registered) {
    struct epoll_event ev = {};
    ev.events = want;
    ev.data.u64 = FdTag(rec->fd, rec->generation);
    int r = 0;
    if (want == 0) {
      // EBADF/ENOENT: the fd was closed (the kernel dropped the registration with it).
      epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, rec->fd, nullptr);
    } else if (rec->registered == 0) {
      r = epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, rec->fd, &ev);
      // EEXIST: this very file is still registered under this number from a record dropped
      // while its DEL could not reach it; take the registration over.
      if (r < 0 && errno == EEXIST) r = epoll_ctl(epoll_fd_, EPOLL_CTL_MOD, rec->fd, &ev);
    } else {
      r = epoll_ctl(epoll_fd_, EPOLL_CTL_MOD, rec->fd, &ev);
      if (r < 0 && errno == ENOENT) {
        // The registration went away: the file was closed behind the record's back, and
        // the number (if open at all) names another file, which must not get this record's
        // callbacks. (Registering it again here would do exactly that.)
        MarkStale(rec);
        return ErrnoStatus(EBADF, "file descriptor closed while registered");
      }
    }
    if (r < 0) {
      int err = errno;
      rec->registered = 0;
      DropRecordIfUnused(rec);
      return ErrnoStatus(err, "epoll_ctl");
    }
    rec->registered = want;
  }
  DropRecordIfUnused(rec);
  return absl::OkStatus();
}

void EventLoop::MarkStale(FdRecord* rec) {
  rec->stale = true;
  rec->registered = 0;
  std::vector<Waiter*> waiters = std::move(rec->waiters);
  rec->waiters.clear();
  for (Waiter* w : waiters) {
    w->fd = -1;
    // A waiter still being registered (no handle yet) learns it from SyncFd's status.
    if (!w->handle) continue;
    FinishWaiter(w, ErrnoStatus(EBADF, "file descriptor closed while waited on"), 0);
    Schedule(w->handle);
  }
  DropRecordIfUnused(rec);  // a handler keeps it, inert, until reset
}

void EventLoop::DropRecordIfUnused(FdRecord* rec) {
  if (rec->has_handler || !rec->waiters.empty()) return;
  if (rec->registered != 0) epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, rec->fd, nullptr);
  fds_.erase(rec->fd);
}

absl::StatusOr<FdHandler> EventLoop::AddFdHandler(int fd, uint32_t events, FdCallback callback) {
  if (events & ~kFdEvents) return ErrnoStatus(EINVAL, "unsupported fd events");
  if (!callback) return ErrnoStatus(EINVAL, "fd handler without a callback");
  LB_ASSIGN_OR_RETURN(FdRecord* rec, RecordFor(fd));
  if (rec->has_handler) return ErrnoStatus(EEXIST, "file descriptor already has a handler");
  rec->has_handler = true;
  rec->handler_events = events;
  rec->callback = std::make_shared<FdCallback>(std::move(callback));
  uint32_t generation = rec->generation;
  absl::Status st = SyncFd(rec);
  if (!st.ok()) {
    if (FdRecord* again = FindRecord(fd, generation)) {
      again->has_handler = false;
      again->callback.reset();
      DropRecordIfUnused(again);
    }
    return st;
  }
  return FdHandler(this, fd, generation);
}

absl::Status FdHandler::SetEvents(uint32_t events) {
  if (!loop_) return ErrnoStatus(EBADF, "empty fd handler");
  if (events & ~kFdEvents) return ErrnoStatus(EINVAL, "unsupported fd events");
  EventLoop::FdRecord* rec = loop_->FindRecord(fd_, generation_);
  if (!rec || !rec->has_handler || rec->stale) {
    return ErrnoStatus(EBADF, "fd handler retired (fd closed)");
  }
  uint32_t old = rec->handler_events;
  rec->handler_events = events;
  absl::Status st = loop_->SyncFd(rec);
  if (!st.ok()) {
    if (EventLoop::FdRecord* again = loop_->FindRecord(fd_, generation_)) again->handler_events = old;
  }
  return st;
}

uint32_t FdHandler::events() const {
  if (!loop_) return 0;
  EventLoop::FdRecord* rec = loop_->FindRecord(fd_, generation_);
  return rec && rec->has_handler && !rec->stale ? rec->handler_events : 0;
}

bool FdHandler::active() const {
  if (!loop_) return false;
  EventLoop::FdRecord* rec = loop_->FindRecord(fd_, generation_);
  return rec && rec->has_handler && !rec->stale;
}

void FdHandler::Reset() {
  if (!loop_) return;
  if (EventLoop::FdRecord* rec = loop_->FindRecord(fd_, generation_)) {
    rec->has_handler = false;
    rec->handler_events = 0;
    rec->callback.reset();  // a running callback keeps its own reference
    (void)loop_->SyncFd(rec);
  }
  loop_ = nullptr;
  fd_ = -1;
}

Task<absl::StatusOr<uint32_t>> EventLoop::WaitFd(int fd, uint32_t events, WaitOptions options) {
  if ((events & ~kFdEvents) || (events & kFdEvents) == 0) {
    co_return ErrnoStatus(EINVAL, "unsupported fd events");
  }
  struct Awaiter {
    EventLoop* loop;
    int fd;
    uint32_t events;
    WaitOptions options;
    Waiter w;
    std::optional<std::stop_callback<CancelPost>> on_stop;
    bool await_ready() const noexcept { return false; }
    bool await_suspend(std::coroutine_handle<> h) {
      auto rec = loop->RecordFor(fd);
      if (!rec.ok()) {
        w.status = rec.status();
        return false;
      }
      w.id = loop->NextWaiterId();
      w.fd = fd;
      w.generation = (*rec)->generation;
      w.events = events;
      (*rec)->waiters.push_back(&w);
      absl::Status st = loop->SyncFd(*rec);
      if (!st.ok()) {
        // SyncFd failed: unlink again (the record may have been dropped with it).
        if (FdRecord* again = loop->FindRecord(fd, w.generation)) {
          auto& v = again->waiters;
          v.erase(std::remove(v.begin(), v.end(), &w), v.end());
          loop->DropRecordIfUnused(again);
        }
        w.fd = -1;
        w.status = std::move(st);
        return false;
      }
      w.handle = h;  // from here on, whatever finishes the wait resumes it
      loop->waiters_.emplace(w.id, &w);
      if (options.timeout_ns >= 0) {
        EventLoop* l = loop;
        uint64_t id = w.id;
        w.timer_id = loop->AddTimer(NowNs() + options.timeout_ns, [l, id] {
          l->FinishWaiterById(id, ErrnoStatus(ETIMEDOUT, "timed out waiting for file descriptor"));
        });
        ++loop->waiter_timers_;
      }
      on_stop.emplace(options.stop, CancelPost{loop, w.id});
      return true;
    }
    absl::StatusOr<uint32_t> await_resume() {
      if (!w.status.ok()) return std::move(w.status);
      return w.revents;
    }
  };
  // A named awaiter: the loop writes the result into it while it is suspended.
  Awaiter awaiter{this, fd, events, std::move(options)};
  absl::StatusOr<uint32_t> result = co_await awaiter;
  co_return result;
}

void EventLoop::DispatchFd(uint64_t tag, uint32_t revents) {
  int fd = static_cast<int>(static_cast<uint32_t>(tag));
  uint32_t generation = static_cast<uint32_t>(tag >> 32);
  FdRecord* rec = FindRecord(fd, generation);
  if (!rec) return;  // a registration of a record since dropped or retired
  // Waiters first (collected, unlinked, epoll updated once), then the handler, then the
  // waiters resume: the handler's callback may drop the record.
  std::vector<Waiter*> woken;
  if (!rec->waiters.empty()) {
    auto& v = rec->waiters;
    for (size_t i = 0; i < v.size();) {
      if (revents & (v[i]->events | kAlwaysReported)) {
        woken.push_back(v[i]);
        v.erase(v.begin() + static_cast<ptrdiff_t>(i));
      } else {
        ++i;
      }
    }
    for (Waiter* w : woken) {
      w->fd = -1;  // unlinked above
      FinishWaiter(w, absl::OkStatus(), revents & (w->events | kAlwaysReported));
    }
    if (!woken.empty()) {
      (void)SyncFd(rec);
      rec = FindRecord(fd, generation);
    }
  }
  if (rec && rec->has_handler && rec->handler_events != 0) {
    uint32_t mine = revents & (rec->handler_events | kAlwaysReported);
    if (mine) {
      std::shared_ptr<FdCallback> cb = rec->callback;
      (*cb)(mine);
    }
  }
  for (Waiter* w : woken) w->handle.resume();
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
  return static_cast<int>(timers_.size()) - waiter_timers_ + static_cast<int>(waiters_.size()) +
         thread_jobs_ + cpu_jobs_ + (uring_ ? uring_->in_flight() : 0);
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
  int nev = 0;
  if (timeout == 0 && fds_.empty() && timers_.empty()) {
    // Not waiting, and only the loop's own sources exist, each of which can be checked
    // without epoll: the ring was peeked above, posts are flagged, and a kick is known. Skip
    // the system call (and read the eventfd only if a kick is outstanding, so that fd() does
    // not stay readable for nothing).
    if (kicked_.load(std::memory_order_acquire)) {
      ConsumeKick();
      DrainRemote();
      progress = true;
    }
  } else {
    nev = epoll_wait(epoll_fd_, events, 64, timeout);
  }
  for (int i = 0; i < nev; ++i) {
    uint64_t tag = events[i].data.u64;
    if (tag == kEventFdTag) {
      ConsumeKick();
      DrainRemote();
    } else if (tag == kUringTag) {
      if (uring_) uring_->Reap();
    } else if (tag == kTimerFdTag) {
      uint64_t expirations;
      ssize_t ignored = read(timer_fd_, &expirations, sizeof(expirations));
      (void)ignored;
      armed_deadline_ = -1;  // the timerfd is disarmed after firing
    } else {
      DispatchFd(tag, events[i].events);
    }
    progress = true;
  }
  size_t before = timers_.size();
  FireTimers();
  if (timers_.size() != before) progress = true;
  // An exception that left a spawned coroutine: to whoever runs the loop, once the
  // iteration is complete.
  if (pending_exception_) [[unlikely]] std::rethrow_exception(std::exchange(pending_exception_, nullptr));
  return progress;
}

void EventLoop::RunUntil(const std::function<bool()>& pred) {
  internal::CurrentLoopScope scope(this);
  while (!pred()) RunOnce(true);
}

}  // namespace libblock
