// Core prerequisites of the image formats: has-zero-init rules, block status above a base
// (filters and backing chains, recurse and compressed answers), request flags (advisory and
// mandatory), the range lock, the task group, strong offset types, and flush generations
// for metadata changed outside the request path.
#include <catch2/catch.hpp>
#include <cstring>
#include <functional>
#include <string>
#include <type_traits>
#include <vector>

#include "core/backend.h"
#include "core/block_status.h"
#include "core/graph.h"
#include "core/offset.h"
#include "core/range_lock.h"
#include "core/task_group.h"
#include "test_drivers.h"
#include "test_support.h"
#include "util/status.h"

namespace libblock {
namespace {

using testing::DataOf;
using testing::GraphEnv;
using testing::StatsOf;

std::unique_ptr<EventLoop> NewLoop() {
  absl::StatusOr<std::unique_ptr<EventLoop>> loop = EventLoop::Create();
  REQUIRE(loop.ok());
  return std::move(*loop);
}

// Runs `fn` as a coroutine on `loop` (waking coroutines needs a current loop).
void OnLoop(EventLoop& loop, const std::function<void()>& fn) {
  auto body = [&]() -> Task<void> {
    fn();
    co_return;
  };
  loop.Run(body());
}

Node* FindNode(Graph& graph, std::string_view driver) {
  for (Node* n : graph.nodes()) {
    if (n->driver().name == driver) return n;
  }
  return nullptr;
}

// ---- has-zero-init -----------------------------------------------------------------------------

TEST_CASE("has-zero-init: a cow child says no, filters forward, formats must say yes", "[zero-init]") {
  GraphEnv env(testing::TestRegistry());
  std::string img = env.dir.File("a.img");
  testing::WriteFile(img, std::string(65536, '\0'));
  std::string file = "file.driver=file,file.filename=" + img;
  auto has = [&](const std::string& opts) {
    auto be = env.MustOpenBackend(opts);
    return HasZeroInit(*be->root());
  };
  // Protocols and raw keep their answers.
  CHECK(has("driver=file,filename=" + img));
  CHECK(has("driver=raw," + file));
  CHECK_FALSE(has("driver=null-co,size=1M"));
  CHECK_FALSE(has("driver=raw,file.driver=null-co,file.size=1M"));
  // A format does not inherit its file's answer...
  CHECK_FALSE(has("driver=test-fmt," + file));
  // ...it answers for itself, unless a backing file shows through.
  CHECK(has("driver=test-fmt,zero-init=on," + file));
  CHECK_FALSE(has("driver=test-fmt,zero-init=on," + file +
                  ",backing.driver=test-proto,backing.size=64k"));
  CHECK_FALSE(has("driver=test-fmt," + file + ",backing.driver=test-proto,backing.size=64k"));
  // Filters forward to what they filter.
  CHECK(has("driver=test-delay,ns=0," + file));
  CHECK_FALSE(has("driver=test-delay,ns=0,file.driver=null-co,file.size=1M"));
  CHECK_FALSE(has("driver=test-delay,ns=0,file.driver=test-fmt,file.zero-init=on,"
                  "file.file.driver=file,file.file.filename=" + img +
                  ",file.backing.driver=test-proto,file.backing.size=64k"));
}

// ---- block status ------------------------------------------------------------------------------

struct Chain : GraphEnv {
  std::unique_ptr<Backend> be;
  Node* fmt = nullptr;
  Node* backing = nullptr;  // the backing file's node
  Node* file = nullptr;     // the format's file's node

  // A test-fmt (alloc=on) over a test-proto file and a test-proto backing file, optionally
  // under a test-delay filter. `fmt_opts` are extra test-fmt options.
  Chain(bool filter, const std::string& fmt_opts = "", const std::string& backing_size = "64k")
      : GraphEnv(testing::TestRegistry()) {
    std::string p = filter ? "file." : "";
    std::string opts = filter ? "driver=test-delay,ns=0,file.driver=test-fmt" : "driver=test-fmt";
    opts += "," + p + "alloc=on," + p + "file.driver=test-proto," + p + "file.size=64k";
    if (!backing_size.empty()) {
      opts += "," + p + "backing.driver=test-proto," + p + "backing.size=" + backing_size;
    }
    if (!fmt_opts.empty()) opts += "," + fmt_opts;
    be = MustOpenBackend(opts);
    fmt = FindNode(graph, "test-fmt");
    REQUIRE(fmt);
    file = fmt->FindChild("file")->node();
    if (Child* b = fmt->FindChild("backing")) backing = b->node();
  }
};

TEST_CASE("block status through a filter follows the backing chain", "[block-status]") {
  for (bool filter : {false, true}) {
    INFO("filter " << filter);
    Chain c(filter);
    std::fill(DataOf(*c.backing).begin(), DataOf(*c.backing).end(), 0xab);
    // Nothing written in the overlay: the backing file provides everything.
    auto st = c.loop->Run(c.be->GetBlockStatus(0, 65536));
    REQUIRE(st.ok());
    CHECK(st->bytes == 65536);
    CHECK(st->depth == 1);
    CHECK((st->flags & (kStatusData | kStatusAllocated | kStatusOffsetValid)) ==
          (kStatusData | kStatusAllocated | kStatusOffsetValid));
    CHECK(st->file_node() == c.backing);
    CHECK(st->layer->node() == c.backing);
    CHECK((st->flags & kStatusEof));
    // Reads agree.
    std::vector<uint8_t> buf(512);
    REQUIRE(c.be->PreadSync(1024, buf.data(), 512).ok());
    CHECK(buf[0] == 0xab);

    // A written range is the overlay's, read from its file through the "file" edge.
    std::vector<uint8_t> data(4096, 0x11);
    REQUIRE(c.be->PwriteSync(4096, data.data(), 4096).ok());
    st = c.loop->Run(c.be->GetBlockStatus(4096, 65536 - 4096));
    REQUIRE(st.ok());
    CHECK(st->bytes == 4096);
    CHECK(st->depth == 0);
    CHECK(st->file == c.fmt->FindChild("file"));
    CHECK(st->file_node() == c.file);
    CHECK(st->map == 4096);
    CHECK_FALSE((st->flags & kStatusEof));
    st = c.loop->Run(c.be->GetBlockStatus(8192, 65536 - 8192));
    REQUIRE(st.ok());
    CHECK(st->depth == 1);
    CHECK(st->bytes == 65536 - 8192);
  }
}

TEST_CASE("allocated above a base excludes the base", "[block-status]") {
  Chain c(true);
  std::vector<uint8_t> data(4096, 0x22);
  REQUIRE(c.be->PwriteSync(0, data.data(), 4096).ok());
  Child& top = *c.be->root_child();
  auto a = c.loop->Run(IsAllocatedAbove(top, c.backing, GuestOffset(0), 65536));
  REQUIRE(a.ok());
  CHECK(a->allocated);
  CHECK(a->bytes == 4096);
  CHECK(a->depth == 0);
  a = c.loop->Run(IsAllocatedAbove(top, c.backing, GuestOffset(4096), 65536 - 4096));
  REQUIRE(a.ok());
  CHECK_FALSE(a->allocated);
  CHECK(a->bytes == 65536 - 4096);
  // Without a base the backing file counts.
  a = c.loop->Run(IsAllocatedAbove(top, nullptr, GuestOffset(4096), 65536 - 4096));
  REQUIRE(a.ok());
  CHECK(a->allocated);
  CHECK(a->depth == 1);
  // The top itself as base: nothing is above it.
  auto s = c.loop->Run(BlockStatusAbove(top, c.be->root(), GuestOffset(0), 65536, true));
  REQUIRE(s.ok());
  CHECK((s->flags & ~kStatusEof) == 0);
  CHECK(s->bytes == 65536);
}

TEST_CASE("block status of unallocated ranges without a backing file, or past its end", "[block-status]") {
  {
    Chain c(false, "", /*backing_size=*/"");
    auto st = c.loop->Run(c.be->GetBlockStatus(0, 65536));
    REQUIRE(st.ok());
    CHECK((st->flags & kStatusZero));
    CHECK_FALSE((st->flags & kStatusAllocated));
    CHECK(st->depth == 0);
  }
  {
    Chain c(true, "", /*backing_size=*/"16k");
    // Beyond the backing file's end the overlay reads zeroes, and says so itself.
    auto st = c.loop->Run(c.be->GetBlockStatus(32768, 32768));
    REQUIRE(st.ok());
    CHECK((st->flags & kStatusZero));
    CHECK(st->depth == 0);
    // Straddling it: the backing file's part first.
    st = c.loop->Run(c.be->GetBlockStatus(8192, 65536 - 8192));
    REQUIRE(st.ok());
    CHECK(st->bytes == 8192);
    CHECK(st->depth == 1);
    CHECK((st->flags & kStatusData));
    std::vector<uint8_t> buf(65536, 1);
    REQUIRE(c.be->PreadSync(0, buf.data(), 65536).ok());
    CHECK(buf[32768] == 0);
  }
}

TEST_CASE("recurse answers ask the file whether the data reads as zeroes", "[block-status]") {
  GraphEnv env(testing::TestRegistry());
  for (bool recurse : {false, true}) {
    INFO("recurse " << recurse);
    auto be = env.MustOpenBackend(std::string("driver=test-fmt,alloc=on,recurse=") +
                                  (recurse ? "on" : "off") +
                                  ",file.driver=null-co,file.size=64k,file.read-zeroes=on");
    std::vector<uint8_t> data(4096, 0);
    REQUIRE(be->PwriteSync(0, data.data(), 4096).ok());
    auto st = env.loop->Run(be->GetBlockStatus(0, 65536));
    REQUIRE(st.ok());
    CHECK(st->bytes == 4096);
    CHECK((st->flags & kStatusData));
    CHECK((st->flags & kStatusOffsetValid));
    CHECK(((st->flags & kStatusZero) != 0) == recurse);
    CHECK_FALSE((st->flags & kStatusRecurse));  // internal to the drivers
  }
}

TEST_CASE("compressed answers pass through", "[block-status]") {
  Chain c(true, "file.compressed=on");
  std::vector<uint8_t> data(4096, 0x33);
  REQUIRE(c.be->PwriteSync(0, data.data(), 4096).ok());
  auto st = c.loop->Run(c.be->GetBlockStatus(0, 65536));
  REQUIRE(st.ok());
  CHECK(st->bytes == 4096);
  CHECK((st->flags & (kStatusData | kStatusCompressed | kStatusAllocated)) ==
        (kStatusData | kStatusCompressed | kStatusAllocated));
  CHECK_FALSE((st->flags & kStatusOffsetValid));
  CHECK(st->depth == 0);
}

// ---- request flags -----------------------------------------------------------------------------

TEST_CASE("a mandatory request flag the driver cannot honour fails the request", "[flags]") {
  GraphEnv env(testing::TestRegistry());
  std::vector<uint8_t> data(4096, 0x44);
  IoVec v(data.data(), data.size());
  {
    auto be = env.MustOpenBackend("driver=test-proto,size=64k");
    Node* proto = be->root();
    absl::Status st = env.loop->Run(be->Write(0, 4096, v, kReqCompressed));
    CHECK(StatusErrno(st) == ENOTSUP);
    CHECK(StatsOf(*proto).writes == 0);  // not silently written uncompressed
    CHECK(DataOf(*proto)[0] == 0);
    // Through a filter, the filtered node's capability is what counts.
    auto fbe = env.MustOpenBackend("driver=test-delay,ns=0,file.driver=test-proto,file.size=64k");
    CHECK(StatusErrno(env.loop->Run(fbe->Write(0, 4096, v, kReqCompressed))) == ENOTSUP);
    // Write-zeroes cannot be compressed at all.
    CHECK(StatusErrno(env.loop->Run(be->WriteZeroes(0, 4096, kReqCompressed))) == EINVAL);
  }
  {
    auto be = env.MustOpenBackend("driver=test-delay,ns=0,file.driver=test-proto,file.size=64k,"
                                  "file.compress=on");
    Node* proto = FindNode(env.graph, "test-proto");
    REQUIRE(env.loop->Run(be->Write(0, 4096, v, kReqCompressed)).ok());
    REQUIRE(StatsOf(*proto).write_flags.size() == 1);
    CHECK((StatsOf(*proto).write_flags[0] & kReqCompressed));
    CHECK(DataOf(*proto)[0] == 0x44);
  }
}

TEST_CASE("advisory request flags are emulated or dropped", "[flags]") {
  GraphEnv env(testing::TestRegistry());
  auto be = env.MustOpenBackend("driver=test-proto,size=64k");
  Node* proto = be->root();
  std::vector<uint8_t> data(4096, 0x55);
  IoVec v(data.data(), data.size());
  REQUIRE(env.loop->Run(be->Write(0, 4096, v, kReqFua)).ok());
  CHECK(StatsOf(*proto).write_flags.back() == 0);  // the driver did not declare FUA...
  CHECK(StatsOf(*proto).flushes == 1);             // ...so a flush made it durable
  REQUIRE(env.loop->Run(be->Write(0, 4096, v, kReqWriteUnchanged)).ok());
  CHECK(StatsOf(*proto).write_flags.back() == 0);
}

// ---- flush generations -------------------------------------------------------------------------

TEST_CASE("a metadata change outside the request path makes the next flush reach the driver", "[flush]") {
  GraphEnv env(testing::TestRegistry());
  auto be = env.MustOpenBackend("driver=test-proto,size=64k");
  Node* proto = be->root();
  std::vector<uint8_t> data(512, 1);
  REQUIRE(be->PwriteSync(0, data.data(), 512).ok());
  REQUIRE(env.loop->Run(be->Flush()).ok());
  CHECK(StatsOf(*proto).flushes == 1);
  REQUIRE(env.loop->Run(be->Flush()).ok());
  CHECK(StatsOf(*proto).flushes == 1);  // nothing changed: skipped
  proto->NoteMetadataChanged();          // e.g. a snapshot written by the driver itself
  REQUIRE(env.loop->Run(be->Flush()).ok());
  CHECK(StatsOf(*proto).flushes == 2);
  REQUIRE(env.loop->Run(be->Flush()).ok());
  CHECK(StatsOf(*proto).flushes == 2);
}

// ---- offsets -----------------------------------------------------------------------------------

TEST_CASE("guest and host offsets are distinct strong types", "[offset]") {
  static_assert(!std::is_convertible_v<GuestOffset, HostOffset>);
  static_assert(!std::is_convertible_v<HostOffset, GuestOffset>);
  static_assert(!std::is_convertible_v<int64_t, GuestOffset>);
  static_assert(!std::is_convertible_v<GuestOffset, int64_t>);
  static_assert(!std::is_constructible_v<HostOffset, GuestOffset>);
  GuestOffset g(65536 + 100);
  CHECK((g + 28).value() == 65536 + 128);
  CHECK(g.AlignDown(65536) == GuestOffset(65536));
  CHECK(g.AlignUp(65536) == GuestOffset(131072));
  CHECK(GuestOffset(65536).AlignUp(65536) == GuestOffset(65536));
  CHECK(g.OffsetInto(65536) == 100);
  CHECK(g - GuestOffset(65536) == 100);
  CHECK(HostOffset(5) < HostOffset(6));
}

// ---- range lock --------------------------------------------------------------------------------

TEST_CASE("range lock: granularity, conflicts and no-wait", "[range-lock]") {
  std::unique_ptr<EventLoop> loop_ptr = NewLoop();
  EventLoop& loop = *loop_ptr;
  RangeLock<HostOffset> lock(4096);
  RangeLock<HostOffset>::Range a, b, c;
  lock.Add(a, HostOffset(100), 10, /*exclusive=*/true);
  CHECK(a.offset() == HostOffset(0));
  CHECK(a.bytes() == 4096);
  REQUIRE(loop.Run(lock.Wait(a)).ok());
  CHECK(a.running());
  // A shared range in the same granule conflicts with the exclusive one; one elsewhere does not.
  lock.Add(b, HostOffset(4000), 8, false);
  CHECK(StatusErrno(loop.Run(lock.Wait(b, /*no_wait=*/true))) == EBUSY);
  REQUIRE(loop.Run(lock.Lock(c, HostOffset(8192), 4096, false)).ok());
  bool b_done = false;
  auto wait_b = [&]() -> Task<void> {
    absl::Status st = co_await lock.Wait(b);
    b_done = st.ok();
  };
  loop.Spawn(wait_b());  // runs until it suspends
  CHECK_FALSE(b_done);
  OnLoop(loop, [&] { a.Release(); });
  loop.RunUntil([&] { return b_done; });
  CHECK(b.running());
  CHECK(lock.size() == 2);
}

TEST_CASE("range lock: a widened range waits for later running ranges, without deadlock", "[range-lock]") {
  std::unique_ptr<EventLoop> loop_ptr = NewLoop();
  EventLoop& loop = *loop_ptr;
  RangeLock<GuestOffset> lock;  // granularity 1: the caller widens to its cluster size
  RangeLock<GuestOffset>::Range a, b;
  REQUIRE(loop.Run(lock.Lock(a, GuestOffset(0), 512, false)).ok());
  REQUIRE(loop.Run(lock.Lock(b, GuestOffset(1024), 512, false)).ok());  // later, both running
  std::vector<std::string> order;
  // a widens to its 64 KiB cluster: b (later, but running, and now overlapping) must finish
  // first.
  lock.Widen(a, 65536);
  CHECK(a.bytes() == 65536);
  CHECK(a.exclusive());
  CHECK_FALSE(a.running());
  bool a_done = false, b_done = false;
  auto wait_a = [&]() -> Task<void> {
    absl::Status st = co_await lock.Wait(a);
    order.push_back("a");
    a_done = st.ok();
  };
  auto wait_b = [&]() -> Task<void> {
    absl::Status st = co_await lock.Wait(b);
    order.push_back("b");
    b_done = st.ok();
  };
  loop.Spawn(wait_a());  // runs until it suspends: b is in its way
  CHECK_FALSE(a_done);
  // b widens too, while a waits for it: b is later than a, so b now waits for a, and a stops
  // counting b (it no longer runs). Neither deadlocks.
  OnLoop(loop, [&] { lock.Widen(b, 65536); });
  loop.Spawn(wait_b());
  loop.RunUntil([&] { return a_done; });
  CHECK_FALSE(b_done);
  OnLoop(loop, [&] { a.Release(); });
  loop.RunUntil([&] { return b_done; });
  CHECK(order == std::vector<std::string>{"a", "b"});
}

TEST_CASE("the request path serialises through the node's range lock", "[range-lock]") {
  GraphEnv env(testing::TestRegistry());
  auto be = env.MustOpenBackend("driver=test-proto,size=64k,align=4096,write-latency-ns=1000000");
  Node* proto = be->root();
  std::vector<uint8_t> d1(100, 1), d2(100, 2);
  int done = 0;
  auto write = [&](int64_t off, std::vector<uint8_t>& d) -> Task<void> {
    IoVec v(d.data(), d.size());
    absl::Status st = co_await be->Write(off, 100, v);
    if (st.ok()) ++done;
  };
  env.loop->Spawn(write(0, d1));
  env.loop->Spawn(write(200, d2));  // same 4 KiB block: a second read-modify-write
  CHECK(proto->request_ranges().size() == 2);
  CHECK(proto->request_ranges().has_exclusive());
  env.loop->RunUntil([&] { return done == 2; });
  CHECK(proto->request_ranges().size() == 0);
  CHECK(StatsOf(*proto).overlapping_in_flight == 0);
  CHECK(DataOf(*proto)[0] == 1);
  CHECK(DataOf(*proto)[200] == 2);
}

// ---- task group --------------------------------------------------------------------------------

TEST_CASE("task group joins every task and returns the first error", "[task-group]") {
  std::unique_ptr<EventLoop> loop_ptr = NewLoop();
  EventLoop& loop = *loop_ptr;
  int finished = 0;
  auto sub = [&](int64_t delay_ms, absl::Status result) -> Task<absl::Status> {
    if (delay_ms) co_await loop.Sleep(delay_ms * 1000000);
    ++finished;
    co_return result;
  };
  auto fan_out = [&]() -> Task<absl::Status> {
    TaskGroup group;
    group.Start(sub(3, ErrnoError(EINVAL, "late")));
    group.Start(sub(1, ErrnoError(EIO, "first")));
    group.Start(sub(2, absl::OkStatus()));
    group.Start(sub(0, absl::OkStatus()));  // completes before Start returns
    CHECK(group.started() == 4);
    absl::Status st = co_await group.Join();
    CHECK(group.running() == 0);
    co_return st;
  };
  absl::Status st = loop.Run(fan_out());
  CHECK(StatusErrno(st) == EIO);
  CHECK(std::string(st.message()) == "first");
  CHECK(finished == 4);  // the error did not abandon the others
  CHECK(loop.pending_waits() == 0);
}

TEST_CASE("task group bounds parallelism and lets tasks see a failure", "[task-group]") {
  std::unique_ptr<EventLoop> loop_ptr = NewLoop();
  EventLoop& loop = *loop_ptr;
  int running = 0, max_running = 0, skipped = 0;
  auto fan_out = [&]() -> Task<absl::Status> {
    TaskGroup group(/*max_parallel=*/2);
    auto sub = [&](int i) -> Task<absl::Status> {
      if (group.failed()) {
        ++skipped;
        co_return absl::OkStatus();
      }
      ++running;
      max_running = std::max(max_running, running);
      co_await loop.Sleep(200000);
      --running;
      if (i == 1) co_return ErrnoError(EIO, "sub-request 1 failed");
      co_return absl::OkStatus();
    };
    for (int i = 0; i < 8; ++i) co_await group.StartWhenFree(sub(i));
    absl::Status st = co_await group.Join();
    co_return st;
  };
  absl::Status st = loop.Run(fan_out());
  CHECK(StatusErrno(st) == EIO);
  CHECK(max_running == 2);
  CHECK(skipped > 0);
  CHECK(running == 0);
}

}  // namespace
}  // namespace libblock
