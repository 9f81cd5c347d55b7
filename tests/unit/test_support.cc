#include "test_support.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <stdexcept>

extern char** environ;

namespace libblock::testing {

TempDir::TempDir() {
  const char* base = getenv("TMPDIR");
  std::string tmpl = std::string(base && *base ? base : "/tmp") + "/libblock-test-XXXXXX";
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  if (!mkdtemp(buf.data())) throw std::runtime_error("mkdtemp failed");
  path_ = buf.data();
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

namespace {

pid_t Spawn(const std::vector<std::string>& argv, int out_fd) {
  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  if (out_fd >= 0) {
    posix_spawn_file_actions_adddup2(&fa, out_fd, 1);
    posix_spawn_file_actions_adddup2(&fa, out_fd, 2);
  } else {
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
  }
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  pid_t pid = -1;
  int rc = posix_spawnp(&pid, args[0], &fa, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  return rc == 0 ? pid : -1;
}

}  // namespace

CommandResult Run(const std::vector<std::string>& argv) {
  CommandResult result;
  int pipefd[2];
  if (pipe2(pipefd, O_CLOEXEC) != 0) return result;
  pid_t pid = Spawn(argv, pipefd[1]);
  close(pipefd[1]);
  char buf[4096];
  ssize_t n;
  while ((n = read(pipefd[0], buf, sizeof(buf))) > 0) result.out.append(buf, static_cast<size_t>(n));
  close(pipefd[0]);
  if (pid < 0) {
    result.out = "failed to start " + argv[0];
    return result;
  }
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return result;
}

CommandResult Shell(const std::string& command) { return Run({"/bin/sh", "-c", command}); }

bool HaveProgram(const std::string& program) {
  return Shell("command -v " + program + " >/dev/null 2>&1").exit_code == 0;
}

Background::Background(const std::vector<std::string>& argv) { pid_ = Spawn(argv, -1); }

Background::~Background() {
  if (pid_ > 0 && !reaped_) {
    kill(pid_, SIGKILL);
    Wait();
  }
}

bool Background::Running() {
  if (pid_ <= 0 || reaped_) return false;
  int status;
  pid_t r = waitpid(pid_, &status, WNOHANG);
  if (r == pid_) {
    reaped_ = true;
    status_ = status;
    return false;
  }
  return true;
}

int Background::Wait() {
  if (pid_ <= 0) return -1;
  if (!reaped_) {
    while (waitpid(pid_, &status_, 0) < 0 && errno == EINTR) {
    }
    reaped_ = true;
  }
  return WIFEXITED(status_) ? WEXITSTATUS(status_) : -1;
}

std::vector<std::string> LocksOn(const std::string& path) {
  std::vector<std::string> out;
  struct stat st;
  if (stat(path.c_str(), &st) != 0) return out;
  char suffix[64];
  snprintf(suffix, sizeof(suffix), ":%lu ", static_cast<unsigned long>(st.st_ino));
  std::ifstream locks("/proc/locks");
  std::string line;
  while (std::getline(locks, line)) {
    if (line.find(suffix) != std::string::npos) out.push_back(line);
  }
  return out;
}

void WriteFile(const std::string& path, const std::string& data) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f << data;
}

std::string ReadFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

int64_t FileSize(const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) return -1;
  return st.st_size;
}

std::unique_ptr<EventLoop> MakeLoop(bool io_uring) {
  LoopOptions opts;
  opts.use_io_uring = io_uring;
  auto loop = EventLoop::Create(opts);
  if (!loop.ok()) throw std::runtime_error(std::string(loop.status().message()));
  return std::move(*loop);
}

}  // namespace libblock::testing

#include <algorithm>  // helpers below
#include <cstdint>

namespace libblock::testing {

std::vector<FileLock> FileLocksOn(const std::string& path) {
  std::vector<FileLock> out;
  for (const std::string& line : LocksOn(path)) {
    // "1: OFDLCK ADVISORY  READ -1 fe:00:1234 100 101" ("1: -> ..." for a blocked waiter)
    std::istringstream in(line);
    std::vector<std::string> f;
    for (std::string w; in >> w;) {
      if (w != "->") f.push_back(w);
    }
    if (f.size() < 8) continue;
    FileLock l;
    l.kind = f[1];
    l.type = f[3];
    l.start = std::stoll(f[6]);
    l.end = f[7] == "EOF" ? INT64_MAX : std::stoll(f[7]);
    out.push_back(l);
  }
  return out;
}

std::vector<int64_t> LockedBytes(const std::string& path, const std::string& kind) {
  std::vector<int64_t> bytes;
  for (const FileLock& l : FileLocksOn(path)) {
    if (!kind.empty() && l.kind != kind) continue;
    for (int64_t b = l.start; b <= l.end && b < l.start + 4096; ++b) bytes.push_back(b);
  }
  std::sort(bytes.begin(), bytes.end());
  return bytes;
}

std::vector<int> FdFlagsFor(const std::string& path) {
  std::vector<int> flags;
  std::error_code ec;
  std::string want = std::filesystem::weakly_canonical(path, ec).string();
  for (const auto& entry : std::filesystem::directory_iterator("/proc/self/fd", ec)) {
    std::error_code lec;
    std::filesystem::path target = std::filesystem::read_symlink(entry.path(), lec);
    if (lec || target.string() != want) continue;
    std::ifstream info("/proc/self/fdinfo/" + entry.path().filename().string());
    std::string line;
    while (std::getline(info, line)) {
      if (line.rfind("flags:", 0) == 0) flags.push_back(static_cast<int>(std::stol(line.substr(6), nullptr, 8)));
    }
  }
  return flags;
}

}  // namespace libblock::testing

namespace libblock::testing {

std::string RandomBytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string out(n, '\0');
  for (char& c : out) c = static_cast<char>(rng() & 0xff);
  return out;
}

std::string DescribeDifference(const std::string& a, const std::string& b) {
  size_t n = std::min(a.size(), b.size());
  size_t i = 0;
  while (i < n && a[i] == b[i]) ++i;
  if (i == n && a.size() == b.size()) return "";
  char buf[160];
  if (i == n) {
    snprintf(buf, sizeof(buf), "sizes differ: %zu vs %zu bytes (equal up to %zu)", a.size(), b.size(), n);
  } else {
    snprintf(buf, sizeof(buf), "first difference at offset %zu: 0x%02x vs 0x%02x (sizes %zu, %zu)", i,
             static_cast<unsigned char>(a[i]), static_cast<unsigned char>(b[i]), a.size(), b.size());
  }
  return buf;
}

}  // namespace libblock::testing
