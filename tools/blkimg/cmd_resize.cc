// blkimg resize: qemu-img resize [--object OBJ] [--image-opts] [-f FMT]
//                [--preallocation=PREALLOC] [-q] [--shrink] FILENAME [+|-]SIZE
//
// Like qemu-img, the last argument is always the size, taken out before the options are
// parsed, so that "-1M" reads as a relative size and not as an option. The image is opened
// read-write with the resize permission and resized with lb_truncate.
#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "common.h"

namespace blkimg {
namespace {

struct ResizeArgs {
  std::string format;
  std::string preallocation;
  bool quiet = false, shrink = false, image_opts = false;
  std::string filename;
};

// The size argument: an absolute size, or a change of the current one.
struct SizeArg {
  int relative = 0;  // +1, -1, or 0 for an absolute size
  uint64_t bytes = 0;
};

// qemu's option size syntax (the "size" parameter, qemu_strtosz as lb_parse_size parses
// it): a number below 2^64 with an optional suffix; prints qemu-img's messages on failure.
std::optional<uint64_t> ParseSizeParameter(const std::string& text) {
  auto malformed = [] {
    Error("Parameter 'size' expects a non-negative number below 2^64");
    fprintf(stderr,
            "Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\n"
            "and exabytes, respectively.\n");
    return std::nullopt;
  };
  auto out_of_range = [&text] {
    Error("Value '" + text + "' is out of range for parameter 'size'");
    return std::nullopt;
  };
  uint64_t bytes = 0;
  int r = lb_parse_size(text.c_str(), &bytes);
  if (r == -ERANGE) return out_of_range();
  if (r < 0) return malformed();
  if (r == 1) {
    fprintf(stderr, "blkimg: warning: Using a multiplier suffix on hex numbers is deprecated: %s\n",
            text.c_str());
  }
  return bytes;
}

std::optional<SizeArg> ParseSizeArg(const std::string& text) {
  SizeArg size;
  std::string rest = text;
  if (!rest.empty() && (rest[0] == '+' || rest[0] == '-')) {
    size.relative = rest[0] == '+' ? 1 : -1;
    rest.erase(0, 1);
  }
  std::optional<uint64_t> bytes = ParseSizeParameter(rest);
  if (!bytes) return std::nullopt;
  size.bytes = *bytes;
  return size;
}

bool ValidPreallocation(const std::string& mode) {
  return mode == "off" || mode == "metadata" || mode == "falloc" || mode == "full";
}

int Resize(Context& ctx, const ResizeArgs& a, const SizeArg& size) {
  lb_backend* be = OpenBackend(ctx, {a.filename, a.format, a.image_opts},
                               LB_OPEN_RDWR | LB_OPEN_RESIZE);
  if (!be) return 1;
  int64_t current = lb_get_size(be);
  if (current < 0) {
    Error("Could not get image size: " + LibError());
    lb_close(be);
    return 1;
  }
  // qemu-img computes in int64_t: huge sizes and overflowing changes come out negative.
  uint64_t wanted = size.relative == 0 ? size.bytes
                    : size.relative > 0 ? static_cast<uint64_t>(current) + size.bytes
                                        : static_cast<uint64_t>(current) - size.bytes;
  int64_t total = static_cast<int64_t>(wanted);
  int ret = 1;
  if (total <= 0) {
    Error("New image size must be positive");
  } else if (!a.preallocation.empty() && a.preallocation != "off" && total <= current) {
    Error("Preallocation can only be used for growing images");
  } else if (total < current && !a.shrink) {
    Error("Use the --shrink option to perform a shrink operation.");
    Error("warning: Shrinking an image will delete all data beyond the shrunken image's end. "
          "Before performing such an operation, make sure there is no important data there.");
  } else if (lb_truncate(be, static_cast<uint64_t>(total),
                         a.preallocation.empty() ? nullptr : a.preallocation.c_str(), 0) < 0) {
    Error(LibError());
  } else {
    ret = 0;
  }
  if (lb_close(be) < 0 && ret == 0) {
    Error(LibError());
    ret = 1;
  }
  if (ret == 0 && !a.quiet) printf("Image resized.\n");
  return ret;
}

}  // namespace

int RunResize(int argc, char** argv) {
  static const option kLong[] = {
      BLKIMG_LONG_HELP,
      BLKIMG_LONG_OBJECT,
      BLKIMG_LONG_IMAGE_OPTS,
      {"preallocation", required_argument, nullptr, kOptPreallocation},
      {"shrink", no_argument, nullptr, kOptShrink},
      BLKIMG_LONG_END,
  };
  // The size is taken off the end before getopt sees it, so that "-1M" is not an option.
  if (argc < 3) return UsageError("Not enough arguments");
  std::string size_text = argv[--argc];
  Context ctx;
  ResizeArgs a;
  for (;;) {
    int c = NextOption(argc, argv, ":f:hq", kLong);
    if (c == -1) break;
    switch (c) {
      case 'h': PrintHelp(); return 0;
      case 'f': a.format = optarg; break;
      case 'q': a.quiet = true; break;
      case kOptObject:
        if (!ctx.AddObjects({optarg})) return 1;
        break;
      case kOptImageOpts: a.image_opts = true; break;
      case kOptPreallocation:
        if (!ValidPreallocation(optarg)) {
          Error(std::string("Invalid preallocation mode '") + optarg + "'");
          return 1;
        }
        a.preallocation = optarg;
        break;
      case kOptShrink: a.shrink = true; break;
      default: return 1;
    }
  }
  if (optind != argc - 1) return UsageError("Expecting image file name and size");
  a.filename = argv[optind];
  std::optional<SizeArg> size = ParseSizeArg(size_text);
  if (!size) return 1;
  return Resize(ctx, a, *size);
}

}  // namespace blkimg
