// blkimg measure: qemu-img measure [--output=human|json] [-O OUTPUT_FMT] [-o OPTIONS]
//                 [--size N | [--object OBJ] [--image-opts] [-f FMT] [-l SNAPSHOT_PARAM]
//                 FILENAME]
//
// Prints how much storage an image of OUTPUT_FMT (raw by default) needs for a virtual size N,
// or to hold a copy of FILENAME (opened read-only, its backing chain included; with -l, one
// of its internal snapshots), as lb_measure computes it: "required size", "fully allocated
// size" and, when the input could carry persistent bitmaps into a qcow2 v3 target, "bitmaps
// size". The checks run in qemu-img's order, with its messages.
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <string>

#include "common.h"
#include "nlohmann/json.hpp"

namespace blkimg {
namespace {

constexpr int kOptSize = 0x1001;

struct MeasureArgs {
  std::string format, out_format = "raw", output = "human";
  std::vector<std::string> options;
  SnapshotParam snapshot;
  std::optional<uint64_t> size;
  bool image_opts = false, force_share = false;
  std::string filename;
};

// The -o keys the output format (and the file protocol) does not know, qemu-img's
// qemu_opts_do_parse errors.
bool CheckOptionNames(Context& ctx, const std::string& format, const std::string& options) {
  if (options.empty()) return true;
  std::vector<lb_option_desc> descs(256);
  descs[0].struct_size = sizeof(lb_option_desc);
  int n = lb_create_options(ctx.get(), format.c_str(), "measure.img", descs.data(), descs.size());
  if (n < 0) return true;  // the format errors come later, in qemu-img's order
  lb_options* o = nullptr;
  if (lb_options_new(&o) < 0) return true;
  bool ok = true;
  if (lb_options_parse(o, options.c_str()) < 0) {
    Error(LibError());
    ok = false;
  }
  char* all = ok ? lb_options_to_string(o) : nullptr;
  for (std::string rest = all ? all : ""; ok && !rest.empty();) {
    size_t comma = rest.find(',');
    std::string key = rest.substr(0, std::min(comma, rest.find('=')));
    rest = comma == std::string::npos ? "" : rest.substr(comma + 1);
    bool known = false;
    for (int i = 0; i < n && i < static_cast<int>(descs.size()) && !known; ++i) {
      known = descs[i].name && key == descs[i].name;
    }
    if (!known) {
      Error("Invalid parameter '" + key + "'");
      ok = false;
    }
  }
  lb_free(all);
  lb_options_free(o);
  if (!ok) Error("Invalid options for file format '" + format + "'");
  return ok;
}

int Run(Context& ctx, const MeasureArgs& a) {
  if (!a.filename.empty() && a.size) {
    Error("--size N cannot be used together with a filename.");
    return 1;
  }
  if (a.filename.empty() && !a.size) {
    Error("Either --size N or one filename must be specified.");
    return 1;
  }
  lb_backend* in = nullptr;
  if (!a.filename.empty()) {
    uint32_t flags = a.force_share ? LB_OPEN_FORCE_SHARE : 0;
    in = OpenBackend(ctx, {a.filename, a.format, a.image_opts}, flags);
    if (!in) return 1;
    if (a.snapshot.given() && !LoadSnapshotParam(a.snapshot, in)) {
      lb_close(in);
      return 1;
    }
  }
  auto fail = [&](const std::string& message) {
    Error(message);
    lb_close(in);
    return 1;
  };
  if (lb_create_options(ctx.get(), a.out_format.c_str(), nullptr, nullptr, 0) == -EINVAL) {
    return fail("Unknown file format '" + a.out_format + "'");
  }
  std::string opts = JoinOptions(a.options);
  if (!CheckOptionNames(ctx, a.out_format, opts)) {
    lb_close(in);
    return 1;
  }
  lb_measure_result r = LB_MEASURE_RESULT_INIT;
  if (lb_measure(ctx.get(), a.out_format.c_str(), opts.empty() ? nullptr : opts.c_str(), in,
                 a.size.value_or(0), &r) < 0) {
    return fail(LibError());
  }
  lb_close(in);
  if (a.output == "human") {
    printf("required size: %" PRIu64 "\n", r.required);
    printf("fully allocated size: %" PRIu64 "\n", r.fully_allocated);
    if (r.has_bitmaps) printf("bitmaps size: %" PRIu64 "\n", r.bitmaps);
  } else {
    nlohmann::ordered_json j;
    if (r.has_bitmaps) j["bitmaps"] = r.bitmaps;
    j["required"] = r.required;
    j["fully-allocated"] = r.fully_allocated;
    printf("%s\n", j.dump(4).c_str());
  }
  return 0;
}

}  // namespace

int RunMeasure(int argc, char** argv) {
  Context ctx;
  static const option kLong[] = {
      BLKIMG_LONG_HELP,
      BLKIMG_LONG_IMAGE_OPTS,
      BLKIMG_LONG_OBJECT,
      {"output", required_argument, nullptr, kOptOutput},
      {"size", required_argument, nullptr, kOptSize},
      BLKIMG_LONG_FORCE_SHARE,
      BLKIMG_LONG_END,
  };
  MeasureArgs a;
  std::vector<std::string> objects;
  for (;;) {
    int c = NextOption(argc, argv, ":hf:O:o:l:U", kLong);
    if (c == -1) break;
    switch (c) {
      case 'h': PrintHelp(); return 0;
      case 'f': a.format = optarg; break;
      case 'O': a.out_format = optarg; break;
      case 'o':
        if (!AddOptionList(optarg, &a.options)) return 1;
        break;
      case 'l':
        if (!ParseSnapshotParam(optarg, &a.snapshot)) return 1;
        break;
      case 'U': a.force_share = true; break;
      case kOptObject: objects.push_back(optarg); break;
      case kOptImageOpts: a.image_opts = true; break;
      case kOptOutput:
        if (strcmp(optarg, "json") && strcmp(optarg, "human")) {
          Error("--output must be used with human or json as argument.");
          return 1;
        }
        a.output = optarg;
        break;
      case kOptSize: {
        std::optional<int64_t> v = CvtNum("image size", optarg);
        if (!v) return 1;
        a.size = static_cast<uint64_t>(*v);
        break;
      }
      default: return 1;
    }
  }
  if (!objects.empty() && !ctx.AddObjects(objects)) return 1;
  if (argc - optind > 1) {
    Error("At most one filename argument is allowed.");
    return 1;
  }
  if (argc - optind == 1) a.filename = argv[optind];
  if (a.filename.empty() && (a.image_opts || !a.format.empty() || a.snapshot.given())) {
    Error("--image-opts, -f, and -l require a filename argument.");
    return 1;
  }
  return Run(ctx, a);
}

}  // namespace blkimg
