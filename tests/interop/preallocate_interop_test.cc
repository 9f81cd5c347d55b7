// The preallocate filter against QEMU's: (1) top-level truncate/write sequences through
// qemu-io and through a libblock backend leave identical files; (2) QEMU's own preallocation
// under qcow2 (file size while open and after exit), reproduced by libblock with the same
// file-level writes. Exits 77 when qemu-img or qemu-io is missing.
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "core/backend.h"
#include "core/graph.h"
#include "core/options.h"
#include "test_support.h"
#include "util/status.h"

namespace libblock {
namespace {

using testing::FileSize;
using testing::GraphEnv;
using testing::ReadFile;
using testing::Run;
using testing::WriteFile;

// One qemu-io command of the sequences below, and the same through a libblock backend.
struct Step {
  enum Kind { kTruncate, kWrite, kZero } kind;
  int64_t offset = 0, length = 0;  // truncate: offset is the new size
  int pattern = 0;
  PreallocMode mode = PreallocMode::kOff;
};

std::string QemuCommand(const Step& s) {
  std::ostringstream c;
  switch (s.kind) {
    case Step::kTruncate:
      c << "truncate -m " << PreallocModeName(s.mode) << " " << s.offset;
      break;
    case Step::kWrite:
      c << "write -q -P " << s.pattern << " " << s.offset << " " << s.length;
      break;
    case Step::kZero:
      c << "write -q -z " << s.offset << " " << s.length;
      break;
  }
  return c.str();
}

absl::Status LibblockStep(EventLoop& loop, Backend& be, const Step& s) {
  switch (s.kind) {
    case Step::kTruncate:
      return loop.Run(be.Truncate(s.offset, true, s.mode));
    case Step::kWrite: {
      std::string data(static_cast<size_t>(s.length), static_cast<char>(s.pattern));
      return be.PwriteSync(s.offset, data.data(), s.length);
    }
    case Step::kZero:
      return loop.Run(be.WriteZeroes(s.offset, s.length));
  }
  return absl::OkStatus();
}

TEST_CASE("top-level sequences through the filter match qemu-io's", "[preallocate][interop]") {
  using K = Step::Kind;
  const PreallocMode off = PreallocMode::kOff, falloc = PreallocMode::kFalloc, full = PreallocMode::kFull;
  struct Sequence {
    std::string prealloc;
    int64_t initial_size;
    std::vector<Step> steps;
  };
  std::vector<Sequence> sequences = {
      {"prealloc-size=1M,prealloc-align=64k", 0,
       {{K::kTruncate, 102400, 0, 0, off},
        {K::kWrite, 0, 4096, 1},
        {K::kWrite, 98304, 4096, 2},
        {K::kTruncate, 204800, 0, 0, falloc},
        {K::kWrite, 153600, 1024, 3},
        {K::kTruncate, 65536, 0, 0, off},
        {K::kTruncate, 65537, 0, 0, off},
        {K::kZero, 61440, 4000},
        {K::kTruncate, 307200, 0, 0, full},
        {K::kWrite, 306176, 1024, 5}}},
      {"prealloc-size=8M,prealloc-align=1M", 1048576,
       {{K::kWrite, 1000, 3000, 0x11},
        {K::kTruncate, 3 * 1048576 + 512, 0, 0, off},
        {K::kWrite, 3 * 1048576 - 100, 612, 0x22},
        {K::kTruncate, 512, 0, 0, off},
        {K::kTruncate, 2 * 1048576, 0, 0, falloc},
        {K::kZero, 0, 4096},
        {K::kWrite, 2 * 1048576 - 4096, 4096, 0x33}}},
      {"", 12345,
       {{K::kWrite, 0, 12345, 0x44}, {K::kTruncate, 20000, 0, 0, falloc}, {K::kWrite, 19999, 1, 0x55}}},
  };
  for (const Sequence& seq : sequences) {
    GraphEnv f;
    std::string theirs = f.dir.File("theirs.img"), ours = f.dir.File("ours.img");
    WriteFile(theirs, std::string(static_cast<size_t>(seq.initial_size), '\x7e'));
    WriteFile(ours, std::string(static_cast<size_t>(seq.initial_size), '\x7e'));
    auto opts = [&](const std::string& path) {
      return "driver=preallocate," + (seq.prealloc.empty() ? "" : seq.prealloc + ",") +
             "file.driver=file,file.filename=" + path;
    };
    std::vector<std::string> argv = {"qemu-io", "--image-opts", opts(theirs)};
    for (const Step& s : seq.steps) argv.insert(argv.end(), {"-c", QemuCommand(s)});
    INFO(opts(theirs));
    testing::CommandResult r = Run(argv);
    INFO(r.out);
    REQUIRE(r.exit_code == 0);
    REQUIRE(r.out.find("failed") == std::string::npos);
    {
      auto be = f.MustOpenBackend(opts(ours), {.resize = true, .allow_write_beyond_eof = true});
      for (const Step& s : seq.steps) {
        INFO(QemuCommand(s));
        absl::Status st = LibblockStep(*f.loop, *be, s);
        INFO(st.ToString());
        REQUIRE(st.ok());
      }
    }
    REQUIRE(FileSize(ours) == FileSize(theirs));
    REQUIRE(Run({"cmp", ours, theirs}).exit_code == 0);
  }
}

// Runs a qemu-io that writes through qcow2 -> preallocate -> file, and samples the file's size
// while it sleeps and after it exits.
struct QemuPrealloc {
  int64_t fresh_size = 0, open_size = 0, final_size = 0;
};

QemuPrealloc RunQemuPrealloc(const std::string& path) {
  QemuPrealloc out;
  REQUIRE(Run({"qemu-img", "create", "-q", "-f", "qcow2", path, "64M"}).exit_code == 0);
  out.fresh_size = FileSize(path);
  testing::Background qemu({"qemu-io", "--image-opts",
                            "driver=qcow2,file.driver=preallocate,file.prealloc-size=8388608,"
                            "file.prealloc-align=1048576,file.file.driver=file,file.file.filename=" + path,
                            "-c", "write -q -P 1 0 64k", "-c", "sleep 1500"});
  // Wait (up to 10 s) for the write to extend the file; then it stays so until the exit.
  for (int i = 0; i < 1000 && qemu.Running() && FileSize(path) == out.fresh_size; ++i) usleep(10000);
  out.open_size = FileSize(path);
  REQUIRE(qemu.Wait() == 0);
  out.final_size = FileSize(path);
  return out;
}

TEST_CASE("QEMU's preallocation under qcow2, reproduced by libblock", "[preallocate][interop]") {
  GraphEnv f;
  std::string theirs = f.dir.File("pa.qcow2"), fresh = f.dir.File("fresh.qcow2"), ours = f.dir.File("ours.qcow2");
  QemuPrealloc q = RunQemuPrealloc(theirs);
  INFO("fresh " << q.fresh_size << " open " << q.open_size << " final " << q.final_size);
  // What QEMU 7.2 does here: the 64k data cluster and a new L2 table go past EOF, the file
  // grows to align_up(end + 8M, 1M) while open and back to the data end afterwards.
  REQUIRE(q.final_size == 393216);
  REQUIRE(q.open_size == 9437184);
  REQUIRE(Run({"qemu-img", "check", "-q", theirs}).exit_code == 0);

  // The same file-level writes through libblock's filter: the new clusters past EOF first
  // (data cluster, then L2 table), then the metadata below the old EOF.
  REQUIRE(Run({"qemu-img", "create", "-q", "-f", "qcow2", fresh, "64M"}).exit_code == 0);
  REQUIRE(FileSize(fresh) == q.fresh_size);
  WriteFile(ours, ReadFile(fresh));
  const int64_t kCluster = 65536;
  const int64_t old_end = q.fresh_size / kCluster * kCluster;  // the first new cluster
  std::string final_bytes = ReadFile(theirs);
  REQUIRE(static_cast<int64_t>(final_bytes.size()) == q.final_size);
  {
    auto be = f.MustOpenBackend("driver=preallocate,prealloc-size=8388608,prealloc-align=1048576,"
                                "file.driver=file,file.filename=" + ours,
                                {.resize = true, .allow_write_beyond_eof = true});
    std::vector<int64_t> clusters;
    for (int64_t c = q.final_size - kCluster; c >= old_end; c -= kCluster) clusters.push_back(c);
    for (int64_t c = 0; c < old_end; c += kCluster) clusters.push_back(c);
    for (int64_t c : clusters) {
      int64_t len = std::min<int64_t>(kCluster, q.final_size - c);
      REQUIRE(be->PwriteSync(c, final_bytes.data() + c, len).ok());
      if (c >= old_end) REQUIRE(FileSize(ours) == q.open_size);
    }
    REQUIRE(FileSize(ours) == q.open_size);
    REQUIRE(be->size() == q.final_size);
  }
  REQUIRE(FileSize(ours) == q.final_size);
  REQUIRE(Run({"cmp", ours, theirs}).exit_code == 0);
  testing::CommandResult r = Run({"qemu-img", "check", ours});
  INFO(r.out);
  REQUIRE(r.exit_code == 0);
  r = Run({"qemu-io", "-r", "-f", "qcow2", "-c", "read -q -P 1 0 64k", "-c", "read -q -P 0 64k 1M", ours});
  INFO(r.out);
  REQUIRE(r.exit_code == 0);
}

}  // namespace
}  // namespace libblock

LB_TEST_REQUIRES(.programs = {"qemu-img", "qemu-io"})
