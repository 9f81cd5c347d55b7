// The core request path (core/io.cc): padding and read-modify-write, max_transfer splits,
// zero-fill past EOF, request serialisation, write-zeroes/FUA/discard fallbacks, flush
// generations, detect-zeroes, bounds, drain, close with requests in flight.
#include <catch2/catch.hpp>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/backend.h"
#include "core/graph.h"
#include "test_drivers.h"
#include "test_support.h"
#include "util/status.h"

namespace libblock {
namespace {

using testing::DataOf;
using testing::StatsOf;
using testing::TestProtoStats;

struct Fixture : testing::GraphEnv {
  std::unique_ptr<Backend> be;
  Node* proto = nullptr;

  // A backend on test-proto (optionally under other layers given in `opts`).
  explicit Fixture(const std::string& opts, BackendOptions bo = {}) : GraphEnv(testing::TestRegistry()) {
    be = MustOpenBackend(opts, std::move(bo));
    for (Node* n : graph.nodes()) {
      if (n->driver().name == "test-proto") proto = n;
    }
    REQUIRE(proto);
  }
  TestProtoStats& stats() { return StatsOf(*proto); }
  std::vector<uint8_t>& data() { return DataOf(*proto); }
};

std::vector<uint8_t> Pattern(size_t n, uint32_t seed) {
  std::vector<uint8_t> v(n);
  std::mt19937 rng(seed);
  for (auto& b : v) b = static_cast<uint8_t>(rng());
  return v;
}

TEST_CASE("unaligned requests are padded to the request alignment", "[io]") {
  Fixture f("driver=test-proto,size=64k,align=4096");
  std::vector<uint8_t> shadow(65536, 0);
  std::mt19937 rng(1);
  for (int i = 0; i < 200; ++i) {
    int64_t off = rng() % 60000;
    int64_t len = 1 + rng() % 5000;
    std::vector<uint8_t> buf = Pattern(static_cast<size_t>(len), static_cast<uint32_t>(i));
    REQUIRE(f.be->PwriteSync(off, buf.data(), len).ok());
    std::memcpy(shadow.data() + off, buf.data(), static_cast<size_t>(len));
    int64_t roff = rng() % 60000, rlen = 1 + rng() % 5000;
    std::vector<uint8_t> back(static_cast<size_t>(rlen));
    REQUIRE(f.be->PreadSync(roff, back.data(), rlen).ok());
    REQUIRE(std::memcmp(back.data(), shadow.data() + roff, static_cast<size_t>(rlen)) == 0);
  }
  REQUIRE(f.stats().misaligned == 0);
  REQUIRE(f.data() == shadow);
}

TEST_CASE("concurrent unaligned writes into shared blocks all survive", "[io]") {
  Fixture f("driver=test-proto,size=16k,align=4096");
  // 64 writers, each owning a distinct 64-byte slice; slices share blocks, so every write
  // is a read-modify-write of a block another writer is modifying at the same time.
  constexpr int kWriters = 64;
  int done = 0, failed = 0;
  std::vector<std::vector<uint8_t>> bufs(kWriters);
  auto writer = [&](int i) -> Task<void> {
    bufs[i].assign(64, static_cast<uint8_t>(i + 1));
    IoVec v(bufs[i].data(), 64);
    absl::Status st = co_await f.be->Write(i * 100 + 7, 64, v);
    if (!st.ok()) ++failed;
    ++done;
  };
  for (int i = 0; i < kWriters; ++i) f.loop->Spawn(writer(i));
  f.loop->RunUntil([&] { return done == kWriters; });
  REQUIRE(failed == 0);
  for (int i = 0; i < kWriters; ++i) {
    for (int b = 0; b < 64; ++b) REQUIRE(f.data()[i * 100 + 7 + b] == i + 1);
  }
}

TEST_CASE("requests are split at max_transfer", "[io]") {
  Fixture f("driver=test-proto,size=1M,align=512,max-transfer=65536");
  std::vector<uint8_t> buf = Pattern(1 << 20, 7);
  REQUIRE(f.be->PwriteSync(0, buf.data(), buf.size()).ok());
  std::vector<uint8_t> back(buf.size());
  REQUIRE(f.be->PreadSync(0, back.data(), back.size()).ok());
  REQUIRE(back == buf);
  REQUIRE(f.stats().largest == 65536);
  REQUIRE(f.stats().writes == 16);
  REQUIRE(f.stats().misaligned == 0);
}

TEST_CASE("reads past the end of a node return zeroes", "[io]") {
  Fixture f("driver=test-proto,size=10000,align=4096");
  std::fill(f.data().begin(), f.data().end(), 0xee);
  Child* c = f.be->root_child();
  std::vector<uint8_t> buf(8192, 0xaa);
  // [8192, 16384): one aligned block holds the tail of the node, the next is past its end.
  REQUIRE(f.loop->Run(c->Pread(8192, buf.data(), 8192)).ok());
  for (int i = 0; i < 10000 - 8192; ++i) REQUIRE(buf[i] == 0xee);
  for (int i = 10000 - 8192; i < 8192; ++i) REQUIRE(buf[i] == 0);
  REQUIRE(f.stats().reads == 1);  // the block past the end was never asked for
  // The backend refuses the same read: it is beyond the device.
  REQUIRE(StatusErrno(f.be->PreadSync(8192, buf.data(), 8192)) == EIO);
}

TEST_CASE("bounds and permissions are enforced before the driver", "[io]") {
  Fixture f("driver=test-proto,size=64k");
  uint8_t buf[512] = {};
  REQUIRE(StatusErrno(f.be->PreadSync(-1, buf, 512)) == EIO);
  REQUIRE(StatusErrno(f.be->PwriteSync(INT64_MAX - 100, buf, 512)) == EIO);
  REQUIRE(StatusErrno(f.be->PwriteSync(65536 - 256, buf, 512)) == EIO);  // beyond the device
  // write-unchanged needs the write-unchanged (or write) permission
  Fixture ro("driver=test-proto,size=64k", {.read_only = true});
  IoVec v(buf, 512);
  absl::Status st = ro.loop->Run(ro.be->root_child()->Write(0, 512, v, kReqWriteUnchanged));
  REQUIRE(StatusErrno(st) == EPERM);
  // growing a node needs the resize permission on the edge
  st = f.loop->Run(f.be->root_child()->Write(65536, 512, v));
  REQUIRE(StatusErrno(st) == EPERM);
  REQUIRE(f.stats().writes == 0);
  Fixture grow("driver=test-proto,size=64k", {.resize = true, .allow_write_beyond_eof = true});
  REQUIRE(grow.be->PwriteSync(65536, buf, 512).ok());
  REQUIRE(grow.be->size() == 65536 + 512);
}

TEST_CASE("serialising requests exclude overlapping ones in arrival order", "[io]") {
  Fixture f("driver=test-proto,size=64k", {}); 
  Fixture slow("driver=test-delay,ns=2000000,file.driver=test-proto,file.size=64k");
  std::vector<std::string> order;
  uint8_t a[4096], b[4096], c[4096];
  memset(a, 1, sizeof a);
  memset(b, 2, sizeof b);
  memset(c, 3, sizeof c);
  Child* root = slow.be->root_child();
  auto write = [&](uint8_t* buf, int64_t off, ReqFlags flags, std::string name) -> Task<void> {
    IoVec v(buf, 4096);
    absl::Status st = co_await root->Write(off, 4096, v, flags);
    order.push_back(st.ok() ? name : name + ":" + std::to_string(StatusErrno(st)));
  };
  // A plain write is in flight; a serialising one overlapping it must wait for it; a plain
  // write arriving after the serialising one, overlapping it, must wait too; a NO_WAIT
  // serialising request fails immediately with EBUSY.
  slow.loop->Spawn(write(a, 0, 0, "a"));
  slow.loop->Spawn(write(b, 2048, kReqSerialising, "b"));
  slow.loop->Spawn(write(c, 4096, 0, "c"));
  slow.loop->Spawn(write(c, 0, kReqSerialising | kReqNoWait, "d"));
  slow.loop->RunUntil([&] { return order.size() == 4; });
  REQUIRE(order == std::vector<std::string>{"d:" + std::to_string(EBUSY), "a", "b", "c"});
  auto& data = DataOf(*slow.proto);
  REQUIRE(data[0] == 1);
  REQUIRE(data[2048] == 2);
  REQUIRE(data[4096] == 3);
  REQUIRE(data[6143] == 3);
}

TEST_CASE("a driver that asks for it gets overlapping writes one at a time", "[io]") {
  for (bool serialise : {false, true}) {
    INFO("serialise-writes=" << serialise);
    Fixture f(std::string("driver=test-proto,size=64k,write-latency-ns=1000000,serialise-writes=") +
              (serialise ? "on" : "off"));
    std::vector<uint8_t> a(8192, 1), b(8192, 2), c(4096, 3);
    int done = 0;
    auto write = [&](std::vector<uint8_t>& buf, int64_t off) -> Task<void> {
      IoVec v(buf.data(), buf.size());
      absl::Status st = co_await f.be->Write(off, static_cast<int64_t>(buf.size()), v);
      REQUIRE(st.ok());
      ++done;
    };
    f.loop->Spawn(write(a, 0));
    f.loop->Spawn(write(b, 4096));   // overlaps a
    f.loop->Spawn(write(c, 32768));  // overlaps nothing: never waits
    f.loop->RunUntil([&] { return done == 3; });
    REQUIRE(f.stats().overlapping_in_flight == (serialise ? 0 : 1));
    // With serialisation the later write lands last, whatever the timing.
    if (serialise) REQUIRE(f.data()[4096] == 2);
    REQUIRE(f.data()[0] == 1);
    REQUIRE(f.data()[32768] == 3);
  }
}

TEST_CASE("write-zeroes uses the driver when it can and falls back otherwise", "[io]") {
  SECTION("driver support: aligned middle to the driver, unaligned edges by RMW") {
    Fixture f("driver=test-proto,size=64k,align=4096,has-zeroes=on");
    std::fill(f.data().begin(), f.data().end(), 0xff);
    REQUIRE(f.loop->Run(f.be->WriteZeroes(1000, 20000)).ok());
    for (int i = 0; i < 65536; ++i) REQUIRE(f.data()[i] == ((i >= 1000 && i < 21000) ? 0 : 0xff));
    REQUIRE(f.stats().zero_ranges == std::vector<std::pair<int64_t, int64_t>>{{4096, 16384}});
    REQUIRE(f.stats().misaligned == 0);
  }
  SECTION("no driver support: zero buffers are written") {
    Fixture f("driver=test-proto,size=64k,align=512");
    std::fill(f.data().begin(), f.data().end(), 0xff);
    REQUIRE(f.loop->Run(f.be->WriteZeroes(100, 30000)).ok());
    for (int i = 0; i < 65536; ++i) REQUIRE(f.data()[i] == ((i >= 100 && i < 30100) ? 0 : 0xff));
    REQUIRE(f.stats().zero_writes == 0);
    REQUIRE(f.stats().writes > 0);
    // ...unless the caller wants no slow path
    absl::Status st = f.loop->Run(f.be->WriteZeroes(0, 4096, kReqNoFallback));
    REQUIRE(StatusErrno(st) == ENOTSUP);
  }
  SECTION("may-unmap from a backend reaches the driver whatever its discard option") {
    Fixture f("driver=test-proto,size=64k,has-zeroes=on");
    REQUIRE(f.loop->Run(f.be->WriteZeroes(0, 4096, kReqMayUnmap)).ok());
    Fixture g("driver=test-proto,size=64k,has-zeroes=on,discard=unmap");
    REQUIRE(g.loop->Run(g.be->WriteZeroes(0, 4096, kReqMayUnmap)).ok());
    REQUIRE(f.stats().zero_writes == 1);
    REQUIRE(g.stats().zero_writes == 1);
  }
}

TEST_CASE("FUA is passed down or emulated with a flush", "[io]") {
  uint8_t buf[4096] = {1};
  Fixture native("driver=test-proto,size=64k,fua=on", {.writethrough = true});
  REQUIRE(native.be->PwriteSync(0, buf, sizeof buf).ok());
  REQUIRE(native.stats().write_flags == std::vector<uint32_t>{kReqFua});
  REQUIRE(native.stats().flushes == 0);
  Fixture emulated("driver=test-proto,size=64k", {.writethrough = true});
  REQUIRE(emulated.be->PwriteSync(0, buf, sizeof buf).ok());
  REQUIRE(emulated.be->PwriteSync(4096, buf, sizeof buf).ok());
  REQUIRE(emulated.stats().write_flags == std::vector<uint32_t>{0, 0});
  REQUIRE(emulated.stats().flushes == 2);
  Fixture writeback("driver=test-proto,size=64k");
  REQUIRE(writeback.be->PwriteSync(0, buf, sizeof buf).ok());
  REQUIRE(writeback.stats().flushes == 0);
}

TEST_CASE("flushes are skipped when nothing was written since the last one", "[io]") {
  Fixture f("driver=raw,file.driver=test-proto,file.size=64k");
  uint8_t buf[512] = {};
  REQUIRE(f.loop->Run(f.be->Flush()).ok());
  REQUIRE(f.stats().flushes == 0);
  REQUIRE(f.be->PwriteSync(0, buf, sizeof buf).ok());
  REQUIRE(f.loop->Run(f.be->Flush()).ok());
  REQUIRE(f.loop->Run(f.be->Flush()).ok());
  REQUIRE(f.stats().flushes == 1);
}

TEST_CASE("discard follows the node's discard policy and alignment", "[io]") {
  // has-discard declares the driver capability; the generic node option "discard" defaults
  // to ignore at the top of the graph, so nothing reaches the driver.
  Fixture ignore("driver=test-proto,size=64k,align=4096,has-discard=on");
  REQUIRE(ignore.loop->Run(ignore.be->Discard(0, 65536)).ok());
  REQUIRE(ignore.stats().discards == 0);
  testing::GraphEnv env(testing::TestRegistry());
  auto be = env.MustOpenBackend("driver=raw,discard=unmap,file.driver=test-proto,file.size=64k,"
                                "file.align=4096,file.has-discard=on");
  Node* proto = be->root()->primary_child()->node();
  REQUIRE(env.Discard(*be, 1000, 20000).ok());
  REQUIRE(StatsOf(*proto).discards == 1);  // only the aligned interior [4096, 20480)
  REQUIRE(StatsOf(*proto).misaligned == 0);
  REQUIRE(env.Discard(*be, 100, 200).ok());  // no whole block: nothing to do
  REQUIRE(StatsOf(*proto).discards == 1);
}

TEST_CASE("detect-zeroes turns zero writes into write-zeroes", "[io]") {
  std::vector<uint8_t> zeroes(8192, 0), data(8192, 9);
  Fixture on("driver=test-proto,size=64k,has-zeroes=on,detect-zeroes=on");
  REQUIRE(on.be->PwriteSync(0, zeroes.data(), zeroes.size()).ok());
  REQUIRE(on.be->PwriteSync(8192, data.data(), data.size()).ok());
  REQUIRE(on.stats().zero_writes == 1);
  REQUIRE(on.stats().writes == 1);
  Fixture off("driver=test-proto,size=64k,has-zeroes=on");
  REQUIRE(off.be->PwriteSync(0, zeroes.data(), zeroes.size()).ok());
  REQUIRE(off.stats().zero_writes == 0);
}

TEST_CASE("a drained backend queues new requests, close cancels them", "[io]") {
  Fixture f("driver=test-delay,ns=1000000,file.driver=test-proto,file.size=64k");
  uint8_t buf[512] = {};
  std::vector<int> results;
  auto read = [&]() -> Task<void> {
    IoVec v(buf, 512);
    absl::Status st = co_await f.be->Read(0, 512, v);
    results.push_back(StatusErrno(st));
  };
  f.loop->Spawn(read());
  f.be->DrainBegin();  // waits for the read in flight
  REQUIRE(results == std::vector<int>{0});
  f.loop->Spawn(read());
  f.loop->Spawn(read());
  for (int i = 0; i < 5; ++i) f.loop->RunOnce(false);
  REQUIRE(results.size() == 1);  // queued behind the drain
  f.be->DrainEnd();
  f.loop->RunUntil([&] { return results.size() == 3; });
  REQUIRE(results == std::vector<int>{0, 0, 0});
  f.be->DrainBegin();
  f.loop->Spawn(read());
  REQUIRE(f.be->Close().ok());
  REQUIRE(results.back() == ECANCELED);
}

TEST_CASE("closing with 64 requests in flight completes every one of them", "[io]") {
  Fixture f("driver=test-delay,ns=2000000,file.driver=test-proto,file.size=1M");
  constexpr int kN = 64;
  int ok = 0, finished = 0;
  std::vector<std::vector<uint8_t>> bufs(kN);
  auto io = [&](int i) -> Task<void> {
    bufs[i].assign(4096, static_cast<uint8_t>(i));
    IoVec v(bufs[i].data(), 4096);
    absl::Status st;
    if (i % 2) {
      st = co_await f.be->Write(i * 4096, 4096, v);
    } else {
      st = co_await f.be->Read(i * 4096, 4096, v);
    }
    if (st.ok()) ++ok;
    ++finished;
  };
  for (int i = 0; i < kN; ++i) f.loop->Spawn(io(i));
  REQUIRE(f.be->in_flight() == kN);
  Node* proto = f.proto;
  std::vector<uint8_t> data_copy;
  REQUIRE(f.be->Close().ok());
  REQUIRE(finished == kN);
  REQUIRE(ok == kN);
  REQUIRE(f.loop->pending_waits() == 0);
  REQUIRE(f.graph.nodes().empty());  // the tree was closed with the backend
  (void)proto;
}

TEST_CASE("block status passes through filters and reports EOF", "[io]") {
  Fixture f("driver=raw,offset=4096,file.driver=test-proto,file.size=64k");
  auto st = f.loop->Run(f.be->GetBlockStatus(0, 1 << 20));
  REQUIRE(StatusErrno(st.status()) == EIO);  // past the device
  st = f.loop->Run(f.be->GetBlockStatus(0, 65536 - 4096));
  REQUIRE(st.ok());
  REQUIRE(st->bytes == 65536 - 4096);
  REQUIRE(st->file_node() == f.proto);
  REQUIRE(st->map == 4096);
  REQUIRE((st->flags & kStatusData));
  REQUIRE((st->flags & kStatusAllocated));
  REQUIRE((st->flags & kStatusEof));
}

TEST_CASE("concurrent unaligned write-zeroes into one block both survive", "[io]") {
  // Write-zeroes without driver support falls back to read-modify-write of the partial
  // blocks; like a padded write, that must serialise against overlapping requests, or two
  // zeroings of different bytes of one block each write back the other's stale bytes.
  Fixture f("driver=test-proto,size=16k,align=4096,write-latency-ns=1000000");
  std::fill(f.data().begin(), f.data().end(), 0xff);
  int done = 0, failed = 0;
  auto zero = [&](int64_t off) -> Task<void> {
    absl::Status st = co_await f.be->WriteZeroes(off, 512);
    if (!st.ok()) ++failed;
    ++done;
  };
  f.loop->Spawn(zero(0));
  f.loop->Spawn(zero(512));
  f.loop->RunUntil([&] { return done == 2; });
  REQUIRE(failed == 0);
  for (int i = 0; i < 1024; ++i) REQUIRE(f.data()[i] == 0);
  for (int i = 1024; i < 4096; ++i) REQUIRE(f.data()[i] == 0xff);
}

TEST_CASE("an unaligned write-zeroes without fallback is refused before anything is zeroed", "[io]") {
  // QEMU's bdrv_co_pwritev_part refuses NO_FALLBACK requests that are not aligned to the
  // request alignment up front (ENOTSUP): the aligned part is not zeroed first.
  Fixture f("driver=test-proto,size=64k,align=4096,has-zeroes=on");
  std::fill(f.data().begin(), f.data().end(), 0xff);
  REQUIRE(StatusErrno(f.loop->Run(f.be->WriteZeroes(0, 5000, kReqNoFallback))) == ENOTSUP);
  REQUIRE(f.stats().zero_writes == 0);
  for (int i = 0; i < 65536; ++i) REQUIRE(f.data()[i] == 0xff);
}

TEST_CASE("closing a node flushes what changed in it since the last flush", "[io]") {
  // QEMU's bdrv_close flushes every node it closes. Changes made while the graph is taken
  // apart (here: preallocate gives its preallocation back when its parent detaches, after
  // the backend's own flush) must still reach the disk.
  {
    Fixture f("driver=preallocate,prealloc-size=64k,prealloc-align=4k,file.driver=test-proto,"
              "file.size=0,file.has-zeroes=on",
              {.resize = true, .allow_write_beyond_eof = true});
    std::vector<uint8_t> buf(4096, 7);
    REQUIRE(f.be->PwriteSync(0, buf.data(), 4096).ok());
    REQUIRE(f.data().size() > 4096);  // preallocated
    REQUIRE(f.be->Close().ok());
  }
  const testing::TestProtoStats& closed = testing::LastClosedStats();
  REQUIRE(closed.truncates == 1);  // the preallocation was dropped...
  REQUIRE(closed.flushed_since_truncate);  // ...and made durable before the node went away
}

}  // namespace
}  // namespace libblock
