// blkimg rebase: qemu-img rebase [--object OBJ] [--image-opts] [-U] [-q] [-f FMT] [-t CACHE]
//                [-T SRC_CACHE] [-p] [-u] -b BACKING_FILE [-F BACKING_FMT] FILENAME
//
// Changes FILENAME's backing file with lb_rebase: in safe mode the data that would read
// differently is copied into FILENAME first (-b "" flattens the image), -u only rewrites the
// header (the image is then opened without its backing chain). -T is the cache mode of the
// backing files, -U lets others write them meanwhile. qemu-img's messages and exit codes.
#include <cstdio>
#include <cstring>
#include <string>

#include "common.h"

namespace blkimg {
namespace {

struct RebaseArgs {
  std::string format, cache = "writeback", src_cache = "writeback", backing, backing_format;
  bool has_backing = false, has_backing_format = false, unsafe = false, progress = false;
  bool quiet = false, force_share = false, image_opts = false;
  std::string filename;
};

int Run(Context& ctx, const RebaseArgs& a) {
  if (!a.unsafe && !a.has_backing) return UsageError("Must specify backing file (-b) or use unsafe mode (-u)");
  std::optional<uint32_t> cache = ParseCacheMode(a.cache);
  if (!cache) {
    Error("Invalid cache option: " + a.cache);
    return 1;
  }
  std::optional<uint32_t> src_cache = ParseCacheMode(a.src_cache);
  if (!src_cache) {
    Error("Invalid source cache option: " + a.src_cache);
    return 1;
  }
  uint32_t flags = LB_OPEN_RDWR | *cache | (a.unsafe ? LB_OPEN_NO_BACKING : 0);
  lb_backend* be = OpenBackend(ctx, {a.filename, a.format, a.image_opts}, flags);
  if (!be) return 1;
  // The new backing file's cache mode (-T): what lb_open would set for it.
  std::string options;
  switch (*src_cache & LB_OPEN_CACHE_MASK) {
    case LB_OPEN_CACHE_NONE:
    case LB_OPEN_CACHE_DIRECTSYNC: options = "cache.direct=on"; break;
    case LB_OPEN_CACHE_UNSAFE: options = "cache.no-flush=on"; break;
    default: break;
  }
  if (a.force_share) options += std::string(options.empty() ? "" : ",") + "force-share=on";
  Progress progress(a.progress && !a.quiet, 2.f);
  Progress::InstallSignalHandler();
  progress.Set(0);
  int r = lb_rebase(be, a.has_backing ? a.backing.c_str() : nullptr,
                    a.has_backing_format ? a.backing_format.c_str() : nullptr,
                    options.empty() ? nullptr : options.c_str(), a.unsafe ? LB_REBASE_UNSAFE : 0,
                    Progress::Callback, &progress);
  if (r == 0) progress.Set(100);
  progress.End();
  if (r < 0) {
    std::string err = LibError();
    if (err.rfind("Could not open new backing file", 0) != 0) {
      err = "Could not change the backing file to '" + a.backing + "': " + err;
    }
    Error(err);
    lb_close(be);
    return 1;
  }
  if (lb_close(be) < 0) {
    Error(LibError());
    return 1;
  }
  return 0;
}

}  // namespace

int RunRebase(int argc, char** argv) {
  Context ctx;
  static const option kLong[] = {
      BLKIMG_LONG_HELP,
      BLKIMG_LONG_OBJECT,
      BLKIMG_LONG_IMAGE_OPTS,
      BLKIMG_LONG_FORCE_SHARE,
      BLKIMG_LONG_END,
  };
  RebaseArgs a;
  for (;;) {
    int c = NextOption(argc, argv, ":hf:F:b:upt:T:qU", kLong);
    if (c == -1) break;
    switch (c) {
      case 'h': PrintHelp(); return 0;
      case 'f': a.format = optarg; break;
      case 'F':
        a.backing_format = optarg;
        a.has_backing_format = true;
        break;
      case 'b':
        a.backing = optarg;
        a.has_backing = true;
        break;
      case 'u': a.unsafe = true; break;
      case 'p': a.progress = true; break;
      case 't': a.cache = optarg; break;
      case 'T': a.src_cache = optarg; break;
      case 'q': a.quiet = true; break;
      case 'U': a.force_share = true; break;
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
