// The mapping engine (core/mapping.cc) over test-map, an in-memory table format
// (tests/unit/test_drivers.h): reads of every mapping kind, allocating writes with
// copy-on-write from the backing file, compressed, zero and old data clusters, subclusters,
// concurrent writers against a reference, compressed writes and hostile blobs, write-zeroes
// and discard with partial clusters, block status, Abort and CheckDataWrite.
#include <catch2/catch.hpp>
#include <cstdlib>
#include <cstring>
#include <new>
#include <random>
#include <string>
#include <vector>

#include "core/backend.h"
#include "core/block_status.h"
#include "core/graph.h"
#include "core/mapping.h"
#include "test_drivers.h"
#include "test_support.h"
#include "util/status.h"

// Heap allocations made by this thread while counting (the 4 KiB read path test).
namespace {
thread_local bool g_counting = false;
thread_local long g_allocations = 0;
}  // namespace

void* operator new(std::size_t n) {
  if (g_counting) ++g_allocations;
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
  if (g_counting) ++g_allocations;
  return std::malloc(n ? n : 1);
}
// Every form that frees what the two above allocate (the array and aligned forms keep the
// library's own pairs, which sanitizers check against each other). GCC sees malloc inlined
// into a replaced operator new and std::free in the replaced delete, and warns of a mismatch
// that is not there.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
#pragma GCC diagnostic pop

namespace libblock {
namespace {

using testing::DataOf;
using testing::MapEntryOf;
using testing::MapStatsOf;
using testing::StatsOf;
using Kind = testing::TestMapEntry::Kind;
constexpr int64_t kKiB = 1024;

// A test-map image over a test-proto file (empty at first), with a test-proto backing file of
// `backing_size` bytes filled with a non-zero pattern (none when empty). `ref` mirrors what
// the guest must read.
struct MapEnv : testing::GraphEnv {
  std::unique_ptr<Backend> be;
  Node* fmt = nullptr;
  Node* file = nullptr;
  Node* backing = nullptr;
  std::string ref;

  explicit MapEnv(const std::string& fmt_opts, const std::string& backing_size = "",
                  int64_t size = 1 << 20, const std::string& file_opts = "")
      : GraphEnv(testing::TestRegistry()) {
    std::string opts = "driver=test-map,size=" + std::to_string(size) +
                       ",file.driver=test-proto,file.size=0";
    if (!file_opts.empty()) opts += "," + file_opts;
    if (!backing_size.empty()) opts += ",backing.driver=test-proto,backing.size=" + backing_size;
    if (!fmt_opts.empty()) opts += "," + fmt_opts;
    be = MustOpenBackend(opts);
    for (Node* n : graph.nodes()) {
      if (n->driver().name == "test-map") fmt = n;
    }
    REQUIRE(fmt);
    file = fmt->FindChild("file")->node();
    ref.assign(static_cast<size_t>(size), '\0');
    if (Child* b = fmt->FindChild("backing")) {
      backing = b->node();
      std::string pattern = testing::NonZeroRandomBytes(DataOf(*backing).size(), 99);
      std::memcpy(DataOf(*backing).data(), pattern.data(), pattern.size());
      std::memcpy(ref.data(), pattern.data(), std::min(pattern.size(), ref.size()));
    }
  }

  void Put(int64_t offset, const std::string& data, ReqFlags flags = 0) {
    absl::Status st = be->PwriteSync(offset, data.data(), static_cast<int64_t>(data.size()), flags);
    INFO(st.ToString());
    REQUIRE(st.ok());
    ref.replace(static_cast<size_t>(offset), data.size(), data);
  }
  void ZeroRef(int64_t offset, int64_t bytes) {
    std::memset(ref.data() + offset, 0, static_cast<size_t>(bytes));
  }
  // The whole guest reads as `ref`.
  void Verify() {
    std::string all = Read(*be, 0, static_cast<int64_t>(ref.size()));
    REQUIRE_BYTES(all, ref);
  }
  testing::TestMapStats& map_stats() { return MapStatsOf(*fmt); }
  testing::TestProtoStats& file_stats() { return StatsOf(*file); }
  testing::TestMapEntry& entry(int64_t cluster) { return MapEntryOf(*fmt, cluster); }
  std::string FileBytes(int64_t offset, int64_t bytes) {
    std::vector<uint8_t>& d = DataOf(*file);
    std::string out(static_cast<size_t>(bytes), '\0');
    for (int64_t i = 0; i < bytes && offset + i < static_cast<int64_t>(d.size()); ++i) {
      out[static_cast<size_t>(i)] = static_cast<char>(d[static_cast<size_t>(offset + i)]);
    }
    return out;
  }
  BlockStatus Status(int64_t offset, int64_t bytes) {
    bytes = std::min<int64_t>(bytes, static_cast<int64_t>(ref.size()) - offset);
    absl::StatusOr<BlockStatus> st = loop->Run(be->GetBlockStatus(offset, bytes));
    INFO(st.status().ToString());
    REQUIRE(st.ok());
    return *st;
  }
};

std::string Bytes(size_t n, uint32_t seed) { return testing::NonZeroRandomBytes(n, seed); }

// ---- reads ---------------------------------------------------------------------------------------

TEST_CASE("every mapping kind reads what it stands for", "[mapping]") {
  // Backing file shorter than the image: unallocated ranges past its end read as zeroes.
  MapEnv e("", "200k");
  e.Verify();  // all unallocated: backing, then zeroes past 200k
  REQUIRE(e.map_stats().allocations == 0);
  e.Put(0, Bytes(65536, 1));  // data
  REQUIRE(e.entry(0).kind == Kind::kData);
  REQUIRE(e.Zero(*e.be, 65536, 65536).ok());  // a zero cluster hides the backing file
  e.ZeroRef(65536, 65536);
  REQUIRE(e.entry(1).kind == Kind::kZero);
  e.Verify();
  // A read spanning data, zero, unallocated-from-backing and unallocated-past-backing pieces.
  std::string part = e.Read(*e.be, 60000, 300000);
  REQUIRE_BYTES(part, e.ref.substr(60000, 300000));
  // Reading data through the engine reaches the file once, straight into the caller's buffer.
  int reads = e.file_stats().reads;
  std::string one = e.Read(*e.be, 4096, 4096);
  REQUIRE_BYTES(one, e.ref.substr(4096, 4096));
  REQUIRE(e.file_stats().reads == reads + 1);
}

TEST_CASE("without a backing file unallocated ranges read as zeroes", "[mapping]") {
  MapEnv e("");
  std::string all = e.Read(*e.be, 0, 1 << 20);
  REQUIRE(all == std::string(1 << 20, '\0'));
  REQUIRE(e.file_stats().reads == 0);
}

// Heap allocations per 4 KiB read of `be`, after a warm-up.
long AllocationsPerRead(testing::GraphEnv& env, Backend& be) {
  std::vector<uint8_t> buf(4096);
  for (int i = 0; i < 10; ++i) REQUIRE(be.PreadSync(i * 4096, buf.data(), 4096).ok());
  constexpr int kReads = 200;
  g_allocations = 0;
  g_counting = true;
  for (int i = 0; i < kReads; ++i) {
    absl::Status st = be.PreadSync((i % 16) * 4096, buf.data(), 4096);
    if (!st.ok()) break;
  }
  g_counting = false;
  return g_allocations / kReads;
}

TEST_CASE("a 4 KiB read of allocated data allocates nothing but Map's frame", "[mapping][perf]") {
  // The same request path over raw (no engine) is the baseline; the engine may add the
  // coroutine frame of the format's Map and whatever holding a RangeLock range costs (the
  // request path holds one per request too; it allocates while the lock keeps a std::list).
  MapEnv e("");
  e.Put(0, Bytes(65536, 30));
  testing::GraphEnv raw_env(testing::TestRegistry());
  auto raw = raw_env.MustOpenBackend("driver=raw,file.driver=test-proto,file.size=1M");
  long engine = AllocationsPerRead(e, *e.be);
  long plain = AllocationsPerRead(raw_env, *raw);
  RangeLock<GuestOffset> lock(65536);
  g_allocations = 0;
  g_counting = true;
  bool entered = false;
  {
    RangeLock<GuestOffset>::Range r;
    lock.Add(r, GuestOffset(0), 4096, false);
    entered = lock.TryWait(r);
  }
  g_counting = false;
  REQUIRE(entered);
  long range_cost = g_allocations;
  INFO("engine " << engine << ", raw " << plain << ", one range " << range_cost);
  REQUIRE(engine <= plain + 1 + range_cost);
}

// ---- allocating writes and copy-on-write ------------------------------------------------------------

TEST_CASE("a partial-cluster write copies the rest of the cluster from the backing file",
          "[mapping][cow]") {
  MapEnv e("", "1M");
  int writes = e.file_stats().writes;
  e.Put(1000, Bytes(3000, 2));
  e.Verify();
  // One allocation of the whole cluster, written as one child write: head + data + tail.
  REQUIRE(e.map_stats().allocated == std::vector<std::pair<int64_t, int64_t>>{{0, 65536}});
  REQUIRE(e.file_stats().writes == writes + 1);
  REQUIRE(e.map_stats().commits == 1);
  REQUIRE(e.entry(0).kind == Kind::kData);
  REQUIRE_BYTES(e.FileBytes(e.entry(0).host, 65536), e.ref.substr(0, 65536));
  // The second write to the cluster is in place.
  e.Put(5000, Bytes(100, 3));
  REQUIRE(e.map_stats().allocations == 1);
  e.Verify();
}

TEST_CASE("a write spanning clusters is one allocation and one child write", "[mapping][cow]") {
  MapEnv e("", "1M");
  int writes = e.file_stats().writes;
  e.Put(1000, Bytes(200000, 4));
  REQUIRE(e.map_stats().allocated == std::vector<std::pair<int64_t, int64_t>>{{0, 262144}});
  REQUIRE(e.file_stats().writes == writes + 1);
  e.Verify();
}

TEST_CASE("allocations that come back shorter are continued", "[mapping][cow]") {
  MapEnv e("max-alloc=1", "1M");
  e.Put(1000, Bytes(200000, 5));
  REQUIRE(e.map_stats().allocations == 4);
  REQUIRE(e.map_stats().commits == 4);
  e.Verify();
  for (int c = 0; c < 4; ++c) REQUIRE(e.entry(c).kind == Kind::kData);
  REQUIRE(e.entry(4).kind == Kind::kUnallocated);
}

TEST_CASE("zero parts need not be written where the new host space reads as zeroes",
          "[mapping][cow]") {
  // No backing file: the copy-on-write head and tail are zeroes and the allocation is past
  // the end of the file, so only the data is written.
  MapEnv e("");
  e.Put(10000, Bytes(4096, 6));
  REQUIRE(e.file_stats().largest == 4096);
  e.Verify();
  // With a backing file they are not zeroes: the whole cluster is written.
  MapEnv b("", "1M");
  b.Put(10000, Bytes(4096, 6));
  REQUIRE(b.file_stats().largest == 65536);
  b.Verify();
}

TEST_CASE("copy-on-write from a zero cluster does not show the backing file", "[mapping][cow]") {
  MapEnv e("", "1M");
  REQUIRE(e.Zero(*e.be, 0, 131072).ok());
  e.ZeroRef(0, 131072);
  e.Put(70000, Bytes(1000, 7));
  REQUIRE(e.entry(1).kind == Kind::kData);
  REQUIRE(e.entry(0).kind == Kind::kZero);
  e.Verify();
}

TEST_CASE("copy-on-write from old data of a shared cluster", "[mapping][cow]") {
  MapEnv e("", "1M");
  e.Put(0, Bytes(131072, 8));
  int64_t old_host = e.entry(0).host;
  std::string old_file = e.FileBytes(old_host, 65536);
  testing::ShareAllClusters(*e.fmt);
  e.Put(30000, Bytes(100, 9));
  REQUIRE(e.entry(0).kind == Kind::kData);
  REQUIRE(e.entry(0).host != old_host);
  // The old cluster is untouched (a snapshot still sees it).
  REQUIRE_BYTES(e.FileBytes(old_host, 65536), old_file);
  e.Verify();
}

TEST_CASE("copy-on-write from a compressed cluster", "[mapping][cow][compressed]") {
  for (std::string codec : {"deflate", "zlib", "zstd"}) {
    INFO(codec);
    MapEnv e("codec=" + codec, "1M");
    std::string compressible(65536, 'x');
    for (size_t i = 0; i < compressible.size(); i += 100) compressible[i] = 'y';
    e.Put(65536, compressible, kReqCompressed);
    REQUIRE(e.entry(1).kind == Kind::kCompressed);
    e.Put(65536 + 777, Bytes(333, 10));
    REQUIRE(e.entry(1).kind == Kind::kData);
    e.Verify();
  }
}

TEST_CASE("subclusters: only the touched subclusters are allocated and copied",
          "[mapping][subclusters]") {
  // 64 KiB clusters of 32 subclusters of 2 KiB, as extended L2.
  MapEnv e("subclusters=32", "1M");
  e.Put(3000, Bytes(100, 11));  // inside subcluster 1
  REQUIRE(e.map_stats().allocated == std::vector<std::pair<int64_t, int64_t>>{{2048, 2048}});
  REQUIRE(e.file_stats().largest == 2048);
  REQUIRE(e.entry(0).alloc_mask == 0x2);
  // Subcluster 0 still shows the backing file: block status says so.
  BlockStatus s = e.Status(0, 65536);
  REQUIRE(s.bytes == 2048);
  REQUIRE(s.depth == 1);
  s = e.Status(2048, 65536);
  REQUIRE(s.bytes == 2048);
  REQUIRE(s.depth == 0);
  REQUIRE((s.flags & kStatusOffsetValid));
  REQUIRE(s.map == e.entry(0).host + 2048);
  // More subclusters of the same cluster go into the same host cluster, without copying the
  // ones already there.
  int64_t host = e.entry(0).host;
  e.Put(10000, Bytes(5000, 12));  // subclusters 4..7
  REQUIRE(e.entry(0).host == host);
  REQUIRE(e.entry(0).alloc_mask == (0x2 | 0xf0));
  REQUIRE(e.map_stats().allocated.back() == std::pair<int64_t, int64_t>{8192, 8192});
  e.Verify();
  // A shared cluster is replaced by a new one: every subcluster is carried over.
  testing::ShareAllClusters(*e.fmt);
  e.Put(20000, Bytes(10, 13));
  REQUIRE(e.entry(0).host != host);
  REQUIRE(e.map_stats().allocated.back() == std::pair<int64_t, int64_t>{0, 65536});
  e.Verify();
}

TEST_CASE("subclusters: zero subclusters stay zero around a write", "[mapping][subclusters]") {
  MapEnv e("subclusters=16", "1M");
  REQUIRE(e.Zero(*e.be, 0, 65536).ok());
  e.ZeroRef(0, 65536);
  e.Put(4096 + 10, Bytes(50, 14));  // subcluster 1 (4 KiB subclusters)
  REQUIRE(e.map_stats().allocated == std::vector<std::pair<int64_t, int64_t>>{{4096, 4096}});
  REQUIRE(e.entry(0).alloc_mask == 0x2);
  REQUIRE(e.entry(0).zero_mask == (0xffffu & ~0x2u));
  e.Verify();
}

TEST_CASE("the last cluster of an image whose size is not cluster-aligned", "[mapping][cow]") {
  MapEnv e("", "1M", 100 * 1024);  // clusters 0 and 1, the second 36 KiB long
  e.Put(100 * 1024 - 512, Bytes(512, 15));
  e.Put(66000, Bytes(1000, 16));
  e.Verify();
}

TEST_CASE("encrypted data is transformed on its way to and from the file", "[mapping][crypt]") {
  MapEnv e("encrypt=on", "1M");
  std::string data = Bytes(4096, 17);
  e.Put(8192, data);
  e.Verify();
  int64_t host = e.entry(0).host;
  REQUIRE(e.FileBytes(host + 8192, 4096) != data);
  // Encrypted data has no host offset a reader could use.
  BlockStatus s = e.Status(0, 65536);
  REQUIRE((s.flags & kStatusData));
  REQUIRE_FALSE((s.flags & kStatusOffsetValid));
  e.Put(512, Bytes(1024, 18));  // in place
  e.Verify();
}

// ---- concurrency ---------------------------------------------------------------------------------

TEST_CASE("64 concurrent writers to adjacent ranges sharing clusters", "[mapping][concurrency]") {
  for (std::string opts : {"cluster-size=4k", "cluster-size=4k,subclusters=8", "max-alloc=1"}) {
    INFO(opts);
    // Child writes suspend, so allocations and copy-on-write interleave.
    MapEnv e(opts, "1M", 1 << 20, "file.write-latency-ns=20000");
    std::mt19937 rng(42);
    constexpr int kWriters = 64;
    // Writer i owns [start_i, start_i + len_i); the ranges are disjoint but most share a
    // cluster (or a subcluster) with their neighbours.
    std::vector<int64_t> start(kWriters), len(kWriters);
    int64_t pos = 0;
    for (int i = 0; i < kWriters; ++i) {
      start[i] = pos + rng() % 700;
      len[i] = 1 + rng() % 9000;
      pos = start[i] + len[i];
    }
    std::vector<std::string> bufs(kWriters);
    int done = 0, failed = 0;
    auto writer = [&](int i) -> Task<void> {
      IoVec v(bufs[i].data(), bufs[i].size());
      absl::Status st = co_await e.be->Write(start[i], len[i], v);
      if (!st.ok()) ++failed;
      ++done;
    };
    for (int i = 0; i < kWriters; ++i) {
      bufs[i] = Bytes(static_cast<size_t>(len[i]), 1000 + i);
      e.ref.replace(static_cast<size_t>(start[i]), bufs[i].size(), bufs[i]);
    }
    for (int i = 0; i < kWriters; ++i) e.loop->Spawn(writer(i));
    e.loop->RunUntil([&] { return done == kWriters; });
    REQUIRE(failed == 0);
    REQUIRE(e.map_stats().aborts == 0);
    REQUIRE(e.map_stats().corruptions == 0);
    e.Verify();
  }
}

TEST_CASE("64 concurrent writers to overlapping ranges", "[mapping][concurrency]") {
  MapEnv e("cluster-size=4k,subclusters=4", "1M", 256 * 1024, "file.write-latency-ns=20000");
  std::mt19937 rng(7);
  constexpr int kWriters = 64;
  std::vector<int64_t> start(kWriters), len(kWriters);
  std::vector<std::string> bufs(kWriters);
  std::string original = e.ref;
  int done = 0, failed = 0;
  // Every byte a writer writes names the writer: (i + 1) in the high bits, so the result
  // can be checked byte by byte even though overlapping writers race.
  auto writer = [&](int i) -> Task<void> {
    IoVec v(bufs[i].data(), bufs[i].size());
    absl::Status st = co_await e.be->Write(start[i], len[i], v);
    if (!st.ok()) ++failed;
    ++done;
  };
  for (int i = 0; i < kWriters; ++i) {
    start[i] = rng() % (200 * 1024);
    len[i] = 1 + rng() % 20000;
    bufs[i].assign(static_cast<size_t>(len[i]), static_cast<char>(i + 1));
  }
  for (int i = 0; i < kWriters; ++i) e.loop->Spawn(writer(i));
  e.loop->RunUntil([&] { return done == kWriters; });
  REQUIRE(failed == 0);
  std::string got = e.Read(*e.be, 0, 256 * 1024);
  for (int64_t b = 0; b < 256 * 1024; ++b) {
    uint8_t v = static_cast<uint8_t>(got[static_cast<size_t>(b)]);
    bool ok = false;
    bool covered = false;
    for (int i = 0; i < kWriters; ++i) {
      if (b >= start[i] && b < start[i] + len[i]) {
        covered = true;
        if (v == i + 1) ok = true;
      }
    }
    if (!covered) ok = v == static_cast<uint8_t>(original[static_cast<size_t>(b)]);
    if (!ok) FAIL("byte " << b << " is " << int(v) << ", which no writer wrote there");
  }
  REQUIRE(e.map_stats().corruptions == 0);
}

// ---- compressed writes ---------------------------------------------------------------------------

TEST_CASE("compressed writes round trip and decompress once per cluster",
          "[mapping][compressed]") {
  for (std::string codec : {"deflate", "zlib", "zstd"}) {
    INFO(codec);
    MapEnv e("codec=" + codec);
    std::string text;
    while (text.size() < 4 * 65536) text += "libblock compresses clusters " + std::to_string(text.size());
    text.resize(4 * 65536);
    e.Put(65536, text, kReqCompressed);  // four clusters in one request
    REQUIRE(e.map_stats().compressed_commits == 4);
    for (int c = 1; c <= 4; ++c) REQUIRE(e.entry(c).kind == Kind::kCompressed);
    // Blobs are packed: the second starts where the first ended.
    REQUIRE(e.entry(1).blob_bytes < 65536);
    BlockStatus s = e.Status(65536, 65536);
    REQUIRE((s.flags & kStatusCompressed));
    REQUIRE((s.flags & kStatusData));
    REQUIRE_FALSE((s.flags & kStatusOffsetValid));
    // Sequential 4 KiB reads of one cluster read (and decompress) its blob once.
    int reads = e.file_stats().reads;
    for (int64_t o = 65536; o < 2 * 65536; o += 4096) {
      std::string got = e.Read(*e.be, o, 4096);
      REQUIRE_BYTES(got, e.ref.substr(static_cast<size_t>(o), 4096));
    }
    REQUIRE(e.file_stats().reads == reads + 1);
    e.Verify();
    // Overwriting a compressed cluster invalidates what was cached of it.
    e.Put(65536 + 100, Bytes(10, 19));
    std::string got = e.Read(*e.be, 65536, 4096);
    REQUIRE_BYTES(got, e.ref.substr(65536, 4096));
  }
}

TEST_CASE("a cluster that does not shrink is stored uncompressed", "[mapping][compressed]") {
  MapEnv e("codec=zstd");
  e.Put(0, testing::RandomBytes(65536, 20), kReqCompressed);
  REQUIRE(e.map_stats().compressed_commits == 0);
  REQUIRE(e.map_stats().commits == 1);
  REQUIRE(e.entry(0).kind == Kind::kData);
  e.Verify();
}

TEST_CASE("compressed writes must cover whole clusters", "[mapping][compressed]") {
  MapEnv e("codec=deflate", "", 100 * 1024);
  std::string data(4096, 'a');
  REQUIRE(StatusErrno(e.be->PwriteSync(4096, data.data(), 4096, kReqCompressed)) == EINVAL);
  REQUIRE(StatusErrno(e.be->PwriteSync(0, data.data(), 4096, kReqCompressed)) == EINVAL);
  // The last cluster ends at the end of the image: compressed padded with zeroes.
  std::string tail(36 * 1024, 'b');
  e.Put(65536, tail, kReqCompressed);
  REQUIRE(e.entry(1).kind == Kind::kCompressed);
  e.Verify();
  // Without a codec the request path refuses the flag.
  MapEnv plain("");
  REQUIRE(StatusErrno(plain.be->PwriteSync(0, data.data(), 4096, kReqCompressed)) == ENOTSUP);
}

TEST_CASE("hostile compressed blobs fail the read, without crashing", "[mapping][compressed]") {
  for (std::string codec : {"deflate", "zstd"}) {
    INFO(codec);
    std::string data(65536, 'q');
    for (size_t i = 0; i < data.size(); i += 77) data[i] = static_cast<char>(i);
    auto fresh = [&](MapEnv& e) {
      e.Put(0, data, kReqCompressed);
      REQUIRE(e.entry(0).kind == Kind::kCompressed);
    };
    auto read_fails = [&](MapEnv& e) {
      std::string buf(4096, '\0');
      absl::Status st = e.be->PreadSync(0, buf.data(), 4096);
      INFO(st.ToString());
      REQUIRE(StatusErrno(st) == EIO);
      REQUIRE(e.map_stats().corruptions > 0);
    };
    {
      MapEnv e("codec=" + codec);
      fresh(e);
      // Garbage in the blob.
      std::vector<uint8_t>& f = DataOf(*e.file);
      for (int64_t i = 0; i < e.entry(0).blob_bytes && e.entry(0).host + i < (int64_t)f.size(); ++i) {
        f[static_cast<size_t>(e.entry(0).host + i)] ^= 0x5c;
      }
      read_fails(e);
    }
    {
      MapEnv e("codec=" + codec);
      fresh(e);
      e.entry(0).blob_bytes = 16;  // truncated
      read_fails(e);
    }
    {
      MapEnv e("codec=" + codec);
      fresh(e);
      e.entry(0).blob_bytes = int64_t{1} << 40;  // a huge stored length is refused outright
      read_fails(e);
    }
    {
      MapEnv e("codec=" + codec);
      fresh(e);
      e.entry(0).host = int64_t{1} << 30;  // past the end of the file
      read_fails(e);
    }
    {
      // One bad blob among several read (and decompressed) concurrently by one request.
      MapEnv e("codec=" + codec);
      std::string four = data + data + data + data;
      e.Put(0, four, kReqCompressed);
      e.entry(2).blob_bytes = 16;
      std::string buf(four.size(), '\0');
      REQUIRE(StatusErrno(e.be->PreadSync(0, buf.data(), 4 * 65536)) == EIO);
      e.entry(2).blob_bytes = 65536;  // more than enough again
      std::string got = e.Read(*e.be, 0, 4 * 65536);
      REQUIRE_BYTES(got, four);
    }
    {
      // A huge length below the engine's cap: the read is clipped to the file.
      MapEnv e("codec=" + codec);
      fresh(e);
      e.entry(0).blob_bytes = 32 << 20;
      std::string got = e.Read(*e.be, 0, 65536);
      REQUIRE_BYTES(got, data);
    }
  }
}

// ---- write-zeroes and discard ------------------------------------------------------------------------

TEST_CASE("write-zeroes: whole clusters become zero clusters, partial ones zero data",
          "[mapping][zero]") {
  MapEnv e("", "1M");
  e.Put(0, Bytes(4 * 65536, 21));
  REQUIRE(e.Zero(*e.be, 1000, 200000).ok());
  e.ZeroRef(1000, 200000);
  REQUIRE(e.entry(0).kind == Kind::kData);  // partial: zero data written
  REQUIRE(e.entry(1).kind == Kind::kZero);
  REQUIRE(e.entry(2).kind == Kind::kZero);
  REQUIRE(e.entry(3).kind == Kind::kData);
  e.Verify();
  // Partial data clusters cannot be zeroed efficiently.
  REQUIRE(StatusErrno(e.Zero(*e.be, 196608 + 100, 100, kReqNoFallback)) == ENOTSUP);
  // A part of a cluster whose rest reads as zeroes makes the whole cluster a zero cluster.
  MapEnv z("");
  REQUIRE(z.Zero(*z.be, 70000, 100, kReqNoFallback).ok());
  REQUIRE(z.entry(1).kind == Kind::kZero);
  REQUIRE(z.map_stats().allocations == 0);
  z.Verify();
}

TEST_CASE("write-zeroes falls back to zero data without zero clusters", "[mapping][zero]") {
  MapEnv e("zero-clusters=off", "1M");
  REQUIRE(StatusErrno(e.Zero(*e.be, 0, 65536, kReqNoFallback)) == ENOTSUP);
  e.Verify();  // nothing changed
  REQUIRE(e.Zero(*e.be, 0, 65536 + 5000).ok());
  e.ZeroRef(0, 65536 + 5000);
  REQUIRE(e.entry(0).kind == Kind::kData);
  REQUIRE(e.entry(1).kind == Kind::kData);
  e.Verify();
}

TEST_CASE("discard drops whole clusters only", "[mapping][discard]") {
  MapEnv e("discard=unmap", "1M");
  e.Put(0, Bytes(4 * 65536, 22));
  REQUIRE(e.Discard(*e.be, 1000, 200000).ok());
  REQUIRE(e.map_stats().discard_calls == 1);
  REQUIRE(e.entry(0).kind == Kind::kData);
  REQUIRE(e.entry(1).kind == Kind::kUnallocated);
  REQUIRE(e.entry(2).kind == Kind::kUnallocated);
  REQUIRE(e.entry(3).kind == Kind::kData);
  // Discarded clusters show the backing file again (test-map's rule, qcow2's too).
  std::memcpy(e.ref.data() + 65536, DataOf(*e.backing).data() + 65536, 131072);
  e.Verify();
  // Entirely inside one cluster: nothing is discarded.
  REQUIRE(e.Discard(*e.be, 196608 + 10, 1000).ok());
  REQUIRE(e.map_stats().discard_calls == 1);
}

// ---- block status ----------------------------------------------------------------------------------

TEST_CASE("block status over the engine and down the backing chain", "[mapping][block-status]") {
  MapEnv e("codec=deflate", "1M");
  e.Put(0, Bytes(65536, 23));                        // cluster 0: data
  REQUIRE(e.Zero(*e.be, 65536, 65536).ok());         // cluster 1: zero
  e.Put(3 * 65536, std::string(65536, 'c'), kReqCompressed);  // cluster 3: compressed
  Child* file_edge = e.fmt->FindChild("file");

  BlockStatus s = e.Status(0, 1 << 20);
  REQUIRE(s.bytes == 65536);
  REQUIRE((s.flags & (kStatusData | kStatusOffsetValid | kStatusAllocated)) ==
          (kStatusData | kStatusOffsetValid | kStatusAllocated));
  REQUIRE(s.file == file_edge);
  REQUIRE(s.map == e.entry(0).host);
  REQUIRE(s.depth == 0);

  s = e.Status(65536, 1 << 20);
  REQUIRE(s.bytes == 65536);
  REQUIRE((s.flags & (kStatusZero | kStatusAllocated)) == (kStatusZero | kStatusAllocated));
  REQUIRE_FALSE((s.flags & kStatusData));

  s = e.Status(2 * 65536, 1 << 20);  // unallocated: the backing file (depth 1) decides
  REQUIRE(s.bytes == 65536);
  REQUIRE(s.depth == 1);
  REQUIRE(s.file_node() == e.backing);

  s = e.Status(3 * 65536, 1 << 20);
  REQUIRE(s.bytes == 65536);
  REQUIRE((s.flags & (kStatusData | kStatusCompressed)) == (kStatusData | kStatusCompressed));

  s = e.Status(4 * 65536, 1 << 20);  // the rest: unallocated to the end
  REQUIRE(s.bytes == (1 << 20) - 4 * 65536);
  REQUIRE((s.flags & kStatusEof));

  // BlockStatusAbove with the overlay's own layer only (base = backing).
  absl::StatusOr<BlockStatus> above = e.loop->Run(
      BlockStatusAbove(*e.be->root_child(), e.backing, GuestOffset(2 * 65536), 65536));
  REQUIRE(above.ok());
  REQUIRE_FALSE((above->flags & kStatusAllocated));
  absl::StatusOr<AllocationAbove> alloc =
      e.loop->Run(IsAllocatedAbove(*e.be->root_child(), e.backing, GuestOffset(0), 65536));
  REQUIRE(alloc.ok());
  REQUIRE(alloc->allocated);
}

// ---- failures ---------------------------------------------------------------------------------------

TEST_CASE("a failing child write aborts the allocation", "[mapping][errors]") {
  MapEnv e("", "1M");
  testing::FailNextWrites(*e.file, 1);
  std::string data = Bytes(5000, 24);
  REQUIRE(StatusErrno(e.be->PwriteSync(1000, data.data(), 5000)) == EIO);
  REQUIRE(e.map_stats().aborts == 1);
  REQUIRE(e.map_stats().commits == 0);
  REQUIRE(e.entry(0).kind == Kind::kUnallocated);
  e.Verify();  // still the backing file
  e.Put(1000, data);  // and the next try works
  e.Verify();
}

TEST_CASE("CheckDataWrite refuses data writes onto metadata", "[mapping][errors]") {
  MapEnv e("metadata=64k,bad-alloc=on", "1M");
  std::string data = Bytes(4096, 25);
  absl::Status st = e.be->PwriteSync(0, data.data(), 4096);
  REQUIRE(StatusErrno(st) == EIO);
  REQUIRE_THAT(testing::Message(st), Catch::Contains("would overwrite metadata"));
  REQUIRE(e.map_stats().aborts == 1);
  REQUIRE(e.file_stats().writes == 0);
  // Compressed allocations are checked the same way.
  MapEnv c("codec=deflate,metadata=64k,bad-alloc=on");
  std::string z(65536, 'z');
  REQUIRE(StatusErrno(c.be->PwriteSync(0, z.data(), 65536, kReqCompressed)) == EIO);
  REQUIRE(c.map_stats().aborts == 1);
  REQUIRE(c.file_stats().writes == 0);
}

}  // namespace
}  // namespace libblock
