// The qcow2 driver: header feature bits (unknown incompatible features named from the table,
// corrupt and dirty bits, autoclear bits, lazy refcounts), runtime option errors with QEMU's
// texts, overlap checks marking the image corrupt, compressed writes (zlib, zstd), zero
// clusters and discard, has-zero-init. Images are made by qemu-img (qcow2 create is not this
// module's); tests skip without it. The data path across image variants is
// tests/cli/test_qcow2_io.py.
#include <catch2/catch.hpp>
#include <cstring>
#include <string>
#include <vector>

#include "core/backend.h"
#include "core/graph.h"
#include "core/node.h"
#include "formats/qcow2/qcow2_driver.h"
#include "test_support.h"
#include "util/endian.h"
#include "util/status.h"

namespace libblock {
namespace {

using testing::GraphEnv;
using testing::HaveProgram;
using testing::kKiB;
using testing::kMiB;
using testing::RandomBytes;
using testing::ReadFile;
using testing::Run;
using testing::WriteFile;

BackendOptions ReadOnly() {
  BackendOptions bo;
  bo.read_only = true;
  return bo;
}

std::string Opts(const std::string& path, const std::string& extra = "") {
  return "driver=qcow2," + (extra.empty() ? "" : extra + ",") + "file.driver=file,file.filename=" +
         path;
}

void QemuImg(const std::vector<std::string>& args) {
  std::vector<std::string> argv = {"qemu-img"};
  argv.insert(argv.end(), args.begin(), args.end());
  testing::CommandResult r = Run(argv);
  INFO(r.out);
  REQUIRE(r.exit_code == 0);
}

uint64_t HeaderField64(const std::string& path, size_t at) {
  std::string f = ReadFile(path);
  return LoadBe64(reinterpret_cast<const uint8_t*>(f.data()) + at);
}
void SetHeaderField64(const std::string& path, size_t at, uint64_t v) {
  std::string f = ReadFile(path);
  StoreBe64(reinterpret_cast<uint8_t*>(f.data()) + at, v);
  WriteFile(path, f);
}
constexpr size_t kIncompat = 72, kAutoclear = 88;

// qemu-io's "can't open device X: <message>" for `path`, or "" when it opened.
std::string QemuOpenError(const std::vector<std::string>& args) {
  std::vector<std::string> argv = {"qemu-io"};
  argv.insert(argv.end(), args.begin(), args.end());
  testing::CommandResult r = Run(argv);
  size_t at = r.out.find("can't open");
  if (at == std::string::npos) return "";
  at = r.out.find(": ", at);
  std::string msg = r.out.substr(at + 2);
  return msg.substr(0, msg.find('\n'));
}

void CheckClean(const std::string& path) {
  testing::CommandResult r = Run({"qemu-img", "check", path});
  INFO(r.out);
  REQUIRE(r.exit_code == 0);
  REQUIRE(r.out.find("No errors were found on the image.") != std::string::npos);
  REQUIRE(r.out.find("leaked") == std::string::npos);
}

void Compare(const std::string& a, const std::string& b_raw) {
  testing::CommandResult r = Run({"qemu-img", "compare", "-F", "raw", a, b_raw});
  INFO(r.out);
  REQUIRE(r.exit_code == 0);
}

TEST_CASE("unknown incompatible features refuse the open, named from the feature table",
          "[qcow2]") {
  LB_SKIP_UNLESS(HaveProgram("qemu-img"), "qemu-img is not installed");
  GraphEnv env;
  std::string path = env.dir.File("u.qcow2");
  QemuImg({"create", "-f", "qcow2", path, "1M"});
  std::string pristine = ReadFile(path);

  // Bits nobody names: QEMU prints them in hex.
  SetHeaderField64(path, kIncompat, (1ull << 20) | (1ull << 33));
  auto be = env.OpenBackend(Opts(path));
  REQUIRE_FALSE(be.ok());
  REQUIRE(StatusErrno(be.status()) == ENOTSUP);
  std::string ours(be.status().message());
  REQUIRE(ours == "Unsupported qcow2 feature(s): Unknown incompatible feature: 200100000");
  testing::CommandResult q = Run({"qemu-img", "info", path});
  REQUIRE(q.out.find(ours) != std::string::npos);

  // A bit the feature table names: rename the table's "dirty bit" entry to bit 9.
  std::string f = pristine;
  size_t name = f.find("dirty bit");
  REQUIRE(name != std::string::npos);
  REQUIRE(f[name - 1] == 0);  // bit number of the entry
  f[name - 1] = 9;
  WriteFile(path, f);
  SetHeaderField64(path, kIncompat, (1ull << 9) | (1ull << 12));
  be = env.OpenBackend(Opts(path));
  REQUIRE_FALSE(be.ok());
  ours = std::string(be.status().message());
  REQUIRE(ours == "Unsupported qcow2 feature(s): dirty bit, Unknown incompatible feature: 1000");
  q = Run({"qemu-img", "info", path});
  REQUIRE(q.out.find(ours) != std::string::npos);
}

TEST_CASE("the corrupt bit refuses read-write opens with QEMU's message", "[qcow2]") {
  LB_SKIP_UNLESS(HaveProgram("qemu-io"), "qemu-io is not installed");
  GraphEnv env;
  std::string path = env.dir.File("c.qcow2");
  QemuImg({"create", "-f", "qcow2", path, "1M"});
  REQUIRE(Run({"qemu-io", "-c", "write -P 7 0 4k", path}).exit_code == 0);
  SetHeaderField64(path, kIncompat, 2);
  auto be = env.OpenBackend(Opts(path));
  REQUIRE_FALSE(be.ok());
  REQUIRE(StatusErrno(be.status()) == EACCES);
  REQUIRE(std::string(be.status().message()) == QemuOpenError({path}));
  env.warnings.clear();
  auto ro = env.MustOpenBackend(Opts(path, "read-only=on"), ReadOnly());
  REQUIRE(env.Read(*ro, 0, 4096) == std::string(4096, '\7'));
  // A read-only open warns that the image is marked corrupt.
  REQUIRE(env.warnings.size() == 1);
  REQUIRE_THAT(env.warnings[0], Catch::Matchers::Contains("c.qcow2' is marked corrupt"));
}

TEST_CASE("a dirty image opens read-only as it is and is repaired by a read-write open",
          "[qcow2]") {
  LB_SKIP_UNLESS(HaveProgram("qemu-io"), "qemu-io is not installed");
  GraphEnv env;
  std::string path = env.dir.File("d.qcow2");
  QemuImg({"create", "-f", "qcow2", "-o", "lazy_refcounts=on", path, "1M"});
  REQUIRE(Run({"qemu-io", "-c", "write -P 9 64k 4k", path}).exit_code == 0);
  // What a crash with lazy refcounts leaves: the dirty bit and refcounts missing for the
  // data cluster and its L2 table (zero the refcount block's entries past the header's).
  std::string f = ReadFile(path);
  uint64_t rt = LoadBe64(reinterpret_cast<const uint8_t*>(f.data()) + 48);
  uint64_t rb = LoadBe64(reinterpret_cast<const uint8_t*>(f.data()) + rt);
  for (int i = 4; i < 8; ++i) StoreBe16(reinterpret_cast<uint8_t*>(f.data()) + rb + 2 * i, 0);
  WriteFile(path, f);
  SetHeaderField64(path, kIncompat, 1);
  REQUIRE(Run({"qemu-img", "check", path}).exit_code != 0);
  {
    auto ro = env.MustOpenBackend(Opts(path, "read-only=on"), ReadOnly());
    REQUIRE(env.Read(*ro, 64 * kKiB, 4096) == std::string(4096, '\x09'));
  }
  REQUIRE(HeaderField64(path, kIncompat) == 1);
  {
    auto be = env.MustOpenBackend(Opts(path));
    REQUIRE(HeaderField64(path, kIncompat) == 0);
    REQUIRE(env.Read(*be, 64 * kKiB, 4096) == std::string(4096, '\x09'));
    env.Write(*be, 128 * kKiB, std::string(70000, 'w'));
  }
  CheckClean(path);
}

TEST_CASE("lazy refcounts: the dirty bit is set while metadata is pending, cleared at close",
          "[qcow2]") {
  LB_SKIP_UNLESS(HaveProgram("qemu-img"), "qemu-img is not installed");
  GraphEnv env;
  std::string path = env.dir.File("l.qcow2");
  QemuImg({"create", "-f", "qcow2", "-o", "lazy_refcounts=on", path, "4M"});
  std::string data = RandomBytes(200 * kKiB, 3);
  {
    auto be = env.MustOpenBackend(Opts(path));
    REQUIRE(HeaderField64(path, kIncompat) == 0);  // nothing written yet
    env.Write(*be, 100000, data);
    REQUIRE(env.Flush(*be).ok());
    REQUIRE((HeaderField64(path, kIncompat) & 1) == 1);
  }
  REQUIRE(HeaderField64(path, kIncompat) == 0);
  CheckClean(path);
  // Without lazy refcounts the bit is never set.
  std::string plain = env.dir.File("p.qcow2");
  QemuImg({"create", "-f", "qcow2", plain, "4M"});
  {
    auto be = env.MustOpenBackend(Opts(plain));
    env.Write(*be, 0, data);
    REQUIRE(env.Flush(*be).ok());
    REQUIRE(HeaderField64(plain, kIncompat) == 0);
  }
  // lazy-refcounts=on as an option on a plain v3 image works the same way.
  {
    auto be = env.MustOpenBackend(Opts(plain, "lazy-refcounts=on"));
    env.Write(*be, 2 * kMiB, data);
    REQUIRE(env.Flush(*be).ok());
    REQUIRE(HeaderField64(plain, kIncompat) == 1);
  }
  REQUIRE(HeaderField64(plain, kIncompat) == 0);
  CheckClean(plain);
}

TEST_CASE("autoclear bits are cleared by a read-write open, data_file_raw kept", "[qcow2]") {
  LB_SKIP_UNLESS(HaveProgram("qemu-img"), "qemu-img is not installed");
  GraphEnv env;
  std::string path = env.dir.File("a.qcow2");
  QemuImg({"create", "-f", "qcow2", path, "1M"});
  SetHeaderField64(path, kAutoclear, 1ull << 40);
  { auto ro = env.MustOpenBackend(Opts(path, "read-only=on"), ReadOnly()); }
  REQUIRE(HeaderField64(path, kAutoclear) == 1ull << 40);
  { auto rw = env.MustOpenBackend(Opts(path)); }
  REQUIRE(HeaderField64(path, kAutoclear) == 0);
  CheckClean(path);

  std::string df = env.dir.File("r.qcow2");
  QemuImg({"create", "-f", "qcow2", "-o", "data_file=" + env.dir.File("r.data") + ",data_file_raw=on", df,
           "1M"});
  SetHeaderField64(df, kAutoclear, HeaderField64(df, kAutoclear) | (1ull << 7));
  { auto rw = env.MustOpenBackend(Opts(df)); }
  REQUIRE(HeaderField64(df, kAutoclear) == 2);  // data_file_raw
}

TEST_CASE("runtime options are checked with QEMU's messages", "[qcow2]") {
  LB_SKIP_UNLESS(HaveProgram("qemu-io"), "qemu-io is not installed");
  GraphEnv env;
  std::string path = env.dir.File("o.qcow2");
  QemuImg({"create", "-f", "qcow2", path, "1M"});
  std::string v2 = env.dir.File("v2.qcow2");
  QemuImg({"create", "-f", "qcow2", "-o", "compat=0.10", v2, "1M"});
  WriteFile(env.dir.File("x"), "");
  struct Case {
    std::string file, extra;
  };
  const Case cases[] = {
      {path, "l2-cache-entry-size=100"},
      {path, "l2-cache-entry-size=128k"},
      {path, "cache-size=1M,l2-cache-size=512k,refcount-cache-size=256k"},
      {path, "cache-size=1M,l2-cache-size=2M"},
      {path, "cache-size=1M,refcount-cache-size=2M"},
      {path, "overlap-check=all,overlap-check.template=none"},
      {v2, "lazy-refcounts=on"},
      {path, "data-file.driver=file,data-file.filename=" + env.dir.File("x")},
  };
  for (const Case& c : cases) {
    INFO(c.extra);
    auto be = env.OpenBackend(Opts(c.file, c.extra));
    REQUIRE_FALSE(be.ok());
    std::string theirs = QemuOpenError({"--image-opts", Opts(c.file, c.extra)});
    REQUIRE(std::string(be.status().message()) == theirs);
  }
  // Accepted ones.
  auto be = env.MustOpenBackend(Opts(path, "cache-size=1M,l2-cache-entry-size=4k,"
                                           "overlap-check=none,overlap-check.main-header=on,"
                                           "pass-discard-other=on,cache-clean-interval=0"));
  env.Write(*be, 0, RandomBytes(70000, 1));
}

TEST_CASE("a data write onto metadata is refused and marks the image corrupt", "[qcow2]") {
  LB_SKIP_UNLESS(HaveProgram("qemu-io"), "qemu-io is not installed");
  GraphEnv env;
  std::string path = env.dir.File("m.qcow2");
  QemuImg({"create", "-f", "qcow2", path, "1M"});
  REQUIRE(Run({"qemu-io", "-c", "write -P 1 0 64k", path}).exit_code == 0);
  // Point guest cluster 0 (COPIED, so written in place) at the L1 table's cluster.
  uint64_t l1 = HeaderField64(path, 40);
  std::string f = ReadFile(path);
  uint64_t l2 = LoadBe64(reinterpret_cast<const uint8_t*>(f.data()) + l1) & 0x00fffffffffffe00ull;
  StoreBe64(reinterpret_cast<uint8_t*>(f.data()) + l2, l1 | (1ull << 63));
  WriteFile(path, f);
  std::string copy = env.dir.File("m2.qcow2");
  WriteFile(copy, f);

  {
    auto be = env.MustOpenBackend(Opts(path));
    std::string data(4096, 'x');
    absl::Status st = be->PwriteSync(0, data.data(), 4096);
    REQUIRE_FALSE(st.ok());
    REQUIRE(StatusErrno(st) == EIO);
    REQUIRE(env.warnings.size() == 1);
    REQUIRE(env.warnings[0] == "qcow2: Marking image as corrupt: Preventing invalid write on "
                               "metadata (overlaps with active L1 table); further corruption "
                               "events will be suppressed");
  }
  REQUIRE((HeaderField64(path, kIncompat) & 2) == 2);
  // qemu-io says the same about the same image.
  testing::CommandResult q = Run({"qemu-io", "-c", "write 0 4k", copy});
  REQUIRE(q.out.find(env.warnings[0]) != std::string::npos);

  // overlap-check=none lets it through (and the image stays unmarked).
  WriteFile(path, f);
  {
    auto be = env.MustOpenBackend(Opts(path, "overlap-check=none"));
    std::string data(4096, 'x');
    REQUIRE(be->PwriteSync(0, data.data(), 4096).ok());
  }
  REQUIRE((HeaderField64(path, kIncompat) & 2) == 0);
}

TEST_CASE("data writes onto the snapshot table or a snapshot's L1 table are refused",
          "[qcow2][snapshot]") {
  LB_SKIP_UNLESS(HaveProgram("qemu-io"), "qemu-io is not installed");
  for (const char* target : {"snapshot table", "inactive L1 table"}) {
    DYNAMIC_SECTION(target) {
      GraphEnv env;
      std::string path = env.dir.File("s.qcow2");
      QemuImg({"create", "-f", "qcow2", path, "2M"});
      REQUIRE(Run({"qemu-io", "-c", "write -P 1 1M 64k", path}).exit_code == 0);
      QemuImg({"snapshot", "-c", "s", path});
      // The write copies the shared L2 table: the active one is private (COPIED) again.
      REQUIRE(Run({"qemu-io", "-c", "write -P 2 1M 64k", path}).exit_code == 0);
      uint64_t snapshots = HeaderField64(path, 64);
      std::string f = ReadFile(path);
      auto* bytes = reinterpret_cast<uint8_t*>(f.data());
      uint64_t metadata = std::string(target) == "snapshot table" ? snapshots
                                                                  : LoadBe64(bytes + snapshots);
      uint64_t l1 = HeaderField64(path, 40);
      uint64_t l2 = LoadBe64(bytes + l1) & 0x00fffffffffffe00ull;
      StoreBe64(bytes + l2 + 16 * 8, metadata | (1ull << 63));  // guest cluster 16 (1M)
      WriteFile(path, f);
      auto be = env.MustOpenBackend(Opts(path));
      std::string data(4096, 'x');
      absl::Status st = be->PwriteSync(1 << 20, data.data(), 4096);
      REQUIRE(StatusErrno(st) == EIO);
      REQUIRE(env.warnings.size() == 1);
      REQUIRE_THAT(env.warnings[0],
                   Catch::Contains(std::string("(overlaps with ") + target + ")"));
    }
  }
}

TEST_CASE("compressed writes pack clusters that qemu reads", "[qcow2]") {
  LB_SKIP_UNLESS(HaveProgram("qemu-img"), "qemu-img is not installed");
  for (const char* type : {"zlib", "zstd"}) {
    for (const char* cluster : {"4k", "64k"}) {
      DYNAMIC_SECTION(type << " " << cluster) {
        GraphEnv env;
        std::string path = env.dir.File("c.qcow2");
        std::string ref = env.dir.File("c.raw");
        QemuImg({"create", "-f", "qcow2", "-o",
                 std::string("compression_type=") + type + ",cluster_size=" + cluster, path,
                 "2M"});
        int64_t cs = std::string(cluster) == "4k" ? 4096 : 65536;
        std::string image(2 * kMiB, '\0');
        {
          auto be = env.MustOpenBackend(Opts(path));
          for (int k = 0; k < 20; ++k) {
            // Compressible but distinct: a random run repeated.
            std::string chunk = RandomBytes(static_cast<size_t>(97 + 13 * k), k);
            std::string data;
            while (static_cast<int64_t>(data.size()) < cs) data += chunk;
            data.resize(static_cast<size_t>(cs));
            int64_t at = (k * 3 % 29) * cs;
            REQUIRE(be->PwriteSync(at, data.data(), cs, kReqCompressed).ok());
            image.replace(static_cast<size_t>(at), static_cast<size_t>(cs), data);
          }
          // A partial overwrite of a compressed cluster goes through copy-on-write.
          std::string patch = RandomBytes(1000, 99);
          env.Write(*be, 3 * cs + 100, patch);
          image.replace(static_cast<size_t>(3 * cs + 100), 1000, patch);
          REQUIRE(env.Read(*be, 0, 2 * kMiB) == image);
        }
        WriteFile(ref, image);
        CheckClean(path);
        testing::CommandResult r = Run({"qemu-img", "check", path});
        REQUIRE(r.out.find("0.00% compressed") == std::string::npos);
        Compare(path, ref);
      }
    }
  }
}

// Bad tables found during I/O (the header's cases are tests/unit/qcow2_header_test.cc): the
// request fails with EIO and a message naming the file and the structure, nothing crashes,
// and a read-write open marks the image corrupt.
TEST_CASE("an L2 table past EOF and bogus compressed descriptors fail reads clearly", "[qcow2]") {
  LB_SKIP_UNLESS(HaveProgram("qemu-img"), "qemu-img is not installed");
  GraphEnv env;
  std::string raw = env.dir.File("src.raw");
  std::string path = env.dir.File("bad.qcow2");
  // Compressible but not trivially: a random run repeated, so each blob spans many sectors.
  std::string chunk = RandomBytes(1500, 5);
  std::string data;
  while (data.size() < 256 * kKiB) data += chunk;
  data.resize(256 * kKiB);
  WriteFile(raw, data);
  QemuImg({"convert", "-c", "-f", "raw", "-O", "qcow2", raw, path});
  const std::string pristine = ReadFile(path);
  const uint64_t l1 = HeaderField64(path, 40);
  const uint64_t l2 = LoadBe64(reinterpret_cast<const uint8_t*>(pristine.data()) + l1) &
                      0x00fffffffffffe00ull;
  const uint64_t entry0 = LoadBe64(reinterpret_cast<const uint8_t*>(pristine.data()) + l2);
  REQUIRE((entry0 >> 62) == 1);  // compressed
  const int shift = 62 - (16 - 8);  // 64k clusters: 8 bits of extra sectors
  auto read_error = [&](const std::string& opts, BackendOptions bo) {
    auto be = env.MustOpenBackend(opts, bo);
    std::vector<uint8_t> buf(64 * kKiB);
    absl::Status st = be->PreadSync(0, buf.data(), static_cast<int64_t>(buf.size()));
    REQUIRE_FALSE(st.ok());
    REQUIRE(StatusErrno(st) == EIO);
    return std::string(st.message());
  };
  using Catch::Matchers::Contains;

  SECTION("an L2 table past the end of the file") {
    SetHeaderField64(path, l1, (1ull << 63) | (uint64_t{1} << 40));
    std::string msg = read_error(Opts(path, "read-only=on"), ReadOnly());
    CHECK_THAT(msg, Contains("bad.qcow2") && Contains("L2 table offset 0x10000000000 is past "
                                                      "the end of the file (L1 index: 0)"));
    // Read-write: the image is marked corrupt, and later opens are refused read-write.
    msg = read_error(Opts(path), {});
    CHECK_THAT(msg, Contains("past the end of the file"));
    CHECK((HeaderField64(path, kIncompat) & 2) != 0);
    REQUIRE_FALSE(env.OpenBackend(Opts(path)).ok());
  }
  SECTION("a compressed length too short for its blob") {
    SetHeaderField64(path, l2, entry0 & ~(uint64_t{0xff} << shift));  // one sector
    std::string msg = read_error(Opts(path, "read-only=on"), ReadOnly());
    CHECK_THAT(msg, Contains("bad.qcow2") && Contains("compressed"));
  }
  SECTION("a compressed blob past the end of the file") {
    uint64_t moved = (entry0 & ~((uint64_t{1} << shift) - 1)) | (uint64_t{1} << 44);
    SetHeaderField64(path, l2, moved);
    std::string msg = read_error(Opts(path, "read-only=on"), ReadOnly());
    CHECK_THAT(msg, Contains("bad.qcow2"));
  }
  SECTION("a compressed length of every extra sector, past the end of the file") {
    // The longest descriptor reads at most to EOF; the blob itself is intact.
    SetHeaderField64(path, l2, entry0 | (uint64_t{0xff} << shift));
    auto be = env.MustOpenBackend(Opts(path, "read-only=on"), ReadOnly());
    std::vector<uint8_t> buf(64 * kKiB);
    absl::Status st = be->PreadSync(0, buf.data(), static_cast<int64_t>(buf.size()));
    if (st.ok()) {
      CHECK(std::memcmp(buf.data(), data.data(), buf.size()) == 0);
    } else {
      CHECK(StatusErrno(st) == EIO);
    }
  }
}

TEST_CASE("cache-clean-interval drops idle cache entries on a timer", "[qcow2]") {
  LB_SKIP_UNLESS(HaveProgram("qemu-img"), "qemu-img is not installed");
  GraphEnv env;
  std::string path = env.dir.File("t.qcow2");
  QemuImg({"create", "-f", "qcow2", path, "64M"});
  REQUIRE(Run({"qemu-io", "-c", "write -P 3 0 64k", "-c", "write -P 4 40M 64k", path})
              .exit_code == 0);
  for (const char* interval : {"1", "0"}) {
    DYNAMIC_SECTION("interval " << interval) {
      auto be = env.MustOpenBackend(Opts(path, std::string("cache-clean-interval=") + interval));
      auto* q = dynamic_cast<qcow2::Qcow2Node*>(be->root()->impl());
      REQUIRE(q);
      REQUIRE(env.Read(*be, 40 * kMiB, 4096) == std::string(4096, '\4'));
      size_t loaded = q->CachedSlotsForTest();
      REQUIRE(loaded > 0);
      // Idle for more than the interval: the loop runs its timers meanwhile.
      int64_t until = EventLoop::NowNs() + 2'200'000'000LL;
      while (EventLoop::NowNs() < until) env.loop->RunOnce(/*block=*/true, /*max_wait_ms=*/50);
      if (std::string(interval) == "1") {
        CHECK(q->CachedSlotsForTest() == 0);
        // And the data reads back through reloaded tables.
        REQUIRE(env.Read(*be, 0, 4096) == std::string(4096, '\3'));
      } else {
        CHECK(q->CachedSlotsForTest() == loaded);  // 0: never cleaned
      }
    }
  }
}

TEST_CASE("zero clusters and discard read as zeroes and free clusters", "[qcow2]") {
  LB_SKIP_UNLESS(HaveProgram("qemu-img"), "qemu-img is not installed");
  GraphEnv env;
  std::string base = env.dir.File("base.raw");
  WriteFile(base, std::string(4 * kMiB, 'B'));
  std::string path = env.dir.File("z.qcow2");
  QemuImg({"create", "-f", "qcow2", "-b", base, "-F", "raw", path, "4M"});
  std::string expect(4 * kMiB, 'B');
  {
    auto be = env.MustOpenBackend(Opts(path, "discard=unmap"));
    std::string data = RandomBytes(512 * kKiB, 5);
    env.Write(*be, 0, data);
    expect.replace(0, data.size(), data);
    REQUIRE(env.Zero(*be, 64 * kKiB, 128 * kKiB, kReqMayUnmap).ok());
    expect.replace(64 * kKiB, 128 * kKiB, std::string(128 * kKiB, '\0'));
    REQUIRE(env.Zero(*be, 256 * kKiB, 64 * kKiB).ok());  // keeps the cluster (zero flag)
    expect.replace(256 * kKiB, 64 * kKiB, std::string(64 * kKiB, '\0'));
    REQUIRE(env.Zero(*be, 1 * kMiB, 64 * kKiB).ok());  // over the backing file
    expect.replace(1 * kMiB, 64 * kKiB, std::string(64 * kKiB, '\0'));
    // A discarded cluster reads as zeroes too (v3: QEMU sets the zero flag), allocated or not.
    REQUIRE(env.Discard(*be, 384 * kKiB, 64 * kKiB).ok());
    expect.replace(384 * kKiB, 64 * kKiB, std::string(64 * kKiB, '\0'));
    REQUIRE(env.Discard(*be, 2 * kMiB, 64 * kKiB).ok());
    expect.replace(2 * kMiB, 64 * kKiB, std::string(64 * kKiB, '\0'));
    REQUIRE(env.Read(*be, 0, 4 * kMiB) == expect);
  }
  CheckClean(path);
  std::string ref = env.dir.File("z.raw");
  WriteFile(ref, expect);
  Compare(path, ref);
  // Freed clusters are not counted as allocated any more: 8 data clusters written, 3 freed.
  testing::CommandResult r = Run({"qemu-img", "check", path});
  REQUIRE(r.out.find("5/64 = 7.81% allocated") != std::string::npos);
}

TEST_CASE("has-zero-init is the image's answer unless it is preallocated", "[qcow2]") {
  LB_SKIP_UNLESS(HaveProgram("qemu-img"), "qemu-img is not installed");
  GraphEnv env;
  std::string plain = env.dir.File("p.qcow2");
  QemuImg({"create", "-f", "qcow2", plain, "1M"});
  Node* n = env.MustOpenNode(Opts(plain));
  REQUIRE(HasZeroInit(*n));
  env.graph.Unref(n);
  std::string pre = env.dir.File("m.qcow2");
  QemuImg({"create", "-f", "qcow2", "-o", "preallocation=metadata", pre, "1M"});
  n = env.MustOpenNode(Opts(pre));
  // Preallocated: the file's answer (a regular file reads as zeroes where never written).
  REQUIRE(HasZeroInit(*n) == HasZeroInit(*n->primary_child()->node()));
  env.graph.Unref(n);
}

}  // namespace
}  // namespace libblock

namespace libblock {
namespace {

TEST_CASE("64 concurrent writers into shared and adjacent clusters", "[qcow2]") {
  LB_SKIP_UNLESS(HaveProgram("qemu-img"), "qemu-img is not installed");
  for (const char* opts : {"cluster_size=4k", "extended_l2=on", "cluster_size=512,refcount_bits=1",
                           "lazy_refcounts=on"}) {
    DYNAMIC_SECTION(opts) {
      GraphEnv env;
      std::string base = env.dir.File("b.raw");
      std::string image(8 * kMiB, '\0');
      std::string bdata = RandomBytes(8 * kMiB, 77);
      WriteFile(base, bdata);
      image = bdata;
      std::string path = env.dir.File("w.qcow2");
      QemuImg({"create", "-f", "qcow2", "-b", base, "-F", "raw", "-o", opts, path, "8M"});
      std::vector<std::string> bufs;
      std::vector<std::pair<int64_t, int64_t>> ranges;
      for (int i = 0; i < 64; ++i) {
        // Disjoint byte ranges, several per cluster and some spanning clusters.
        int64_t at = (i % 16) * 5000 + (i / 16) * 2 * kMiB + (i % 3) * 70000;
        int64_t len = 1000 + (i * 397) % 4000;
        ranges.push_back({at, len});
      }
      std::sort(ranges.begin(), ranges.end());
      for (size_t i = 1; i < ranges.size(); ++i) {
        if (ranges[i].first < ranges[i - 1].first + ranges[i - 1].second) {
          ranges[i].first = ranges[i - 1].first + ranges[i - 1].second;
        }
      }
      {
        auto be = env.MustOpenBackend(Opts(path));
        for (size_t i = 0; i < ranges.size(); ++i) {
          bufs.push_back(RandomBytes(static_cast<size_t>(ranges[i].second), 1000 + i));
        }
        int done = 0;
        std::vector<absl::Status> results(ranges.size());
        std::vector<IoVec> iovs;
        iovs.reserve(ranges.size());
        for (size_t i = 0; i < ranges.size(); ++i) {
          iovs.emplace_back(bufs[i].data(), bufs[i].size());
        }
        for (size_t i = 0; i < ranges.size(); ++i) {
          env.loop->Spawn(be->Write(ranges[i].first, ranges[i].second, iovs[i]),
                          [&, i](absl::Status st) {
                            results[i] = st;
                            ++done;
                          });
          image.replace(static_cast<size_t>(ranges[i].first), bufs[i].size(), bufs[i]);
        }
        env.loop->RunUntil([&] { return done == static_cast<int>(ranges.size()); });
        for (const absl::Status& st : results) REQUIRE(st.ok());
        REQUIRE(env.Read(*be, 0, 8 * kMiB) == image);
      }
      CheckClean(path);
      std::string ref = env.dir.File("w.raw");
      WriteFile(ref, image);
      Compare(path, ref);
    }
  }
}

}  // namespace
}  // namespace libblock
