// Helpers shared by the test executables: temporary directories, running external programs
// (qemu-img, qemu-io), /proc views of locks and descriptors, test data, a per-test block
// layer (GraphEnv: event loop + Graph + TempDir) and the Catch main of tests that need tools
// or root.
//
// The macros (REQUIRE_BYTES, LB_SKIP_UNLESS, LB_CATCH_MAIN_REQUIRING) expand to Catch2 v2
// macros: include <catch2/catch.hpp> before using them. Helpers documented to REQUIRE fail
// the calling test case.
#ifndef LIBBLOCK_TESTS_TEST_SUPPORT_H_
#define LIBBLOCK_TESTS_TEST_SUPPORT_H_

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/backend.h"
#include "core/event_loop.h"
#include "core/graph.h"
#include "core/registry.h"
#include "util/status.h"

namespace libblock::testing {

inline constexpr int64_t kKiB = 1024;
inline constexpr int64_t kMiB = 1024 * kKiB;

// ---- files and processes -----------------------------------------------------------------------

// A fresh directory under $TMPDIR (or /tmp), removed with its contents on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::string& path() const { return path_; }
  std::string File(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

struct CommandResult {
  int exit_code = -1;  // -1: did not exit normally
  std::string out;     // stdout and stderr, interleaved
};

// Runs argv[0] (searched in PATH) with the arguments and waits for it.
CommandResult Run(const std::vector<std::string>& argv);
// Runs a shell command line.
CommandResult Shell(const std::string& command);
// True when `program` is found in PATH.
bool HaveProgram(const std::string& program);

// A child process started in the background; killed (SIGKILL) and reaped on destruction.
class Background {
 public:
  explicit Background(const std::vector<std::string>& argv);
  ~Background();
  pid_t pid() const { return pid_; }
  bool Running();
  int Wait();  // exit code

 private:
  pid_t pid_ = -1;
  bool reaped_ = false;
  int status_ = 0;
};

// Writes / reads a whole file.
void WriteFile(const std::string& path, const std::string& data);
std::string ReadFile(const std::string& path);
int64_t FileSize(const std::string& path);
// The bytes the file system allocated to `path` (st_blocks * 512); REQUIREs that stat works.
int64_t AllocatedBytes(const std::string& path);

// ---- locks and descriptors (/proc) -------------------------------------------------------------

// The lines of /proc/locks that refer to `path`'s inode.
std::vector<std::string> LocksOn(const std::string& path);

// One line of /proc/locks on a file: kind (OFDLCK, POSIX, FLOCK), type (READ, WRITE) and the
// inclusive byte range. The kernel merges adjacent ranges of one owner ("100 101").
struct FileLock {
  std::string kind;
  std::string type;
  int64_t start = 0;
  int64_t end = 0;
};
std::vector<FileLock> FileLocksOn(const std::string& path);
// Every byte locked on `path` by a lock of `kind` ("" for any), once per lock covering it,
// sorted: QEMU's lock bytes held by all openers together.
std::vector<int64_t> LockedBytes(const std::string& path, const std::string& kind = "");

// The status flags (/proc/self/fdinfo "flags", O_* bits) of every descriptor of this process
// whose /proc/self/fd link names `path`.
std::vector<int> FdFlagsFor(const std::string& path);

// Makes the file protocol believe OFD locks are (un)available until destroyed, however the
// test ends.
class OfdOverride {
 public:
  explicit OfdOverride(bool available);
  ~OfdOverride();
  OfdOverride(const OfdOverride&) = delete;
  OfdOverride& operator=(const OfdOverride&) = delete;
};

// ---- data and messages -------------------------------------------------------------------------

// `n` pseudo-random bytes from `seed` (std::mt19937): the same on every run.
std::string RandomBytes(size_t n, uint32_t seed);
// The same, but never a zero byte: data that cannot be mistaken for a hole or a zeroed range.
std::string NonZeroRandomBytes(size_t n, uint32_t seed);
// "" when `a` and `b` hold the same bytes, else where they first differ (for readable
// failures on large buffers: REQUIRE(DescribeDifference(x, y) == "")).
std::string DescribeDifference(const std::string& a, const std::string& b);
#define REQUIRE_BYTES(a, b) REQUIRE(::libblock::testing::DescribeDifference((a), (b)) == "")

// A status's message alone, for REQUIRE_THAT(..., Catch::Contains(...)) on QEMU's texts.
std::string Message(const absl::Status& status);

// ---- the block layer ---------------------------------------------------------------------------

// A loop for the current test.
std::unique_ptr<EventLoop> MakeLoop(bool io_uring = true);

// "driver=raw,file.driver=file,file.filename=<path>[,<extra>]": a raw image on a plain file.
std::string RawFileOpts(const std::string& path, const std::string& extra = "");

// Backend::Open on `graph` with QEMU-style "key=value,..." options (parse errors are returned).
absl::StatusOr<std::unique_ptr<Backend>> OpenBackend(Graph& graph, const std::string& opts,
                                                     BackendOptions bo = {},
                                                     const std::string& filename = "");
// The same, REQUIREing that the options parse and the open succeeds.
std::unique_ptr<Backend> MustOpenBackend(Graph& graph, const std::string& opts, BackendOptions bo = {},
                                         const std::string& filename = "");

// One test's block layer: an event loop, a Graph on it (the built-in drivers, or `registry`'s),
// a TempDir for images, and every warning the graph reported. Options are QEMU-style
// "key=value,..." strings. The Must* helpers, Read and Write REQUIRE success; the others
// return the status for the test to check.
struct GraphEnv {
  explicit GraphEnv(bool io_uring = true);
  explicit GraphEnv(const Registry& registry, bool io_uring = true);
  GraphEnv(const GraphEnv&) = delete;
  GraphEnv& operator=(const GraphEnv&) = delete;

  absl::StatusOr<std::unique_ptr<Backend>> OpenBackend(const std::string& opts, BackendOptions bo = {},
                                                       const std::string& filename = "");
  std::unique_ptr<Backend> MustOpenBackend(const std::string& opts, BackendOptions bo = {},
                                           const std::string& filename = "");
  // Graph::Open: a node without a backend (the caller Unrefs it).
  absl::StatusOr<Node*> OpenNode(const std::string& opts, const std::string& filename = "");
  Node* MustOpenNode(const std::string& opts, const std::string& filename = "");
  // Graph::Create of `filename` with driver `fmt`.
  absl::Status Create(const std::string& filename, const std::string& fmt, const std::string& opts);

  // `bytes` bytes at `offset` through the backend. The buffer starts as 0xaa, not zeroes, so
  // a read that "succeeds" without filling it cannot pass for a read of zeroes.
  std::string Read(Backend& be, int64_t offset, int64_t bytes);
  void Write(Backend& be, int64_t offset, const std::string& data);
  absl::Status Flush(Backend& be);
  absl::Status Zero(Backend& be, int64_t offset, int64_t bytes, ReqFlags flags = 0);
  absl::Status Discard(Backend& be, int64_t offset, int64_t bytes);
  absl::Status Truncate(Backend& be, int64_t size, PreallocMode mode, bool exact = false);

  TempDir dir;  // first, so it outlives every file the graph has open
  std::unique_ptr<EventLoop> loop;
  Graph graph;
  std::vector<std::string> warnings;
};

// ---- skipping ----------------------------------------------------------------------------------

// Skips the rest of a test case (Catch2 v2 has no SKIP): prints why and returns.
#define LB_SKIP_UNLESS(cond, why)                  \
  do {                                             \
    if (!(cond)) {                                 \
      WARN("skipped: " << (why));                  \
      return;                                      \
    }                                              \
  } while (0)

// What a whole test executable needs; checked in this order.
struct Requirements {
  bool root = false;                  // effective uid 0
  std::vector<std::string> programs;  // found in PATH
  std::vector<std::string> devices;   // openable read-write (access R_OK | W_OK)
};
// True when everything in `req` is there; otherwise prints "skipped: <what is missing>" to
// stderr and returns false.
bool RequirementsMet(const Requirements& req);

// The requirements of a test executable linked with test_main_requiring (whose main() exits
// 77, which meson reports as skipped, when one is missing). Each such executable defines it
// once, at global scope, through the macro below; the arguments initialise Requirements:
//   LB_TEST_REQUIRES(.programs = {"qemu-img", "qemu-io"})
// (The runner is one shared translation unit: Catch's session code compiled into every
// executable cost three minutes of each ASan build.)
Requirements ExecutableRequirements();
#define LB_TEST_REQUIRES(...) \
  ::libblock::testing::Requirements libblock::testing::ExecutableRequirements() { return {__VA_ARGS__}; }

}  // namespace libblock::testing

#endif  // LIBBLOCK_TESTS_TEST_SUPPORT_H_
