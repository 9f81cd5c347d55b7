// Helpers shared by the test executables: temporary directories, running external programs
// (qemu-img, qemu-io), and an event loop per test.
#ifndef LIBBLOCK_TESTS_TEST_SUPPORT_H_
#define LIBBLOCK_TESTS_TEST_SUPPORT_H_

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "core/event_loop.h"

namespace libblock::testing {

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

// The lines of /proc/locks that refer to `path`'s inode.
std::vector<std::string> LocksOn(const std::string& path);

// Writes / reads a whole file.
void WriteFile(const std::string& path, const std::string& data);
std::string ReadFile(const std::string& path);
int64_t FileSize(const std::string& path);

// A loop for the current test.
std::unique_ptr<EventLoop> MakeLoop(bool io_uring = true);

// Skips the rest of a test case (Catch2 v2 has no SKIP): prints why and returns.
#define LB_SKIP_UNLESS(cond, why)                  \
  do {                                             \
    if (!(cond)) {                                 \
      WARN("skipped: " << (why));                  \
      return;                                      \
    }                                              \
  } while (0)

}  // namespace libblock::testing

#endif  // LIBBLOCK_TESTS_TEST_SUPPORT_H_

// (Own guard: this block was appended after the main one.)
#ifndef LIBBLOCK_TESTS_TEST_SUPPORT_LOCKS_H_
#define LIBBLOCK_TESTS_TEST_SUPPORT_LOCKS_H_
namespace libblock::testing {

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

}  // namespace libblock::testing
#endif  // LIBBLOCK_TESTS_TEST_SUPPORT_LOCKS_H_

namespace libblock::testing {

// `n` pseudo-random bytes from `seed` (std::mt19937): the same on every run.
std::string RandomBytes(size_t n, uint32_t seed);
// "" when `a` and `b` hold the same bytes, else where they first differ (for readable
// failures on large buffers: REQUIRE(DescribeDifference(x, y) == "")).
std::string DescribeDifference(const std::string& a, const std::string& b);

}  // namespace libblock::testing
