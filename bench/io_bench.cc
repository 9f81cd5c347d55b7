// io_bench: libblock against `qemu-img bench` on the same work, side by side.
//
// Each workload is run by Debian's qemu-img (`qemu-img bench -c COUNT -d DEPTH -s SIZE -t
// CACHE -i AIO [-w] -f raw IMAGE`) and by libblock with the same request stream (COUNT
// requests of SIZE bytes at offsets stepping by SIZE and wrapping at the end of the image,
// DEPTH in flight, through a Backend on raw over the protocol). Wall time is measured around
// the whole run for both (qemu-img's own process start-up is excluded: it prints its run
// time). Prints one line per workload and the ratio qemu-img time / libblock time (> 1 means
// libblock is faster). Timings are informative, never asserted.
//
// usage: io_bench [--quick] [DIR]   (DIR holds the 256 MiB test image; default /tmp)
#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "core/backend.h"
#include "core/event_loop.h"
#include "core/graph.h"
#include "core/options.h"
#include "util/iovec.h"

namespace libblock {
namespace {

struct Workload {
  const char* name;
  bool null;          // null-co:// instead of the file
  bool write;
  int64_t size;       // request size
  int depth;
  int count;
  const char* cache;  // none | writeback
  const char* aio;    // io_uring | threads
};

double LibblockRun(const Workload& w, const std::string& image) {
  LoopOptions lo;
  lo.use_io_uring = std::string(w.aio) == "io_uring";
  auto loop = EventLoop::Create(lo);
  if (!loop.ok()) return -1;
  Graph graph(**loop);
  std::string opts = w.null ? "driver=raw,file.driver=null-co"
                            : std::string("driver=raw,file.driver=file,file.filename=") + image +
                                  ",cache=" + w.cache + ",file.aio=" + w.aio;
  auto o = ParseKeyValueOptions(opts);
  BackendOptions bo;
  bo.read_only = !w.write;
  auto be = Backend::Open(graph, "", std::move(*o), bo);
  if (!be.ok()) {
    fprintf(stderr, "libblock: %s\n", std::string(be.status().message()).c_str());
    return -1;
  }
  Backend& b = **be;
  int64_t image_size = b.size();
  std::vector<AlignedBuffer> bufs;
  for (int i = 0; i < w.depth; ++i) bufs.emplace_back(static_cast<size_t>(w.size), 4096, true);
  int64_t next_offset = 0;
  int issued = 0, done = 0, errors = 0;
  auto worker = [&](int slot) -> Task<void> {
    IoVec v(bufs[slot].data(), static_cast<size_t>(w.size));
    while (issued < w.count) {
      ++issued;
      int64_t off = next_offset;
      next_offset += w.size;
      if (next_offset > image_size - w.size) next_offset = 0;
      absl::Status st;
      if (w.write) {
        st = co_await b.Write(off, w.size, v);
      } else {
        st = co_await b.Read(off, w.size, v);
      }
      if (!st.ok()) ++errors;
      ++done;
    }
  };
  int64_t start = EventLoop::NowNs();
  for (int i = 0; i < w.depth; ++i) (*loop)->Spawn(worker(i));
  (*loop)->RunUntil([&] { return done == w.count; });
  double secs = (EventLoop::NowNs() - start) / 1e9;
  if (errors) fprintf(stderr, "libblock: %d requests failed\n", errors);
  (void)b.Close();
  return errors ? -1 : secs;
}

double QemuRun(const Workload& w, const std::string& image) {
  std::string cmd = "qemu-img bench -f raw -c " + std::to_string(w.count) + " -d " +
                    std::to_string(w.depth) + " -s " + std::to_string(w.size) + " -t " +
                    w.cache + " -i " + w.aio + (w.write ? " -w" : "") + " " +
                    (w.null ? std::string("null-co://") : image) + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return -1;
  char line[512];
  double secs = -1;
  while (fgets(line, sizeof line, p)) {
    if (sscanf(line, "Run completed in %lf seconds", &secs) == 1) break;
  }
  pclose(p);
  return secs;
}

}  // namespace
}  // namespace libblock

int main(int argc, char** argv) {
  using libblock::Workload;
  bool quick = argc > 1 && !strcmp(argv[1], "--quick");
  std::string dir = argc > (quick ? 2 : 1) ? argv[quick ? 2 : 1] : "/tmp";
  std::string image = dir + "/libblock-bench.raw";
  {
    int fd = open(image.c_str(), O_RDWR | O_CREAT | O_TRUNC, 0644);
    std::vector<char> buf(1 << 20, 'x');
    for (int i = 0; i < 256; ++i) {
      if (write(fd, buf.data(), buf.size()) != static_cast<ssize_t>(buf.size())) return 1;
    }
    fsync(fd);
    close(fd);
  }
  int scale = quick ? 10 : 1;
  const Workload workloads[] = {
      {"null-co read 4k qd64", true, false, 4096, 64, 400000 / scale, "writeback", "io_uring"},
      {"null-co write 64k qd16", true, true, 65536, 16, 200000 / scale, "writeback", "io_uring"},
      {"file read 4k qd64 O_DIRECT io_uring", false, false, 4096, 64, 100000 / scale, "none", "io_uring"},
      {"file write 64k qd16 O_DIRECT io_uring", false, true, 65536, 16, 20000 / scale, "none", "io_uring"},
      {"file read 4k qd64 O_DIRECT threads", false, false, 4096, 64, 50000 / scale, "none", "threads"},
      {"file read 64k qd8 page cache threads", false, false, 65536, 8, 40000 / scale, "writeback", "threads"},
  };
  printf("%-40s %12s %12s %8s\n", "workload", "qemu-img s", "libblock s", "ratio");
  for (const Workload& w : workloads) {
    double q = libblock::QemuRun(w, image);
    double l = libblock::LibblockRun(w, image);
    if (q < 0 || l <= 0) {
      printf("%-40s %12s %12s %8s\n", w.name, q < 0 ? "error" : "", l <= 0 ? "error" : "", "-");
      continue;
    }
    printf("%-40s %12.3f %12.3f %7.2fx\n", w.name, q, l, q / l);
    fflush(stdout);
  }
  unlink(image.c_str());
  return 0;
}
