// The null-co and null-aio protocols: size, read-zeroes, block status, latency-ns,
// synchronous vs asynchronous completion, the filename rule, and many requests in flight.
// The same answers compared with qemu-img live in tests/interop/null_interop_test.cc (which
// skips, exit 77, without qemu-img).
#include <algorithm>
#include <catch2/catch.hpp>
#include <string>
#include <vector>

#include "core/backend.h"
#include "core/event_loop.h"
#include "core/graph.h"
#include "core/options.h"
#include "test_support.h"
#include "util/status.h"

namespace libblock {
namespace {

using testing::GraphEnv;

const char* const kDrivers[] = {"null-co", "null-aio"};

TEST_CASE("null size: 1 GiB by default, or the size option", "[null]") {
  GraphEnv f;
  for (std::string drv : kDrivers) {
    INFO(drv);
    auto be = f.MustOpenBackend("driver=" + drv);
    REQUIRE(be->size() == 1073741824);
    REQUIRE(be->root()->driver().name == drv);
    REQUIRE(be->root()->filename() == drv + "://");
    for (std::string size : {"0", "512", "1M", "3G", "1T"}) {
      auto sized = f.MustOpenBackend("driver=" + drv + ",size=" + size);
      REQUIRE(sized->size() == static_cast<int64_t>(*ParseSize(size)));
    }
    // Reads and writes through a backend stop at the size.
    auto small = f.MustOpenBackend("driver=" + drv + ",size=4096");
    std::string buf(1024, 'x');
    REQUIRE(StatusErrno(small->PreadSync(3584, buf.data(), 1024)) == EIO);
    REQUIRE(StatusErrno(small->PwriteSync(4096, buf.data(), 1)) == EIO);
  }
}

TEST_CASE("null reads leave the buffer alone unless read-zeroes is on", "[null]") {
  GraphEnv f;
  for (std::string drv : kDrivers) {
    INFO(drv);
    auto off = f.MustOpenBackend("driver=" + drv);
    std::string buf(65536 + 7, '\xaa');
    REQUIRE(off->PreadSync(12345, buf.data(), static_cast<int64_t>(buf.size())).ok());
    REQUIRE_BYTES(buf, std::string(buf.size(), '\xaa'));
    auto on = f.MustOpenBackend("driver=" + drv + ",read-zeroes=on");
    REQUIRE(on->PreadSync(12345, buf.data(), static_cast<int64_t>(buf.size())).ok());
    REQUIRE_BYTES(buf, std::string(buf.size(), '\0'));
    // A vectored read zeroes every element.
    std::string a(100, '\xaa'), b(300, '\xaa');
    IoVec v;
    v.Append(a.data(), a.size());
    v.Append(b.data(), b.size());
    REQUIRE(f.loop->Run(on->Read(0, 400, v)).ok());
    REQUIRE_BYTES(a, std::string(100, '\0'));
    REQUIRE_BYTES(b, std::string(300, '\0'));
    // Writes, zero writes, discard and flush all succeed and change nothing.
    std::string data(4096, '\x5c');
    for (Backend* be : {off.get(), on.get()}) {
      REQUIRE(be->PwriteSync(0, data.data(), 4096).ok());
      REQUIRE(be->PwriteSync(1, data.data(), 4095, kReqFua).ok());
      REQUIRE(f.loop->Run(be->WriteZeroes(8192, 1 << 20, kReqMayUnmap)).ok());
      REQUIRE(f.loop->Run(be->Discard(0, 1 << 20)).ok());
      REQUIRE(f.loop->Run(be->Flush()).ok());
    }
    buf.assign(4096, '\xaa');
    REQUIRE(off->PreadSync(0, buf.data(), 4096).ok());
    REQUIRE_BYTES(buf, std::string(4096, '\xaa'));
    REQUIRE(on->PreadSync(0, buf.data(), 4096).ok());
    REQUIRE_BYTES(buf, std::string(4096, '\0'));
  }
}

TEST_CASE("null block status says zero only with read-zeroes", "[null]") {
  GraphEnv f;
  for (std::string drv : kDrivers) {
    INFO(drv);
    auto off = f.MustOpenBackend("driver=" + drv + ",size=1M");
    auto s = f.loop->Run(off->GetBlockStatus(4096, 65536));
    REQUIRE(s.ok());
    REQUIRE((s->flags & (kStatusZero | kStatusData | kStatusAllocated)) == 0);
    REQUIRE(s->bytes == 65536);
    auto on = f.MustOpenBackend("driver=" + drv + ",size=1M,read-zeroes=on");
    s = f.loop->Run(on->GetBlockStatus(4096, 65536));
    REQUIRE(s.ok());
    REQUIRE((s->flags & kStatusZero) != 0);
    REQUIRE((s->flags & kStatusData) == 0);
    REQUIRE((s->flags & kStatusOffsetValid) != 0);
    REQUIRE(s->map == 4096);
    REQUIRE(s->file_node() == on->root());
    // The last extent reaches the end of the device.
    s = f.loop->Run(on->GetBlockStatus(1048576 - 512, 512));
    REQUIRE(s.ok());
    REQUIRE((s->flags & kStatusEof) != 0);
  }
}

TEST_CASE("null latency-ns delays each request by at least the latency", "[null]") {
  GraphEnv f;
  const int64_t latency = 3'000'000;  // 3 ms
  for (std::string drv : kDrivers) {
    INFO(drv);
    auto be = f.MustOpenBackend("driver=" + drv + ",latency-ns=" + std::to_string(latency));
    std::string buf(512, '\0');
    int64_t t0 = EventLoop::NowNs();
    REQUIRE(be->PreadSync(0, buf.data(), 512).ok());
    int64_t t1 = EventLoop::NowNs();
    REQUIRE(t1 - t0 >= latency);
    REQUIRE(be->PwriteSync(0, buf.data(), 512).ok());
    int64_t t2 = EventLoop::NowNs();
    REQUIRE(t2 - t1 >= latency);
    REQUIRE(f.loop->Run(be->WriteZeroes(0, 4096)).ok());
    REQUIRE(EventLoop::NowNs() - t2 >= latency);
    // A delayed request is not complete before the loop has run its timer.
    bool done = false;
    absl::Status result;
    auto read = [&]() -> Task<void> {
      IoVec v(buf.data(), 512);
      result = co_await be->Read(0, 512, v);
      done = true;
    };
    f.loop->Spawn(read());
    REQUIRE_FALSE(done);
    f.loop->RunUntil([&] { return done; });
    REQUIRE(result.ok());
  }
  auto bad = f.OpenBackend("driver=null-co,latency-ns=-1");
  REQUIRE_FALSE(bad.ok());
  REQUIRE(std::string(bad.status().message()).find("latency-ns") != std::string::npos);
}

TEST_CASE("null-co completes in the caller, null-aio from the event loop", "[null]") {
  GraphEnv f;
  auto co = f.MustOpenBackend("driver=null-co,read-zeroes=on");
  auto aio = f.MustOpenBackend("driver=null-aio,read-zeroes=on");
  std::string buf(4096, '\xaa');
  bool done = false;
  absl::Status result;
  auto read = [&](Backend& be) -> Task<void> {
    IoVec v(buf.data(), buf.size());
    result = co_await be.Read(0, 4096, v);
    done = true;
  };
  f.loop->Spawn(read(*co));
  REQUIRE(done);
  REQUIRE(result.ok());
  REQUIRE_BYTES(buf, std::string(4096, '\0'));

  buf.assign(4096, '\xaa');
  done = false;
  f.loop->Spawn(read(*aio));
  REQUIRE_FALSE(done);
  REQUIRE(aio->root()->in_flight() == 1);
  REQUIRE(buf == std::string(4096, '\xaa'));  // not touched before completion
  f.loop->RunUntil([&] { return done; });
  REQUIRE(result.ok());
  REQUIRE_BYTES(buf, std::string(4096, '\0'));
  REQUIRE(aio->root()->in_flight() == 0);
}

TEST_CASE("null accepts only its own URI as filename", "[null]") {
  GraphEnv f;
  struct Case {
    std::string filename, opts, message;
  };
  std::vector<Case> cases = {
      {"null-co://foo", "", "The only allowed filename for this driver is 'null-co://'"},
      {"null-aio://x", "", "The only allowed filename for this driver is 'null-aio://'"},
      {"", "driver=null-co,filename=null-aio://", "The only allowed filename for this driver is 'null-co://'"},
  };
  for (const Case& c : cases) {
    INFO(c.filename << " " << c.opts);
    auto be = f.OpenBackend(c.opts, {}, c.filename);
    REQUIRE_FALSE(be.ok());
    REQUIRE(be.status().message() == c.message);
  }
  // The URI itself works, with or without an explicit driver.
  for (std::string drv : kDrivers) {
    auto be = f.MustOpenBackend("driver=" + drv, {}, drv + "://");
    REQUIRE(be->root()->driver().name == drv);
    auto by_name = f.MustOpenBackend("", {.read_only = true}, drv + "://");
    REQUIRE(by_name->size() == 1073741824);
  }
}

TEST_CASE("64 concurrent requests on null all complete", "[null]") {
  for (std::string drv : kDrivers) {
    for (std::string latency : {"0", "200000"}) {
      INFO(drv << " latency-ns=" << latency);
      GraphEnv f;
      auto be = f.MustOpenBackend("driver=" + drv + ",read-zeroes=on,latency-ns=" + latency);
      constexpr int kN = 64;
      std::vector<std::string> bufs(kN, std::string(4096, '\xaa'));
      int done = 0, failed = 0;
      auto io = [&](int i) -> Task<void> {
        IoVec v(bufs[i].data(), 4096);
        // (No co_await inside ?: — GCC 12 evaluates every arm's co_await.)
        absl::Status st;
        if (i % 3 == 0) {
          st = co_await be->Write(i * 4096, 4096, v);
        } else if (i % 3 == 1) {
          st = co_await be->Read(i * 4096, 4096, v);
        } else {
          st = co_await be->WriteZeroes(i * 4096, 4096);
        }
        if (!st.ok()) ++failed;
        ++done;
      };
      for (int i = 0; i < kN; ++i) f.loop->Spawn(io(i));
      bool async = drv == "null-aio" || latency != "0";
      if (async) {
        // All of them are in flight at once.
        REQUIRE(done == 0);
        REQUIRE(be->root()->in_flight() == kN);
        REQUIRE(be->in_flight() == kN);
      } else {
        REQUIRE(done == kN);
      }
      f.loop->RunUntil([&] { return done == kN; });
      REQUIRE(failed == 0);
      REQUIRE(be->root()->in_flight() == 0);
      for (int i = 0; i < kN; ++i) {
        INFO("request " << i);
        bool expected = bufs[i] == std::string(4096, i % 3 == 1 ? '\0' : '\xaa');
        REQUIRE(expected);
      }
    }
  }
}

}  // namespace
}  // namespace libblock
