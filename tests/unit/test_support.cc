#include "test_support.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <random>
#include <sstream>
#include <stdexcept>

#include "core/options.h"
#include "protocols/file/file_lock.h"

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
  // /proc/locks names the file as "MAJOR:MINOR:INODE" (hex device numbers). Matching the inode
  // alone also caught locks another test process held on a file of another file system that
  // happened to have the same inode number.
  char suffix[96];
  snprintf(suffix, sizeof(suffix), " %02x:%02x:%lu ", major(st.st_dev), minor(st.st_dev),
           static_cast<unsigned long>(st.st_ino));
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

int64_t AllocatedBytes(const std::string& path) {
  struct stat st;
  REQUIRE(stat(path.c_str(), &st) == 0);
  return static_cast<int64_t>(st.st_blocks) * 512;
}

std::unique_ptr<EventLoop> MakeLoop(bool io_uring) {
  LoopOptions opts;
  opts.use_io_uring = io_uring;
  auto loop = EventLoop::Create(opts);
  if (!loop.ok()) throw std::runtime_error(std::string(loop.status().message()));
  return std::move(*loop);
}

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

OfdOverride::OfdOverride(bool available) { file::OverrideOfdLocksForTesting(available); }
OfdOverride::~OfdOverride() { file::OverrideOfdLocksForTesting(std::nullopt); }

std::string RandomBytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string out(n, '\0');
  for (char& c : out) c = static_cast<char>(rng() & 0xff);
  return out;
}

std::string NonZeroRandomBytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string out(n, '\0');
  for (char& c : out) c = static_cast<char>(rng() % 255 + 1);
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

std::string Message(const absl::Status& status) { return std::string(status.message()); }

std::string RawFileOpts(const std::string& path, const std::string& extra) {
  return "driver=raw,file.driver=file,file.filename=" + path + (extra.empty() ? "" : "," + extra);
}

absl::StatusOr<std::unique_ptr<Backend>> OpenBackend(Graph& graph, const std::string& opts, BackendOptions bo,
                                                     const std::string& filename) {
  LB_ASSIGN_OR_RETURN(Options o, ParseKeyValueOptions(opts));
  return Backend::Open(graph, filename, std::move(o), std::move(bo));
}

namespace {

// The parsed options; REQUIREs that they parse (an open failure is then the driver's).
Options MustParse(const std::string& opts) {
  absl::StatusOr<Options> o = ParseKeyValueOptions(opts);
  INFO(opts << ": " << o.status().ToString());
  REQUIRE(o.ok());
  return std::move(*o);
}

}  // namespace

std::unique_ptr<Backend> MustOpenBackend(Graph& graph, const std::string& opts, BackendOptions bo,
                                         const std::string& filename) {
  auto be = Backend::Open(graph, filename, MustParse(opts), std::move(bo));
  INFO(opts << " (filename '" << filename << "'): " << be.status().ToString());
  REQUIRE(be.ok());
  return std::move(*be);
}

GraphEnv::GraphEnv(bool io_uring) : GraphEnv(Registry::Builtin(), io_uring) {}

GraphEnv::GraphEnv(const Registry& registry, bool io_uring)
    : loop(MakeLoop(io_uring)), graph(*loop, registry) {
  graph.SetWarningHandler([this](const std::string& w) { warnings.push_back(w); });
}

absl::StatusOr<std::unique_ptr<Backend>> GraphEnv::OpenBackend(const std::string& opts, BackendOptions bo,
                                                               const std::string& filename) {
  return testing::OpenBackend(graph, opts, std::move(bo), filename);
}

std::unique_ptr<Backend> GraphEnv::MustOpenBackend(const std::string& opts, BackendOptions bo,
                                                   const std::string& filename) {
  return testing::MustOpenBackend(graph, opts, std::move(bo), filename);
}

absl::StatusOr<Node*> GraphEnv::OpenNode(const std::string& opts, const std::string& filename) {
  LB_ASSIGN_OR_RETURN(Options o, ParseKeyValueOptions(opts));
  return graph.Open(filename, std::move(o));
}

Node* GraphEnv::MustOpenNode(const std::string& opts, const std::string& filename) {
  absl::StatusOr<Node*> node = graph.Open(filename, MustParse(opts));
  INFO(opts << " (filename '" << filename << "'): " << node.status().ToString());
  REQUIRE(node.ok());
  return *node;
}

absl::Status GraphEnv::Create(const std::string& filename, const std::string& fmt, const std::string& opts) {
  LB_ASSIGN_OR_RETURN(Options o, ParseKeyValueOptions(opts));
  return graph.Create(filename, fmt, std::move(o));
}

std::string GraphEnv::Read(Backend& be, int64_t offset, int64_t bytes) {
  std::string out(static_cast<size_t>(bytes), '\xaa');
  absl::Status st = be.PreadSync(offset, out.data(), bytes);
  INFO(st.ToString());
  REQUIRE(st.ok());
  return out;
}

void GraphEnv::Write(Backend& be, int64_t offset, const std::string& data) {
  absl::Status st = be.PwriteSync(offset, data.data(), static_cast<int64_t>(data.size()));
  INFO(st.ToString());
  REQUIRE(st.ok());
}

absl::Status GraphEnv::Flush(Backend& be) { return loop->Run(be.Flush()); }

absl::Status GraphEnv::Zero(Backend& be, int64_t offset, int64_t bytes, ReqFlags flags) {
  return loop->Run(be.WriteZeroes(offset, bytes, flags));
}

absl::Status GraphEnv::Discard(Backend& be, int64_t offset, int64_t bytes) {
  return loop->Run(be.Discard(offset, bytes));
}

absl::Status GraphEnv::Truncate(Backend& be, int64_t size, PreallocMode mode, bool exact) {
  return loop->Run(be.Truncate(size, exact, mode));
}

bool RequirementsMet(const Requirements& req) {
  std::string missing;
  if (req.root && geteuid() != 0) missing = "needs root";
  for (const std::string& p : req.programs) {
    if (missing.empty() && !HaveProgram(p)) missing = p + " is not installed";
  }
  for (const std::string& d : req.devices) {
    if (missing.empty() && access(d.c_str(), R_OK | W_OK) != 0) missing = d + " is not available";
  }
  if (missing.empty()) return true;
  std::fprintf(stderr, "skipped: %s\n", missing.c_str());
  return false;
}

}  // namespace libblock::testing
