// blkimg create: qemu-img create [--object OBJ] [-q] [-f FMT] [-b BACKING [-F BACKING_FMT]]
//                [-u] [-o OPTIONS] FILENAME [SIZE]
#include <cinttypes>
#include <algorithm>
#include <cstdio>
#include <cstring>

#include "common.h"

namespace blkimg {
namespace {

struct CreateArgs {
  std::string format = "raw";
  std::vector<std::string> options;
  std::string backing, backing_format;
  bool unsafe = false, quiet = false;
  std::string filename;
  std::optional<uint64_t> size;  // the size operand
};

int Run(Context& ctx, const CreateArgs& a) {
  std::string opts = JoinOptions(a.options);
  if (IsHelpOption(opts)) {
    return PrintCreateOptionsHelp(ctx, a.format, a.filename.empty() ? nullptr : a.filename.c_str());
  }
  lb_options* o = nullptr;
  lb_options_new(&o);
  if (!opts.empty() && lb_options_parse(o, opts.c_str()) < 0) {
    Error(LibError());
    lb_options_free(o);
    return 1;
  }
  if (!a.backing.empty()) lb_options_set(o, "backing_file", a.backing.c_str());
  if (!a.backing_format.empty()) lb_options_set(o, "backing_fmt", a.backing_format.c_str());
  if (a.size && lb_options_get(o, "size")) {
    lb_options_free(o);
    Error(a.filename + ": The image size must be specified only once");
    return 1;
  }
  char* text = lb_options_to_string(o);
  lb_create_args args = LB_CREATE_ARGS_INIT;
  args.filename = a.filename.c_str();
  args.format = a.format.c_str();
  args.options = text;
  // Without a size the library takes the options' "size", else the backing file's, and
  // fails with qemu-img's "Image creation needs a size parameter".
  args.size = a.size ? static_cast<int64_t>(*a.size) : LB_CREATE_SIZE_UNSET;
  // Like qemu-img, check everything before saying "Formatting"; the check reports the size.
  args.flags = LB_CREATE_VALIDATE_ONLY | (a.unsafe ? LB_CREATE_UNSAFE_BACKING : 0u);
  uint64_t size = 0;
  if (int r = lb_create_ex(ctx.get(), &args, &size); r < 0) {
    Error(CreateError(a.filename, a.format, r));
    lb_free(text);
    lb_options_free(o);
    return 1;
  }
  // "Formatting 'NAME', fmt=FMT k=v...", as QEMU's qemu_opts_print: the format's (then the
  // protocol's) options in their list order, each given value, or for the format's own
  // options their default; size values normalised to bytes; "size" the size in effect.
  if (!a.quiet) {
    std::string line = "Formatting '" + a.filename + "', fmt=" + a.format;
    std::vector<std::string> own;
    int own_n = lb_create_options(ctx.get(), a.format.c_str(), nullptr, nullptr, 0);
    if (own_n > 0) {
      std::vector<lb_option_desc> descs(static_cast<size_t>(own_n));
      for (auto& d : descs) d.struct_size = sizeof(lb_option_desc);
      lb_create_options(ctx.get(), a.format.c_str(), nullptr, descs.data(), descs.size());
      for (const lb_option_desc& d : descs) own.emplace_back(d.name);
    }
    int n = lb_create_options(ctx.get(), a.format.c_str(), a.filename.c_str(), nullptr, 0);
    if (n > 0) {
      std::vector<lb_option_desc> descs(static_cast<size_t>(n));
      for (auto& d : descs) d.struct_size = sizeof(lb_option_desc);
      lb_create_options(ctx.get(), a.format.c_str(), a.filename.c_str(), descs.data(), descs.size());
      for (const lb_option_desc& d : descs) {
        if (!strcmp(d.name, "size")) {
          line += " size=" + std::to_string(size);
          continue;
        }
        std::string text;
        if (const char* v = lb_options_get(o, d.name)) {
          text = v;
        } else if (d.default_value && std::find(own.begin(), own.end(), d.name) != own.end()) {
          text = d.default_value;
        } else {
          continue;
        }
        uint64_t bytes = 0;
        if (!strcmp(d.type, "size") && lb_parse_size(text.c_str(), &bytes) == 0) {
          text = std::to_string(bytes);
        }
        line += std::string(" ") + d.name + "=" + text;
      }
    }
    printf("%s\n", line.c_str());
  }
  lb_options_free(o);
  args.flags = a.unsafe ? LB_CREATE_UNSAFE_BACKING : 0u;
  args.size = static_cast<int64_t>(size);
  int r = lb_create_ex(ctx.get(), &args, nullptr);
  lb_free(text);
  if (r < 0) {
    Error(CreateError(a.filename, a.format, r));
    return 1;
  }
  return 0;
}

}  // namespace

int RunCreate(int argc, char** argv) {
  Context ctx;
  static const option kLong[] = {BLKIMG_LONG_HELP, BLKIMG_LONG_OBJECT, BLKIMG_LONG_END};
  CreateArgs a;
  for (;;) {
    int c = NextOption(argc, argv, ":F:b:f:ho:qu", kLong);
    if (c == -1) break;
    switch (c) {
      case 'h': PrintHelp(); return 0;
      case 'F': a.backing_format = optarg; break;
      case 'b': a.backing = optarg; break;
      case 'f': a.format = optarg; break;
      case 'o':
        if (!AddOptionList(optarg, &a.options)) return 1;
        break;
      case 'q': a.quiet = true; break;
      case 'u': a.unsafe = true; break;
      case kOptObject:
        if (!ctx.AddObjects({optarg})) return 1;
        break;
      default: return 1;
    }
  }
  if (optind < argc) a.filename = argv[optind++];
  if (a.filename.empty() && !IsHelpOption(JoinOptions(a.options))) {
    return UsageError("Expecting image file name");
  }
  if (optind < argc) {
    // An empty size argument is a bad size, not no size.
    std::optional<int64_t> s = CvtNum("image size", argv[optind++]);
    if (!s) return 1;
    a.size = static_cast<uint64_t>(*s);
  }
  if (optind < argc) return UsageError(std::string("Unexpected argument: ") + argv[optind]);
  return Run(ctx, a);
}

}  // namespace blkimg
