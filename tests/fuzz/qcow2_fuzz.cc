// Fuzz target: a whole qcow2 image (header, extensions, L1/L2 tables, refcount structures,
// snapshot table, bitmaps) from arbitrary bytes. ParseHeader must accept or refuse it with an
// error; an accepted header goes through check, then through repair and a second check, and
// (once libblock's qcow2 driver is registered) through open, reads and block status. Never a
// crash, a hang or memory beyond a small multiple of the input.
//
// Invariant checked: a repair that reports the image consistent (no corruption left, no
// internal error) leaves an image a second check also finds consistent and leak-free.
//
// The image lives in a memfd opened through the file protocol, so check and repair do real
// I/O on a real node without touching the disk.
#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "absl/strings/str_format.h"
#include "core/backend.h"
#include "core/event_loop.h"
#include "core/graph.h"
#include "core/registry.h"
#include "formats/qcow2/qcow2_check.h"
#include "formats/qcow2/qcow2_header.h"
#include "util/endian.h"

namespace {

using namespace libblock;

std::unique_ptr<EventLoop> MakeLoop() {
  absl::StatusOr<std::unique_ptr<EventLoop>> loop = EventLoop::Create(LoopOptions{});
  if (!loop.ok()) __builtin_trap();
  return std::move(*loop);
}

struct Env {
  std::unique_ptr<EventLoop> loop = MakeLoop();
  Graph graph{*loop};
  Env() { graph.SetWarningHandler([](const std::string&) {}); }
};

Env& TheEnv() {
  static Env* env = new Env();
  return *env;
}

// The image's bytes in a fresh memfd, named by its /proc path.
struct MemImage {
  int fd = -1;
  std::string path;
  MemImage(const uint8_t* data, size_t size) {
    fd = memfd_create("qcow2-fuzz", MFD_CLOEXEC);
    if (fd < 0) __builtin_trap();
    size_t done = 0;
    while (done < size) {
      ssize_t n = write(fd, data + done, size - done);
      if (n <= 0) __builtin_trap();
      done += static_cast<size_t>(n);
    }
    path = "/proc/self/fd/" + std::to_string(fd);
  }
  ~MemImage() { close(fd); }
};

absl::StatusOr<qcow2::CheckResult> RunCheck(Env& env, const std::string& path,
                                            const qcow2::Header& header, qcow2::CheckFix fix) {
  Options opts;
  opts.Set("driver", std::string("file"));
  opts.Set("filename", path);
  opts.Set("locking", std::string("off"));
  BackendOptions bo;
  bo.read_only = fix == 0;
  bo.resize = fix != 0;
  absl::StatusOr<std::unique_ptr<Backend>> be = Backend::Open(env.graph, "", std::move(opts), bo);
  if (!be.ok()) return be.status();
  absl::StatusOr<qcow2::CheckResult> r =
      env.loop->Run(qcow2::Check(*(*be)->root_child(), header, fix));
  (void)(*be)->Close();
  return r;
}

absl::StatusOr<qcow2::Header> Parse(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) __builtin_trap();
  std::fseek(f, 0, SEEK_END);
  long size = std::ftell(f);
  std::fseek(f, 0, SEEK_SET);
  std::string data(static_cast<size_t>(size), '\0');
  size_t got = std::fread(data.data(), 1, data.size(), f);
  std::fclose(f);
  if (got != data.size()) __builtin_trap();
  size_t cluster = data.size();
  if (data.size() >= 24) {
    uint32_t bits = LoadBe32(reinterpret_cast<const uint8_t*>(data.data()) + 20);
    if (bits < 32) cluster = std::min(cluster, size_t{1} << bits);
  }
  std::span<const uint8_t> buf(reinterpret_cast<const uint8_t*>(data.data()), cluster);
  return qcow2::ParseHeader(buf, size, path);
}

void ReadThroughDriver(Env& env, const std::string& path) {
  const Driver* d = env.graph.registry().Find("qcow2");
  if (!d || !d->instantiate) return;
  Options opts;
  opts.Set("driver", std::string("qcow2"));
  opts.Set("file.driver", std::string("file"));
  opts.Set("file.filename", path);
  opts.Set("file.locking", std::string("off"));
  BackendOptions bo;
  bo.read_only = true;
  absl::StatusOr<std::unique_ptr<Backend>> be = Backend::Open(env.graph, "", std::move(opts), bo);
  if (!be.ok()) return;
  int64_t size = (*be)->size();
  std::string buf(65536, '\0');
  for (int64_t off = 0; off < size && off < (int64_t{8} << 20); off += 65536) {
    int64_t n = std::min<int64_t>(65536, size - off);
    (void)(*be)->PreadSync(off, buf.data(), n);
    (void)env.loop->Run((*be)->GetBlockStatus(off, n));
  }
  (void)(*be)->Close();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size > (size_t{4} << 20)) return 0;
  Env& env = TheEnv();
  MemImage image(data, size);
  absl::StatusOr<qcow2::Header> header = Parse(image.path);
  if (!header.ok()) {
    if (std::getenv("LB_FUZZ_VERBOSE")) {
      std::fprintf(stderr, "%zu bytes: %s\n", size, header.status().ToString().c_str());
    }
    if (header.status().message().empty()) __builtin_trap();  // errors always say what
    return 0;
  }
  absl::StatusOr<qcow2::CheckResult> first = RunCheck(env, image.path, *header, 0);
  if (std::getenv("LB_FUZZ_VERBOSE")) {
    std::fprintf(stderr, "%zu bytes: %s\n", size,
                 first.ok() ? absl::StrFormat("%d corruptions, %d leaks, %d errors",
                                              first->corruptions, first->leaks,
                                              first->check_errors).c_str()
                            : first.status().ToString().c_str());
  }
  if (first.ok() && (first->corruptions < 0 || first->leaks < 0)) __builtin_trap();

  absl::StatusOr<qcow2::CheckResult> repair =
      RunCheck(env, image.path, *header, qcow2::kFixLeaks | qcow2::kFixErrors);
  if (repair.ok() && repair->corruptions == 0 && repair->check_errors == 0) {
    // The repair may have moved the refcount table or cleared bits: read the header again.
    absl::StatusOr<qcow2::Header> again = Parse(image.path);
    if (!again.ok()) __builtin_trap();
    absl::StatusOr<qcow2::CheckResult> second = RunCheck(env, image.path, *again, 0);
    if (!second.ok()) __builtin_trap();
    if (second->corruptions != 0 || second->leaks != 0) __builtin_trap();
  }
  ReadThroughDriver(env, image.path);
  return 0;
}
