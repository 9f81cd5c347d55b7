// blkimg dd: qemu-img dd [--image-opts] [-U] [-f FMT] [-O OUTPUT_FMT] [bs=BLOCK_SIZE]
//            [count=BLOCKS] [skip=BLOCKS] if=INPUT of=OUTPUT
//
// Copies the input, from block `skip` on and for at most `count` blocks of `bs` bytes
// (default 512), into a new output image created with the size of what is copied. As in
// qemu-img, `count` limits the input before `skip` is applied: a skip past that limit is
// reported ("cannot skip to specified offset") and copies nothing, yet is not an error.
// Everything is written, zeroes included: the output is fully allocated.
#include <climits>
#include <cstdio>
#include <cstring>
#include <memory>

#include "common.h"

namespace blkimg {
namespace {

struct DdArgs {
  bool image_opts = false, force_share = false;
  std::string format, out_format = "raw";
  std::vector<std::string> operands;
};

struct Operands {
  int64_t bs = 512;
  std::optional<int64_t> count, skip;
  std::string input, output;
};

void InvalidSuffix(const std::string& what) {
  Error("Invalid " + what + " specified. You may use k, M, G, T, P or E suffixes for");
  Error("kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.");
}

// Parses the dd-style operands in order, failing at the first bad one as qemu-img does.
bool ParseOperands(const std::vector<std::string>& args, Operands* op) {
  for (const std::string& arg : args) {
    size_t eq = arg.find('=');
    std::string key = arg.substr(0, eq);
    std::string value = eq == std::string::npos ? "" : arg.substr(eq + 1);
    if (eq == std::string::npos ||
        (key != "bs" && key != "count" && key != "skip" && key != "if" && key != "of")) {
      Error("unrecognized operand " + key);
      return false;
    }
    if (key == "if") {
      op->input = value;
    } else if (key == "of") {
      op->output = value;
    } else {
      std::optional<int64_t> v = ParseSize(value);
      if (!v) {
        InvalidSuffix(key);
        return false;
      }
      if (key == "bs") {
        if (*v < 1 || *v > INT_MAX) {
          Error("Invalid bs specified. Must be between 1 and 2147483647.");
          return false;
        }
        op->bs = *v;
      } else if (key == "count") {
        op->count = *v;
      } else {
        op->skip = *v;
      }
    }
  }
  if (op->input.empty() || op->output.empty()) {
    Error("Must specify both input and output files");
    return false;
  }
  return true;
}

// Copies [in_pos, end) of the input to the start of the output, `bs` bytes at a time.
int Copy(lb_backend* in, lb_backend* out, int64_t bs, int64_t in_pos, int64_t end) {
  std::vector<uint8_t> buf(static_cast<size_t>(bs));
  for (int64_t out_pos = 0; in_pos < end;) {
    size_t bytes = static_cast<size_t>(std::min(bs, end - in_pos));
    int r = lb_pread(in, buf.data(), bytes, static_cast<uint64_t>(in_pos), 0);
    if (r < 0) {
      Error(std::string("error while reading from input image file: ") + strerror(-r));
      return 1;
    }
    in_pos += static_cast<int64_t>(bytes);
    r = lb_pwrite(out, buf.data(), bytes, static_cast<uint64_t>(out_pos), 0);
    if (r < 0) {
      Error(std::string("error while writing to output image file: ") + strerror(-r));
      return 1;
    }
    out_pos += static_cast<int64_t>(bytes);
  }
  return 0;
}

int Run(Context& ctx, const DdArgs& a) {
  Operands op;
  if (!ParseOperands(a.operands, &op)) return 1;
  uint32_t flags = a.force_share ? LB_OPEN_FORCE_SHARE : 0;
  lb_backend* in = OpenBackend(ctx, {op.input, a.format, a.image_opts}, flags);
  if (!in) return 1;
  if (lb_create_options(ctx.get(), a.out_format.c_str(), nullptr, nullptr, 0) == -EINVAL) {
    Error("Unknown file format");
    lb_close(in);
    return 1;
  }
  int64_t size = lb_get_size(in);
  if (size < 0) {
    Error("Failed to get size for '" + op.input + "'");
    lb_close(in);
    return 1;
  }
  if (op.count && *op.count <= INT64_MAX / op.bs && *op.count * op.bs < size) {
    size = *op.count * op.bs;
  }
  int64_t in_pos = 0;
  if (op.skip) {
    if (*op.skip > INT64_MAX / op.bs || size < *op.skip * op.bs) {
      Error(op.input + ": cannot skip to specified offset");
      in_pos = size;
    } else {
      in_pos = *op.skip * op.bs;
    }
  }
  TargetGuard guard;
  if (!guard.Check(ctx, op.output, 0)) {
    lb_close(in);
    return 1;
  }
  if (lb_create(ctx.get(), op.output.c_str(), a.out_format.c_str(), nullptr,
                static_cast<uint64_t>(size - in_pos), 0) < 0) {
    Error(op.output + ": error while creating output image: " + LibError());
    lb_close(in);
    return 1;
  }
  lb_backend* out = OpenBackend(ctx, {op.output, a.out_format, false}, LB_OPEN_RDWR);
  guard.Release();
  if (!out) {
    lb_close(in);
    return 1;
  }
  int ret = Copy(in, out, op.bs, in_pos, size);
  if (lb_close(out) < 0 && ret == 0) {
    Error(LibError());
    ret = 1;
  }
  lb_close(in);
  return ret;
}

}  // namespace

int RunDd(int argc, char** argv) {
  static const option kLong[] = {BLKIMG_LONG_HELP, BLKIMG_LONG_OBJECT, BLKIMG_LONG_IMAGE_OPTS,
                                 BLKIMG_LONG_FORCE_SHARE, BLKIMG_LONG_END};
  Context ctx;
  DdArgs a;
  for (;;) {
    int c = NextOption(argc, argv, ":hf:O:U", kLong);
    if (c == -1) break;
    switch (c) {
      case 'h': PrintHelp(); return 0;
      case 'f': a.format = optarg; break;
      case 'O': a.out_format = optarg; break;
      case 'U': a.force_share = true; break;
      case kOptObject:
        if (!ctx.AddObjects({optarg})) return 1;
        break;
      case kOptImageOpts: a.image_opts = true; break;
      default: return 1;
    }
  }
  a.operands.assign(argv + optind, argv + argc);
  return Run(ctx, a);
}

}  // namespace blkimg
