// blkimg check: qemu-img check [--object OBJ] [--image-opts] [-q] [-f FMT] [--output=human|json]
//               [-r leaks|all] [-T SRC_CACHE] [-U] FILENAME
// Exit codes as qemu-img's: 0 consistent, 1 the check could not run (or internal errors), 2
// corruptions, 3 leaks only, 63 the format has no check. After a repair the image is checked
// again ("Double checking the fixed image now...") and that second result is reported, with
// the repair's fixed counts.
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <string>

#include "common.h"
#include "nlohmann/json.hpp"

namespace blkimg {
namespace {

struct CheckArgs {
  std::string format, output = "human", cache = "writeback";
  bool quiet = false, force_share = false, image_opts = false;
  uint32_t fix = 0;
  std::string filename;
};

void PrintMessage(const char* line, void*) { fprintf(stderr, "%s\n", line); }

void PrintHuman(const lb_check_result& r, bool quiet) {
  if (quiet) return;
  if (r.corruptions == 0 && r.leaks == 0 && r.check_errors == 0) {
    printf("No errors were found on the image.\n");
  } else {
    if (r.corruptions) {
      printf("\n%" PRId64 " errors were found on the image.\n"
             "Data may be corrupted, or further writes to the image may corrupt it.\n",
             r.corruptions);
    }
    if (r.leaks) {
      printf("\n%" PRId64 " leaked clusters were found on the image.\n"
             "This means waste of disk space, but no harm to data.\n", r.leaks);
    }
    if (r.check_errors) {
      printf("\n%" PRId64 " internal errors have occurred during the check.\n", r.check_errors);
    }
  }
  if (r.total_clusters != 0 && r.allocated_clusters != 0) {
    printf("%" PRId64 "/%" PRId64 " = %0.2f%% allocated, %0.2f%% fragmented, %0.2f%% compressed "
           "clusters\n", r.allocated_clusters, r.total_clusters,
           r.allocated_clusters * 100.0 / r.total_clusters,
           r.fragmented_clusters * 100.0 / r.allocated_clusters,
           r.compressed_clusters * 100.0 / r.allocated_clusters);
  }
  if (r.image_end_offset) printf("Image end offset: %" PRId64 "\n", r.image_end_offset);
}

// qemu-img 7.2 prints the ImageCheck dictionary in its hash order, optional members only when
// non-zero (filename, format and check-errors always).
void PrintJson(const lb_check_result& r, const std::string& filename, const std::string& format,
               bool quiet) {
  if (quiet) return;
  nlohmann::ordered_json j;
  auto opt = [&](const char* key, int64_t v) {
    if (v) j[key] = v;
  };
  opt("image-end-offset", r.image_end_offset);
  opt("compressed-clusters", r.compressed_clusters);
  opt("total-clusters", r.total_clusters);
  opt("corruptions-fixed", r.corruptions_fixed);
  opt("corruptions", r.corruptions);
  j["check-errors"] = r.check_errors;
  opt("leaks-fixed", r.leaks_fixed);
  opt("leaks", r.leaks);
  opt("allocated-clusters", r.allocated_clusters);
  j["filename"] = filename;
  j["format"] = format;
  opt("fragmented-clusters", r.fragmented_clusters);
  printf("%s\n", j.dump(4).c_str());
}

int Run(Context& ctx, const CheckArgs& a) {
  if (a.output != "human" && a.output != "json") {
    Error("--output must be used with human or json as argument.");
    return 1;
  }
  std::optional<uint32_t> cache = ParseCacheMode(a.cache);
  if (!cache) {
    Error("Invalid source cache option: " + a.cache);
    return 1;
  }
  if (a.image_opts && !a.format.empty()) {
    Error("--image-opts and --format are mutually exclusive");
    return 1;
  }
  ImageSpec spec{a.filename, a.format, a.image_opts};
  uint32_t flags = *cache | (a.force_share ? LB_OPEN_FORCE_SHARE : 0) | (a.fix ? LB_OPEN_RDWR : 0);
  lb_open_args args = ArgsFor(spec, flags);
  lb_check_result r = LB_CHECK_RESULT_INIT;
  int ret = lb_check(ctx.get(), &args, a.fix, PrintMessage, nullptr, &r);
  if (ret == -ENOTSUP) {
    Error("This image format does not support checks");
    return 63;
  }
  if (ret < 0) {
    Error("Could not open '" + a.filename + "': " + LibError());
    return 1;
  }
  auto failed = [](const lb_check_result& res) {
    if (!res.failed_errno) return false;
    fflush(stdout);
    Error(std::string("Check failed: ") + strerror(res.failed_errno));
    return true;
  };
  if (failed(r)) return 1;
  if (r.corruptions_fixed || r.leaks_fixed) {
    int64_t corruptions_fixed = r.corruptions_fixed, leaks_fixed = r.leaks_fixed;
    if (a.output == "human" && !a.quiet) {
      printf("The following inconsistencies were found and repaired:\n\n"
             "    %" PRId64 " leaked clusters\n"
             "    %" PRId64 " corruptions\n\n"
             "Double checking the fixed image now...\n", leaks_fixed, corruptions_fixed);
      fflush(stdout);
    }
    r = LB_CHECK_RESULT_INIT;
    fflush(stderr);
    ret = lb_check(ctx.get(), &args, 0, PrintMessage, nullptr, &r);
    if (ret < 0) {
      Error("Check failed: " + LibError());
      return 1;
    }
    if (failed(r)) return 1;
    r.corruptions_fixed = corruptions_fixed;
    r.leaks_fixed = leaks_fixed;
  }
  std::string format = r.format ? r.format : "";
  if (a.output == "json") {
    PrintJson(r, a.filename, format, a.quiet);
  } else {
    PrintHuman(r, a.quiet);
  }
  if (r.check_errors) {
    fflush(stdout);
    Error("Check failed");
    return 1;
  }
  if (r.corruptions) return 2;
  if (r.leaks) return 3;
  return 0;
}

}  // namespace

int RunCheck(int argc, char** argv) {
  Context ctx;
  static const option kLong[] = {
      BLKIMG_LONG_HELP,
      {"format", required_argument, nullptr, 'f'},
      {"repair", required_argument, nullptr, 'r'},
      {"output", required_argument, nullptr, kOptOutput},
      BLKIMG_LONG_OBJECT,
      BLKIMG_LONG_IMAGE_OPTS,
      BLKIMG_LONG_FORCE_SHARE,
      BLKIMG_LONG_END,
  };
  CheckArgs a;
  for (;;) {
    int c = NextOption(argc, argv, ":hf:r:T:qU", kLong);
    if (c == -1) break;
    switch (c) {
      case 'h': PrintHelp(); return 0;
      case 'f': a.format = optarg; break;
      case 'r':
        if (!strcmp(optarg, "leaks")) {
          a.fix = LB_CHECK_FIX_LEAKS;
        } else if (!strcmp(optarg, "all")) {
          a.fix = LB_CHECK_FIX_LEAKS | LB_CHECK_FIX_ERRORS;
        } else {
          return UsageError(std::string("Unknown option value for -r (expecting 'leaks' or "
                                        "'all'): ") + optarg);
        }
        break;
      case 'T': a.cache = optarg; break;
      case 'q': a.quiet = true; break;
      case 'U': a.force_share = true; break;
      case kOptOutput: a.output = optarg; break;
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
