// blkimg bench: qemu-img bench [-c COUNT] [-d DEPTH] [-f FMT] [--flush-interval=N] [--no-drain]
//               [-i AIO] [-n] [-o OFFSET] [--pattern=N] [-q] [-s BUFFER_SIZE] [-S STEP_SIZE]
//               [-t CACHE] [-w] [-U] [--image-opts] [--object OBJ] FILENAME
//
// Sends COUNT reads (or writes of a PATTERN-filled buffer) of BUFFER_SIZE bytes, keeping
// DEPTH of them in flight through libblock's asynchronous API. Request i goes to
// OFFSET + i * STEP_SIZE, wrapped around at the image size as qemu-img does. With
// --flush-interval, whenever the number of requests still to be sent is a multiple of N the
// queue is drained and a flush sent before new requests (--no-drain: the flush is sent
// alongside). The header and the "Run completed" line are qemu-img's, -q included (qemu-img
// 7.2 prints them even with -q).
#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <unistd.h>

#include "common.h"

namespace blkimg {
namespace {

// What the command line says besides the plan.
struct BenchArgs {
  std::string format;
  bool quiet = false, image_opts = false;
  std::string filename;
};

// The validated parameters of a run.
struct BenchPlan {
  int count = 75000;
  int depth = 64;
  int flush_interval = 0;
  bool drain = true;
  bool write = false;
  uint8_t pattern = 0;
  int64_t offset = 0;
  int buffer_size = 4096;
  int step_size = 0;  // 0: buffer_size
  uint32_t open_flags = 0;
  bool native_aio = false;
  bool direct = false;
};

// qemu_strtoul with base 0 and the whole text consumed, then a bound: qemu-img bench's
// parsing of counts. Negative numbers wrap as with strtoul and so fail the bound.
std::optional<int> ParseBounded(const std::string& text, unsigned long max) {
  const char* s = text.c_str();
  char* end = nullptr;
  errno = 0;
  unsigned long long value = strtoull(s, &end, 0);
  if (end == s || *end != '\0' || errno == ERANGE || value > max) return std::nullopt;
  const char* digits = s;
  while (isspace(static_cast<unsigned char>(*digits))) ++digits;
  if (*digits == '-' && value != 0) return std::nullopt;
  return static_cast<int>(value);
}

// One option of the command line, applied to the plan as qemu-img applies it (in order, each
// value checked when it is seen). Prints qemu-img's message and returns false on a bad value.
bool ApplyOption(int c, const char* arg, BenchArgs* a, BenchPlan* p) {
  auto fail = [](const std::string& message) {
    Error(message);
    return false;
  };
  std::string text = arg ? arg : "";
  switch (c) {
    case 'c': {
      std::optional<int> v = ParseBounded(text, INT_MAX);
      if (!v) return fail("Invalid request count specified");
      p->count = *v;
      return true;
    }
    case 'd': {
      // qemu-img accepts a depth of 0 and then never sends a request; refuse it instead.
      std::optional<int> v = ParseBounded(text, INT_MAX);
      if (!v || *v == 0) return fail("Invalid queue depth specified");
      p->depth = *v;
      return true;
    }
    case 'f': a->format = text; return true;
    case 'n':
      // -n is qemu-img's shorthand for aio=native.
      p->native_aio = true;
      p->open_flags = (p->open_flags & ~LB_OPEN_AIO_MASK) | AioFlags("native");
      return true;
    case 'i':
      if (text != "threads" && text != "native" && text != "io_uring") {
        return fail("Invalid aio option: " + text);
      }
      p->native_aio = text == "native";
      p->open_flags = (p->open_flags & ~LB_OPEN_AIO_MASK) | AioFlags(text);
      return true;
    case 'o': {
      std::optional<int64_t> v = CvtNum("offset", text);
      if (!v) return false;
      p->offset = *v;
      return true;
    }
    case 'q': a->quiet = true; return true;
    case 's': {
      std::optional<int64_t> v = CvtNum("buffer size", text, INT_MAX);
      if (!v) return false;
      p->buffer_size = static_cast<int>(*v);
      return true;
    }
    case 'S': {
      std::optional<int64_t> v = CvtNum("step_size", text, INT_MAX);
      if (!v) return false;
      p->step_size = static_cast<int>(*v);
      return true;
    }
    case 't':
      if (!ParseCacheMode(text)) return fail("Invalid cache mode");
      p->open_flags = (p->open_flags & ~LB_OPEN_CACHE_MASK) | CacheFlags(text);
      p->direct = text == "none" || text == "off" || text == "directsync";
      return true;
    case 'w':
      p->write = true;
      p->open_flags |= LB_OPEN_RDWR;
      return true;
    case 'U': p->open_flags |= LB_OPEN_FORCE_SHARE; return true;
    case kOptImageOpts: a->image_opts = true; return true;
    case kOptPattern: {
      std::optional<int> v = ParseBounded(text, 0xff);
      if (!v) return fail("Invalid pattern byte specified");
      p->pattern = static_cast<uint8_t>(*v);
      return true;
    }
    case kOptFlushInterval: {
      std::optional<int> v = ParseBounded(text, INT_MAX);
      if (!v) return fail("Invalid flush interval specified");
      p->flush_interval = *v;
      return true;
    }
    case kOptNoDrain: p->drain = false; return true;
    default: return false;
  }
}

// The run itself: keeps up to `depth` requests in flight, each completion making room for
// the next, with flushes as --flush-interval asks.
class Bench {
 public:
  Bench(lb_context* ctx, lb_backend* be, const BenchPlan& plan, uint64_t image_size)
      : ctx_(ctx), be_(be), plan_(plan), image_size_(image_size),
        next_offset_(static_cast<uint64_t>(plan.offset)) {}

  ~Bench() { free(buffer_); }

  // Returns the exit code; prints qemu-img's message for a failed request.
  int Run() {
    // Every request uses the same buffer: reads throw their data away and writes all send
    // the same pattern, so a deep queue needs no more memory than one request.
    size_t alloc = std::max<size_t>(static_cast<size_t>(plan_.buffer_size), 1);
    alloc = (alloc + 4095) / 4096 * 4096;
    if (posix_memalign(&buffer_, 4096, alloc) != 0) {
      Error("Could not allocate the request buffer");
      return 1;
    }
    memset(buffer_, plan_.pattern, alloc);
    lb_context_set_max_inflight(ctx_, static_cast<unsigned>(std::min(plan_.depth, 65536)) + 1);
    if (!Submit()) return 1;
    std::vector<lb_completion> done(64);
    while (completed_ < plan_.count || flush_in_flight_ > 0) {
      int n = lb_reap(ctx_, 1, static_cast<unsigned>(done.size()), -1, done.data());
      if (n < 0) {
        Error(LibError());
        return 1;
      }
      for (int i = 0; i < n; ++i) {
        if (!OnCompletion(done[static_cast<size_t>(i)])) return 1;
      }
      if (!Submit()) return 1;
    }
    return 0;
  }

 private:
  // Tags distinguishing flushes from data requests in lb_completion::user_data.
  static inline char kDataTag, kDrainedFlushTag, kUndrainedFlushTag;

  bool OnCompletion(const lb_completion& c) {
    bool is_flush = c.user_data != &kDataTag;
    if (c.ret < 0) {
      Error(std::string(is_flush ? "Failed flush request: " : "Failed request: ") +
            strerror(-c.ret));
      return false;
    }
    if (is_flush) {
      --flush_in_flight_;
      if (c.user_data == &kDrainedFlushTag) paused_ = false;
      return true;
    }
    --in_flight_;
    ++completed_;
    int unsent = plan_.count - submitted_;
    if (plan_.flush_interval > 0 && unsent % plan_.flush_interval == 0) {
      if (!plan_.drain) {
        return SendFlush(&kUndrainedFlushTag);
      }
      // Drain: send nothing more until the queue is empty, then flush, then resume.
      paused_ = true;
      if (in_flight_ == 0) return SendFlush(&kDrainedFlushTag);
    }
    return true;
  }

  bool SendFlush(void* tag) {
    int r = lb_aio_flush(be_, 0, tag);
    if (r < 0) {
      Error(std::string("Failed flush request: ") + strerror(-r));
      return false;
    }
    ++flush_in_flight_;
    return true;
  }

  bool Submit() {
    while (!paused_ && submitted_ < plan_.count && in_flight_ < plan_.depth) {
      uint64_t offset = next_offset_;
      size_t length = static_cast<size_t>(plan_.buffer_size);
      int r = plan_.write ? lb_aio_pwrite(be_, buffer_, length, offset, 0, &kDataTag)
                          : lb_aio_pread(be_, buffer_, length, offset, 0, &kDataTag);
      if (r == -EAGAIN) return true;  // the context's queue is full: wait for completions
      if (r < 0) {
        // A request the library refuses outright (e.g. beyond the end of the image) fails
        // like one that completed with an error.
        Error(std::string("Failed request: ") + strerror(-r));
        return false;
      }
      ++in_flight_;
      ++submitted_;
      next_offset_ += static_cast<uint64_t>(plan_.step_size);
      next_offset_ = image_size_ == 0 ? 0 : next_offset_ % image_size_;
    }
    return true;
  }

  lb_context* ctx_;
  lb_backend* be_;
  const BenchPlan& plan_;
  uint64_t image_size_;
  uint64_t next_offset_;
  void* buffer_ = nullptr;
  int submitted_ = 0, completed_ = 0, in_flight_ = 0, flush_in_flight_ = 0;
  bool paused_ = false;  // draining the queue before a flush
};

double Seconds(const timespec& from, const timespec& to) {
  return static_cast<double>(to.tv_sec - from.tv_sec) +
         static_cast<double>(to.tv_nsec - from.tv_nsec) / 1e9;
}

int Run(Context& ctx, const BenchArgs& a, BenchPlan* plan) {
  if (plan->step_size == 0) plan->step_size = plan->buffer_size;
  if (plan->flush_interval && !plan->write) {
    Error("--flush-interval is only available in write tests");
    return 1;
  }
  if (plan->flush_interval && plan->flush_interval < plan->depth) {
    Error("Flush interval can't be smaller than depth");
    return 1;
  }
  if (a.image_opts && !a.format.empty()) {
    Error("--image-opts and --format are mutually exclusive");
    return 1;
  }
  if (plan->native_aio && !plan->direct) {
    // libblock has no native AIO engine (it uses io_uring), but keeps QEMU's rule.
    Error("Could not open '" + a.filename +
          "': aio=native was specified, but it requires cache.direct=on, which was not "
          "specified.");
    return 1;
  }
  lb_backend* be = OpenBackend(ctx, {a.filename, a.format, a.image_opts}, plan->open_flags);
  if (!be) return 1;
  int64_t size = lb_get_size(be);
  if (size < 0) {
    Error("Could not get image size: " + LibError());
    lb_close(be);
    return 1;
  }
  printf("Sending %d %s requests, %d bytes each, %d in parallel (starting at offset %" PRId64
         ", step size %d)\n",
         plan->count, plan->write ? "write" : "read", plan->buffer_size, plan->depth,
         plan->offset, plan->step_size);
  if (plan->flush_interval) printf("Sending flush every %d requests\n", plan->flush_interval);
  fflush(stdout);
  timespec start{}, end{};
  clock_gettime(CLOCK_MONOTONIC, &start);
  Bench bench(ctx.get(), be, *plan, static_cast<uint64_t>(size));
  if (bench.Run() != 0) {
    // Like qemu-img, give up at once: requests still in flight keep using the buffer, so
    // nothing is torn down.
    fflush(stdout);
    _exit(1);
  }
  clock_gettime(CLOCK_MONOTONIC, &end);
  printf("Run completed in %3.3f seconds.\n", Seconds(start, end));
  if (lb_close(be) < 0) {
    Error(LibError());
    return 1;
  }
  return 0;
}

}  // namespace

int RunBench(int argc, char** argv) {
  static const option kLong[] = {
      BLKIMG_LONG_HELP,
      {"flush-interval", required_argument, nullptr, kOptFlushInterval},
      BLKIMG_LONG_IMAGE_OPTS,
      {"pattern", required_argument, nullptr, kOptPattern},
      {"no-drain", no_argument, nullptr, kOptNoDrain},
      BLKIMG_LONG_FORCE_SHARE,
      BLKIMG_LONG_END,
  };
  Context ctx;
  BenchArgs a;
  BenchPlan plan;
  for (;;) {
    int c = NextOption(argc, argv, ":hc:d:f:ni:o:qs:S:t:wU", kLong);
    if (c == -1) break;
    if (c == 'h') {
      PrintHelp();
      return 0;
    }
    if (c == kOptionError || !ApplyOption(c, optarg, &a, &plan)) return 1;
  }
  if (optind != argc - 1) return UsageError("Expecting one image file name");
  a.filename = argv[optind];
  return Run(ctx, a, &plan);
}

}  // namespace blkimg
