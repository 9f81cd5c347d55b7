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
