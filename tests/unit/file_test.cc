// The file protocol in one process: data paths (io_uring and the worker pool), cache modes as
// open flags, O_DIRECT padding and bounce buffers, zero/discard/hole handling, block status
// against `qemu-img map`, truncate and create with preallocation, and QEMU-compatible image
// locks (OFD bytes 100+i / 200+i, the POSIX fallback, locking=off, force-share).
//
// Everything runs on regular files in a TempDir (ext4 /tmp on the CI machine). Expected
// results are computed from a model of the file's bytes or taken from QEMU's own tools and
// behaviour (see test-peers.md §7 for the lock bytes QEMU holds); nothing here needs root
// except the immutable-file case, which is skipped when it cannot be built.
#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cstring>
#include <string>
#include <vector>

#include "core/backend.h"
#include "core/graph.h"
#include "nlohmann/json.hpp"
#include "protocols/file/file_driver.h"
#include "test_support.h"
#include "util/iovec.h"
#include "util/status.h"

namespace libblock {
namespace {

using testing::AllocatedBytes;
using testing::FdFlagsFor;
using testing::FileSize;
using testing::GraphEnv;
using testing::kMiB;
using testing::LockedBytes;
using testing::Message;
using testing::NonZeroRandomBytes;
using testing::OfdOverride;
using testing::RawFileOpts;
using testing::ReadFile;
using testing::WriteFile;

constexpr int kODirect = 040000;  // x86-64 values, as /proc/self/fdinfo prints them (octal)
constexpr int kODsync = 010000;
const std::vector<int64_t> kRwLocks = {100, 101, 201, 203};  // hold read+write, share neither write nor resize
const std::vector<int64_t> kRoLocks = {100, 201, 203};

// lseek(SEEK_DATA/SEEK_HOLE) on a separate descriptor; -1 for ENXIO.
int64_t Seek(const std::string& path, int64_t offset, int whence) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  REQUIRE(fd >= 0);
  off_t r = lseek(fd, offset, whence);
  close(fd);
  return r;
}

void Fsync(const std::string& path) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  REQUIRE(fd >= 0);
  REQUIRE(fsync(fd) == 0);
  close(fd);
}

// The file node under a raw backend (or the root itself when it is the file node).
Node* FileNode(const Backend& be) {
  Node* n = be.root();
  while (n && n->driver().name != "file" && n->driver().name != "host_device") {
    n = n->primary_child() ? n->primary_child()->node() : nullptr;
  }
  REQUIRE(n);
  return n;
}

// ---- data path ---------------------------------------------------------------------------------

TEST_CASE("read, write and flush round-trip through io_uring and the worker pool", "[file]") {
  for (std::string aio : {"io_uring", "threads", ""}) {
    GraphEnv env;
    if (aio != "threads" && !env.loop->uring()) {
      WARN("skipped aio=" << aio << ": no io_uring ring on this host");
      continue;
    }
    INFO("aio=" << aio);
    std::string path = env.dir.File("rt.img");
    std::string model(1 << 20, '\0');
    WriteFile(path, model);
    auto be = env.MustOpenBackend(RawFileOpts(path, aio.empty() ? "" : "file.aio=" + aio));
    nlohmann::json info;
    FileNode(*be)->impl()->FillInfo(info);
    REQUIRE(info["aio"] == (aio.empty() ? "io_uring" : aio));
    REQUIRE(info["locking"] == "ofd");

    std::string data = NonZeroRandomBytes(300000, 1);
    env.Write(*be, 4096 + 7, data);
    model.replace(4096 + 7, data.size(), data);
    std::string small = NonZeroRandomBytes(3, 2);
    env.Write(*be, 1, small);
    model.replace(1, small.size(), small);
    REQUIRE(env.Flush(*be).ok());
    REQUIRE_BYTES(env.Read(*be, 0, 1 << 20), model);
    REQUIRE_BYTES(env.Read(*be, 4096 + 7 + 1000, 5), data.substr(1000, 5));
    REQUIRE_BYTES(ReadFile(path), model);
    // Only aio=threads may start worker threads: io_uring does reads, writes and fsync itself.
    REQUIRE(env.loop->has_thread_pool() == (aio == "threads"));
  }
}

TEST_CASE("without an io_uring ring the default engine is the worker pool", "[file]") {
  GraphEnv env(/*io_uring=*/false);
  REQUIRE(env.loop->uring() == nullptr);
  std::string path = env.dir.File("nouring.img");
  WriteFile(path, std::string(65536, '\0'));
  auto bad = env.OpenBackend(RawFileOpts(path, "file.aio=io_uring"));
  REQUIRE_FALSE(bad.ok());
  REQUIRE_THAT(Message(bad.status()), Catch::Contains("io_uring"));
  auto be = env.MustOpenBackend(RawFileOpts(path));
  std::string data = NonZeroRandomBytes(10000, 3);
  env.Write(*be, 100, data);
  REQUIRE(env.Flush(*be).ok());
  REQUIRE(ReadFile(path).substr(100, data.size()) == data);
  REQUIRE(env.loop->has_thread_pool());
}

// ---- inline transfers (RWF_NOWAIT) -------------------------------------------------------------

// Replaces the inline path's system calls for one test: each call is recorded, and `script`
// (when set) decides what the call does instead of the real one.
struct InlineCall {
  bool write;
  int flags;  // -1: pread/pwrite (no flags)
  int64_t offset;
  size_t bytes;
};
class SyscallSpy {
 public:
  // What a call does: a result to return with `err` as errno, or < -1 to make the real call
  // (`limit` > 0 caps the bytes it moves: a short transfer).
  struct Action {
    ssize_t result = -2;
    int err = 0;
    size_t limit = 0;
  };
  using Script = Action (*)(const InlineCall&);

  explicit SyscallSpy(Script script = nullptr) : saved_(file::internal::FileSyscallsForTest()) {
    calls_.clear();
    script_ = script;
    file::internal::FileSyscallsForTest() = {Preadv2, Pwritev2, Pread, Pwrite};
  }
  ~SyscallSpy() { file::internal::FileSyscallsForTest() = saved_; }
  SyscallSpy(const SyscallSpy&) = delete;
  SyscallSpy& operator=(const SyscallSpy&) = delete;

  static const std::vector<InlineCall>& calls() { return calls_; }

 private:
  static ssize_t Do(bool write, int fd, const struct iovec* iov, int n, off_t off, int flags) {
    size_t bytes = 0;
    for (int i = 0; i < n; ++i) bytes += iov[i].iov_len;
    InlineCall call{write, flags, off, bytes};
    calls_.push_back(call);
    Action a = script_ ? script_(call) : Action{};
    if (a.result >= -1) {
      errno = a.err;
      return a.result;
    }
    std::vector<struct iovec> v(iov, iov + n);
    if (a.limit > 0) {  // keep the first `limit` bytes of the vector
      size_t left = a.limit;
      size_t i = 0;
      for (; i < v.size() && left > 0; ++i) {
        v[i].iov_len = std::min(v[i].iov_len, left);
        left -= v[i].iov_len;
      }
      v.resize(i);
    }
    int real = flags < 0 ? 0 : flags;
    return write ? pwritev2(fd, v.data(), static_cast<int>(v.size()), off, real)
                 : preadv2(fd, v.data(), static_cast<int>(v.size()), off, real);
  }
  static ssize_t Preadv2(int fd, const struct iovec* iov, int n, off_t off, int flags) {
    return Do(false, fd, iov, n, off, flags);
  }
  static ssize_t Pwritev2(int fd, const struct iovec* iov, int n, off_t off, int flags) {
    return Do(true, fd, iov, n, off, flags);
  }
  static ssize_t Pread(int fd, void* buf, size_t len, off_t off) {
    struct iovec v = {buf, len};
    return Do(false, fd, &v, 1, off, -1);
  }
  static ssize_t Pwrite(int fd, const void* buf, size_t len, off_t off) {
    struct iovec v = {const_cast<void*>(buf), len};
    return Do(true, fd, &v, 1, off, -1);
  }

  file::internal::FileSyscalls saved_;
  static inline std::vector<InlineCall> calls_;
  static inline Script script_ = nullptr;
};

// The change in the file protocol's transfer counters while an object lives.
struct StatsDelta {
  file::internal::FileIoStats start = file::internal::FileIoStatsForTest();
  uint64_t inline_done() const {
    return file::internal::FileIoStatsForTest().inline_transfers - start.inline_transfers;
  }
  uint64_t partial() const {
    return file::internal::FileIoStatsForTest().partial_transfers - start.partial_transfers;
  }
  uint64_t async() const {
    return file::internal::FileIoStatsForTest().async_transfers - start.async_transfers;
  }
};

bool OnMemoryFs(const std::string& path) {
  struct statfs fs;
  return statfs(path.c_str(), &fs) == 0 && (fs.f_type == 0x01021994 /* TMPFS_MAGIC */ ||
                                            fs.f_type == static_cast<decltype(fs.f_type)>(0x858458f6));
}

TEST_CASE("page-cached reads complete inline with RWF_NOWAIT; O_DIRECT goes to the ring", "[file][inline]") {
  GraphEnv env;
  std::string path = env.dir.File("inline.img");
  LB_SKIP_UNLESS(!OnMemoryFs(env.dir.path()), "the test directory is on a memory file system");
  std::string model = NonZeroRandomBytes(256 * 1024, 41);
  WriteFile(path, model);  // buffered: in the page cache now
  for (std::string aio : {"io_uring", "threads"}) {
    if (aio == "io_uring" && !env.loop->uring()) continue;
    INFO("aio=" << aio);
    auto be = env.MustOpenBackend(RawFileOpts(path, "file.aio=" + aio));
    SyscallSpy spy;
    StatsDelta d;
    REQUIRE_BYTES(env.Read(*be, 8192, 4096), model.substr(8192, 4096));
    REQUIRE_BYTES(env.Read(*be, 100, 70000), model.substr(100, 70000));
    CHECK(d.inline_done() == 2);
    CHECK(d.async() == 0);
    REQUIRE(spy.calls().size() == 2);
    for (const InlineCall& c : spy.calls()) {
      CHECK_FALSE(c.write);
      CHECK(c.flags == RWF_NOWAIT);
    }
    CHECK(spy.calls()[1].offset == 100);
    CHECK(spy.calls()[1].bytes == 70000);
  }
  // cache=none: every read waits for the device, so none is tried inline.
  auto be = env.MustOpenBackend(RawFileOpts(path, "cache.direct=on"));
  SyscallSpy spy;
  StatsDelta d;
  REQUIRE_BYTES(env.Read(*be, 4096, 4096), model.substr(4096, 4096));
  env.Write(*be, 0, model.substr(0, 4096));
  CHECK(spy.calls().empty());
  CHECK(d.inline_done() == 0);
  CHECK(d.async() == 2);
}

TEST_CASE("an inline read that would block finishes through the ring, from where it stopped", "[file][inline]") {
  GraphEnv env;
  std::string path = env.dir.File("eagain.img");
  LB_SKIP_UNLESS(!OnMemoryFs(env.dir.path()), "the test directory is on a memory file system");
  std::string model = NonZeroRandomBytes(64 * 1024, 42);
  WriteFile(path, model);
  auto be = env.MustOpenBackend(RawFileOpts(path));

  SECTION("EAGAIN at once: the whole read is asynchronous") {
    SyscallSpy spy([](const InlineCall&) { return SyscallSpy::Action{-1, EAGAIN}; });
    StatsDelta d;
    REQUIRE_BYTES(env.Read(*be, 4096, 8192), model.substr(4096, 8192));
    CHECK(spy.calls().size() == 1);
    CHECK(d.inline_done() == 0);
    CHECK(d.partial() == 0);
    CHECK(d.async() == 1);
    // Would-block is not remembered: the next read tries inline again.
    REQUIRE_BYTES(env.Read(*be, 0, 512), model.substr(0, 512));
    CHECK(spy.calls().size() == 2);
  }
  SECTION("a short transfer, then EAGAIN: the rest is asynchronous") {
    SyscallSpy spy([](const InlineCall& c) {
      if (c.offset == 4096) return SyscallSpy::Action{-2, 0, 3000};  // 3000 bytes, then...
      return SyscallSpy::Action{-1, EAGAIN};                         // ...would block
    });
    StatsDelta d;
    REQUIRE_BYTES(env.Read(*be, 4096, 8192), model.substr(4096, 8192));
    REQUIRE(spy.calls().size() == 2);
    CHECK(spy.calls()[1].offset == 4096 + 3000);
    CHECK(spy.calls()[1].bytes == 8192 - 3000);
    CHECK(d.partial() == 1);
    CHECK(d.async() == 1);
  }
  SECTION("an error inline is retried and reported by the asynchronous path") {
    SyscallSpy spy([](const InlineCall&) { return SyscallSpy::Action{-1, EIO}; });
    StatsDelta d;
    REQUIRE_BYTES(env.Read(*be, 0, 4096), model.substr(0, 4096));  // the ring's read works
    CHECK(d.async() == 1);
  }
}

TEST_CASE("an inline read at the end of the file zero-fills the rest", "[file][inline]") {
  GraphEnv env;
  std::string path = env.dir.File("eof.img");
  std::string model = NonZeroRandomBytes(1000, 43);
  WriteFile(path, model);  // a 1024-byte disk: its last 24 bytes read as zeroes
  auto be = env.MustOpenBackend(RawFileOpts(path));
  SyscallSpy spy;
  StatsDelta d;
  REQUIRE_BYTES(env.Read(*be, 0, 1024), model + std::string(24, '\0'));
  CHECK(d.inline_done() == 1);
  CHECK(d.async() == 0);
  REQUIRE(spy.calls().size() == 2);  // 1000 bytes, then 0: the end of the file
  CHECK(spy.calls()[1].offset == 1000);
}

TEST_CASE("a descriptor that refuses RWF_NOWAIT is not asked again", "[file][inline]") {
  GraphEnv env;
  std::string path = env.dir.File("nonowait.img");
  LB_SKIP_UNLESS(!OnMemoryFs(env.dir.path()), "the test directory is on a memory file system");
  std::string model = NonZeroRandomBytes(16384, 44);
  WriteFile(path, model);
  auto be = env.MustOpenBackend(RawFileOpts(path));
  SyscallSpy spy([](const InlineCall& c) {
    if (c.flags > 0 && (c.flags & RWF_NOWAIT)) return SyscallSpy::Action{-1, EOPNOTSUPP};
    return SyscallSpy::Action{};
  });
  StatsDelta d;
  REQUIRE_BYTES(env.Read(*be, 0, 4096), model.substr(0, 4096));
  REQUIRE_BYTES(env.Read(*be, 4096, 4096), model.substr(4096, 4096));
  env.Write(*be, 8192, model.substr(0, 4096));  // writes learn it for themselves
  env.Write(*be, 12288, model.substr(0, 4096));
  REQUIRE(spy.calls().size() == 2);  // one refused read, one refused write
  CHECK_FALSE(spy.calls()[0].write);
  CHECK(spy.calls()[1].write);
  CHECK(d.inline_done() == 0);
  CHECK(d.async() == 4);
  REQUIRE_BYTES(ReadFile(path), model.substr(0, 8192) + model.substr(0, 4096) + model.substr(0, 4096));
  // A reopen makes a new descriptor, which is asked again.
  REQUIRE(be->Reopen(true).ok());
  REQUIRE_BYTES(env.Read(*be, 0, 4096), model.substr(0, 4096));
  CHECK(spy.calls().size() == 3);
}

TEST_CASE("FUA and writethrough writes never try RWF_NOWAIT", "[file][inline]") {
  GraphEnv env;
  std::string path = env.dir.File("fua.img");
  LB_SKIP_UNLESS(!OnMemoryFs(env.dir.path()), "the test directory is on a memory file system");
  WriteFile(path, std::string(16384, '\0'));
  std::string data = NonZeroRandomBytes(4096, 45);
  {
    auto be = env.MustOpenBackend(RawFileOpts(path));
    // Writes accepted with RWF_NOWAIT would be taken inline: let the spy say so for any.
    SyscallSpy spy([](const InlineCall& c) {
      if (c.write) return SyscallSpy::Action{-1, EAGAIN};
      return SyscallSpy::Action{};
    });
    REQUIRE(be->PwriteSync(0, data.data(), 4096, kReqFua).ok());
    CHECK(spy.calls().empty());
    env.Write(*be, 4096, data);  // a plain write may try
    CHECK(spy.calls().size() == 1);
  }
  auto wt = env.MustOpenBackend(RawFileOpts(path, "cache=writethrough"));
  SyscallSpy spy;
  env.Write(*wt, 8192, data);
  CHECK(spy.calls().empty());  // O_DSYNC: every write waits
  REQUIRE_BYTES(ReadFile(path).substr(0, 12288), data + data + data);
}

TEST_CASE("a memory file system transfers inline with plain calls", "[file][inline]") {
  const char* shm = "/dev/shm";
  LB_SKIP_UNLESS(OnMemoryFs(shm), "no tmpfs at /dev/shm");
  GraphEnv env;
  char tmpl[] = "/dev/shm/libblock-inline-XXXXXX";
  int fd = mkstemp(tmpl);
  REQUIRE(fd >= 0);
  close(fd);
  std::string path = tmpl;
  struct Cleanup {
    std::string p;
    ~Cleanup() { unlink(p.c_str()); }
  } cleanup{path};
  std::string model = NonZeroRandomBytes(65536, 46);
  WriteFile(path, model);
  auto be = env.MustOpenBackend(RawFileOpts(path));
  SyscallSpy spy;
  StatsDelta d;
  REQUIRE_BYTES(env.Read(*be, 4096, 4096), model.substr(4096, 4096));
  std::string data = NonZeroRandomBytes(5000, 47);
  env.Write(*be, 1000, data);
  model.replace(1000, data.size(), data);
  REQUIRE(be->PwriteSync(0, data.data(), 512, kReqFua).ok());  // FUA: RWF_DSYNC, still inline
  model.replace(0, 512, data.substr(0, 512));
  CHECK(d.async() == 0);
  CHECK(d.inline_done() == 3);
  for (const InlineCall& c : spy.calls()) CHECK((c.flags < 0 || !(c.flags & RWF_NOWAIT)));
  REQUIRE_BYTES(ReadFile(path), model);
}

TEST_CASE("cache modes become the image descriptor's open flags", "[file]") {
  struct Case {
    const char* mode;
    bool direct, dsync;
  } cases[] = {{"writeback", false, false}, {"none", true, false}, {"writethrough", false, true},
               {"directsync", true, true},  {"unsafe", false, false}};
  for (const Case& c : cases) {
    INFO("cache=" << c.mode);
    GraphEnv env;
    std::string path = env.dir.File("cache.img");
    WriteFile(path, NonZeroRandomBytes(65536, 4));
    REQUIRE(FdFlagsFor(path).empty());
    auto be = env.MustOpenBackend(RawFileOpts(path, std::string("cache=") + c.mode));
    std::vector<int> flags = FdFlagsFor(path);
    REQUIRE(flags.size() == 1);
    REQUIRE((flags[0] & O_ACCMODE) == O_RDWR);
    REQUIRE(((flags[0] & kODirect) != 0) == c.direct);
    REQUIRE(((flags[0] & kODsync) != 0) == c.dsync);
    REQUIRE(be->options().writethrough == c.dsync);
    // Every mode still moves data, including 1-byte writes under O_DIRECT.
    env.Write(*be, 4097, "x");
    REQUIRE(env.Flush(*be).ok());
    REQUIRE(ReadFile(path)[4097] == 'x');
    REQUIRE(be->Close().ok());
    REQUIRE(FdFlagsFor(path).empty());  // closing the backend closes the image
  }
}

TEST_CASE("O_DIRECT: unaligned offsets, lengths and buffers are padded and bounced", "[file]") {
  for (std::string aio : {"io_uring", "threads"}) {
    GraphEnv env;
    if (aio == "io_uring" && !env.loop->uring()) continue;
    INFO("aio=" << aio);
    std::string path = env.dir.File("direct.img");
    std::string model = NonZeroRandomBytes(256 * 1024, 5);
    WriteFile(path, model);
    auto be = env.MustOpenBackend(RawFileOpts(path, "cache=none,file.aio=" + aio));
    Node* file = FileNode(*be);
    uint32_t align = file->limits().request_alignment;
    REQUIRE(align >= 512);
    REQUIRE((align & (align - 1)) == 0);
    REQUIRE(file->limits().min_mem_alignment > 1);  // O_DIRECT always constrains buffers here

    // 1-byte write and reads at odd offsets, reads across a sector boundary.
    env.Write(*be, 1, "A");
    model[1] = 'A';
    REQUIRE_BYTES(env.Read(*be, 1, 1), "A");
    REQUIRE_BYTES(env.Read(*be, 511, 10), model.substr(511, 10));
    // A write spanning several blocks, unaligned at both ends.
    std::string span = NonZeroRandomBytes(3 * 4096 + 123, 6);
    env.Write(*be, 4000, span);
    model.replace(4000, span.size(), span);
    // Misaligned user buffers, for aligned and unaligned requests.
    std::vector<char> raw(3 * 8192 + 64);
    char* odd = raw.data() + 1;
    std::string data = NonZeroRandomBytes(8192, 7);
    memcpy(odd, data.data(), data.size());
    REQUIRE(be->PwriteSync(65536, odd, 8192).ok());
    model.replace(65536, 8192, data);
    memcpy(odd, data.data(), 1000);
    REQUIRE(be->PwriteSync(65536 + 8192 + 3, odd, 1000).ok());
    model.replace(65536 + 8192 + 3, 1000, data.substr(0, 1000));
    memset(raw.data(), 0, raw.size());
    REQUIRE(be->PreadSync(65536, odd, 8192).ok());
    REQUIRE_BYTES(std::string(odd, 8192), model.substr(65536, 8192));
    REQUIRE(be->PreadSync(4001, odd + 2, 5000).ok());
    REQUIRE_BYTES(std::string(odd + 2, 5000), model.substr(4001, 5000));
    // A multi-element vector whose elements are individually misaligned.
    std::string a = NonZeroRandomBytes(700, 8), b = NonZeroRandomBytes(3396, 9);
    IoVec v(a.data(), a.size());
    v.Append(b.data(), b.size());
    REQUIRE(env.loop->Run(be->Write(131072, 4096, v)).ok());
    model.replace(131072, 700, a);
    model.replace(131072 + 700, 3396, b);

    REQUIRE(env.Flush(*be).ok());
    REQUIRE(env.Read(*be, 0, static_cast<int64_t>(model.size())) == model);
    REQUIRE_BYTES(ReadFile(path), model);
  }
}

// Each task writes its own bytes; the RMW of neighbours in the same block must not lose them.
Task<void> WriteAt(Backend& be, int64_t offset, const IoVec& v, int* done, int* failed) {
  absl::Status st = co_await be.Write(offset, static_cast<int64_t>(v.size()), v);
  if (!st.ok()) ++*failed;
  ++*done;
}

TEST_CASE("O_DIRECT: concurrent unaligned writes into one block are serialised", "[file]") {
  for (std::string aio : {"io_uring", "threads"}) {
    GraphEnv env;
    if (aio == "io_uring" && !env.loop->uring()) continue;
    INFO("aio=" << aio);
    std::string path = env.dir.File("rmw.img");
    std::string model = NonZeroRandomBytes(64 * 1024, 10);
    WriteFile(path, model);
    auto be = env.MustOpenBackend(RawFileOpts(path, "cache=none,file.aio=" + aio));
    // 40 writes of 90 bytes, 101 bytes apart: each block holds ~40 of them, and the last ones
    // straddle into the next block.
    constexpr int kWrites = 40;
    std::vector<std::string> bufs;
    std::vector<IoVec> vecs;
    bufs.reserve(kWrites);
    vecs.reserve(kWrites);
    int done = 0, failed = 0;
    for (int i = 0; i < kWrites; ++i) {
      int64_t off = 16384 + 3 + i * 101;
      bufs.push_back(std::string(90, static_cast<char>('a' + i % 26)) );
      bufs.back()[0] = static_cast<char>(i);
      vecs.emplace_back(bufs.back().data(), bufs.back().size());
      model.replace(static_cast<size_t>(off), 90, bufs.back());
      env.loop->Spawn(WriteAt(*be, off, vecs.back(), &done, &failed));
    }
    REQUIRE(done < kWrites);  // they really are in flight together
    env.loop->RunUntil([&] { return done == kWrites; });
    REQUIRE(failed == 0);
    REQUIRE(env.Flush(*be).ok());
    REQUIRE_BYTES(ReadFile(path), model);
  }
}

TEST_CASE("O_DIRECT on an empty file still accepts misaligned buffers", "[file]") {
  // An empty file cannot reveal the buffer alignment (reads at EOF succeed whatever the
  // buffer); QEMU then falls back to the request alignment instead of assuming 1.
  GraphEnv env;
  std::string path = env.dir.File("empty.img");
  WriteFile(path, "");
  auto be = env.MustOpenBackend(RawFileOpts(path, "cache=none"),
                                {.resize = true, .allow_write_beyond_eof = true});
  std::vector<char> raw(8192 + 1);
  std::string data = NonZeroRandomBytes(8192, 11);
  memcpy(raw.data() + 1, data.data(), data.size());
  absl::Status st = be->PwriteSync(0, raw.data() + 1, 8192);
  INFO(st.ToString());
  REQUIRE(st.ok());
  REQUIRE_BYTES(ReadFile(path), data);
}

// ---- EOF ---------------------------------------------------------------------------------------

struct TestParent : ChildParent {
  std::string ParentDescription() const override { return "test parent"; }
};

TEST_CASE("reads past the end of the file read zeroes; writes past it grow the file", "[file]") {
  GraphEnv env;
  std::string path = env.dir.File("eof.img");
  std::string data = NonZeroRandomBytes(10000, 12);
  WriteFile(path, data);
  SECTION("node-level reads across EOF") {
    absl::StatusOr<Node*> node = env.OpenNode("driver=file,filename=" + path);
    REQUIRE(node.ok());
    REQUIRE((*node)->size() == 10240);  // whole sectors, as QEMU reports it
    TestParent parent;
    auto child = env.graph.AttachChild(parent, **node, "probe", kRoleData | kRolePrimary,
                                        kPermConsistentRead, kPermAll);
    REQUIRE(child.ok());
    std::string buf(8192, '\x77');
    REQUIRE(env.loop->Run((*child)->Pread(8192, buf.data(), 8192)).ok());
    REQUIRE(buf == data.substr(8192) + std::string(8192 - (10000 - 8192), '\0'));
    // The file shrinks behind the node's back: the driver sees a short read, then EOF.
    REQUIRE(truncate(path.c_str(), 5000) == 0);
    buf.assign(8192, '\x77');
    REQUIRE(env.loop->Run((*child)->Pread(1000, buf.data(), 8192)).ok());
    REQUIRE(buf == data.substr(1000, 4000) + std::string(8192 - 4000, '\0'));
    env.graph.DetachChild(*child);
    env.graph.Unref(*node);
  }
  SECTION("backend writes beyond EOF with allow_write_beyond_eof and resize") {
    auto strict = env.MustOpenBackend(RawFileOpts(path));
    // The disk is the file rounded up to whole sectors (10240 bytes), as in QEMU: writing up
    // to there is in bounds, past it is not.
    REQUIRE(strict->PwriteSync(10238, "xy", 2).ok());
    REQUIRE_FALSE(strict->PwriteSync(10239, "xy", 2).ok());
    REQUIRE(strict->Close().ok());
    auto be = env.MustOpenBackend(RawFileOpts(path), {.resize = true, .allow_write_beyond_eof = true});
    std::string tail = NonZeroRandomBytes(5000, 13);
    env.Write(*be, 12000, tail);
    REQUIRE(FileSize(path) == 17000);
    REQUIRE(be->size() == 17408);  // whole sectors
    std::string expect = data + std::string(2000, '\0') + tail;
    expect.replace(10238, 2, "xy");  // the in-bounds write above
    REQUIRE_BYTES(env.Read(*be, 0, 17000), expect);
    REQUIRE_BYTES(ReadFile(path), expect);
  }
}

// ---- zeroes, discard, holes -----------------------------------------------------------------

TEST_CASE("write-zeroes zeroes in place, or punches holes when unmapping is allowed", "[file]") {
  GraphEnv env;
  std::string path = env.dir.File("zero.img");
  std::string model = NonZeroRandomBytes(4 * kMiB, 14);
  WriteFile(path, model);
  Fsync(path);
  int64_t full = AllocatedBytes(path);
  REQUIRE(full >= 4 * kMiB);

  SECTION("discard=ignore (default): a backend's kReqMayUnmap still punches, as in QEMU") {
    // QEMU's blk layer passes BDRV_REQ_MAY_UNMAP down whatever the top node's discard
    // option (qemu-io -d ignore -c 'write -z -u' punches a hole); `discard` rules discards.
    auto be = env.MustOpenBackend(RawFileOpts(path));
    REQUIRE(env.Zero(*be, 2 * kMiB, kMiB).ok());  // no flag: zeroed, still allocated
    REQUIRE(env.Flush(*be).ok());
    REQUIRE(AllocatedBytes(path) == full);
    REQUIRE(env.Zero(*be, kMiB, kMiB, kReqMayUnmap).ok());
    REQUIRE(env.Discard(*be, 3 * kMiB, kMiB).ok());  // ignored
    REQUIRE(env.Flush(*be).ok());
    model.replace(kMiB, 2 * kMiB, std::string(2 * kMiB, '\0'));
    REQUIRE_BYTES(ReadFile(path), model);
    REQUIRE(AllocatedBytes(path) <= full - kMiB);
    REQUIRE(Seek(path, kMiB, SEEK_HOLE) == kMiB);
    REQUIRE(Seek(path, 3 * kMiB, SEEK_HOLE) == 4 * kMiB);
  }
  SECTION("discard=unmap: only kReqMayUnmap punches a hole") {
    auto be = env.MustOpenBackend(RawFileOpts(path, "discard=unmap"));
    REQUIRE(env.Zero(*be, 2 * kMiB, kMiB).ok());  // no flag: zeroed, still allocated
    REQUIRE(env.Flush(*be).ok());
    REQUIRE(AllocatedBytes(path) == full);
    REQUIRE(env.Zero(*be, kMiB, kMiB, kReqMayUnmap).ok());
    REQUIRE(env.Flush(*be).ok());
    model.replace(kMiB, 2 * kMiB, std::string(2 * kMiB, '\0'));
    REQUIRE_BYTES(ReadFile(path), model);
    REQUIRE(AllocatedBytes(path) <= full - kMiB);
    REQUIRE(Seek(path, kMiB, SEEK_HOLE) == kMiB);
    REQUIRE(Seek(path, kMiB, SEEK_DATA) >= 2 * kMiB);
  }
  SECTION("unaligned ranges zero exactly the requested bytes") {
    auto be = env.MustOpenBackend(RawFileOpts(path, "discard=unmap"));
    REQUIRE(env.Zero(*be, 100, 5000, kReqMayUnmap).ok());
    REQUIRE(env.Zero(*be, kMiB + 4095, 2, 0).ok());
    model.replace(100, 5000, std::string(5000, '\0'));
    model.replace(kMiB + 4095, 2, std::string(2, '\0'));
    REQUIRE_BYTES(env.Read(*be, 0, 4 * kMiB), model);
    REQUIRE_BYTES(ReadFile(path), model);
  }
  SECTION("write-zeroes past EOF grows the file") {
    auto be = env.MustOpenBackend(RawFileOpts(path), {.resize = true, .allow_write_beyond_eof = true});
    REQUIRE(env.Zero(*be, 4 * kMiB + 4096, 65536).ok());
    REQUIRE(FileSize(path) == 4 * kMiB + 4096 + 65536);
    REQUIRE_BYTES(ReadFile(path), model + std::string(4096 + 65536, '\0'));
  }
}

TEST_CASE("discard is ignored by default and punches holes with discard=unmap", "[file]") {
  GraphEnv env;
  std::string path = env.dir.File("discard.img");
  std::string model = NonZeroRandomBytes(2 * kMiB, 15);
  WriteFile(path, model);
  Fsync(path);
  int64_t full = AllocatedBytes(path);
  {
    auto be = env.MustOpenBackend(RawFileOpts(path));
    REQUIRE(env.Discard(*be, 0, kMiB).ok());
    REQUIRE(env.Flush(*be).ok());
    REQUIRE_BYTES(ReadFile(path), model);
    REQUIRE(AllocatedBytes(path) == full);
  }
  auto be = env.MustOpenBackend(RawFileOpts(path, "discard=unmap"));
  REQUIRE(env.Discard(*be, 65536, 256 * 1024).ok());
  REQUIRE(env.Flush(*be).ok());
  model.replace(65536, 256 * 1024, std::string(256 * 1024, '\0'));
  REQUIRE_BYTES(ReadFile(path), model);
  REQUIRE(AllocatedBytes(path) <= full - 256 * 1024);
  REQUIRE(Seek(path, 0, SEEK_HOLE) == 65536);
  REQUIRE(Seek(path, 65536, SEEK_DATA) == 65536 + 256 * 1024);
}

// ---- block status ------------------------------------------------------------------------------

struct Extent {
  int64_t start, length;
  bool data, zero;
  bool operator==(const Extent&) const = default;
};

std::ostream& operator<<(std::ostream& os, const Extent& e) {
  return os << "{" << e.start << "+" << e.length << (e.data ? " data" : "") << (e.zero ? " zero" : "") << "}";
}

std::vector<Extent> Walk(GraphEnv& env, Backend& be) {
  std::vector<Extent> out;
  int64_t size = be.size();
  for (int64_t off = 0; off < size;) {
    absl::StatusOr<BlockStatus> s = env.loop->Run(be.GetBlockStatus(off, size - off));
    INFO(s.status().ToString());
    REQUIRE(s.ok());
    REQUIRE(s->bytes > 0);
    Extent e{off, s->bytes, (s->flags & kStatusData) != 0, (s->flags & kStatusZero) != 0};
    if (!out.empty() && out.back().data == e.data && out.back().zero == e.zero) {
      out.back().length += e.length;
    } else {
      out.push_back(e);
    }
    off += s->bytes;
  }
  return out;
}

TEST_CASE("block status matches qemu-img map on a sparse file", "[file]") {
  LB_SKIP_UNLESS(testing::HaveProgram("qemu-img"), "qemu-img is not installed");
  GraphEnv env;
  std::string path = env.dir.File("sparse.img");
  const int64_t size = (1 << 20) + 1000;
  WriteFile(path, "");
  REQUIRE(truncate(path.c_str(), size) == 0);
  int fd = open(path.c_str(), O_WRONLY | O_CLOEXEC);
  REQUIRE(fd >= 0);
  struct Piece {
    int64_t off;
    size_t len;
  } pieces[] = {{8192, 3}, {409600, 12288}, {425984, 4096}, {size - 3, 3}, {0, 1}};
  for (const Piece& p : pieces) {
    std::string d = NonZeroRandomBytes(p.len, 16);
    REQUIRE(pwrite(fd, d.data(), d.size(), p.off) == static_cast<ssize_t>(d.size()));
  }
  close(fd);
  // Both sides see the disk as the file's length rounded up to whole sectors; the tail past
  // the file's end reads as zeroes. With O_DIRECT both round a data extent ending at EOF up to
  // the request alignment, so QEMU maps with the same cache.direct setting.
  for (std::string direct : {"off", "on"}) {
    INFO("cache.direct=" << direct);
    testing::CommandResult map = testing::Run(
        {"qemu-img", "map", "--output=json", "--image-opts",
         "driver=raw,file.driver=file,file.filename=" + path + ",file.cache.direct=" + direct});
    INFO(map.out);
    REQUIRE(map.exit_code == 0);
    std::vector<Extent> qemu;
    for (const auto& e : nlohmann::json::parse(map.out)) {
      qemu.push_back(Extent{e["start"].get<int64_t>(), e["length"].get<int64_t>(),
                            e["data"].get<bool>(), e["zero"].get<bool>()});
    }
    REQUIRE(qemu.size() >= 7);  // the holes between the pieces really exist on this file system
    auto be = env.MustOpenBackend(RawFileOpts(path, direct == "on" ? "cache=none" : "cache=writeback"),
                                  {.read_only = true});
    REQUIRE(Walk(env, *be) == qemu);
  }
}

// ---- truncate ----------------------------------------------------------------------------------

TEST_CASE("truncate: off, falloc and full preallocation, and QEMU's refusals", "[file]") {
  for (std::string aio : {"io_uring", "threads"}) {
    GraphEnv env;
    if (aio == "io_uring" && !env.loop->uring()) continue;
    INFO("aio=" << aio);
    std::string path = env.dir.File("trunc.img");
    std::string data = NonZeroRandomBytes(kMiB, 17);
    WriteFile(path, data);
    Fsync(path);
    {
      auto noresize = env.MustOpenBackend(RawFileOpts(path, "file.aio=" + aio));
      absl::Status st = env.Truncate(*noresize, 2 * kMiB, PreallocMode::kOff);
      REQUIRE(StatusErrno(st) == EPERM);
      REQUIRE(FileSize(path) == kMiB);
    }
    auto be = env.MustOpenBackend(RawFileOpts(path, "file.aio=" + aio), {.resize = true});
    int64_t base_alloc = AllocatedBytes(path);
    // off: grow sparsely, then shrink keeping the head
    REQUIRE(env.Truncate(*be, 2 * kMiB, PreallocMode::kOff).ok());
    REQUIRE(FileSize(path) == 2 * kMiB);
    REQUIRE(be->size() == 2 * kMiB);
    REQUIRE(AllocatedBytes(path) == base_alloc);
    REQUIRE_BYTES(env.Read(*be, kMiB, kMiB), std::string(kMiB, '\0'));
    REQUIRE(env.Truncate(*be, kMiB / 2, PreallocMode::kOff).ok());
    REQUIRE(FileSize(path) == kMiB / 2);
    REQUIRE(be->size() == kMiB / 2);
    REQUIRE_BYTES(ReadFile(path), data.substr(0, kMiB / 2));
    // falloc: the new range is allocated and reads as zeroes
    REQUIRE(env.Truncate(*be, 4 * kMiB, PreallocMode::kFalloc).ok());
    REQUIRE(FileSize(path) == 4 * kMiB);
    REQUIRE(AllocatedBytes(path) >= 4 * kMiB);
    REQUIRE_BYTES(ReadFile(path), data.substr(0, kMiB / 2) + std::string(4 * kMiB - kMiB / 2, '\0'));
    // full: written zeroes, allocated, to an unaligned size
    REQUIRE(env.Truncate(*be, 6 * kMiB + 1000, PreallocMode::kFull).ok());
    REQUIRE(FileSize(path) == 6 * kMiB + 1000);
    REQUIRE(AllocatedBytes(path) >= 6 * kMiB + 1000);
    REQUIRE_BYTES(env.Read(*be, 4 * kMiB, 2 * kMiB + 1000), std::string(2 * kMiB + 1000, '\0'));
    REQUIRE(Seek(path, 4 * kMiB, SEEK_HOLE) == 6 * kMiB + 1000);
    // refusals leave the file alone
    absl::Status st = env.Truncate(*be, 8 * kMiB, PreallocMode::kMetadata);
    REQUIRE_THAT(Message(st), Catch::Contains("Unsupported preallocation mode: metadata"));
    st = env.Truncate(*be, kMiB, PreallocMode::kFalloc);
    REQUIRE_THAT(Message(st), Catch::Contains("Cannot use preallocation for shrinking files"));
    st = env.Truncate(*be, kMiB, PreallocMode::kFull);
    REQUIRE_THAT(Message(st), Catch::Contains("Cannot use preallocation for shrinking files"));
    REQUIRE(FileSize(path) == 6 * kMiB + 1000);
    REQUIRE(be->size() == 6 * kMiB + 1024);  // whole sectors
  }
}

TEST_CASE("truncate with full preallocation under O_DIRECT keeps the partial last block", "[file]") {
  GraphEnv env;
  std::string path = env.dir.File("trunc-direct.img");
  std::string data = NonZeroRandomBytes(6000, 18);  // the last block is partial
  WriteFile(path, data);
  auto be = env.MustOpenBackend(RawFileOpts(path, "cache=none"), {.resize = true});
  REQUIRE(env.Truncate(*be, 65536 + 100, PreallocMode::kFull).ok());
  REQUIRE(FileSize(path) == 65536 + 100);
  REQUIRE_BYTES(ReadFile(path), data + std::string(65536 + 100 - 6000, '\0'));
}

// ---- create ------------------------------------------------------------------------------------

TEST_CASE("create: sizes and preallocation through file and raw", "[file]") {
  GraphEnv env;
  for (std::string fmt : {"file", "raw"}) {
    INFO("format " << fmt);
    std::string off = env.dir.File(fmt + "-off.img");
    std::string falloc = env.dir.File(fmt + "-falloc.img");
    std::string full = env.dir.File(fmt + "-full.img");
    WriteFile(off, NonZeroRandomBytes(3 * kMiB, 19));  // an existing file is emptied first
    REQUIRE(env.Create(off, fmt, "size=2M").ok());
    REQUIRE(env.Create(falloc, fmt, "size=2M,preallocation=falloc").ok());
    REQUIRE(env.Create(full, fmt, "size=2M,preallocation=full").ok());
    for (const std::string& p : {off, falloc, full}) {
      REQUIRE(FileSize(p) == 2 * kMiB);
      REQUIRE_BYTES(ReadFile(p), std::string(2 * kMiB, '\0'));
      REQUIRE(LockedBytes(p).empty());  // the creator's locks are gone
    }
    REQUIRE(AllocatedBytes(off) == 4096);  // only the first block, as QEMU allocates it
    REQUIRE(AllocatedBytes(falloc) >= 2 * kMiB);
    REQUIRE(AllocatedBytes(full) >= 2 * kMiB);
    REQUIRE(Seek(full, 0, SEEK_HOLE) == 2 * kMiB);  // written, not just reserved
  }
  REQUIRE_THAT(Message(env.Create(env.dir.File("m.img"), "file", "size=1M,preallocation=metadata")),
               Catch::Contains("Unsupported preallocation mode: metadata"));
  REQUIRE_THAT(Message(env.Create(env.dir.File("n.img"), "file", "")),
               Catch::Contains("Parameter 'size' is required"));
  REQUIRE_THAT(Message(env.Create(env.dir.File("b.img"), "file", "size=1M,preallocation=bogus")),
               Catch::Contains("preallocation"));
  REQUIRE_THAT(Message(env.Create(env.dir.File("nodir/x.img"), "file", "size=1M")),
               Catch::Contains("Could not create") && Catch::Contains("No such file or directory"));
  // The qemu-img oracle reads what we made.
  if (testing::HaveProgram("qemu-img")) {
    testing::CommandResult info = testing::Run({"qemu-img", "info", "--output=json", "-f", "raw",
                                                env.dir.File("raw-full.img")});
    REQUIRE(info.exit_code == 0);
    REQUIRE(nlohmann::json::parse(info.out)["virtual-size"] == 2 * kMiB);
  }
}

TEST_CASE("create: full preallocation runs through the loop's I/O engine", "[file]") {
  // The zeroes are written by the same coroutine path as truncate's (io_uring or the worker
  // pool), so other coroutines keep running while a large image is preallocated; the old
  // create wrote them with blocking pwrite calls on the loop thread.
  for (bool io_uring : {true, false}) {
    INFO("io_uring " << io_uring);
    GraphEnv env(io_uring);
    bool stop = false, stopped = false;
    int ticks = 0;
    auto ticker = [&]() -> Task<void> {
      while (!stop) {
        ++ticks;
        co_await env.loop->Yield();
      }
      stopped = true;
    };
    env.loop->Spawn(ticker());
    REQUIRE(ticks == 1);
    std::string path = env.dir.File("full.img");
    REQUIRE(env.Create(path, "file", "size=8M,preallocation=full").ok());
    int during = ticks - 1;
    stop = true;
    env.loop->RunUntil([&] { return stopped; });
    CHECK(during > 0);
    REQUIRE(FileSize(path) == 8 * kMiB);
    REQUIRE(AllocatedBytes(path) >= 8 * kMiB);
    REQUIRE(Seek(path, 0, SEEK_HOLE) == 8 * kMiB);
    REQUIRE(LockedBytes(path).empty());
  }
}

TEST_CASE("create: nocow=on is accepted and harmless off btrfs", "[file]") {
  GraphEnv env;
  std::string path = env.dir.File("nocow.img");
  REQUIRE(env.Create(path, "file", "size=1M,nocow=on").ok());
  REQUIRE(FileSize(path) == 1 << 20);
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  REQUIRE(fd >= 0);
  int attr = 0;
  if (ioctl(fd, FS_IOC_GETFLAGS, &attr) == 0) REQUIRE((attr & FS_NOCOW_FL) == 0);
  close(fd);
}

TEST_CASE("create refuses an image another opener holds, and leaves it untouched", "[file]") {
  GraphEnv env;
  std::string path = env.dir.File("busy.img");
  std::string data = NonZeroRandomBytes(65536, 20);
  WriteFile(path, data);
  for (bool read_only : {false, true}) {
    INFO("holder read-only=" << read_only);
    auto holder = env.MustOpenBackend(RawFileOpts(path), {.read_only = read_only});
    std::vector<int64_t> held = LockedBytes(path);
    REQUIRE(held == (read_only ? kRoLocks : kRwLocks));
    absl::Status st = env.Create(path, "file", "size=1M");
    REQUIRE_FALSE(st.ok());
    REQUIRE_THAT(Message(st), Catch::Contains("Failed to get \"write\" lock") &&
                                  Catch::Contains("Is another process using the image [" + path + "]?"));
    REQUIRE_BYTES(ReadFile(path), data);
    REQUIRE(LockedBytes(path) == held);
  }
  REQUIRE(LockedBytes(path).empty());
}

// ---- locking -----------------------------------------------------------------------------------

TEST_CASE("two opens in one process conflict through OFD locks, as two QEMUs do", "[file][lock]") {
  GraphEnv env;
  std::string path = env.dir.File("lock.img");
  WriteFile(path, NonZeroRandomBytes(65536, 21));
  auto first = env.MustOpenBackend(RawFileOpts(path), {.name = "first"});
  // Held: consistent-read, write; not shared: write, resize.
  REQUIRE(LockedBytes(path, "OFDLCK") == kRwLocks);
  REQUIRE(LockedBytes(path) == kRwLocks);

  SECTION("a second writer") {
    auto second = env.OpenBackend(RawFileOpts(path));
    REQUIRE_FALSE(second.ok());
    REQUIRE(StatusErrno(second.status()) == EAGAIN);
    REQUIRE_THAT(Message(second.status()),
                 Catch::Contains("Failed to get \"write\" lock\nIs another process using the image [" +
                                 path + "]?"));
    REQUIRE(LockedBytes(path) == kRwLocks);  // nothing left behind, nothing taken away
    REQUIRE(FdFlagsFor(path).size() == 1);
  }
  SECTION("a reader that does not share write") {
    auto reader = env.OpenBackend(RawFileOpts(path), {.read_only = true});
    REQUIRE_FALSE(reader.ok());
    REQUIRE_THAT(Message(reader.status()),
                 Catch::Contains("Failed to get shared \"write\" lock") &&
                     Catch::Contains("Is another process using the image [" + path + "]?"));
    REQUIRE(LockedBytes(path) == kRwLocks);
  }
  SECTION("force-share and locking=off get in") {
    auto shared = env.MustOpenBackend(RawFileOpts(path, "read-only=on,force-share=on"), {.read_only = true});
    // Holds consistent-read, shares everything: byte 100 only.
    REQUIRE(LockedBytes(path) == std::vector<int64_t>{100, 100, 101, 201, 203});
    auto unlocked = env.MustOpenBackend(RawFileOpts(path, "file.locking=off"));
    REQUIRE(LockedBytes(path) == std::vector<int64_t>{100, 100, 101, 201, 203});
    nlohmann::json info;
    FileNode(*unlocked)->impl()->FillInfo(info);
    REQUIRE(info["locking"] == "off");
    REQUIRE_BYTES(env.Read(*shared, 0, 16), env.Read(*first, 0, 16));
  }
  SECTION("a reader that shares write gets in; a writer that shares write is still refused") {
    auto reader = env.MustOpenBackend(RawFileOpts(path), {.read_only = true, .share_rw = true});
    REQUIRE(LockedBytes(path) == std::vector<int64_t>{100, 100, 101, 201, 203, 203});
    auto writer = env.OpenBackend(RawFileOpts(path), {.share_rw = true});
    REQUIRE_THAT(Message(writer.status()), Catch::Contains("Failed to get \"write\" lock"));
  }
  SECTION("reopen moves the lock bytes, and a failed reopen restores them") {
    REQUIRE(first->Reopen(true).ok());
    REQUIRE(LockedBytes(path) == kRoLocks);
    std::vector<int> flags = FdFlagsFor(path);
    REQUIRE(flags.size() == 1);  // the read-write descriptor was replaced, not leaked
    REQUIRE((flags[0] & O_ACCMODE) == O_RDONLY);
    // Now a second default reader fits (nobody writes)...
    auto reader = env.MustOpenBackend(RawFileOpts(path), {.read_only = true});
    REQUIRE(LockedBytes(path) == std::vector<int64_t>{100, 100, 201, 201, 203, 203});
    // ...and it does not share write, so going back to read-write must fail, unchanged.
    absl::Status st = first->Reopen(false);
    REQUIRE_THAT(Message(st), Catch::Contains("Failed to get \"write\" lock"));
    REQUIRE(LockedBytes(path) == std::vector<int64_t>{100, 100, 201, 201, 203, 203});
    REQUIRE(FdFlagsFor(path).size() == 2);
    REQUIRE(reader->Close().ok());
    REQUIRE(first->Reopen(false).ok());
    REQUIRE(LockedBytes(path) == kRwLocks);
    flags = FdFlagsFor(path);
    REQUIRE(flags.size() == 1);
    REQUIRE((flags[0] & O_ACCMODE) == O_RDWR);
    env.Write(*first, 0, "still writable");
  }
  SECTION("resize is held and unshared as QEMU does") {
    auto resizer = env.OpenBackend(RawFileOpts(path, "file.locking=off"), {.resize = true});
    REQUIRE(resizer.ok());  // locking=off: no bytes, no checks
    REQUIRE(first->Close().ok());
    auto r2 = env.MustOpenBackend(RawFileOpts(path), {.resize = true});
    REQUIRE(LockedBytes(path) == std::vector<int64_t>{100, 101, 103, 201, 203});
  }
  REQUIRE(first->Close().ok());
  REQUIRE(LockedBytes(path).empty());
}

TEST_CASE("reopen waits for requests in flight on the old descriptor", "[file]") {
  // QEMU drains the nodes it reopens. Without that, a request whose SQE was prepared on the
  // read-write descriptor is submitted after the commit closed it: it fails (EBADF), or,
  // once the number is reused by another open, lands in an unrelated file.
  GraphEnv env;
  LB_SKIP_UNLESS(env.loop->uring(), "no io_uring ring on this host");
  std::string path = env.dir.File("reopen.img");
  std::string other = env.dir.File("other.img");
  WriteFile(path, std::string(65536, '\0'));
  WriteFile(other, std::string(65536, '\0'));
  auto be = env.MustOpenBackend(RawFileOpts(path, "file.aio=io_uring"));
  std::string data = NonZeroRandomBytes(4096, 31);
  absl::Status result = ErrnoError(EINPROGRESS, "not done");
  bool done = false;
  auto write = [&]() -> Task<void> {
    IoVec v(data.data(), data.size());
    result = co_await be->Write(0, static_cast<int64_t>(data.size()), v);
    done = true;
  };
  env.loop->Spawn(write());
  REQUIRE_FALSE(done);
  REQUIRE(be->Reopen(true).ok());
  int fd = open(other.c_str(), O_RDWR | O_CLOEXEC);  // may reuse a descriptor number
  REQUIRE(fd >= 0);
  env.loop->RunUntil([&] { return done; });
  close(fd);
  CHECK(result.ok());
  CHECK(ReadFile(other).substr(0, data.size()) == std::string(data.size(), '\0'));
  REQUIRE_BYTES(ReadFile(path).substr(0, data.size()), data);
}

TEST_CASE("closing releases every lock", "[file][lock]") {
  GraphEnv env;
  std::string path = env.dir.File("close.img");
  WriteFile(path, std::string(4096, '\0'));
  {
    auto be = env.MustOpenBackend(RawFileOpts(path, "cache=none"));
    REQUIRE(LockedBytes(path) == kRwLocks);
    REQUIRE(be->Close().ok());
    REQUIRE(LockedBytes(path).empty());
  }
  {
    auto be = env.MustOpenBackend(RawFileOpts(path), {.read_only = true});
    REQUIRE(LockedBytes(path) == kRoLocks);
  }
  REQUIRE(LockedBytes(path).empty());
  REQUIRE(env.graph.nodes().empty());
}

TEST_CASE("locking=on without OFD locks falls back to POSIX locks with QEMU's warning", "[file][lock]") {
  GraphEnv env;
  std::string path = env.dir.File("posix.img");
  WriteFile(path, std::string(65536, '\0'));
  {
    OfdOverride no_ofd(false);
    auto be = env.MustOpenBackend(RawFileOpts(path, "file.locking=on"));
    REQUIRE(env.warnings.size() == 1);
    REQUIRE_THAT(env.warnings[0], Catch::Contains("falling back to POSIX file locks"));
    // Careful: opening and closing any other descriptor of the file here would drop POSIX locks.
    REQUIRE(LockedBytes(path, "POSIX") == kRwLocks);
    REQUIRE(LockedBytes(path, "OFDLCK").empty());
    nlohmann::json info;
    FileNode(*be)->impl()->FillInfo(info);
    REQUIRE(info["locking"] == "posix");
    REQUIRE(be->Reopen(true).ok());
    REQUIRE(LockedBytes(path, "POSIX") == kRoLocks);
    REQUIRE(be->Close().ok());
    REQUIRE(LockedBytes(path).empty());

    auto quiet = env.MustOpenBackend(RawFileOpts(path));  // locking=auto: no OFD, no locks, no warning
    REQUIRE(LockedBytes(path).empty());
    REQUIRE(env.warnings.size() == 1);
  }
  auto be = env.MustOpenBackend(RawFileOpts(path, "file.locking=on"));
  REQUIRE(LockedBytes(path, "OFDLCK") == kRwLocks);
  REQUIRE(env.warnings.size() == 1);
}

// ---- auto-read-only and bad input ----------------------------------------------------------

// A file that cannot be opened for writing, even by root: the immutable attribute (root), or
// mode 0444 (anyone else). Cleared again on destruction so TempDir can remove it.
class UnwritableFile {
 public:
  explicit UnwritableFile(const std::string& path) : path_(path) {
    if (geteuid() == 0) {
      immutable_ = SetImmutable(true);
    } else {
      chmod(path.c_str(), 0444);
    }
    int fd = open(path.c_str(), O_RDWR | O_CLOEXEC);
    if (fd >= 0) {
      close(fd);
    } else {
      ok_ = errno == EPERM || errno == EACCES;
    }
  }
  ~UnwritableFile() {
    if (immutable_) SetImmutable(false);
  }
  bool ok() const { return ok_; }

 private:
  bool SetImmutable(bool on) {
    int fd = open(path_.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return false;
    int attr = 0;
    bool done = ioctl(fd, FS_IOC_GETFLAGS, &attr) == 0;
    if (done) {
      attr = on ? (attr | FS_IMMUTABLE_FL) : (attr & ~FS_IMMUTABLE_FL);
      done = ioctl(fd, FS_IOC_SETFLAGS, &attr) == 0;
    }
    close(fd);
    return done;
  }
  std::string path_;
  bool immutable_ = false;
  bool ok_ = false;
};

TEST_CASE("auto-read-only opens a file that refuses writers read-only", "[file]") {
  GraphEnv env;
  std::string path = env.dir.File("ro.img");
  std::string data = NonZeroRandomBytes(8192, 22);
  WriteFile(path, data);
  UnwritableFile guard(path);
  LB_SKIP_UNLESS(guard.ok(), "cannot make a file unwritable here");
  auto plain = env.OpenNode("driver=file,filename=" + path);
  REQUIRE_FALSE(plain.ok());
  REQUIRE_THAT(Message(plain.status()), Catch::StartsWith("Could not open '" + path + "'"));
  absl::StatusOr<Node*> node = env.OpenNode("driver=file,filename=" + path + ",auto-read-only=on");
  INFO(node.status().ToString());
  REQUIRE(node.ok());
  REQUIRE((*node)->flags().read_only);
  std::vector<int> flags = FdFlagsFor(path);
  REQUIRE(flags.size() == 1);
  REQUIRE((flags[0] & O_ACCMODE) == O_RDONLY);
  auto writer = Backend::Attach(env.graph, **node, {});
  REQUIRE_FALSE(writer.ok());
  auto reader = Backend::Attach(env.graph, **node, {.read_only = true});
  REQUIRE(reader.ok());
  env.graph.Unref(*node);
  REQUIRE_BYTES(env.Read(**reader, 0, 8192), data);
  REQUIRE(LockedBytes(path) == kRoLocks);
}

TEST_CASE("a reopen of an auto-read-only file stays read-only while the file refuses writers", "[file]") {
  GraphEnv env;
  std::string path = env.dir.File("ro.img");
  std::string data = NonZeroRandomBytes(8192, 23);
  WriteFile(path, data);
  UnwritableFile guard(path);
  LB_SKIP_UNLESS(guard.ok(), "cannot make a file unwritable here");
  auto be = env.MustOpenBackend("driver=file,filename=" + path + ",auto-read-only=on",
                                {.read_only = true});
  REQUIRE(be->root()->flags().read_only);
  for (const char* changes : {"read-only=off", "cache.direct=on", "cache.direct=off"}) {
    INFO(changes);
    absl::StatusOr<Options> opts = ParseKeyValueOptions(changes);
    REQUIRE(opts.ok());
    absl::Status st = be->ReopenOptions(std::move(*opts), false, false, false, false, std::nullopt);
    INFO(st.ToString());
    REQUIRE(st.ok());
    REQUIRE(be->root()->flags().read_only);
    std::vector<int> flags = FdFlagsFor(path);
    REQUIRE(flags.size() == 1);
    REQUIRE((flags[0] & O_ACCMODE) == O_RDONLY);
  }
  REQUIRE_BYTES(env.Read(*be, 0, 8192), data);
  absl::StatusOr<Options> opts = ParseKeyValueOptions("auto-read-only=off,read-only=off");
  REQUIRE_THAT(Message(be->ReopenOptions(std::move(*opts), false, false, false, false, std::nullopt)),
               Catch::StartsWith("Could not reopen file '" + path + "'"));
}

TEST_CASE("bad filenames and options get QEMU's errors", "[file]") {
  GraphEnv env;
  std::string missing = env.dir.File("missing.img");
  absl::Status st = env.OpenNode("driver=file,filename=" + missing).status();
  REQUIRE(Message(st) == "Could not open '" + missing + "': No such file or directory");
  REQUIRE(StatusErrno(st) == ENOENT);
  st = env.OpenBackend(RawFileOpts(missing)).status();
  REQUIRE_THAT(Message(st), Catch::Contains("Could not open '" + missing + "': No such file or directory"));

  // A directory: refused read-write by open(2) itself, read-only by the regular-file check.
  st = env.OpenNode("driver=file,filename=" + env.dir.path()).status();
  REQUIRE_THAT(Message(st), Catch::Contains("Could not open '" + env.dir.path() + "'"));
  st = env.OpenNode("driver=file,read-only=on,filename=" + env.dir.path()).status();
  REQUIRE(Message(st) == "'file' driver requires '" + env.dir.path() + "' to be a regular file");

  st = env.OpenNode("driver=file,filename=/dev/null").status();
  REQUIRE(Message(st) == "'file' driver requires '/dev/null' to be a regular file");

  std::string path = env.dir.File("ok.img");
  WriteFile(path, std::string(4096, '\0'));
  st = env.OpenNode("driver=file,filename=" + path + ",aio=bogus").status();
  REQUIRE_FALSE(st.ok());
  REQUIRE_THAT(Message(st), Catch::Contains("file") && Catch::Contains("'aio'"));
  st = env.OpenNode("driver=file,filename=" + path + ",locking=maybe").status();
  REQUIRE_THAT(Message(st), Catch::Contains("'locking'"));
  st = env.OpenNode("driver=file,filename=" + path + ",aio=native").status();
  REQUIRE_THAT(Message(st), Catch::Contains("aio=native") && Catch::Contains("cache.direct"));
  st = env.OpenNode("driver=file").status();
  REQUIRE_THAT(Message(st), Catch::Contains("'filename' is required"));
  // None of the failures left a descriptor or a node behind.
  REQUIRE(FdFlagsFor(path).empty());
  REQUIRE(env.graph.nodes().empty());
}

}  // namespace
}  // namespace libblock
