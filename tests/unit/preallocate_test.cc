// The preallocate filter: preallocation only under a parent with write+resize, the file
// length while open (aligned preallocation) and after reopen-read-only/close (the data end),
// concurrent appenders and zero writes, truncate through the filter, and option errors.
#include <algorithm>
#include <catch2/catch.hpp>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "core/backend.h"
#include "core/graph.h"
#include "core/options.h"
#include "test_support.h"
#include "util/checked_math.h"
#include "util/status.h"

namespace libblock {
namespace {

using testing::AllocatedBytes;
using testing::FileSize;
using testing::HaveProgram;
using testing::kKiB;
using testing::kMiB;
using testing::Message;
using testing::RandomBytes;
using testing::ReadFile;
using testing::Run;
using testing::WriteFile;

// A parent that lets the filter act and may write past the end, as a format over it would.
const BackendOptions kGrow = {.resize = true, .allow_write_beyond_eof = true};

// A preallocate filter over p.img, created empty in the env's directory. Backends get kGrow
// unless a test passes other BackendOptions.
struct Fixture : testing::GraphEnv {
  std::string path = dir.File("p.img");

  explicit Fixture(bool io_uring = true) : GraphEnv(io_uring) { WriteFile(path, ""); }
  std::string Opts(const std::string& prealloc = "prealloc-size=1M,prealloc-align=64k") const {
    return "driver=preallocate," + (prealloc.empty() ? "" : prealloc + ",") +
           "file.driver=file,file.filename=" + path;
  }
  absl::StatusOr<std::unique_ptr<Backend>> Open(const std::string& opts, BackendOptions bo = kGrow) {
    return OpenBackend(opts, std::move(bo));
  }
  std::unique_ptr<Backend> MustOpen(const std::string& opts, BackendOptions bo = kGrow) {
    return MustOpenBackend(opts, std::move(bo));
  }
};

void Put(std::string& model, int64_t offset, const std::string& data) {
  if (model.size() < offset + data.size()) model.resize(offset + data.size(), '\0');
  model.replace(offset, data.size(), data);
}

TEST_CASE("the filter's file is a protocol node, never probed (as in QEMU)", "[preallocate]") {
  Fixture f;
  std::string opts = "driver=preallocate,file.filename=" + f.path;
  auto be = f.MustOpen(opts);
  REQUIRE(be->root()->primary_child()->node()->driver().name == "file");
  REQUIRE(f.warnings.empty());  // no "probing guessed raw"
  be.reset();
  auto bad = f.Open(opts + ",file.offset=512");
  REQUIRE(Message(bad.status()) == "Block protocol 'file' doesn't support the option 'offset'");
  // a driver named for the child still gets it
  WriteFile(f.path, std::string(4096, 'a'));
  REQUIRE(f.Open("driver=preallocate,file.driver=raw,file.offset=512,file.file.filename=" + f.path).ok());
}

TEST_CASE("writes past EOF preallocate; close truncates to the data end", "[preallocate]") {
  Fixture f;
  std::string model;
  const int64_t kFirstEnd = AlignUp(4096 + kMiB, 64 * kKiB);  // 1114112
  {
    auto be = f.MustOpen(f.Opts());
    Node* filter = be->root();
    Node* file = filter->FindChild("file")->node();
    REQUIRE(be->size() == 0);

    std::string a = RandomBytes(4096, 1);
    f.Write(*be, 0, a);
    Put(model, 0, a);
    REQUIRE(FileSize(f.path) == kFirstEnd);
    REQUIRE(AllocatedBytes(f.path) >= kFirstEnd);  // really allocated, not a sparse truncate
    REQUIRE(file->size() == kFirstEnd);
    REQUIRE(be->size() == 4096);  // the filter reports the data end
    REQUIRE_BYTES(f.Read(*be, 0, 4096), a);

    // Inside the preallocated area the file does not grow; the data end does.
    std::string b = RandomBytes(4096, 2);
    f.Write(*be, 512 * kKiB, b);
    Put(model, 512 * kKiB, b);
    REQUIRE(FileSize(f.path) == kFirstEnd);
    REQUIRE(be->size() == 516 * kKiB);
    REQUIRE_BYTES(f.Read(*be, 0, 516 * kKiB), model);

    // A write straddling the preallocated end grows the file again from its own end.
    std::string c = RandomBytes(4096, 3);
    f.Write(*be, kFirstEnd - 2048, c);
    Put(model, kFirstEnd - 2048, c);
    REQUIRE(FileSize(f.path) == AlignUp(kFirstEnd + 2048 + kMiB, 64 * kKiB));
    REQUIRE(be->size() == kFirstEnd + 2048);
    REQUIRE_BYTES(f.Read(*be, 0, be->size()), model);
  }
  REQUIRE(FileSize(f.path) == kFirstEnd + 2048);
  REQUIRE_BYTES(ReadFile(f.path), model);

  // Reopened, the filter starts from the file's length; nothing is preallocated until a
  // write passes it.
  auto be = f.MustOpen(f.Opts());
  REQUIRE(be->size() == kFirstEnd + 2048);
  f.Write(*be, 0, std::string(4096, 'x'));
  REQUIRE(FileSize(f.path) == kFirstEnd + 2048);
}

TEST_CASE("reopening read-only gives the preallocation back at once", "[preallocate]") {
  Fixture f;
  auto be = f.MustOpen(f.Opts());
  std::string a = RandomBytes(4096, 4);
  f.Write(*be, 0, a);
  REQUIRE(FileSize(f.path) == AlignUp(4096 + kMiB, 64 * kKiB));
  absl::Status reopened = be->Reopen(true);
  INFO(reopened.ToString());
  REQUIRE(reopened.ok());
  REQUIRE(FileSize(f.path) == 4096);
  REQUIRE(be->size() == 4096);
  REQUIRE_BYTES(f.Read(*be, 0, 4096), a);
  REQUIRE_FALSE(be->PwriteSync(4096, a.data(), 4096).ok());
  REQUIRE(FileSize(f.path) == 4096);
  // Read-write again: the filter takes over the length again and preallocates.
  REQUIRE(be->Reopen(false).ok());
  f.Write(*be, 4096, a);
  REQUIRE(FileSize(f.path) == AlignUp(8192 + kMiB, 64 * kKiB));
  REQUIRE(be->Close().ok());
  REQUIRE(FileSize(f.path) == 8192);
  REQUIRE_BYTES(ReadFile(f.path), a + a);
}

TEST_CASE("raw over preallocate passes write+resize through, and preallocates", "[preallocate]") {
  Fixture f;
  std::string opts = "driver=raw,file.driver=preallocate,file.prealloc-size=256k,file.prealloc-align=4k,"
                     "file.file.driver=file,file.file.filename=" + f.path;
  std::string a = RandomBytes(10000, 5);
  {
    auto be = f.MustOpen(opts);
    f.Write(*be, 0, a);
    REQUIRE(FileSize(f.path) == AlignUp(10000 + 256 * kKiB, 4096));
    REQUIRE(be->size() == 10240);  // the data end, in whole sectors
    REQUIRE_BYTES(f.Read(*be, 0, 10000), a);
  }
  REQUIRE_BYTES(ReadFile(f.path), a);
}

TEST_CASE("without write+resize from its parent the filter does nothing", "[preallocate]") {
  Fixture f;
  std::string old = RandomBytes(64 * kKiB, 6);
  WriteFile(f.path, old);
  SECTION("read-write without resize") {
    auto be = f.MustOpen(f.Opts(), {});
    Child* file = be->root()->FindChild("file");
    REQUIRE((file->perm() & kPermResize) == 0);
    std::string a = RandomBytes(8192, 7);
    f.Write(*be, 60 * kKiB, a.substr(0, 4096));
    REQUIRE(FileSize(f.path) == 64 * kKiB);
    REQUIRE(StatusErrno(be->PwriteSync(64 * kKiB, a.data(), 4096)) == EIO);
    REQUIRE(be->Close().ok());
    REQUIRE(FileSize(f.path) == 64 * kKiB);
  }
  SECTION("read-only with resize asked") {
    auto be = f.MustOpen(f.Opts(), {.read_only = true, .resize = true});
    REQUIRE_BYTES(f.Read(*be, 0, 64 * kKiB), old);
    REQUIRE(be->Close().ok());
    REQUIRE(FileSize(f.path) == 64 * kKiB);
  }
  SECTION("write+resize makes the filter own the file's length") {
    auto be = f.MustOpen(f.Opts());
    Child* file = be->root()->FindChild("file");
    REQUIRE((file->perm() & (kPermWrite | kPermResize)) == (kPermWrite | kPermResize));
    REQUIRE((file->shared() & (kPermWrite | kPermResize)) == 0);
  }
}

// One request per 4k block, all in flight at once, in random order: existing blocks and
// blocks past EOF, data and zeroes; then 16k zero writes past all of them, in the same mix.
void ConcurrentAppend(bool io_uring, const std::string& prealloc, int64_t align, uint32_t seed) {
  INFO("io_uring=" << io_uring << " " << prealloc << " seed=" << seed);
  Fixture f(io_uring);
  constexpr int kOld = 16, kNew = 64, kWideZeroes = 4;
  constexpr int64_t kBlock = 4096, kWide = 4 * kBlock;
  const int64_t data_end = (kOld + kNew) * kBlock + kWideZeroes * kWide;
  std::string model(kOld * kBlock, '\xee');
  WriteFile(f.path, model);
  model.resize(data_end, '\0');
  struct Request {
    int64_t offset, length;
    bool zero;
    std::string data;
  };
  std::vector<Request> requests;
  for (int b = 0; b < kOld + kNew; ++b) {
    bool zero = b % 5 == 2;
    requests.push_back({b * kBlock, kBlock, zero,
                        zero ? std::string() : RandomBytes(kBlock, seed * 1000 + b)});
  }
  for (int i = 0; i < kWideZeroes; ++i) requests.push_back({(kOld + kNew) * kBlock + i * kWide, kWide, true, ""});
  std::mt19937 rng(seed);
  std::shuffle(requests.begin(), requests.end(), rng);
  for (const Request& r : requests) {
    model.replace(r.offset, r.length, r.zero ? std::string(r.length, '\0') : r.data);
  }
  {
    auto be = f.MustOpen(f.Opts(prealloc));
    int done = 0;
    std::vector<absl::Status> results(requests.size());
    auto io = [&](size_t i) -> Task<void> {
      Request& r = requests[i];
      absl::Status st;
      if (r.zero) {
        st = co_await be->WriteZeroes(r.offset, r.length);
      } else {
        IoVec v(r.data.data(), r.data.size());
        st = co_await be->Write(r.offset, r.length, v);
      }
      results[i] = st;
      ++done;
    };
    for (size_t i = 0; i < requests.size(); ++i) f.loop->Spawn(io(i));
    f.loop->RunUntil([&] { return done == static_cast<int>(requests.size()); });
    for (const absl::Status& st : results) {
      INFO(st.ToString());
      REQUIRE(st.ok());
    }
    REQUIRE(be->size() == data_end);
    int64_t open_size = FileSize(f.path);
    REQUIRE(open_size >= data_end);
    REQUIRE(open_size % align == 0);
    std::string back = f.Read(*be, 0, data_end);
    std::string lost;  // 4k blocks that do not hold what was written ("z": read as zeroes)
    for (int64_t b = 0; b < data_end / kBlock; ++b) {
      if (back.compare(b * kBlock, kBlock, model, b * kBlock, kBlock) != 0) {
        lost += " " + std::to_string(b) + (back.substr(b * kBlock, kBlock) == std::string(kBlock, '\0') ? "z" : "");
      }
    }
    INFO("wrong blocks:" << lost);
    REQUIRE(lost.empty());
  }
  REQUIRE(FileSize(f.path) == data_end);
  REQUIRE_BYTES(ReadFile(f.path), model);
}

TEST_CASE("concurrent appenders and zero writes all land, nothing is wiped", "[preallocate]") {
  for (bool io_uring : {true, false}) {
    for (uint32_t seed : {1u, 2u, 3u}) {
      ConcurrentAppend(io_uring, "prealloc-size=8k,prealloc-align=4k", 4096, seed);
      ConcurrentAppend(io_uring, "prealloc-size=0,prealloc-align=512", 512, seed);
      ConcurrentAppend(io_uring, "prealloc-size=64k,prealloc-align=64k", 65536, seed);
    }
  }
}

TEST_CASE("zero writes skip only ranges known to be zero", "[preallocate]") {
  Fixture f;
  auto be = f.MustOpen(f.Opts());
  std::string a = RandomBytes(4096, 8), b = RandomBytes(8192, 9);
  // Zeroes past the data end inside the preallocated area read as zeroes (and may be skipped).
  f.Write(*be, 0, a);
  REQUIRE(f.loop->Run(be->WriteZeroes(8192, 4096)).ok());
  REQUIRE(be->size() == 12288);
  REQUIRE_BYTES(f.Read(*be, 0, 12288), a + std::string(8192, '\0'));
  // Data below the data end, then zeroes over part of it that also extend the data end:
  // the zeroes must win.
  f.Write(*be, 4096, b);
  REQUIRE(f.loop->Run(be->WriteZeroes(8192, 8192)).ok());
  REQUIRE(be->size() == 16384);
  REQUIRE_BYTES(f.Read(*be, 0, 16384), a + b.substr(0, 4096) + std::string(8192, '\0'));
  REQUIRE(be->Close().ok());
  REQUIRE_BYTES(ReadFile(f.path), a + b.substr(0, 4096) + std::string(8192, '\0'));
}

TEST_CASE("truncate through the filter", "[preallocate]") {
  Fixture f;
  std::string a = RandomBytes(8192, 10);
  const int64_t k64 = 64 * kKiB;
  {
    auto be = f.MustOpen(f.Opts());
    f.Write(*be, 0, a);
    REQUIRE(FileSize(f.path) == AlignUp(8192 + kMiB, k64));
    // Shrink: the data end and the file follow.
    REQUIRE(f.loop->Run(be->Truncate(4096, true, PreallocMode::kOff)).ok());
    REQUIRE(FileSize(f.path) == 4096);
    REQUIRE(be->size() == 4096);
    // Grow with off: zeroes, not the old bytes, and not our preallocation.
    REQUIRE(f.loop->Run(be->Truncate(k64, true, PreallocMode::kOff)).ok());
    REQUIRE(FileSize(f.path) == k64);
    REQUIRE(be->size() == k64);
    REQUIRE_BYTES(f.Read(*be, 0, k64), a.substr(0, 4096) + std::string(k64 - 4096, '\0'));
    // A write past the new end preallocates again...
    f.Write(*be, k64, a.substr(0, 4096));
    const int64_t prealloc_end = AlignUp(k64 + 4096 + kMiB, k64);
    REQUIRE(FileSize(f.path) == prealloc_end);
    // ...and falloc inside the preallocated area only moves the data end.
    REQUIRE(f.loop->Run(be->Truncate(2 * k64, true, PreallocMode::kFalloc)).ok());
    REQUIRE(FileSize(f.path) == prealloc_end);
    REQUIRE(be->size() == 2 * k64);
    REQUIRE_BYTES(f.Read(*be, k64 + 4096, k64 - 4096), std::string(k64 - 4096, '\0'));
    // Growing with off past the preallocation drops it first: the file is exactly the size.
    REQUIRE(f.loop->Run(be->Truncate(prealloc_end + k64, true, PreallocMode::kOff)).ok());
    REQUIRE(FileSize(f.path) == prealloc_end + k64);
    REQUIRE(be->size() == prealloc_end + k64);
    REQUIRE_BYTES(f.Read(*be, 2 * k64, prealloc_end - k64), std::string(prealloc_end - k64, '\0'));
    // falloc beyond the preallocated area allocates the missing part.
    REQUIRE(f.loop->Run(be->Truncate(prealloc_end + 3 * k64, true, PreallocMode::kFalloc)).ok());
    REQUIRE(FileSize(f.path) == prealloc_end + 3 * k64);
    REQUIRE(f.loop->Run(be->Truncate(3 * k64, true, PreallocMode::kOff)).ok());
    REQUIRE(FileSize(f.path) == 3 * k64);
  }
  REQUIRE(FileSize(f.path) == 3 * k64);
  std::string model = a.substr(0, 4096) + std::string(k64 - 4096, '\0') + a.substr(0, 4096);
  model.resize(3 * k64, '\0');
  REQUIRE_BYTES(ReadFile(f.path), model);
}

TEST_CASE("truncate concurrent with writes keeps every write issued after it", "[preallocate]") {
  for (bool grow : {true, false}) {
    INFO((grow ? "grow" : "shrink"));
    Fixture f;
    constexpr int64_t kBlock = 4096;
    std::string model;
    {
      auto be = f.MustOpen(f.Opts("prealloc-size=16k,prealloc-align=4k"));
      int done = 0, failed = 0;
      std::vector<std::string> bufs;
      bufs.reserve(64);
      auto write = [&](int64_t off, std::string data) -> Task<void> {
        bufs.push_back(std::move(data));
        IoVec v(bufs.back().data(), bufs.back().size());
        absl::Status st = co_await be->Write(off, static_cast<int64_t>(bufs.back().size()), v);
        if (!st.ok()) ++failed;
        ++done;
      };
      auto truncate = [&](int64_t size) -> Task<void> {
        absl::Status st = co_await be->Truncate(size, true, PreallocMode::kOff);
        if (!st.ok()) ++failed;
        ++done;
      };
      int spawned = 0;
      // Before: blocks 0..15. Then truncate to 8 blocks (shrink) or 24 (grow). After: blocks
      // 20..27 when growing (past the new end), 4..11 when shrinking (across the cut).
      for (int b = 0; b < 16; ++b, ++spawned) {
        std::string d = RandomBytes(kBlock, 100 + b);
        Put(model, b * kBlock, d);
        f.loop->Spawn(write(b * kBlock, d));
      }
      int64_t new_size = (grow ? 24 : 8) * kBlock;
      model.resize(new_size, '\0');
      f.loop->Spawn(truncate(new_size));
      ++spawned;
      int first = grow ? 20 : 4;
      for (int b = first; b < first + 8; ++b, ++spawned) {
        std::string d = RandomBytes(kBlock, 200 + b);
        Put(model, b * kBlock, d);
        f.loop->Spawn(write(b * kBlock, d));
      }
      f.loop->RunUntil([&] { return done == spawned; });
      REQUIRE(failed == 0);
      REQUIRE(be->size() == static_cast<int64_t>(model.size()));
      REQUIRE_BYTES(f.Read(*be, 0, be->size()), model);
    }
    REQUIRE(FileSize(f.path) == static_cast<int64_t>(model.size()));
    REQUIRE_BYTES(ReadFile(f.path), model);
  }
}

TEST_CASE("the file under the filter is opened as a protocol, never format-probed", "[preallocate]") {
  // As QEMU 7.2 opens it: no raw node (with the probed-image guards and warning) is slipped
  // in between the filter and its file when the file's driver is not given.
  Fixture f;
  WriteFile(f.path, std::string("QFI\xfb\0\0\0\3", 8) + std::string(4096 - 8, '\0'));
  auto be = f.MustOpen("driver=preallocate,file.filename=" + f.path);
  Node* file = be->root()->FindChild("file")->node();
  REQUIRE(file->driver().name == "file");
  REQUIRE(f.warnings.empty());
  std::string header = RandomBytes(512, 7);
  header.replace(0, 8, std::string("QFI\xfb\0\0\0\3", 8));  // sector 0 may say qcow2
  f.Write(*be, 0, header);
  REQUIRE_BYTES(ReadFile(f.path).substr(0, 512), header);
}

TEST_CASE("preallocate option errors", "[preallocate]") {
  Fixture f;
  auto message = [&](const std::string& opts) {
    auto be = f.Open(opts);
    REQUIRE_FALSE(be.ok());
    return std::string(be.status().message());
  };
  bool qemu = HaveProgram("qemu-io");
  auto qemu_message = [&](const std::string& opts) {
    testing::CommandResult r = Run({"qemu-io", "--image-opts", opts, "-c", "read 0 0"});
    REQUIRE(r.exit_code != 0);
    return r.out;
  };
  std::string opts = f.Opts("prealloc-align=3000");
  REQUIRE(message(opts) == "prealloc-align parameter of preallocate filter is not aligned to 512");
  if (qemu) REQUIRE(qemu_message(opts).find(message(opts)) != std::string::npos);

  opts = f.Opts("prealloc-size=-1");
  REQUIRE(message(opts).find("prealloc-size") != std::string::npos);
  if (qemu) REQUIRE(qemu_message(opts).find("prealloc-size") != std::string::npos);

  opts = f.Opts("bogus=1");
  REQUIRE(message(opts) == "Block format 'preallocate' does not support the option 'bogus'");
  if (qemu) REQUIRE(qemu_message(opts).find(message(opts)) != std::string::npos);

  REQUIRE(f.graph.nodes().empty());
  // prealloc-align=0 is accepted (QEMU: it means the file's request alignment, 1 here):
  // under qcow2, QEMU 7.2 grew a file to exactly 327680 + prealloc-size=100000 with it.
  {
    auto zero_align = f.MustOpen(f.Opts("prealloc-size=100000,prealloc-align=0"));
    f.Write(*zero_align, 0, std::string(4096, 'z'));
    REQUIRE(FileSize(f.path) == 4096 + 100000);
  }
  REQUIRE(FileSize(f.path) == 4096);
  WriteFile(f.path, "");
  // Defaults (1M align, 128M size) are what QEMU documents.
  auto be = f.MustOpen(f.Opts(""));
  f.Write(*be, 0, std::string(512, 'd'));
  REQUIRE(FileSize(f.path) == 128 * kMiB + kMiB);
  REQUIRE(be->Close().ok());
  REQUIRE(FileSize(f.path) == 512);
}

TEST_CASE("a write near the largest offset does not overflow the preallocation end", "[preallocate]") {
  // end + prealloc-size, aligned up, must not overflow int64 (undefined behaviour, caught by
  // the UBSan run: scripts/test.sh --asan halts on it). The write itself is refused by the
  // file system; nothing is preallocated.
  Fixture f;
  auto be = f.MustOpen(f.Opts("prealloc-size=4611686018427387903"));
  std::string d(4096, 'x');
  absl::Status st = be->PwriteSync(kMaxLength - 8192, d.data(), 4096);
  INFO(st.ToString());
  REQUIRE_FALSE(st.ok());
  REQUIRE(FileSize(f.path) == 0);
}

}  // namespace
}  // namespace libblock
