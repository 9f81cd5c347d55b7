// EventLoop fd handlers and waits: persistent handlers (register, change the interest, pause,
// unregister), WaitFd on top of them (several waiters, both directions, changing a handler's
// interest while a wait is pending), cancellation and timeouts of WaitFd and Sleep, and fd
// numbers reused after a close (no old callbacks, no old epoll registrations); kicks and the
// non-blocking iteration that skips epoll_wait when only the loop's own sources exist.
#include <fcntl.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cerrno>
#include <cstdio>
#include <fstream>
#include <string>
#include <stop_token>
#include <thread>
#include <vector>

#include "core/event_loop.h"
#include "test_support.h"
#include "util/status.h"

namespace libblock {
namespace {

using testing::MakeLoop;

// Runs the loop until `pred` holds or `ms` have passed; returns pred(). (A missed wake-up
// fails the test instead of hanging it.)
template <typename P>
bool RunFor(EventLoop& loop, P pred, int ms = 2000) {
  int64_t deadline = EventLoop::NowNs() + int64_t{ms} * 1000000;
  while (!pred() && EventLoop::NowNs() < deadline) loop.RunOnce(true, 10);
  return pred();
}

// Runs a few loop iterations that do not block for long (to let events that should not
// arrive have their chance).
void Spin(EventLoop& loop, int iterations = 5) {
  for (int i = 0; i < iterations; ++i) loop.RunOnce(true, 5);
}

struct SocketPair {
  int fd[2] = {-1, -1};
  SocketPair() { REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fd) == 0); }
  ~SocketPair() { Close(); }
  void Close() {
    for (int& f : fd) {
      if (f >= 0) close(f);
      f = -1;
    }
  }
  // Fills the socket's send buffer (so that fd[0] is no longer writable).
  void FillSendBuffer() {
    std::vector<char> junk(65536, 'j');
    while (write(fd[0], junk.data(), junk.size()) > 0) {
    }
  }
  void DrainReceiveBuffer(int which = 1) {
    char buf[65536];
    while (read(fd[which], buf, sizeof(buf)) > 0) {
    }
  }
};

// True when the loop's epoll instance holds a registration under `fd` (read from
// /proc/self/fdinfo, which lists an epoll fd's registrations without touching them).
bool InEpoll(EventLoop& loop, int fd) {
  std::ifstream info("/proc/self/fdinfo/" + std::to_string(loop.fd()));
  REQUIRE(info);
  std::string line;
  while (std::getline(info, line)) {
    int tfd = -1;
    if (sscanf(line.c_str(), "tfd: %d", &tfd) == 1 && tfd == fd) return true;
  }
  return false;
}

TEST_CASE("WaitFd for IN|OUT wakes on a writable socket", "[event_loop]") {
  auto loop = MakeLoop();
  SocketPair sp;
  absl::StatusOr<uint32_t> result = ErrnoStatus(EINPROGRESS, "not done");
  bool done = false;
  loop->Spawn(loop->WaitFd(sp.fd[0], EPOLLIN | EPOLLOUT), [&](absl::StatusOr<uint32_t> r) {
    result = std::move(r);
    done = true;
  });
  REQUIRE(RunFor(*loop, [&] { return done; }));
  REQUIRE(result.ok());
  REQUIRE((*result & EPOLLOUT));
  REQUIRE_FALSE((*result & EPOLLIN));  // nothing to read
  REQUIRE(loop->pending_waits() == 0);
  REQUIRE_FALSE(InEpoll(*loop, sp.fd[0]));
}

TEST_CASE("WaitFd: several waiters in one direction all resume", "[event_loop]") {
  auto loop = MakeLoop();
  SocketPair sp;
  constexpr int kN = 5;
  int done = 0, with_in = 0;
  for (int i = 0; i < kN; ++i) {
    loop->Spawn(loop->WaitFd(sp.fd[0], EPOLLIN), [&](absl::StatusOr<uint32_t> r) {
      if (r.ok() && (*r & EPOLLIN)) ++with_in;
      ++done;
    });
  }
  REQUIRE(loop->pending_waits() == kN);
  Spin(*loop);
  REQUIRE(done == 0);  // nothing to read yet
  REQUIRE(write(sp.fd[1], "x", 1) == 1);
  REQUIRE(RunFor(*loop, [&] { return done == kN; }));
  REQUIRE(with_in == kN);
  REQUIRE(loop->pending_waits() == 0);
  REQUIRE_FALSE(InEpoll(*loop, sp.fd[0]));
}

TEST_CASE("WaitFd: waiters in both directions, and for both, get their own events", "[event_loop]") {
  auto loop = MakeLoop();
  SocketPair sp;
  sp.FillSendBuffer();  // fd[0] neither readable nor writable now
  uint32_t in = 0, out = 0, both = 0;
  int done = 0;
  auto record = [&](uint32_t& slot) {
    return [&](absl::StatusOr<uint32_t> r) {
      slot = r.value();
      ++done;
    };
  };
  loop->Spawn(loop->WaitFd(sp.fd[0], EPOLLIN), record(in));
  loop->Spawn(loop->WaitFd(sp.fd[0], EPOLLOUT), record(out));
  loop->Spawn(loop->WaitFd(sp.fd[0], EPOLLIN | EPOLLOUT), record(both));
  Spin(*loop);
  REQUIRE(done == 0);
  REQUIRE(write(sp.fd[1], "x", 1) == 1);  // readable: the IN and the IN|OUT waiter
  REQUIRE(RunFor(*loop, [&] { return done == 2; }));
  Spin(*loop);
  REQUIRE(done == 2);
  REQUIRE(in == EPOLLIN);
  REQUIRE(both == EPOLLIN);
  REQUIRE(out == 0);
  sp.DrainReceiveBuffer();  // writable: the OUT waiter
  REQUIRE(RunFor(*loop, [&] { return done == 3; }));
  REQUIRE((out & EPOLLOUT));
  REQUIRE_FALSE((out & EPOLLIN));  // its own events, not the reader's
  REQUIRE(loop->pending_waits() == 0);
}

TEST_CASE("fd handler: persistent callbacks, interest changes, pause and unregister",
          "[event_loop]") {
  auto loop = MakeLoop();
  SocketPair sp;
  std::vector<uint32_t> calls;
  auto h = loop->AddFdHandler(sp.fd[0], EPOLLIN, [&](uint32_t revents) { calls.push_back(revents); });
  REQUIRE(h.ok());
  REQUIRE(h->active());
  REQUIRE(h->events() == EPOLLIN);
  // A second handler for the same fd is refused.
  auto twice = loop->AddFdHandler(sp.fd[0], EPOLLOUT, [](uint32_t) {});
  REQUIRE(StatusErrno(twice.status()) == EEXIST);
  Spin(*loop);
  REQUIRE(calls.empty());
  // Level-triggered and persistent: called on every iteration while data is unread.
  REQUIRE(write(sp.fd[1], "x", 1) == 1);
  REQUIRE(RunFor(*loop, [&] { return calls.size() >= 3; }));
  for (uint32_t r : calls) REQUIRE(r == EPOLLIN);
  // OUT only: the pending input no longer calls it, writability does.
  REQUIRE(h->SetEvents(EPOLLOUT).ok());
  calls.clear();
  REQUIRE(RunFor(*loop, [&] { return calls.size() >= 2; }));
  for (uint32_t r : calls) REQUIRE(r == EPOLLOUT);
  // Paused: registered, but no calls, and no epoll registration either.
  REQUIRE(h->SetEvents(0).ok());
  calls.clear();
  Spin(*loop);
  REQUIRE(calls.empty());
  REQUIRE_FALSE(InEpoll(*loop, sp.fd[0]));
  REQUIRE(h->active());
  // Both again, then unregistered: no calls, nothing left in epoll.
  REQUIRE(h->SetEvents(EPOLLIN | EPOLLOUT).ok());
  REQUIRE(RunFor(*loop, [&] { return !calls.empty(); }));
  REQUIRE(calls.back() == (EPOLLIN | EPOLLOUT));
  h->Reset();
  REQUIRE_FALSE(h->active());
  calls.clear();
  Spin(*loop);
  REQUIRE(calls.empty());
  REQUIRE_FALSE(InEpoll(*loop, sp.fd[0]));
  // Bad arguments.
  REQUIRE(StatusErrno(loop->AddFdHandler(sp.fd[0], EPOLLET, [](uint32_t) {}).status()) == EINVAL);
  REQUIRE(StatusErrno(loop->AddFdHandler(-1, EPOLLIN, [](uint32_t) {}).status()) == EBADF);
}

TEST_CASE("fd handler: a libnbd-style session drives its own direction from the callback",
          "[event_loop]") {
  // The session writes a request when writable, then waits for the reply (readable), the way
  // nbd_aio_get_direction + nbd_aio_notify_write/read are used. The callback changes its own
  // interest and finally resets its handler.
  auto loop = MakeLoop();
  SocketPair sp;
  FdHandler handler;
  int state = 0;  // 0: send request, 1: wait for reply, 2: done
  auto h = loop->AddFdHandler(sp.fd[0], EPOLLOUT, [&](uint32_t revents) {
    if (state == 0 && (revents & EPOLLOUT)) {
      REQUIRE(write(sp.fd[0], "req", 3) == 3);
      state = 1;
      REQUIRE(handler.SetEvents(EPOLLIN).ok());
    } else if (state == 1 && (revents & EPOLLIN)) {
      char buf[8];
      REQUIRE(read(sp.fd[0], buf, sizeof(buf)) == 3);
      state = 2;
      handler.Reset();  // from inside its own callback
    }
  });
  REQUIRE(h.ok());
  handler = std::move(*h);
  REQUIRE_FALSE(h->active());  // moved from
  // The peer answers once the request arrived.
  auto peer = loop->AddFdHandler(sp.fd[1], EPOLLIN, [&](uint32_t) {
    char buf[8];
    if (read(sp.fd[1], buf, sizeof(buf)) == 3) REQUIRE(write(sp.fd[1], "rep", 3) == 3);
  });
  REQUIRE(peer.ok());
  REQUIRE(RunFor(*loop, [&] { return state == 2; }));
  REQUIRE_FALSE(handler.active());
  REQUIRE_FALSE(InEpoll(*loop, sp.fd[0]));
}

TEST_CASE("changing a handler's interest while a wait on the same fd is pending", "[event_loop]") {
  auto loop = MakeLoop();
  SocketPair sp;
  int handler_in = 0, handler_out = 0;
  auto h = loop->AddFdHandler(sp.fd[0], EPOLLIN, [&](uint32_t r) {
    if (r & EPOLLIN) ++handler_in;
    if (r & EPOLLOUT) ++handler_out;
  });
  REQUIRE(h.ok());
  absl::StatusOr<uint32_t> waited = ErrnoStatus(EINPROGRESS, "not done");
  bool done = false;
  loop->Spawn(loop->WaitFd(sp.fd[0], EPOLLIN), [&](absl::StatusOr<uint32_t> r) {
    waited = std::move(r);
    done = true;
  });
  // The handler turns to OUT (and gets OUT), the reader keeps waiting for IN.
  REQUIRE(h->SetEvents(EPOLLOUT).ok());
  REQUIRE(RunFor(*loop, [&] { return handler_out > 0; }));
  REQUIRE_FALSE(done);
  // Paused handler: the pending wait still holds the fd's registration for IN.
  REQUIRE(h->SetEvents(0).ok());
  REQUIRE(InEpoll(*loop, sp.fd[0]));
  handler_out = 0;
  REQUIRE(write(sp.fd[1], "x", 1) == 1);
  REQUIRE(RunFor(*loop, [&] { return done; }));
  REQUIRE(waited.ok());
  REQUIRE(*waited == EPOLLIN);
  Spin(*loop);
  REQUIRE(handler_in == 0);
  REQUIRE(handler_out == 0);
  // Unregistering the handler while another wait is pending leaves that wait alone.
  done = false;
  loop->Spawn(loop->WaitFd(sp.fd[0], EPOLLOUT), [&](absl::StatusOr<uint32_t> r) {
    waited = std::move(r);
    done = true;
  });
  h->Reset();
  REQUIRE(RunFor(*loop, [&] { return done; }));
  REQUIRE(waited.ok());
  REQUIRE((*waited & EPOLLOUT));
}

TEST_CASE("WaitFd and Sleep are cancellable", "[event_loop]") {
  auto loop = MakeLoop();
  SocketPair sp;
  SECTION("a pending fd wait, cancelled from the loop") {
    std::stop_source stop;
    absl::StatusOr<uint32_t> r = 0u;
    bool done = false;
    loop->Spawn(loop->WaitFd(sp.fd[0], EPOLLIN, {.stop = stop.get_token()}),
                [&](absl::StatusOr<uint32_t> v) {
                  r = std::move(v);
                  done = true;
                });
    loop->AddTimer(EventLoop::NowNs() + 2'000'000, [&] { stop.request_stop(); });
    REQUIRE(RunFor(*loop, [&] { return done; }));
    REQUIRE(StatusErrno(r.status()) == ECANCELED);
    REQUIRE(loop->pending_waits() == 0);
    REQUIRE_FALSE(InEpoll(*loop, sp.fd[0]));
    // The fd still works for the next waiter.
    done = false;
    loop->Spawn(loop->WaitFd(sp.fd[0], EPOLLIN), [&](absl::StatusOr<uint32_t> v) {
      r = std::move(v);
      done = true;
    });
    REQUIRE(write(sp.fd[1], "x", 1) == 1);
    REQUIRE(RunFor(*loop, [&] { return done; }));
    REQUIRE(r.ok());
  }
  SECTION("cancelled from another thread, and one waiter of several") {
    std::stop_source stop;
    int cancelled = 0, woken = 0;
    auto count = [&](absl::StatusOr<uint32_t> v) {
      if (StatusErrno(v.status()) == ECANCELED) ++cancelled;
      if (v.ok()) ++woken;
    };
    loop->Spawn(loop->WaitFd(sp.fd[0], EPOLLIN, {.stop = stop.get_token()}), count);
    loop->Spawn(loop->WaitFd(sp.fd[0], EPOLLIN), count);
    std::thread t([&] {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
      stop.request_stop();
    });
    REQUIRE(RunFor(*loop, [&] { return cancelled == 1; }));
    t.join();
    REQUIRE(woken == 0);
    REQUIRE(loop->pending_waits() == 1);
    REQUIRE(write(sp.fd[1], "x", 1) == 1);
    REQUIRE(RunFor(*loop, [&] { return woken == 1; }));
    REQUIRE(cancelled == 1);
    REQUIRE(loop->pending_waits() == 0);
  }
  SECTION("a stop requested before the wait") {
    std::stop_source stop;
    stop.request_stop();
    absl::StatusOr<uint32_t> r = 0u;
    bool done = false;
    loop->Spawn(loop->WaitFd(sp.fd[0], EPOLLIN, {.stop = stop.get_token()}),
                [&](absl::StatusOr<uint32_t> v) {
                  r = std::move(v);
                  done = true;
                });
    REQUIRE(RunFor(*loop, [&] { return done; }));
    REQUIRE(StatusErrno(r.status()) == ECANCELED);
  }
  SECTION("a sleep") {
    std::stop_source stop;
    absl::Status st;
    bool done = false;
    int64_t start = EventLoop::NowNs();
    loop->Spawn(loop->Sleep(int64_t{60} * 1000000000, stop.get_token()), [&](absl::Status s) {
      st = std::move(s);
      done = true;
    });
    REQUIRE(loop->pending_waits() == 1);
    loop->AddTimer(EventLoop::NowNs() + 2'000'000, [&] { stop.request_stop(); });
    REQUIRE(RunFor(*loop, [&] { return done; }));
    REQUIRE(StatusErrno(st) == ECANCELED);
    REQUIRE(EventLoop::NowNs() - start < int64_t{10} * 1000000000);
    REQUIRE(loop->pending_waits() == 0);
    // Not cancelled: it sleeps its time and succeeds; a later stop finds nothing.
    std::stop_source later;
    start = EventLoop::NowNs();
    st = loop->Run(loop->Sleep(3'000'000, later.get_token()));
    REQUIRE(st.ok());
    REQUIRE(EventLoop::NowNs() - start >= 3'000'000);
    later.request_stop();
    Spin(*loop);
    REQUIRE(loop->pending_waits() == 0);
  }
}

TEST_CASE("WaitFd times out with ETIMEDOUT, and not after it was woken", "[event_loop]") {
  auto loop = MakeLoop();
  SocketPair sp;
  int64_t start = EventLoop::NowNs();
  auto r = loop->Run(loop->WaitFd(sp.fd[0], EPOLLIN, {.timeout_ns = 20'000'000}));
  REQUIRE(StatusErrno(r.status()) == ETIMEDOUT);
  REQUIRE(EventLoop::NowNs() - start >= 20'000'000);
  REQUIRE(loop->pending_waits() == 0);
  REQUIRE_FALSE(InEpoll(*loop, sp.fd[0]));
  // Woken before the timeout: the result is the event, and the timer is gone.
  REQUIRE(write(sp.fd[1], "x", 1) == 1);
  r = loop->Run(loop->WaitFd(sp.fd[0], EPOLLIN, {.timeout_ns = 10'000'000}));
  REQUIRE(r.ok());
  REQUIRE(*r == EPOLLIN);
  REQUIRE(loop->pending_waits() == 0);
  // Timeout and cancellation together: whichever comes first.
  std::stop_source stop;
  stop.request_stop();
  r = loop->Run(loop->WaitFd(sp.fd[1], EPOLLIN, {.timeout_ns = 1'000'000'000, .stop = stop.get_token()}));
  REQUIRE(StatusErrno(r.status()) == ECANCELED);
  REQUIRE(loop->pending_waits() == 0);
}

TEST_CASE("a reused fd number gets neither old callbacks nor old registrations", "[event_loop]") {
  auto loop = MakeLoop();
  SECTION("handler reset, then the fd closed and its number reused") {
    auto first = std::make_unique<SocketPair>();
    int number = first->fd[0];
    int old_calls = 0, new_calls = 0;
    auto old_h = loop->AddFdHandler(number, EPOLLIN, [&](uint32_t) { ++old_calls; });
    REQUIRE(old_h.ok());
    old_h->Reset();
    first.reset();
    SocketPair second;
    REQUIRE(second.fd[0] == number);  // the lowest free number comes back
    REQUIRE_FALSE(InEpoll(*loop, number));
    auto new_h = loop->AddFdHandler(number, EPOLLIN, [&](uint32_t) { ++new_calls; });
    REQUIRE(new_h.ok());
    REQUIRE(write(second.fd[1], "x", 1) == 1);
    REQUIRE(RunFor(*loop, [&] { return new_calls > 0; }));
    REQUIRE(old_calls == 0);
  }
  SECTION("the fd closed while its handler was registered") {
    auto first = std::make_unique<SocketPair>();
    int number = first->fd[0];
    int old_calls = 0, new_calls = 0;
    auto old_h = loop->AddFdHandler(number, EPOLLIN, [&](uint32_t) { ++old_calls; });
    REQUIRE(old_h.ok());
    first.reset();  // closed behind the handler's back
    SocketPair second;
    REQUIRE(second.fd[0] == number);
    // The number can be registered again (not EEXIST), for the new file only.
    auto new_h = loop->AddFdHandler(number, EPOLLIN, [&](uint32_t) { ++new_calls; });
    REQUIRE(new_h.ok());
    REQUIRE_FALSE(old_h->active());
    REQUIRE(StatusErrno(old_h->SetEvents(EPOLLOUT)) == EBADF);
    old_h->Reset();  // must not unregister the new file
    REQUIRE(write(second.fd[1], "x", 1) == 1);
    REQUIRE(RunFor(*loop, [&] { return new_calls > 0; }));
    REQUIRE(old_calls == 0);
  }
  SECTION("the old handler changes its interest after the number was reused") {
    auto first = std::make_unique<SocketPair>();
    int number = first->fd[0];
    int old_calls = 0;
    auto old_h = loop->AddFdHandler(number, EPOLLIN, [&](uint32_t) { ++old_calls; });
    REQUIRE(old_h.ok());
    first.reset();
    SocketPair second;
    REQUIRE(second.fd[0] == number);
    // Re-registering the number for the old handler would hand it the new file's events.
    REQUIRE(StatusErrno(old_h->SetEvents(EPOLLIN | EPOLLOUT)) == EBADF);
    REQUIRE_FALSE(InEpoll(*loop, number));
    REQUIRE(write(second.fd[1], "x", 1) == 1);
    Spin(*loop);
    REQUIRE(old_calls == 0);
    // And the number registers cleanly for the new file.
    int new_calls = 0;
    auto new_h = loop->AddFdHandler(number, EPOLLIN, [&](uint32_t) { ++new_calls; });
    REQUIRE(new_h.ok());
    REQUIRE(RunFor(*loop, [&] { return new_calls > 0; }));
  }
  SECTION("eventfds share one inode: the kernel's registration tells them apart") {
    int a = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    REQUIRE(a >= 0);
    int old_calls = 0, new_calls = 0;
    auto old_h = loop->AddFdHandler(a, EPOLLIN, [&](uint32_t) { ++old_calls; });
    REQUIRE(old_h.ok());
    close(a);
    int b = eventfd(1, EFD_CLOEXEC | EFD_NONBLOCK);  // readable at once
    REQUIRE(b == a);
    auto new_h = loop->AddFdHandler(b, EPOLLIN, [&](uint32_t) { ++new_calls; });
    REQUIRE(new_h.ok());
    REQUIRE(RunFor(*loop, [&] { return new_calls > 0; }));
    REQUIRE(old_calls == 0);
    REQUIRE_FALSE(old_h->active());
    new_h->Reset();
    close(b);
  }
  SECTION("a wait on an fd closed and reused fails with EBADF; new waits work") {
    auto first = std::make_unique<SocketPair>();
    int number = first->fd[0];
    absl::StatusOr<uint32_t> old_r = 0u, new_r = 0u;
    bool old_done = false, new_done = false;
    loop->Spawn(loop->WaitFd(number, EPOLLIN), [&](absl::StatusOr<uint32_t> r) {
      old_r = std::move(r);
      old_done = true;
    });
    first.reset();
    SocketPair second;
    REQUIRE(second.fd[0] == number);
    loop->Spawn(loop->WaitFd(number, EPOLLIN), [&](absl::StatusOr<uint32_t> r) {
      new_r = std::move(r);
      new_done = true;
    });
    REQUIRE(RunFor(*loop, [&] { return old_done; }));
    REQUIRE(StatusErrno(old_r.status()) == EBADF);
    REQUIRE_FALSE(new_done);
    REQUIRE(write(second.fd[1], "x", 1) == 1);
    REQUIRE(RunFor(*loop, [&] { return new_done; }));
    REQUIRE(new_r.ok());
    REQUIRE(*new_r == EPOLLIN);
    REQUIRE(loop->pending_waits() == 0);
  }
}

bool Readable(int fd) {
  struct pollfd p = {fd, POLLIN, 0};
  return poll(&p, 1, 0) == 1 && (p.revents & POLLIN);
}

TEST_CASE("kicks make the loop fd readable until an iteration consumes them", "[event_loop]") {
  auto loop = MakeLoop();
  SocketPair sp;
  // Without watched fds a non-blocking iteration skips epoll_wait; with one it polls. Both
  // must consume a kick, or an embedder polling fd() would spin.
  bool watch = GENERATE(false, true);
  INFO("an fd handler registered: " << watch);
  FdHandler h;
  if (watch) {
    auto r = loop->AddFdHandler(sp.fd[0], EPOLLIN, [](uint32_t) {});
    REQUIRE(r.ok());
    h = std::move(*r);
  }
  REQUIRE(loop->Idle() == !watch);
  REQUIRE_FALSE(Readable(loop->fd()));
  loop->Kick();
  loop->Kick();  // a burst: one wake-up
  REQUIRE(Readable(loop->fd()));
  REQUIRE(loop->RunOnce(false));
  REQUIRE_FALSE(Readable(loop->fd()));
  loop->Kick();  // and the next kick after that is not lost
  REQUIRE(Readable(loop->fd()));
  loop->RunOnce(false);
  REQUIRE_FALSE(Readable(loop->fd()));

  // A post from another thread wakes the loop whether or not a kick is outstanding.
  for (bool kicked : {false, true}) {
    if (kicked) loop->Kick();
    bool ran = false;
    std::thread t([&] { loop->Post([&] { ran = true; }); });
    t.join();
    REQUIRE(Readable(loop->fd()));
    REQUIRE(RunFor(*loop, [&] { return ran; }));
    loop->RunOnce(false);
    REQUIRE_FALSE(Readable(loop->fd()));
  }
}

TEST_CASE("a non-blocking iteration without watched fds still runs what is due", "[event_loop]") {
  auto loop = MakeLoop();
  REQUIRE(loop->Idle());
  // Ready coroutines, posts and timers are all found without epoll.
  bool resumed = false;
  auto yielder = [&]() -> Task<void> {
    co_await loop->Yield();
    resumed = true;
  };
  loop->Spawn(yielder());
  REQUIRE_FALSE(loop->Idle());
  REQUIRE(loop->RunOnce(false));
  REQUIRE(resumed);
  bool fired = false;
  loop->AddTimer(EventLoop::NowNs(), [&] { fired = true; });
  REQUIRE_FALSE(loop->Idle());  // a timer is pending
  REQUIRE(RunFor(*loop, [&] { return fired; }));
  REQUIRE(loop->Idle());
  REQUIRE_FALSE(Readable(loop->fd()));  // the expired timerfd was consumed too
  bool slept = false;
  auto sleeper = [&]() -> Task<void> {
    co_await loop->Sleep(1000000);
    slept = true;
  };
  loop->Spawn(sleeper());
  REQUIRE_FALSE(loop->Idle());
  REQUIRE(RunFor(*loop, [&] { return slept; }));
  REQUIRE(loop->Idle());
}

}  // namespace
}  // namespace libblock
