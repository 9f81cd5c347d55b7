// blkimg commit: qemu-img commit [--object OBJ] [--image-opts] [-q] [-f FMT] [-t CACHE]
//                [-b BASE] [-r RATE_LIMIT] [-d] [-p] FILENAME
//
// Writes what FILENAME holds above BASE (by default its immediate backing file) into BASE
// with lb_commit, then empties FILENAME unless -d is given; an explicit -b implies -d, as in
// qemu-img. -p prints qemu-img's progress line, -r limits the copy to RATE_LIMIT bytes per
// second. "Image committed." ends a successful run unless -q.
#include <cstdio>
#include <cstring>
#include <string>

#include "common.h"

namespace blkimg {
namespace {

struct CommitArgs {
  std::string format, cache = "writeback", base;
  bool has_base = false, drop = false, progress = false, quiet = false, image_opts = false;
  uint64_t rate_limit = 0;
  std::string filename;
};

int Run(Context& ctx, const CommitArgs& a) {
  std::optional<uint32_t> cache = ParseCacheMode(a.cache);
  if (!cache) {
    Error("Invalid cache option: " + a.cache);
    return 1;
  }
  lb_backend* be = OpenBackend(ctx, {a.filename, a.format, a.image_opts},
                               LB_OPEN_RDWR | LB_OPEN_UNMAP | *cache);
  if (!be) return 1;
  Progress progress(a.progress && !a.quiet, 1.f);
  Progress::InstallSignalHandler();
  progress.Set(0);
  int r = lb_commit(be, a.has_base ? a.base.c_str() : nullptr, a.rate_limit,
                    a.drop ? LB_COMMIT_KEEP_TOP : 0, Progress::Callback, &progress);
  if (r == 0) progress.Set(100);
  progress.End();
  if (r < 0) {
    Error(LibError());
    lb_close(be);
    return 1;
  }
  if (lb_close(be) < 0) {
    Error(LibError());
    return 1;
  }
  if (!a.quiet) printf("Image committed.\n");
  return 0;
}

}  // namespace

int RunCommit(int argc, char** argv) {
  Context ctx;
  static const option kLong[] = {
      BLKIMG_LONG_HELP,
      BLKIMG_LONG_OBJECT,
      BLKIMG_LONG_IMAGE_OPTS,
      BLKIMG_LONG_END,
  };
  CommitArgs a;
  for (;;) {
    int c = NextOption(argc, argv, ":f:ht:b:dpqr:", kLong);
    if (c == -1) break;
    switch (c) {
      case 'h': PrintHelp(); return 0;
      case 'f': a.format = optarg; break;
      case 't': a.cache = optarg; break;
      case 'b':
        a.base = optarg;
        a.has_base = true;
        a.drop = true;  // -b implies -d
        break;
      case 'd': a.drop = true; break;
      case 'p': a.progress = true; break;
      case 'q': a.quiet = true; break;
      case 'r': {
        std::optional<int64_t> v = CvtNum("rate limit", optarg);
        if (!v) return 1;
        a.rate_limit = static_cast<uint64_t>(*v);
        break;
      }
      case kOptObject:
        if (!ctx.AddObjects({optarg})) return 1;
        break;
      case kOptImageOpts: a.image_opts = true; break;
      default: return 1;
    }
  }
  if (optind != argc - 1) return UsageError("Expecting one image file name");
  a.filename = argv[optind];
  return Run(ctx, a);
}

}  // namespace blkimg
