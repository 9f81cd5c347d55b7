// Shared plumbing of the blkimg subcommands: the context, --object, opening images the way
// qemu-img does (-f, --image-opts, -U, -t), sizes, messages. blkimg uses libblock.h only:
// whatever a subcommand needs from the library goes through the C ABI.
#ifndef LIBBLOCK_TOOLS_BLKIMG_COMMON_H_
#define LIBBLOCK_TOOLS_BLKIMG_COMMON_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <getopt.h>

#include <functional>

#include "libblock.h"

namespace blkimg {

// qemu-img's exit codes for errors (1) and its per-subcommand specials are returned by the
// subcommands; Fatal prints "blkimg: MESSAGE" and exits 1.
[[noreturn]] void Fatal(const std::string& message);
// "blkimg: MESSAGE" on stderr.
void Error(const std::string& message);
// qemu-img's error_exit: "blkimg: MESSAGE" and the "Try 'blkimg --help'" hint. Returns 1.
int UsageError(const std::string& message);
// qemu-img's report of a failed image creation (bdrv_img_create): "FILENAME: MESSAGE", and
// for EFBIG "The image size is too large for file format 'FORMAT'".
std::string CreateError(const std::string& filename, const std::string& format, int err);
// lb_get_error() as a std::string.
std::string LibError();

// An lb_context with the --object definitions applied; freed on destruction.
class Context {
 public:
  Context();
  ~Context();
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;
  lb_context* get() const { return ctx_; }
  // Adds QEMU --object specs ("secret,id=s0,data=...") and --object help (which prints the
  // list and exits). On an error prints it and returns false.
  [[nodiscard]] bool AddObjects(const std::vector<std::string>& specs);

 private:
  lb_context* ctx_ = nullptr;
};

// How blkimg shares the images it opens: as qemu-img, which lets other users do anything
// (it takes no "unshare" locks). Embedders get the library's safer default.
constexpr uint32_t kToolShare = LB_OPEN_SHARE_ALL;

// How the command line names one image.
struct ImageSpec {
  std::string name;         // filename, or an option string with --image-opts
  std::string format;       // -f / -F / -O; empty: probe
  bool image_opts = false;  // --image-opts: `name` is "key=value,..." (driver included)
  // What other users may do meanwhile (LB_OPEN_SHARE_* flags): qemu-img's sharing unless
  // the subcommand says otherwise.
  uint32_t share = kToolShare;
};

// qemu-img's cache modes (-t/-T) as LB_OPEN_CACHE_* flags, or nullopt for an unknown mode.
std::optional<uint32_t> ParseCacheMode(std::string_view mode);
// ParseCacheMode, Fatal on an unknown mode with qemu-img's message.
uint32_t CacheFlags(std::string_view mode);
// qemu-img's -i aio modes as LB_OPEN_AIO_* flags.
uint32_t AioFlags(std::string_view mode);

// lb_open_args naming `image` (with kToolShare) (its strings must outlive the result).
lb_open_args ArgsFor(const ImageSpec& image, uint32_t flags);
// Opens an image as qemu-img's img_open does. Returns NULL after printing qemu-img's
// "Could not open 'NAME': ..." message.
lb_backend* OpenBackend(Context& ctx, const ImageSpec& image, uint32_t flags);
lb_node* OpenNode(Context& ctx, const ImageSpec& image, uint32_t flags);

// Guards an existing image file that a command is about to create over (convert, dd): before
// anything is truncated, the file is opened at the protocol level read-only with the final
// open's cache mode, sharing everything, so that a lock that would refuse the final open's
// consistent reads (which image creation does not check) or a cache mode the file system
// refuses fails before the old contents are lost. Kept open until the final open succeeded,
// so that nobody takes such a lock in between. Targets that are not existing regular files
// or block devices (new files, json: and protocol names) are not guarded.
class TargetGuard {
 public:
  TargetGuard() = default;
  ~TargetGuard() { lb_close(be_); }
  TargetGuard(const TargetGuard&) = delete;
  TargetGuard& operator=(const TargetGuard&) = delete;
  // Prints qemu-img's "Could not open 'NAME': ..." and returns false when the check fails.
  bool Check(Context& ctx, const std::string& filename, uint32_t cache_flags);
  void Release() {
    lb_close(be_);
    be_ = nullptr;
  }

 private:
  lb_backend* be_ = nullptr;
};

// qemu_strtosz, the size syntax of qemu-img's cvtnum and of qemu-io, as the library parses
// it (lb_parse_size): DIGITS[.DIGITS][SUFFIX] or 0xHEX[SUFFIX], suffixes b, k/K, M, G, T, P,
// E (powers of 1024; a fraction needs one). kRange for values of 2^63 or more. Warns (on
// stderr) about suffixes on hex numbers, as qemu-img does.
enum class NumError { kNone, kInvalid, kRange };
NumError StrToSz(std::string_view text, int64_t* out);
// StrToSz's value, or nullopt when malformed or too large.
std::optional<int64_t> ParseSize(std::string_view text);
// qemu-img's cvtnum: parses the value of the option `what` ("start offset") with ParseSize's
// syntax, printing qemu-img's message when it is malformed or outside [0, max].
std::optional<int64_t> CvtNum(std::string_view what, std::string_view text,
                              int64_t max = INT64_MAX);
// qemu-img's human sizes (size_to_str): "64 MiB", "1.5 GiB", "512 B".
std::string HumanSize(uint64_t bytes);

// -l SNAPSHOT_PARAM of convert and measure: "snapshot.id=[ID],snapshot.name=[NAME]" or a
// bare ID_OR_NAME.
struct SnapshotParam {
  std::string id_or_name;
  bool opts = false;                      // the snapshot.* form
  std::optional<std::string> id, name;    // absent: not compared
  bool given() const { return opts || !id_or_name.empty(); }
};
// Parses -l's argument, printing qemu-img's messages when it does not parse.
bool ParseSnapshotParam(const std::string& text, SnapshotParam* out);
// Shows the snapshot on the read-only `be` (QEMU's bdrv_snapshot_load_tmp; the bare form is
// tried as an id, then as a name); prints "Failed to load snapshot: ..." on failure.
bool LoadSnapshotParam(const SnapshotParam& sn, lb_backend* be);

// One row of qemu-img's "Snapshot list:" table (info, snapshot -l).
struct SnapshotRow {
  std::string id, name;
  uint64_t vm_state_size = 0;
  uint64_t date_sec = 0;
  uint64_t vm_clock_nsec = 0;
  std::optional<uint64_t> icount;
};
// Prints the table (QEMU's bdrv_snapshot_dump lines): dates in local time.
void PrintSnapshotTable(const std::vector<SnapshotRow>& rows);

// qemu-img's check of one -o argument: not empty, no leading comma, no trailing single comma
// (",," is an escaped comma).
bool ValidOptionList(std::string_view options);
// One -o argument: checked with ValidOptionList (qemu-img's "Invalid option list: ..." when it
// fails, returning false) and appended to `lists`.
bool AddOptionList(const char* options, std::vector<std::string>* lists);
// Joins repeated -o arguments with ',' as qemu-img does.
std::string JoinOptions(const std::vector<std::string>& opts);

// getopt_long as qemu-img calls it (short options starting with ':'): the next option, or -1
// after the last one (optind then indexes the first operand; GNU getopt moves operands behind
// the options). An unknown option or a missing argument prints qemu-img's message and hint
// ("unrecognized option '--bogus'", "missing argument for option '-f'") and returns
// kOptionError, for which the caller returns 1.
constexpr int kOptionError = -2;
int NextOption(int argc, char** argv, const char* short_opts, const option* long_opts);
// The long options that qemu-img's subcommands share, with the values getopt_long returns.
enum : int {
  kOptObject = 256,
  kOptImageOpts,
  kOptTargetImageOpts,
  kOptTargetIsZero,
  kOptSalvage,
  kOptBitmaps,
  kOptSkipBrokenBitmaps,
  kOptOutput,
  kOptBackingChain,
  kOptStartOffset,
  kOptMaxLength,
  kOptPreallocation,
  kOptShrink,
  kOptFlushInterval,
  kOptNoDrain,
  kOptPattern,
};
#define BLKIMG_LONG_HELP {"help", no_argument, nullptr, 'h'}
#define BLKIMG_LONG_OBJECT {"object", required_argument, nullptr, ::blkimg::kOptObject}
#define BLKIMG_LONG_IMAGE_OPTS {"image-opts", no_argument, nullptr, ::blkimg::kOptImageOpts}
#define BLKIMG_LONG_FORCE_SHARE {"force-share", no_argument, nullptr, 'U'}
#define BLKIMG_LONG_END {nullptr, 0, nullptr, 0}

// qemu-img's and qemu-io's -T/--trace [[enable=]PATTERN][,events=FILE][,file=FILE]. libblock
// has no trace points, so nothing is ever traced; as in QEMU, a pattern without wildcards that
// names no event gets "warning: trace event 'X' does not exist", and a bad parameter is an
// error (printed; returns false).
bool TraceOption(const char* spec);

// `blkimg --help` (also what every subcommand's -h/--help prints, as qemu-img does).
void PrintHelp();

// qemu-img's -p progress line, "    (NN.NN/100%)\r" on stdout: printed when the value moves by
// more than `min_skip` percent, and always at 0 and 100. Disabled instances print only when
// asked by SIGUSR1.
class Progress {
 public:
  Progress(bool enabled, float min_skip);
  // qemu-img's SIGUSR1 handler, which commands with progress install before their first I/O:
  // a disabled instance then prints the value once on stderr at its next update.
  static void InstallSignalHandler();
  // Sets the value to `percent` (absolute).
  void Set(float percent);
  // Adds `percent` to the value (computed in float as qemu-img does, so that the printed
  // values match).
  void Add(float percent) { Set(current_ + percent / 100 * 100); }
  // Ends the progress line.
  void End();
  // An lb_progress_fn whose user_data is a Progress: sets done/total as a percentage.
  static void Callback(uint64_t done, uint64_t total, void* user_data);

 private:
  bool enabled_;
  float min_skip_;
  float current_ = 0, last_printed_ = 0;
};

// Prints what `qemu-img create -o help` prints for `format` (with the protocol's options when
// `filename` is non-NULL). Returns the exit code.
int PrintCreateOptionsHelp(Context& ctx, const std::string& format, const char* filename);
// Whether a -o option string asks for help ("help", "?", or a "help" key among others).
bool IsHelpOption(const std::string& options);

// One subcommand. `run` takes the command's own argv (argv[0] is its name, getopt reset) and
// returns the exit code.
struct Command {
  const char* name;
  const char* syntax;  // its line in `blkimg --help`
  int (*run)(int argc, char** argv);
};

// Every subcommand, in `blkimg --help` order (commands.cc).
const std::vector<Command>& Commands();

}  // namespace blkimg

#endif  // LIBBLOCK_TOOLS_BLKIMG_COMMON_H_
