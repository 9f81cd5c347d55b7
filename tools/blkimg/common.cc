#include "common.h"

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>

#include <sys/stat.h>

namespace blkimg {

void Error(const std::string& message) {
  fflush(stdout);  // what was printed before the error comes before it in a shared pipe
  fprintf(stderr, "blkimg: %s\n", message.c_str());
}

void Fatal(const std::string& message) {
  Error(message);
  exit(1);
}

int UsageError(const std::string& message) {
  Error(message);
  fprintf(stderr, "Try 'blkimg --help' for more information\n");
  return 1;
}

std::string LibError() { return lb_get_error(); }

std::string CreateError(const std::string& filename, const std::string& format, int err) {
  std::string prefix = filename + ": ";
  if (err == -EFBIG) return prefix + "The image size is too large for file format '" + format + "'";
  std::string message = LibError();
  if (message.rfind(prefix, 0) == 0) return message;
  return prefix + message;
}

Context::Context() {
  if (lb_context_new(0, &ctx_) < 0) Fatal(LibError());
}

Context::~Context() { lb_context_free(ctx_); }

bool Context::AddObjects(const std::vector<std::string>& specs) {
  for (const std::string& spec : specs) {
    if (spec == "help" || spec == "?") {
      printf("List of user creatable objects:\n  secret\n");
      exit(0);
    }
    if (spec == "secret,help" || spec == "secret,?") {
      printf("secret options:\n  data=<string>\n  file=<string>\n  format=<QCryptoSecretFormat>\n");
      exit(0);
    }
    if (lb_context_add_object(ctx_, spec.c_str()) < 0) {
      Error(LibError());
      return false;
    }
  }
  return true;
}

std::optional<uint32_t> ParseCacheMode(std::string_view mode) {
  if (mode == "writeback") return LB_OPEN_CACHE_WRITEBACK;
  if (mode == "none" || mode == "off") return LB_OPEN_CACHE_NONE;
  if (mode == "writethrough") return LB_OPEN_CACHE_WRITETHROUGH;
  if (mode == "directsync") return LB_OPEN_CACHE_DIRECTSYNC;
  if (mode == "unsafe") return LB_OPEN_CACHE_UNSAFE;
  return std::nullopt;
}

uint32_t CacheFlags(std::string_view mode) {
  if (std::optional<uint32_t> flags = ParseCacheMode(mode)) return *flags;
  Fatal("Invalid cache option: " + std::string(mode));
}

uint32_t AioFlags(std::string_view mode) {
  if (mode == "threads") return LB_OPEN_AIO_THREADS;
  if (mode == "io_uring") return LB_OPEN_AIO_IO_URING;
  if (mode == "native") return LB_OPEN_AIO_NATIVE;
  Fatal("Invalid aio option: " + std::string(mode));
}

lb_open_args ArgsFor(const ImageSpec& image, uint32_t flags) {
  lb_open_args args = LB_OPEN_ARGS_INIT;
  if (image.image_opts) {
    args.options = image.name.c_str();
  } else {
    args.filename = image.name.c_str();
    if (!image.format.empty()) args.format = image.format.c_str();
  }
  args.flags = flags | (flags & LB_OPEN_FORCE_SHARE ? 0 : image.share);
  return args;
}

namespace {

// qemu-img's img_open refuses -f with --image-opts (the options name the driver).
bool FormatAndImageOpts(const ImageSpec& image) {
  if (!image.image_opts || image.format.empty()) return false;
  Error("--image-opts and --format are mutually exclusive");
  return true;
}

}  // namespace

lb_backend* OpenBackend(Context& ctx, const ImageSpec& image, uint32_t flags) {
  if (FormatAndImageOpts(image)) return nullptr;
  lb_open_args args = ArgsFor(image, flags);
  lb_backend* be = nullptr;
  if (lb_open_ex(ctx.get(), &args, &be) < 0) {
    Error("Could not open '" + image.name + "': " + LibError());
    return nullptr;
  }
  return be;
}

lb_node* OpenNode(Context& ctx, const ImageSpec& image, uint32_t flags) {
  if (FormatAndImageOpts(image)) return nullptr;
  lb_open_args args = ArgsFor(image, flags);
  lb_node* node = nullptr;
  if (lb_node_open(ctx.get(), &args, &node) < 0) {
    Error("Could not open '" + image.name + "': " + LibError());
    return nullptr;
  }
  return node;
}

bool TargetGuard::Check(Context& ctx, const std::string& filename, uint32_t cache_flags) {
  struct stat st;
  if (stat(filename.c_str(), &st) != 0 || !(S_ISREG(st.st_mode) || S_ISBLK(st.st_mode))) {
    return true;
  }
  if (filename.rfind("json:", 0) == 0 || filename.find(':') != std::string::npos) return true;
  lb_options* o = nullptr;
  if (lb_options_new(&o) < 0) return true;
  lb_options_set(o, "driver", S_ISBLK(st.st_mode) ? "host_device" : "file");
  lb_options_set(o, "filename", filename.c_str());
  char* text = lb_options_to_string(o);
  lb_options_free(o);
  lb_open_args args = LB_OPEN_ARGS_INIT;
  args.options = text;
  args.flags = (cache_flags & LB_OPEN_CACHE_MASK) | kToolShare;
  int r = lb_open_ex(ctx.get(), &args, &be_);
  lb_free(text);
  if (r < 0) {
    Error("Could not open '" + filename + "': " + LibError());
    be_ = nullptr;
    return false;
  }
  return true;
}

NumError StrToSz(std::string_view text_view, int64_t* out) {
  std::string text(text_view);
  uint64_t value = 0;
  int r = lb_parse_size(text.c_str(), &value);
  if (r == -ERANGE) return NumError::kRange;
  if (r < 0) return NumError::kInvalid;
  if (r == 1) {
    fprintf(stderr, "blkimg: warning: Using a multiplier suffix on hex numbers is deprecated: %s\n",
            text.c_str());
  }
  if (value > static_cast<uint64_t>(INT64_MAX)) return NumError::kRange;
  *out = static_cast<int64_t>(value);
  return NumError::kNone;
}

std::optional<int64_t> ParseSize(std::string_view text) {
  int64_t value = 0;
  if (StrToSz(text, &value) != NumError::kNone) return std::nullopt;
  return value;
}

std::optional<int64_t> CvtNum(std::string_view what, std::string_view text, int64_t max) {
  int64_t value = 0;
  NumError e = StrToSz(text, &value);
  if (e == NumError::kNone && value <= max) return value;
  if (e != NumError::kInvalid) {
    Error("Invalid " + std::string(what) + " specified. Must be between 0 and " +
          std::to_string(max) + ".");
  } else {
    Error("Invalid " + std::string(what) +
          " specified. You may use k, M, G, T, P or E suffixes for");
    Error("kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.");
  }
  return std::nullopt;
}

std::string HumanSize(uint64_t bytes) {
  // qemu-img's "%0.3g" over B, KiB, MiB, ...: it moves to the next unit as soon as the value
  // reaches 1000 of the current one (so 1048064 bytes show as "1 MiB", not "1.02e+03 KiB"),
  // i.e. the unit is the largest k with bytes >= 1000 * 1024^(k-1).
  static const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  int unit = 0;
  while (unit < 6 && static_cast<double>(bytes) >= 1000.0 * std::ldexp(1.0, 10 * unit)) ++unit;
  double value = static_cast<double>(bytes) / std::ldexp(1.0, 10 * unit);
  char buf[64];
  snprintf(buf, sizeof buf, "%0.3g %s", value, kUnits[unit]);
  return buf;
}

bool ValidOptionList(std::string_view options) {
  if (options.empty() || options.front() == ',') return false;
  size_t commas = 0;
  while (commas < options.size() && options[options.size() - 1 - commas] == ',') ++commas;
  return commas % 2 == 0;
}

bool AddOptionList(const char* options, std::vector<std::string>* lists) {
  if (!ValidOptionList(options)) {
    Error(std::string("Invalid option list: ") + options);
    return false;
  }
  lists->push_back(options);
  return true;
}

std::string JoinOptions(const std::vector<std::string>& opts) {
  std::string out;
  for (const std::string& o : opts) {
    if (o.empty()) continue;
    if (!out.empty()) out += ",";
    out += o;
  }
  return out;
}

int NextOption(int argc, char** argv, const char* short_opts, const option* long_opts) {
  int c = getopt_long(argc, argv, short_opts, long_opts, nullptr);
  if (c == '?') {
    // qemu-img names the argument that held the unknown option, as getopt left it.
    UsageError(std::string("unrecognized option '") + argv[optind - 1] + "'");
    return kOptionError;
  }
  if (c == ':') {
    UsageError(std::string("missing argument for option '") + argv[optind - 1] + "'");
    return kOptionError;
  }
  return c;
}

bool TraceOption(const char* spec) {
  // key=value elements separated by single commas (",," is a comma); the first element may be
  // the pattern alone.
  std::vector<std::string> elements(1);
  for (const char* p = spec; *p; ++p) {
    if (*p == ',' && p[1] == ',') {
      elements.back() += ',';
      ++p;
    } else if (*p == ',') {
      elements.emplace_back();
    } else {
      elements.back() += *p;
    }
  }
  std::optional<std::string> pattern;  // the last "enable" wins
  for (size_t i = 0; i < elements.size(); ++i) {
    const std::string& e = elements[i];
    if (e.empty() && i + 1 == elements.size() && i > 0) break;  // a trailing comma
    size_t eq = e.find('=');
    std::string key = eq == std::string::npos ? (i == 0 ? "enable" : e) : e.substr(0, eq);
    std::string value = eq == std::string::npos ? e : e.substr(eq + 1);
    if (eq == std::string::npos && i > 0) {
      Error("warning: short-form boolean option '" + key + "' deprecated");
      fprintf(stderr, "Please use %s=on instead\n", key.c_str());
    }
    if (key == "enable") {
      pattern = value;
    } else if (key == "events") {
      FILE* f = fopen(value.c_str(), "r");
      if (!f) {
        fflush(stdout);
        fprintf(stderr, "blkimg:%s: %s\n", value.c_str(), strerror(errno));
        return false;
      }
      char line[1024];
      for (int number = 1; fgets(line, sizeof line, f); ++number) {
        std::string p = line;
        while (!p.empty() && isspace(static_cast<unsigned char>(p.back()))) p.pop_back();
        if (p.empty() || p[0] == '#') continue;
        if (p[0] == '-') p.erase(0, 1);
        if (p.find_first_of("*?") == std::string::npos) {
          // QEMU names the file and line of an unknown event.
          fflush(stdout);
          fprintf(stderr, "blkimg:%s:%d: warning: trace event '%s' does not exist\n",
                  value.c_str(), number, p.c_str());
        }
      }
      fclose(f);
    } else if (key == "file") {
      // The trace log is created as QEMU creates it, and stays empty.
      if (FILE* f = fopen(value.c_str(), "w")) fclose(f);
    } else {
      Error("Invalid parameter '" + key + "'");
      return false;
    }
  }
  if (pattern) {
    std::string p = *pattern;
    if (!p.empty() && p[0] == '-') p.erase(0, 1);
    if (p.find_first_of("*?") == std::string::npos) {
      Error("warning: trace event '" + p + "' does not exist");
    }
  }
  return true;
}

void PrintHelp() {
  printf("blkimg version %s\n"
         "usage: blkimg [standard options] command [command options]\n"
         "libblock disk image utility (qemu-img's counterpart)\n"
         "\n"
         "    '-h', '--help'       display this help and exit\n"
         "    '-V', '--version'    output version information and exit\n"
         "    '-T', '--trace'      accepted for qemu-img compatibility (no trace points)\n"
         "\n"
         "Command syntax:\n",
         lb_version());
  for (const Command& cmd : Commands()) printf("  %s %s\n", cmd.name, cmd.syntax);
  printf("\n"
         "Command parameters:\n"
         "  'filename' is a disk image filename\n"
         "  'objectdef' is a QEMU user creatable object definition (secret,id=ID,data=...|file=...)\n"
         "  'fmt' is the disk image format; it is guessed when not given\n"
         "  'cache' is the cache mode of the image: 'none', 'writeback' (the default, except\n"
         "    for convert), 'writethrough', 'directsync' or 'unsafe' (convert's default)\n"
         "  'src_cache' is the cache mode of the source images, as 'cache'\n"
         "  'size' is the disk image size in bytes; the suffixes k or K (kilobyte, 1024),\n"
         "    M (megabyte, 1024k), G (gigabyte, 1024M), T, P and E are accepted\n"
         "  'output_filename' is the destination disk image filename\n"
         "  'output_fmt' is the destination format\n"
         "  'options' is a comma separated list of format specific options in name=value\n"
         "    form; '-o help' lists the options of a format\n"
         "  '-U' opens images without taking their locks (read-only)\n"
         "  '--image-opts' treats filenames as option strings (driver=...,file.filename=...)\n"
         "\n"
         "'blkimg io' runs qemu-io's commands; 'blkimg io -c help' lists them.\n");
}

namespace {

volatile sig_atomic_t progress_requested = 0;

void OnProgressSignal(int) { progress_requested = 1; }

}  // namespace

void Progress::InstallSignalHandler() {
  // As qemu-img: SIGUSR1 asks a running convert or compare where it is, and does not kill it.
  struct sigaction sa = {};
  sa.sa_handler = OnProgressSignal;
  sa.sa_flags = SA_RESTART;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGUSR1, &sa, nullptr);
}

Progress::Progress(bool enabled, float min_skip) : enabled_(enabled), min_skip_(min_skip) {}

void Progress::Set(float percent) {
  current_ = percent;
  if (!enabled_) {
    // Without -p, a SIGUSR1 prints one line on stderr at the next update.
    if (progress_requested) {
      progress_requested = 0;
      fflush(stdout);
      fprintf(stderr, "    (%3.2f/100%%)\n", static_cast<double>(current_));
    }
    return;
  }
  progress_requested = 0;
  if (current_ > last_printed_ + min_skip_ || current_ < last_printed_ - min_skip_ ||
      current_ == 0 || current_ == 100) {
    last_printed_ = current_;
    printf("    (%3.2f/100%%)\r", static_cast<double>(current_));
    fflush(stdout);
  }
}

void Progress::End() {
  if (!enabled_) return;
  printf("\n");
  fflush(stdout);
}

int PrintCreateOptionsHelp(Context& ctx, const std::string& format, const char* filename) {
  int n = lb_create_options(ctx.get(), format.c_str(), filename, nullptr, 0);
  if (n < 0) {
    Error(LibError());
    return 1;
  }
  std::vector<lb_option_desc> descs(static_cast<size_t>(n));
  for (auto& d : descs) d.struct_size = sizeof(lb_option_desc);
  lb_create_options(ctx.get(), format.c_str(), filename, descs.data(), descs.size());
  std::sort(descs.begin(), descs.end(), [](const lb_option_desc& x, const lb_option_desc& y) {
    return strcmp(x.name, y.name) < 0;
  });
  if (filename) {
    printf("Supported options:\n");
  } else {
    printf("Supported %s options:\n", format.c_str());
  }
  for (const lb_option_desc& d : descs) {
    std::string type = !strcmp(d.type, "size")     ? "<size>"
                       : !strcmp(d.type, "bool")   ? "<bool (on/off)>"
                       : !strcmp(d.type, "number") ? "<num>"
                                                   : "<str>";
    std::string left = std::string(d.name) + "=" + type;
    printf("  %-22s - %s\n", left.c_str(), d.help);
  }
  if (!filename) {
    printf("\nThe protocol level may support further options.\n"
           "Specify the target filename to include those options.\n");
  }
  return 0;
}

bool IsHelpOption(const std::string& options) {
  // Keys are separated by single commas (",," is an escaped comma inside a value).
  size_t start = 0;
  while (start <= options.size()) {
    size_t end = start;
    while (end < options.size()) {
      if (options[end] == ',') {
        if (end + 1 < options.size() && options[end + 1] == ',') {
          end += 2;
          continue;
        }
        break;
      }
      ++end;
    }
    std::string item = options.substr(start, end - start);
    if (item == "help" || item == "?") return true;
    start = end + 1;
  }
  return false;
}

void PrintSnapshotTable(const std::vector<SnapshotRow>& rows) {
  printf("Snapshot list:\n");
  printf("%-10s%-17s%8s%20s%13s%11s\n", "ID", "TAG", "VM SIZE", "DATE", "VM CLOCK", "ICOUNT");
  for (const SnapshotRow& sn : rows) {
    time_t secs = static_cast<time_t>(sn.date_sec);
    struct tm tm {};
    localtime_r(&secs, &tm);
    char date[32];
    strftime(date, sizeof date, "%Y-%m-%d %H:%M:%S", &tm);
    uint64_t clock_s = sn.vm_clock_nsec / 1000000000ull;
    uint64_t clock_ms = sn.vm_clock_nsec % 1000000000ull / 1000000;
    char clock[48];
    snprintf(clock, sizeof clock, "%02" PRIu64 ":%02" PRIu64 ":%02" PRIu64 ".%03" PRIu64,
             clock_s / 3600, clock_s / 60 % 60, clock_s % 60, clock_ms);
    std::string icount = sn.icount ? std::to_string(*sn.icount) : "";
    printf("%-9s %-16s %8s%20s%13s%11s\n", sn.id.c_str(), sn.name.c_str(),
           HumanSize(sn.vm_state_size).c_str(), date, clock, icount.c_str());
  }
}

void Progress::Callback(uint64_t done, uint64_t total, void* user_data) {
  auto* p = static_cast<Progress*>(user_data);
  p->Set(total ? static_cast<float>(100.0 * static_cast<double>(done) / static_cast<double>(total))
               : 100.f);
}

bool ParseSnapshotParam(const std::string& text, SnapshotParam* out) {
  if (text.rfind("snapshot.", 0) != 0) {
    out->id_or_name = text;
    return true;
  }
  lb_options* o = nullptr;
  if (lb_options_new(&o) < 0) return false;
  bool ok = lb_options_parse(o, text.c_str()) == 0;
  if (!ok) Error(LibError());
  char* all = ok ? lb_options_to_string(o) : nullptr;
  // Only the two keys: anything else is an invalid parameter.
  for (std::string rest = all ? all : ""; ok && !rest.empty();) {
    size_t comma = rest.find(',');
    std::string item = rest.substr(0, comma);
    rest = comma == std::string::npos ? "" : rest.substr(comma + 1);
    std::string key = item.substr(0, item.find('='));
    if (key != "snapshot.id" && key != "snapshot.name") {
      Error("Invalid parameter '" + key + "'");
      ok = false;
    }
  }
  lb_free(all);
  if (ok) {
    const char* id = lb_options_get(o, "snapshot.id");
    const char* name = lb_options_get(o, "snapshot.name");
    out->opts = true;
    if (id) out->id = id;
    if (name) out->name = name;
  }
  lb_options_free(o);
  if (!ok) Error("Failed in parsing snapshot param '" + text + "'");
  return ok;
}

bool LoadSnapshotParam(const SnapshotParam& sn, lb_backend* be) {
  lb_node* node = nullptr;
  if (lb_backend_get_node(be, &node) < 0) {
    Error(LibError());
    return false;
  }
  int r;
  if (sn.opts) {
    r = lb_snapshot_load_tmp(node, sn.id ? sn.id->c_str() : nullptr,
                             sn.name ? sn.name->c_str() : nullptr);
  } else {
    r = lb_snapshot_load_tmp(node, sn.id_or_name.c_str(), nullptr);
    if (r == -ENOENT || r == -EINVAL) r = lb_snapshot_load_tmp(node, nullptr, sn.id_or_name.c_str());
  }
  if (r < 0) Error("Failed to load snapshot: " + LibError());
  lb_node_close(node);
  return r == 0;
}

}  // namespace blkimg
