// qemu-io's commands on libblock. Messages, report lines and exit behaviour follow qemu-io
// 7.2 as observed by running it: normal output and per-command failures ("read failed: ...")
// go to stdout, dispatch errors ("command ... not found", "bad argument count ...") and
// getopt's complaints to stderr, error_report-style failures to stderr with "blkimg: ".
#include "io_commands.h"

#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cinttypes>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <memory>
#include <optional>
#include <utility>

#include "common.h"

namespace blkimg::io {

// The longest request qemu accepts (INT_MAX rounded down to a sector).
constexpr int64_t kMaxRequestBytes = INT_MAX & ~511LL;

// ---- number and size formatting ----------------------------------------------------------

namespace {

// Drops a zero fraction (".000" / ".000000") as qemu-io does for whole values.
std::string TrimZeroFraction(std::string text) {
  size_t dot = text.find('.');
  if (dot != std::string::npos &&
      text.find_first_not_of('0', dot + 1) == std::string::npos) {
    text.erase(dot);
  }
  return text;
}

}  // namespace

std::string Cvtstr(double value) {
  static const struct {
    double factor;
    const char* unit;
  } kUnits[] = {{1152921504606846976.0, "EiB"}, {1125899906842624.0, "PiB"},
                {1099511627776.0, "TiB"},       {1073741824.0, "GiB"},
                {1048576.0, "MiB"},             {1024.0, "KiB"}};
  char buf[64];
  for (const auto& u : kUnits) {
    if (value >= u.factor) {
      snprintf(buf, sizeof buf, "%.3f", value / u.factor);
      return TrimZeroFraction(buf) + " " + u.unit;
    }
  }
  snprintf(buf, sizeof buf, "%f", value);
  return TrimZeroFraction(buf) + " bytes";
}

void ErrorReport(const std::string& message) {
  // Unlike qemu-io, what was printed before the error goes out first, so that a shared pipe
  // keeps the order in which things happened (issue 6).
  fflush(stdout);
  fprintf(stderr, "blkimg: %s\n", message.c_str());
}

int64_t Cvtnum(const std::string& text) {
  int64_t value = 0;
  switch (StrToSz(text, &value)) {
    case NumError::kNone:
      return value;
    case NumError::kRange:
      printf("Parsing error: argument too large -- %s\n", text.c_str());
      return -ERANGE;
    case NumError::kInvalid:
      break;
  }
  printf("Parsing error: non-numeric argument, or extraneous/unrecognized suffix -- %s\n",
         text.c_str());
  return -EINVAL;
}

namespace {

// strtol with base 0 over the whole string, as qemu-io reads pattern bytes and delays.
std::optional<long> ParseLong(const std::string& text) {
  if (text.empty()) return std::nullopt;
  errno = 0;
  char* end = nullptr;
  long value = strtol(text.c_str(), &end, 0);
  if (errno || *end) return std::nullopt;
  return value;
}

std::optional<int> ParsePattern(const std::string& text) {
  std::optional<long> value = ParseLong(text);
  if (!value || *value < 0 || *value > 255) {
    printf("%s is not a valid pattern byte\n", text.c_str());
    return std::nullopt;
  }
  return static_cast<int>(*value);
}

// ---- reports -----------------------------------------------------------------------------

using Clock = std::chrono::steady_clock;

// qemu-io's time rendering: "SS.cc sec", "MM:SS.cc", or "H:MM:SS.cc" (always for -C).
std::string TimeString(double seconds, bool fixed) {
  auto usec = static_cast<uint64_t>(seconds * 1e6);
  unsigned secs = static_cast<unsigned>(usec / 1000000);
  unsigned centis = static_cast<unsigned>((usec % 1000000) / 10000);
  char buf[64];
  if (fixed || secs >= 3600) {
    snprintf(buf, sizeof buf, "%u:%02u:%02u.%02u", secs / 3600, secs / 60 % 60, secs % 60,
             centis);
  } else if (secs >= 60) {
    snprintf(buf, sizeof buf, "%02u:%02u.%02u", secs / 60, secs % 60, centis);
  } else {
    snprintf(buf, sizeof buf, "%02u.%02u sec", secs, centis);
  }
  return buf;
}

struct ReportStyle {
  bool quiet = false;  // -q
  bool csv = false;    // -C
};

// The two lines after a finished request: "VERB N/N bytes at offset OFF" and the statistics,
// or qemu-io's machine-readable -C line instead.
void Report(const char* verb, int64_t offset, int64_t bytes, Clock::time_point start,
            ReportStyle style) {
  if (style.quiet) return;
  double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  double rate = bytes / seconds, ops = 1 / seconds;
  if (style.csv) {
    printf("%" PRId64 ",%d,%s,%.3f,%.3f\n", bytes, 1, TimeString(seconds, true).c_str(), rate,
           ops);
    return;
  }
  printf("%s %" PRId64 "/%" PRId64 " bytes at offset %" PRId64 "\n", verb, bytes, bytes, offset);
  printf("%s, %d ops; %s (%s/sec and %.4f ops/sec)\n", Cvtstr(static_cast<double>(bytes)).c_str(),
         1, TimeString(seconds, false).c_str(), Cvtstr(rate).c_str(), ops);
}

// qemu-io's -v dump: 16 bytes a line, labelled with image offsets.
void DumpBuffer(const uint8_t* data, int64_t offset, size_t len) {
  for (size_t line = 0; line < len; line += 16) {
    size_t n = std::min<size_t>(16, len - line);
    printf("%08" PRIx64 ":  ", static_cast<uint64_t>(offset) + line);
    for (size_t i = 0; i < n; ++i) printf("%02x ", data[line + i]);
    printf(" ");
    for (size_t i = 0; i < n; ++i) {
      // qemu-io shows letters and digits only; punctuation and blanks become dots too
      uint8_t c = data[line + i];
      putchar(isalnum(c) ? c : '.');
    }
    printf("\n");
  }
}

// Checks that `len` bytes at `buf` all hold `pattern`; prints qemu-io's message if not.
bool VerifyPattern(const uint8_t* buf, size_t len, int pattern, int64_t offset) {
  for (size_t i = 0; i < len; ++i) {
    if (buf[i] != pattern) {
      printf("Pattern verification failed at offset %" PRId64 ", %zu bytes\n", offset, len);
      return false;
    }
  }
  return true;
}

// ---- option parsing ----------------------------------------------------------------------

struct ParsedArgs {
  std::vector<std::pair<char, std::string>> options;
  std::vector<std::string> operands;
};

// GNU getopt as qemu-io uses it: clustered flags, "-Parg" or "-P arg", options anywhere
// among the operands (permutation), "--" ending the options. Complaints go to stderr with
// the command name, like getopt's.
bool ParseOptions(const std::vector<std::string>& argv, const char* optstring, ParsedArgs* out) {
  for (size_t i = 1; i < argv.size(); ++i) {
    const std::string& arg = argv[i];
    if (arg == "--") {
      out->operands.insert(out->operands.end(), argv.begin() + i + 1, argv.end());
      break;
    }
    if (arg.size() < 2 || arg[0] != '-') {
      out->operands.push_back(arg);
      continue;
    }
    for (size_t j = 1; j < arg.size(); ++j) {
      char c = arg[j];
      const char* spec = c == ':' ? nullptr : strchr(optstring, c);
      if (!spec) {
        fprintf(stderr, "%s: invalid option -- '%c'\n", argv[0].c_str(), c);
        return false;
      }
      if (spec[1] != ':') {
        out->options.emplace_back(c, "");
        continue;
      }
      if (j + 1 < arg.size()) {
        out->options.emplace_back(c, arg.substr(j + 1));
      } else if (i + 1 < argv.size()) {
        out->options.emplace_back(c, argv[++i]);
      } else {
        fprintf(stderr, "%s: option requires an argument -- '%c'\n", argv[0].c_str(), c);
        return false;
      }
      break;
    }
  }
  return true;
}

}  // namespace

// ---- the command table -------------------------------------------------------------------

struct Session::Command {
  const char* name;
  const char* altname;  // NULL when none
  int argmin, argmax;   // operand counts, options included; argmax -1: no limit
  bool needs_file;
  bool needs_write;  // qemu-io refuses these on a read-only image before running them
  // Runs the event loop (as qemu-io's does for I/O, block status and sleep), so that aio
  // requests submitted earlier complete, and print, before the command's own output.
  bool runs_loop;
  const char* args;  // NULL: the command takes none
  const char* oneline;
  const char* help;  // extended help, NULL when none
  int (Session::*run)(std::vector<std::string>& argv);
};

namespace {

constexpr const char* kReadHelp =
    "\n"
    " reads a range of bytes from the given offset\n"
    "\n"
    " Example:\n"
    " 'read -v 512 1k' - dumps 1 kilobyte read from 512 bytes into the file\n"
    "\n"
    " Reads a segment of the currently open file, optionally dumping it to the\n"
    " standard output stream (with -v option) for subsequent inspection.\n"
    " -b, -- read from the VM state rather than the virtual disk\n"
    " -C, -- report statistics in a machine parsable format\n"
    " -l, -- length for pattern verification (only with -P)\n"
    " -p, -- ignored for backwards compatibility\n"
    " -P, -- use a pattern to verify read data\n"
    " -q, -- quiet mode, do not show I/O statistics\n"
    " -s, -- start offset for pattern verification (only with -P)\n"
    " -v, -- dump buffer to standard output\n"
    "\n";

constexpr const char* kWriteHelp =
    "\n"
    " writes a range of bytes from the given offset\n"
    "\n"
    " Example:\n"
    " 'write 512 1k' - writes 1 kilobyte at 512 bytes into the open file\n"
    "\n"
    " Writes into a segment of the currently open file, using a buffer\n"
    " filled with a set pattern (0xcdcdcdcd).\n"
    " -b, -- write to the VM state rather than the virtual disk\n"
    " -c, -- write compressed data with blk_write_compressed\n"
    " -f, -- use Force Unit Access semantics\n"
    " -n, -- with -z, don't allow slow fallback\n"
    " -p, -- ignored for backwards compatibility\n"
    " -P, -- use different pattern to fill file\n"
    " -s, -- use a pattern file to fill the write buffer\n"
    " -C, -- report statistics in a machine parsable format\n"
    " -q, -- quiet mode, do not show I/O statistics\n"
    " -u, -- with -z, allow unmapping\n"
    " -z, -- write zeroes using blk_co_pwrite_zeroes\n"
    "\n";

constexpr const char* kDiscardHelp =
    "\n"
    " discards a range of bytes from the given offset\n"
    "\n"
    " Example:\n"
    " 'discard 512 1k' - discards 1 kilobyte from 512 bytes into the file\n"
    "\n"
    " Discards a segment of the currently open file.\n"
    " -C, -- report statistics in a machine parsable format\n"
    " -q, -- quiet mode, do not show I/O statistics\n"
    "\n";

constexpr const char* kReadvHelp =
    "\n"
    " reads a range of bytes from the given offset into multiple buffers\n"
    "\n"
    " Example:\n"
    " 'readv -v 512 1k 1k ' - dumps 2 kilobytes read from 512 bytes into the file\n"
    "\n"
    " Reads a segment of the currently open file, optionally dumping it to the\n"
    " standard output stream (with -v option) for subsequent inspection.\n"
    " Uses multiple iovec buffers if more than one byte range is specified.\n"
    " -C, -- report statistics in a machine parsable format\n"
    " -P, -- use a pattern to verify read data\n"
    " -v, -- dump buffer to standard output\n"
    " -q, -- quiet mode, do not show I/O statistics\n"
    "\n";

constexpr const char* kWritevHelp =
    "\n"
    " writes a range of bytes from the given offset source from multiple buffers\n"
    "\n"
    " Example:\n"
    " 'writev 512 1k 1k' - writes 2 kilobytes at 512 bytes into the open file\n"
    "\n"
    " Writes into a segment of the currently open file, using a buffer\n"
    " filled with a set pattern (0xcdcdcdcd).\n"
    " -P, -- use different pattern to fill file\n"
    " -C, -- report statistics in a machine parsable format\n"
    " -f, -- use Force Unit Access semantics\n"
    " -q, -- quiet mode, do not show I/O statistics\n"
    "\n";

constexpr const char* kAioReadHelp =
    "\n"
    " asynchronously reads a range of bytes from the given offset\n"
    "\n"
    " Example:\n"
    " 'aio_read -v 512 1k 1k ' - dumps 2 kilobytes read from 512 bytes into the file\n"
    "\n"
    " Reads a segment of the currently open file, optionally dumping it to the\n"
    " standard output stream (with -v option) for subsequent inspection.\n"
    " The read is performed asynchronously and the aio_flush command must be\n"
    " used to ensure all outstanding aio requests have been completed.\n"
    " Note that due to its asynchronous nature, this command will be\n"
    " considered successful once the request is submitted, independently\n"
    " of potential I/O errors or pattern mismatches.\n"
    " -C, -- report statistics in a machine parsable format\n"
    " -P, -- use a pattern to verify read data\n"
    " -i, -- treat request as invalid, for exercising stats\n"
    " -v, -- dump buffer to standard output\n"
    " -q, -- quiet mode, do not show I/O statistics\n"
    "\n";

constexpr const char* kAioWriteHelp =
    "\n"
    " asynchronously writes a range of bytes from the given offset source\n"
    " from multiple buffers\n"
    "\n"
    " Example:\n"
    " 'aio_write 512 1k 1k' - writes 2 kilobytes at 512 bytes into the open file\n"
    "\n"
    " Writes into a segment of the currently open file, using a buffer\n"
    " filled with a set pattern (0xcdcdcdcd).\n"
    " The write is performed asynchronously and the aio_flush command must be\n"
    " used to ensure all outstanding aio requests have been completed.\n"
    " Note that due to its asynchronous nature, this command will be\n"
    " considered successful once the request is submitted, independently\n"
    " of potential I/O errors or pattern mismatches.\n"
    " -P, -- use different pattern to fill file\n"
    " -C, -- report statistics in a machine parsable format\n"
    " -f, -- use Force Unit Access semantics\n"
    " -i, -- treat request as invalid, for exercising stats\n"
    " -q, -- quiet mode, do not show I/O statistics\n"
    " -u, -- with -z, allow unmapping\n"
    " -z, -- write zeroes using blk_aio_pwrite_zeroes\n"
    "\n";

constexpr const char* kOpenHelp =
    "\n"
    " opens a new file in the requested mode\n"
    "\n"
    " Example:\n"
    " 'open -n -o driver=raw /tmp/data' - opens raw data file read-write, uncached\n"
    "\n"
    " Opens a file for subsequent use by all of the other qemu-io commands.\n"
    " -r, -- open file read-only\n"
    " -s, -- use snapshot file\n"
    " -C, -- use copy-on-read\n"
    " -n, -- disable host cache, short for -t none\n"
    " -U, -- force shared permissions\n"
    " -k, -- use kernel AIO implementation (Linux only, prefer use of -i)\n"
    " -i, -- use AIO mode (threads, native or io_uring)\n"
    " -t, -- use the given cache mode for the image\n"
    " -d, -- use the given discard mode for the image\n"
    " -o, -- options to be given to the block driver\n";

constexpr const char* kReopenHelp =
    "\n"
    " Changes the open options of an already opened image\n"
    "\n"
    " Example:\n"
    " 'reopen -o lazy-refcounts=on' - activates lazy refcount writeback on a qcow2 image\n"
    "\n"
    " -r, -- Reopen the image read-only\n"
    " -w, -- Reopen the image read-write\n"
    " -c, -- Change the cache mode to the given value\n"
    " -o, -- Changes block driver options (cf. 'open' command)\n"
    "\n";

constexpr const char* kSigraiseHelp =
    "\n"
    " raises the given signal\n"
    "\n"
    " Example:\n"
    " 'sigraise 15' - raises SIGTERM\n"
    "\n"
    " Invokes raise(signal), where \"signal\" is the mandatory integer argument\n"
    " given to sigraise.\n"
    "\n";

}  // namespace

const std::vector<Session::Command>& Session::Table() {
  using S = Session;
  static const std::vector<Command> commands = {
    {"abort", nullptr, 0, 0, false, false, false, nullptr,
     "simulate a program crash using abort(3)", nullptr, &S::Abort},
    {"aio_flush", nullptr, 0, 0, true, false, true, nullptr,
     "completes all outstanding aio requests", nullptr, &S::AioFlush},
    {"aio_read", nullptr, 2, -1, true, false, false, "[-Ciqv] [-P pattern] off len [len..]",
     "asynchronously reads a number of bytes", kAioReadHelp, &S::AioRead},
    {"aio_write", nullptr, 2, -1, true, true, false, "[-Cfiquz] [-P pattern] off len [len..]",
     "asynchronously writes a number of bytes", kAioWriteHelp, &S::AioWrite},
    {"alloc", nullptr, 1, 2, true, false, true, "offset [count]",
     "checks if offset is allocated in the file", nullptr, &S::Alloc},
    {"break", nullptr, 2, 2, true, false, false, "event tag",
     "sets a breakpoint on event and tags the stopped request as tag", nullptr, &S::Break},
    {"close", nullptr, 0, 0, true, false, false, nullptr, "close the current open file", nullptr,
     &S::CloseCommand},
    {"discard", nullptr, 2, -1, true, true, true, "[-Cq] off len",
     "discards a number of bytes at a specified offset", kDiscardHelp, &S::Discard},
    {"flush", nullptr, 0, 0, true, false, true, nullptr, "flush all in-core file state to disk",
     nullptr, &S::Flush},
    {"help", "?", 0, 1, false, false, false, "[command]", "help for one or all commands",
     nullptr, &S::Help},
    {"info", nullptr, 0, 0, true, false, false, nullptr,
     "prints information about the current file", nullptr, &S::Info},
    {"length", nullptr, 0, 0, true, false, false, nullptr, "gets the length of the current file",
     nullptr, &S::Length},
    {"map", nullptr, 0, 0, true, false, true, "", "prints the allocated areas of a file",
     nullptr, &S::Map},
    // quit takes (and ignores) any arguments, as in qemu-io
    {"open", nullptr, 1, -1, false, false, false,
     "[-rsCnkU] [-t cache] [-d discard] [-o options] [path]", "open the file specified by path",
     kOpenHelp, &S::OpenCommand},
    {"quit", "q", 0, -1, false, false, false, nullptr, "exit the program", nullptr, &S::Quit},
    {"read", "r", 2, -1, true, false, true, "[-abCqv] [-P pattern [-s off] [-l len]] off len",
     "reads a number of bytes at a specified offset", kReadHelp, &S::Read},
    {"readv", nullptr, 2, -1, true, false, true, "[-Cqv] [-P pattern] off len [len..]",
     "reads a number of bytes at a specified offset", kReadvHelp, &S::ReadV},
    {"remove_break", nullptr, 1, 1, true, false, false, "tag", "remove a breakpoint by tag",
     nullptr, &S::RemoveBreak},
    {"reopen", nullptr, 0, -1, true, false, true, "[(-r|-w)] [-c cache] [-o options]",
     "reopens an image with new options", kReopenHelp, &S::Reopen},
    {"resume", nullptr, 1, 1, true, false, false, "tag", "resumes the request tagged as tag",
     nullptr, &S::Resume},
    {"sigraise", nullptr, 1, 1, false, false, false, "signal", "raises a signal", kSigraiseHelp,
     &S::Sigraise},
    {"sleep", nullptr, 1, 1, false, false, true, nullptr,
     "waits for the given value in milliseconds", nullptr, &S::Sleep},
    {"truncate", nullptr, 1, 3, true, true, true, "[-m prealloc_mode] off",
     "truncates the current file at the given offset", nullptr, &S::Truncate},
    {"wait_break", nullptr, 1, 1, true, false, false, "tag",
     "waits for the suspension of a request", nullptr, &S::WaitBreak},
    {"write", "w", 2, -1, true, true, true,
     "[-bcCfnquz] [-P pattern | -s source_file] off len",
     "writes a number of bytes at a specified offset", kWriteHelp, &S::Write},
    {"writev", nullptr, 2, -1, true, true, true, "[-Cfq] [-P pattern] off len [len..]",
     "writes a number of bytes at a specified offset", kWritevHelp, &S::WriteV},
};
  return commands;
}

namespace {

const Session::Command* FindCommand(const std::string& name) {
  for (const auto& cmd : Session::Table()) {
    if (name == cmd.name || (cmd.altname && name == cmd.altname)) return &cmd;
  }
  return nullptr;
}

const Session::Command& CommandNamed(const char* name) { return *FindCommand(name); }

// "NAME ARGS -- ONELINE", qemu-io's usage and help line (no ARGS part when args is NULL).
// `name` is the command's own unless help was asked for it by its other name ("help r").
void PrintCommandLine(const Session::Command& cmd, const char* name = nullptr) {
  printf("%s%s%s -- %s\n", name ? name : cmd.name, cmd.args ? " " : "", cmd.args ? cmd.args : "",
         cmd.oneline);
}

int Usage(const char* name) {
  const Session::Command& cmd = CommandNamed(name);
  PrintCommandLine(cmd);
  return -EINVAL;
}

// Parses options; on a getopt complaint prints the usage line as qemu-io does.
bool GetOpts(std::vector<std::string>& argv, const char* optstring, ParsedArgs* out) {
  if (ParseOptions(argv, optstring, out)) return true;
  Usage(FindCommand(argv[0])->name);
  return false;
}

// qemu-io's breakline: words separated by spaces only (a tab or a carriage return is part of
// a word), empty words dropped.
std::vector<std::string> SplitWords(const std::string& line) {
  std::vector<std::string> words;
  size_t pos = 0;
  while (pos < line.size()) {
    size_t end = line.find(' ', pos);
    if (end == std::string::npos) end = line.size();
    if (end > pos) words.push_back(line.substr(pos, end - pos));
    pos = end + 1;
  }
  return words;
}

// An image range named by "off len..." operands: the buffer split into one iovec per
// length, as qemu-io's vectored commands lay it out.
struct Vector {
  int64_t offset = 0;
  std::vector<uint8_t> buf;
  std::vector<struct iovec> iov;
};

bool ParseVector(const std::vector<std::string>& operands, Vector* vec) {
  vec->offset = Cvtnum(operands[0]);
  if (vec->offset < 0) return false;
  std::vector<int64_t> lens;
  int64_t total = 0;
  for (size_t i = 1; i < operands.size(); ++i) {
    int64_t len = Cvtnum(operands[i]);
    if (len < 0) return false;
    if (len > kMaxRequestBytes) {
      printf("Argument '%s' exceeds maximum size %" PRId64 "\n", operands[i].c_str(),
             kMaxRequestBytes);
      return false;
    }
    lens.push_back(len);
    total += len;
  }
  if (total > kMaxRequestBytes) {
    printf("Total request size exceeds maximum size %" PRId64 "\n", kMaxRequestBytes);
    return false;
  }
  vec->buf.assign(static_cast<size_t>(total), 0xab);
  size_t pos = 0;
  for (int64_t len : lens) {
    vec->iov.push_back({vec->buf.data() + pos, static_cast<size_t>(len)});
    pos += static_cast<size_t>(len);
  }
  return true;
}

}  // namespace

// ---- asynchronous requests ---------------------------------------------------------------

struct Session::AioRequest {
  bool is_write = false;
  Vector vec;
  int64_t bytes = 0;
  std::optional<int> pattern;  // reads: verify against it
  bool verbose = false;
  ReportStyle style;
  Clock::time_point start;
};

Session::Session(lb_context* ctx) : ctx_(ctx) {}

Session::~Session() {
  DrainAio();
  if (be_) (void)lb_close(be_);
}

void Session::DrainAio() {
  lb_completion done[16];
  while (lb_context_get_inflight(ctx_) > 0) {
    int n = lb_reap(ctx_, 1, 16, -1, done);
    if (n < 0) {
      ErrorReport(LibError());
      return;
    }
    for (int i = 0; i < n; ++i) Complete(static_cast<AioRequest*>(done[i].user_data), done[i].ret);
  }
}

// Prints what qemu-io prints when an aio request finishes. As in qemu-io, a failure here
// does not make the submitting command fail: it was reported successful on submission.
void Session::Complete(AioRequest* req, int ret) {
  std::unique_ptr<AioRequest> owner(req);
  if (ret < 0) {
    printf("%s failed: %s\n", req->is_write ? "aio_write" : "readv", strerror(-ret));
    return;
  }
  if (!req->is_write) {
    if (req->pattern) {
      VerifyPattern(req->vec.buf.data(), req->vec.buf.size(), *req->pattern, req->vec.offset);
    }
    if (req->verbose && !req->style.quiet) {
      DumpBuffer(req->vec.buf.data(), req->vec.offset, req->vec.buf.size());
    }
  }
  Report(req->is_write ? "wrote" : "read", req->vec.offset, req->bytes, req->start, req->style);
}

// ---- opening and closing -----------------------------------------------------------------

bool ValidCacheMode(const std::string& mode) {
  if (ParseCacheMode(mode)) return true;
  ErrorReport("Invalid cache option: " + mode);
  return false;
}

bool ValidAioMode(const std::string& mode) {
  if (mode == "threads" || mode == "native" || mode == "io_uring") return true;
  ErrorReport("Invalid aio option: " + mode);
  return false;
}

bool ValidDiscardMode(const std::string& mode) {
  if (mode == "ignore" || mode == "off" || mode == "unmap" || mode == "on") return true;
  ErrorReport("Invalid discard option: " + mode);
  return false;
}

namespace {

struct OptionsDeleter {
  void operator()(lb_options* opts) const { lb_options_free(opts); }
};
using OptionsPtr = std::unique_ptr<lb_options, OptionsDeleter>;

// The option texts merged in order (later keys win), or NULL after printing the parse error
// (qemu-io reports those without naming the image).
OptionsPtr ParseOptionTexts(const std::vector<std::string>& texts) {
  lb_options* raw = nullptr;
  if (lb_options_new(&raw) < 0) {
    ErrorReport(LibError());
    return nullptr;
  }
  OptionsPtr opts(raw);
  for (const std::string& text : texts) {
    if (lb_options_parse(opts.get(), text.c_str()) < 0) {
      ErrorReport(LibError());
      return nullptr;
    }
  }
  return opts;
}

}  // namespace

int Session::Open(const OpenRequest& r) {
  if (be_) {
    ErrorReport("file open already, try 'help close'");
    return -EBUSY;
  }
  // qemu-io names the image only when a filename was given.
  std::string failed = r.filename.empty() ? "can't open: " : "can't open device " + r.filename + ": ";
  OptionsPtr opts = ParseOptionTexts(r.options);
  if (!opts) return -EINVAL;
  if (r.force_share) {
    const char* given = lb_options_get(opts.get(), "force-share");
    if (given && strcmp(given, "on") != 0) {
      ErrorReport("-U conflicts with image options");
      return -EINVAL;
    }
  }
  // -C (copy-on-read) is accepted and has nothing to do: no libblock image has a backing file
  // to copy from yet.
  uint32_t flags = kIoSharing | (r.read_only ? 0 : LB_OPEN_RDWR);
  if (r.force_share) flags |= LB_OPEN_FORCE_SHARE;
  // -s: a temporary qcow2 overlay over the image takes the writes (deleted at close).
  if (r.snapshot) flags |= LB_OPEN_SNAPSHOT;
  // qemu-io's default cache mode is writethrough (every write is flushed), unlike qemu-img's.
  flags |= CacheFlags(r.cache.empty() ? "writethrough" : r.cache);
  if (!r.aio.empty()) flags |= AioFlags(r.aio);
  // qemu-io's default discard mode is unmap (QEMU's is ignore).
  if (r.discard.empty() || r.discard == "unmap" || r.discard == "on") flags |= LB_OPEN_UNMAP;
  lb_open_args args = LB_OPEN_ARGS_INIT;
  if (!r.filename.empty()) args.filename = r.filename.c_str();
  if (!r.format.empty()) args.format = r.format.c_str();
  args.opts = opts.get();
  args.flags = flags;
  lb_backend* be = nullptr;
  if (lb_open_ex(ctx_, &args, &be) < 0) {
    ErrorReport(failed + LibError());
    return -lb_get_errno();
  }
  be_ = be;
  perm_flags_ = kIoSharing | (r.read_only ? 0 : LB_OPEN_RDWR);
  return 0;
}

int Session::Close() {
  if (!be_) return 0;
  DrainAio();
  int ret = lb_close(std::exchange(be_, nullptr));
  if (ret < 0) ErrorReport(LibError());
  return ret;
}

int Session::OpenCommand(std::vector<std::string>& argv) {
  ParsedArgs a;
  if (!GetOpts(argv, "snCro:ki:t:d:U", &a)) return -EINVAL;
  OpenRequest r;
  for (auto& [opt, val] : a.options) {
    switch (opt) {
      case 's': r.snapshot = true; break;
      case 'n': r.cache = "none"; break;
      case 'C': r.copy_on_read = true; break;
      case 'r': r.read_only = true; break;
      case 'U': r.force_share = true; break;
      case 'k': r.aio = "native"; break;
      case 'o':
        // parsed here, as qemu-io does while reading its options
        if (!ParseOptionTexts({val})) return -EINVAL;
        r.options.push_back(val);
        break;
      case 'i':
        if (!ValidAioMode(val)) return -EINVAL;
        r.aio = val;
        break;
      case 't':
        if (!ValidCacheMode(val)) return -EINVAL;
        r.cache = val;
        break;
      case 'd':
        if (!ValidDiscardMode(val)) return -EINVAL;
        r.discard = val;
        break;
    }
  }
  // One operand names the file; none leaves it to the options.
  if (a.operands.size() > 1) return Usage("open");
  if (!a.operands.empty()) r.filename = a.operands[0];
  return Open(r);
}

int Session::CloseCommand(std::vector<std::string>&) { return Close(); }

// qemu-io's reopen: -r/-w become the "read-only" option, -c a new cache mode, -o the options
// that change; whatever is not named keeps its value (lb_reopen_options).
int Session::Reopen(std::vector<std::string>& argv) {
  ParsedArgs a;
  if (!GetOpts(argv, "c:o:rw", &a)) return -EINVAL;
  std::optional<std::string> cache;
  std::optional<bool> read_only;
  std::vector<std::string> texts;
  for (auto& [opt, val] : a.options) {
    switch (opt) {
      case 'c':
        if (!ValidCacheMode(val)) return -EINVAL;
        cache = val;
        break;
      case 'o':
        if (!ParseOptionTexts({val})) return -EINVAL;
        texts.push_back(val);
        break;
      case 'r':
      case 'w':
        if (read_only) {
          ErrorReport("Only one -r/-w option may be given");
          return -EINVAL;
        }
        read_only = opt == 'r';
        break;
    }
  }
  if (!a.operands.empty()) return Usage("reopen");
  OptionsPtr opts = ParseOptionTexts(texts);
  if (!opts) return -EINVAL;
  if (lb_options_get(opts.get(), "read-only")) {
    if (read_only) {
      ErrorReport("Cannot set both -r/-w and 'read-only'");
      return -EINVAL;
    }
  } else if (read_only) {
    lb_options_set(opts.get(), "read-only", *read_only ? "on" : "off");
  }
  if (cache && (lb_options_get(opts.get(), "cache.direct") ||
                lb_options_get(opts.get(), "cache.no-flush"))) {
    ErrorReport("Cannot set both -c and the cache options");
    return -EINVAL;
  }
  // qemu-io gives up writing before it reopens read-only, and does not take the permission
  // back if the reopen fails (the next command that writes does).
  if (read_only.value_or(false) && (perm_flags_ & LB_OPEN_RDWR)) {
    if (lb_reopen_options(be_, nullptr, perm_flags_ & ~LB_OPEN_RDWR) < 0) {
      ErrorReport(LibError());
      return -lb_get_errno();
    }
    perm_flags_ &= ~LB_OPEN_RDWR;
  }
  uint32_t flags = perm_flags_;
  if (cache) flags |= LB_REOPEN_CACHE | CacheFlags(*cache);
  char* changes = lb_options_to_string(opts.get());
  if (!changes) {
    ErrorReport(LibError());
    return -lb_get_errno();
  }
  int ret = lb_reopen_options(be_, changes, flags);
  lb_free(changes);
  if (ret < 0) {
    ErrorReport(LibError());
    return ret;
  }
  return 0;
}

// ---- dispatch ----------------------------------------------------------------------------

int Session::Execute(const std::string& line) {
  std::vector<std::string> argv = SplitWords(line);
  if (argv.empty()) return 0;
  const Command* cmd = FindCommand(argv[0]);
  if (!cmd) {
    fprintf(stderr, "command \"%s\" not found\n", argv[0].c_str());
    return -EINVAL;
  }
  return Dispatch(*cmd, argv);
}

int Session::Dispatch(const Command& cmd, std::vector<std::string>& argv) {
  if (cmd.needs_file && !be_) {
    fprintf(stderr, "no file open, try 'help open'\n");
    return -EINVAL;
  }
  // Named as typed ("r", "w", "q" for their commands), as qemu-io does.
  const char* name = argv[0].c_str();
  int argc = static_cast<int>(argv.size()) - 1;
  if (argc < cmd.argmin || (cmd.argmax >= 0 && argc > cmd.argmax)) {
    if (cmd.argmax < 0) {
      fprintf(stderr, "bad argument count %d to %s, expected at least %d arguments\n", argc,
              name, cmd.argmin);
    } else if (cmd.argmin == cmd.argmax) {
      fprintf(stderr, "bad argument count %d to %s, expected %d arguments\n", argc, name,
              cmd.argmin);
    } else {
      fprintf(stderr, "bad argument count %d to %s, expected between %d and %d arguments\n",
              argc, name, cmd.argmin, cmd.argmax);
    }
    return -EINVAL;
  }
  if (cmd.needs_write && !(perm_flags_ & LB_OPEN_RDWR)) {
    // Like qemu-io (blk_set_perm), take the write permission when a command first needs it:
    // a read-only node refuses ("Block node is read-only"), and so may other users' locks.
    if (lb_reopen_options(be_, nullptr, perm_flags_ | LB_OPEN_RDWR) < 0) {
      ErrorReport(LibError());
      return -lb_get_errno();
    }
    perm_flags_ |= LB_OPEN_RDWR;
  }
  if (cmd.runs_loop) DrainAio();
  // stdout is not flushed after each command: like qemu-io's, what a command printed to a
  // pipe is lost if a later one aborts.
  return (this->*cmd.run)(argv);
}

// ---- synchronous I/O ---------------------------------------------------------------------

namespace {

// VM state and compressed requests must be sector-aligned; prints qemu-io's message if not.
bool SectorAligned(int64_t offset, int64_t count) {
  if (offset & 511) {
    printf("%" PRId64 " is not a sector-aligned value for 'offset'\n", offset);
    return false;
  }
  if (count & 511) {
    printf("%" PRId64 " is not a sector-aligned value for 'count'\n", count);
    return false;
  }
  return true;
}

}  // namespace

int Session::Read(std::vector<std::string>& argv) {
  ParsedArgs a;
  if (!GetOpts(argv, "bCl:pP:qs:v", &a)) return -EINVAL;
  bool vmstate = false, verbose = false, has_start = false, has_len = false;
  std::optional<int> pattern;
  int64_t pattern_start = 0, pattern_len = 0;
  ReportStyle style;
  for (auto& [opt, val] : a.options) {
    switch (opt) {
      case 'b': vmstate = true; break;
      case 'C': style.csv = true; break;
      case 'q': style.quiet = true; break;
      case 'v': verbose = true; break;
      case 'p': break;
      case 'P':
        if (!(pattern = ParsePattern(val))) return -EINVAL;
        break;
      case 's':
        has_start = true;
        if ((pattern_start = Cvtnum(val)) < 0) return static_cast<int>(pattern_start);
        break;
      case 'l':
        has_len = true;
        if ((pattern_len = Cvtnum(val)) < 0) return static_cast<int>(pattern_len);
        break;
    }
  }
  if (a.operands.size() != 2 || ((has_start || has_len) && !pattern)) return Usage("read");
  int64_t offset = Cvtnum(a.operands[0]);
  if (offset < 0) return static_cast<int>(offset);
  int64_t count = Cvtnum(a.operands[1]);
  if (count < 0) return static_cast<int>(count);
  if (count > kMaxRequestBytes) {
    printf("length cannot exceed %" PRId64 ", given %s\n", kMaxRequestBytes,
           a.operands[1].c_str());
    return -EINVAL;
  }
  if (!has_len) pattern_len = count - pattern_start;
  if (pattern && (pattern_start > count || pattern_len < 0 ||
                  pattern_start + pattern_len > count)) {
    printf("pattern verification range exceeds end of read data\n");
    return -EINVAL;
  }
  if (vmstate) {
    // qemu-io only does VM-state I/O on formats that have a VM state area; none of ours do.
    if (!SectorAligned(offset, count)) return -EINVAL;
    printf("read failed: %s\n", strerror(ENOTSUP));
    return -ENOTSUP;
  }

  std::vector<uint8_t> buf(static_cast<size_t>(count), 0xab);
  Clock::time_point start = Clock::now();
  int ret = lb_pread(be_, buf.data(), buf.size(), static_cast<uint64_t>(offset), 0);
  if (ret < 0) {
    printf("read failed: %s\n", strerror(-ret));
    return ret;
  }
  ret = 0;
  if (pattern && !VerifyPattern(buf.data() + pattern_start, static_cast<size_t>(pattern_len),
                                *pattern, offset + pattern_start)) {
    ret = -EINVAL;
  }
  // As qemu-io's: -q suppresses the dump as well as the statistics.
  if (verbose && !style.quiet) DumpBuffer(buf.data(), offset, buf.size());
  Report("read", offset, count, start, style);
  return ret;
}

namespace {

// Fills `buf` with the contents of `path`, repeated (qemu-io's write -s).
bool FillFromFile(const std::string& path, std::vector<uint8_t>* buf) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    fprintf(stderr, "%s: %s\n", path.c_str(), strerror(errno));
    return false;
  }
  std::vector<uint8_t> data((std::istreambuf_iterator<char>(in)),
                            std::istreambuf_iterator<char>());
  if (data.empty()) {
    fprintf(stderr, "%s: file is empty\n", path.c_str());
    return false;
  }
  for (size_t i = 0; i < buf->size(); ++i) (*buf)[i] = data[i % data.size()];
  return true;
}

}  // namespace

int Session::Write(std::vector<std::string>& argv) {
  ParsedArgs a;
  if (!GetOpts(argv, "bcCfnpP:qs:uz", &a)) return -EINVAL;
  bool vmstate = false, compressed = false, zeroes = false, has_pattern = false;
  bool unmap = false, no_fallback = false;
  int pattern = 0xcd;
  uint32_t flags = 0;
  std::string source_file;
  ReportStyle style;
  for (auto& [opt, val] : a.options) {
    switch (opt) {
      case 'b': vmstate = true; break;
      case 'c': compressed = true; break;
      case 'C': style.csv = true; break;
      case 'f': flags |= LB_REQ_FUA; break;
      case 'n': no_fallback = true; break;
      case 'p': break;
      case 'P': {
        std::optional<int> p = ParsePattern(val);
        if (!p) return -EINVAL;
        pattern = *p;
        has_pattern = true;
        break;
      }
      case 'q': style.quiet = true; break;
      case 's': source_file = val; break;
      case 'u': unmap = true; break;
      case 'z': zeroes = true; break;
    }
  }
  // The checks in qemu-io's order: which message wins when several apply is observable.
  if (a.operands.size() != 2) return Usage("write");
  if (vmstate && zeroes) {
    printf("-b and -z cannot be specified at the same time\n");
    return -EINVAL;
  }
  if ((flags & LB_REQ_FUA) && (vmstate || compressed)) {
    printf("-f and -b or -c cannot be specified at the same time\n");
    return -EINVAL;
  }
  if (no_fallback && !zeroes) {
    printf("-n requires -z to be specified\n");
    return -EINVAL;
  }
  if (unmap && !zeroes) {
    printf("-u requires -z to be specified\n");
    return -EINVAL;
  }
  if (zeroes + has_pattern + !source_file.empty() > 1) {
    printf("Only one of -z, -P, and -s can be specified at the same time\n");
    return -EINVAL;
  }
  if (unmap) flags |= LB_REQ_MAY_UNMAP;
  if (no_fallback) flags |= LB_REQ_NO_FALLBACK;
  int64_t offset = Cvtnum(a.operands[0]);
  if (offset < 0) return static_cast<int>(offset);
  int64_t count = Cvtnum(a.operands[1]);
  if (count < 0) return static_cast<int>(count);
  if (count > kMaxRequestBytes && !no_fallback) {
    printf("length cannot exceed %" PRId64 " without -n, given %s\n", kMaxRequestBytes,
           a.operands[1].c_str());
    return -EINVAL;
  }
  // VM state and compressed writes work on whole sectors (checked even with -z).
  if ((vmstate || compressed) && !SectorAligned(offset, count)) return -EINVAL;
  std::vector<uint8_t> buf;
  if (!zeroes) {
    buf.assign(static_cast<size_t>(count), static_cast<uint8_t>(pattern));
    if (!source_file.empty() && !FillFromFile(source_file, &buf)) return -EINVAL;
  }

  Clock::time_point start = Clock::now();
  int ret;
  if (zeroes) {
    ret = lb_pwrite_zeroes(be_, static_cast<uint64_t>(offset), static_cast<uint64_t>(count),
                           flags);
  } else if (vmstate) {
    ret = -ENOTSUP;  // no libblock format has a VM state area
  } else if (compressed) {
    // qcow2 compresses whole clusters (EINVAL otherwise); raw refuses with ENOTSUP, as in
    // QEMU. The request is bounds-checked first, as QEMU's block layer does.
    int64_t length = lb_get_length(be_);
    if (length < 0) {
      ret = static_cast<int>(length);
    } else if (offset > length || count > length - offset) {
      ret = -EIO;
    } else {
      ret = lb_pwrite(be_, buf.data(), buf.size(), static_cast<uint64_t>(offset),
                      flags | LB_REQ_COMPRESSED);
    }
  } else {
    ret = lb_pwrite(be_, buf.data(), buf.size(), static_cast<uint64_t>(offset), flags);
  }
  if (ret < 0) {
    printf("write failed: %s\n", strerror(-ret));
    return ret;
  }
  Report("wrote", offset, count, start, style);
  return 0;
}

int Session::ReadV(std::vector<std::string>& argv) {
  ParsedArgs a;
  if (!GetOpts(argv, "CP:qv", &a)) return -EINVAL;
  std::optional<int> pattern;
  bool verbose = false;
  ReportStyle style;
  for (auto& [opt, val] : a.options) {
    switch (opt) {
      case 'C': style.csv = true; break;
      case 'q': style.quiet = true; break;
      case 'v': verbose = true; break;
      case 'P':
        if (!(pattern = ParsePattern(val))) return -EINVAL;
        break;
    }
  }
  if (a.operands.size() < 2) return Usage("readv");
  Vector vec;
  if (!ParseVector(a.operands, &vec)) return -EINVAL;
  Clock::time_point start = Clock::now();
  int ret = lb_preadv(be_, vec.iov.data(), static_cast<int>(vec.iov.size()),
                      static_cast<uint64_t>(vec.offset), 0);
  if (ret < 0) {
    printf("readv failed: %s\n", strerror(-ret));
    return ret;
  }
  ret = 0;
  if (pattern && !VerifyPattern(vec.buf.data(), vec.buf.size(), *pattern, vec.offset)) {
    ret = -EINVAL;
  }
  if (verbose && !style.quiet) DumpBuffer(vec.buf.data(), vec.offset, vec.buf.size());
  Report("read", vec.offset, static_cast<int64_t>(vec.buf.size()), start, style);
  return ret;
}

int Session::WriteV(std::vector<std::string>& argv) {
  ParsedArgs a;
  if (!GetOpts(argv, "CfP:q", &a)) return -EINVAL;
  int pattern = 0xcd;
  uint32_t flags = 0;
  ReportStyle style;
  for (auto& [opt, val] : a.options) {
    switch (opt) {
      case 'C': style.csv = true; break;
      case 'f': flags |= LB_REQ_FUA; break;
      case 'q': style.quiet = true; break;
      case 'P': {
        std::optional<int> p = ParsePattern(val);
        if (!p) return -EINVAL;
        pattern = *p;
        break;
      }
    }
  }
  if (a.operands.size() < 2) return Usage("writev");
  Vector vec;
  if (!ParseVector(a.operands, &vec)) return -EINVAL;
  std::fill(vec.buf.begin(), vec.buf.end(), static_cast<uint8_t>(pattern));
  Clock::time_point start = Clock::now();
  int ret = lb_pwritev(be_, vec.iov.data(), static_cast<int>(vec.iov.size()),
                       static_cast<uint64_t>(vec.offset), flags);
  if (ret < 0) {
    printf("writev failed: %s\n", strerror(-ret));
    return ret;
  }
  Report("wrote", vec.offset, static_cast<int64_t>(vec.buf.size()), start, style);
  return 0;
}

// ---- asynchronous I/O --------------------------------------------------------------------

int Session::AioRead(std::vector<std::string>& argv) {
  ParsedArgs a;
  if (!GetOpts(argv, "CP:iqv", &a)) return -EINVAL;
  auto req = std::make_unique<AioRequest>();
  bool invalid = false;
  for (auto& [opt, val] : a.options) {
    switch (opt) {
      case 'C': req->style.csv = true; break;
      case 'i': invalid = true; break;
      case 'q': req->style.quiet = true; break;
      case 'v': req->verbose = true; break;
      case 'P':
        if (!(req->pattern = ParsePattern(val))) return -EINVAL;
        break;
    }
  }
  if (a.operands.size() < 2) return Usage("aio_read");
  if (invalid) {
    // qemu-io's -i only feeds its accounting statistics, which blkimg does not keep.
    printf("injecting invalid read request\n");
    return 0;
  }
  if (!ParseVector(a.operands, &req->vec)) return -EINVAL;
  req->bytes = static_cast<int64_t>(req->vec.buf.size());
  req->start = Clock::now();
  AioRequest* raw = req.get();
  int ret = lb_aio_preadv(be_, raw->vec.iov.data(), static_cast<int>(raw->vec.iov.size()),
                          static_cast<uint64_t>(raw->vec.offset), 0, raw);
  if (ret < 0) {
    printf("readv failed: %s\n", strerror(-ret));
    return 0;  // aio commands succeed once submitted; qemu-io reports errors on completion
  }
  req.release();  // owned by the completion now
  return 0;
}

int Session::AioWrite(std::vector<std::string>& argv) {
  ParsedArgs a;
  if (!GetOpts(argv, "CfiP:quz", &a)) return -EINVAL;
  auto req = std::make_unique<AioRequest>();
  req->is_write = true;
  bool invalid = false, zeroes = false, unmap = false;
  int pattern = 0xcd;
  uint32_t flags = 0;
  for (auto& [opt, val] : a.options) {
    switch (opt) {
      case 'C': req->style.csv = true; break;
      case 'f': flags |= LB_REQ_FUA; break;
      case 'i': invalid = true; break;
      case 'q': req->style.quiet = true; break;
      case 'u': unmap = true; break;
      case 'z': zeroes = true; break;
      case 'P': {
        std::optional<int> p = ParsePattern(val);
        if (!p) return -EINVAL;
        pattern = *p;
        break;
      }
    }
  }
  if (a.operands.size() < 2) return Usage("aio_write");
  if (invalid) {
    // qemu-io's -i only feeds its accounting statistics, before any other check.
    printf("injecting invalid write request\n");
    return 0;
  }
  if (unmap && !zeroes) {
    printf("-u requires -z to be specified\n");
    return -EINVAL;
  }
  if (zeroes && a.operands.size() != 2) {
    printf("-z supports only a single length parameter\n");
    return -EINVAL;
  }
  if (unmap) flags |= LB_REQ_MAY_UNMAP;
  AioRequest* raw = req.get();
  int ret;
  if (zeroes) {
    raw->vec.offset = Cvtnum(a.operands[0]);
    if (raw->vec.offset < 0) return -EINVAL;
    raw->bytes = Cvtnum(a.operands[1]);
    if (raw->bytes < 0) return -EINVAL;
    raw->start = Clock::now();
    ret = lb_aio_pwrite_zeroes(be_, static_cast<uint64_t>(raw->vec.offset),
                               static_cast<uint64_t>(raw->bytes), flags, raw);
  } else {
    if (!ParseVector(a.operands, &raw->vec)) return -EINVAL;
    std::fill(raw->vec.buf.begin(), raw->vec.buf.end(), static_cast<uint8_t>(pattern));
    raw->bytes = static_cast<int64_t>(raw->vec.buf.size());
    raw->start = Clock::now();
    ret = lb_aio_pwritev(be_, raw->vec.iov.data(), static_cast<int>(raw->vec.iov.size()),
                         static_cast<uint64_t>(raw->vec.offset), flags, raw);
  }
  if (ret < 0) {
    printf("aio_write failed: %s\n", strerror(-ret));
    return 0;
  }
  req.release();
  return 0;
}

// Despite its name, qemu-io's aio_flush only waits for the requests in flight (blk_drain_all);
// it flushes nothing to the disk.
int Session::AioFlush(std::vector<std::string>&) {
  DrainAio();
  return 0;
}

// ---- other requests ----------------------------------------------------------------------

int Session::Discard(std::vector<std::string>& argv) {
  ParsedArgs a;
  if (!GetOpts(argv, "Cq", &a)) return -EINVAL;
  ReportStyle style;
  for (auto& [opt, val] : a.options) {
    if (opt == 'C') style.csv = true;
    if (opt == 'q') style.quiet = true;
  }
  if (a.operands.size() != 2) return Usage("discard");
  int64_t offset = Cvtnum(a.operands[0]);
  if (offset < 0) return static_cast<int>(offset);
  int64_t count = Cvtnum(a.operands[1]);
  if (count < 0) return static_cast<int>(count);
  if (count > kMaxRequestBytes) {
    printf("length cannot exceed %" PRId64 ", given %s\n", kMaxRequestBytes,
           a.operands[1].c_str());
    return -EINVAL;
  }
  Clock::time_point start = Clock::now();
  int ret = lb_discard(be_, static_cast<uint64_t>(offset), static_cast<uint64_t>(count), 0);
  if (ret < 0) {
    printf("discard failed: %s\n", strerror(-ret));
    return ret;
  }
  Report("discard", offset, count, start, style);
  return 0;
}

int Session::Flush(std::vector<std::string>&) {
  int ret = lb_flush(be_, 0);
  if (ret < 0) ErrorReport(std::string("flush failed: ") + strerror(-ret));
  return ret < 0 ? ret : 0;
}

int Session::Length(std::vector<std::string>&) {
  int64_t size = lb_get_length(be_);
  if (size < 0) {
    printf("getlength: %s\n", strerror(static_cast<int>(-size)));
    return static_cast<int>(size);
  }
  printf("%s\n", Cvtstr(static_cast<double>(size)).c_str());
  return 0;
}

int Session::Truncate(std::vector<std::string>& argv) {
  ParsedArgs a;
  if (!GetOpts(argv, "m:", &a)) return -EINVAL;
  std::string prealloc = "off";
  for (auto& [opt, val] : a.options) {
    if (opt == 'm') prealloc = val;
  }
  if (prealloc != "off" && prealloc != "metadata" && prealloc != "falloc" &&
      prealloc != "full") {
    ErrorReport("Invalid preallocation mode '" + prealloc + "'");
    return -EINVAL;
  }
  // qemu-io truncates to the first operand and ignores the others (up to argmax). Without
  // one it crashes (7.2 reads argv past the end); blkimg prints the usage instead.
  if (a.operands.empty()) return Usage("truncate");
  int64_t size = Cvtnum(a.operands[0]);
  if (size < 0) return static_cast<int>(size);
  // qemu-io takes the resize permission only for the truncation, so that other users may
  // keep it unshared the rest of the time.
  int ret = lb_reopen_options(be_, nullptr, perm_flags_ | LB_OPEN_RESIZE);
  if (ret < 0) {
    ErrorReport(LibError());
    return ret;
  }
  ret = lb_truncate(be_, static_cast<uint64_t>(size), prealloc.c_str(), 0);
  if (ret < 0) ErrorReport(LibError());
  int restored = lb_reopen_options(be_, nullptr, perm_flags_);
  if (ret >= 0 && restored < 0) {
    ErrorReport(LibError());
    ret = restored;
  }
  return ret < 0 ? ret : 0;
}

namespace {

// Whether the range at `offset` is allocated anywhere in the chain (`top_only`: in the
// image itself), and how far that answer holds.
int AllocationStatus(lb_backend* be, uint64_t offset, uint64_t count, bool top_only,
                     bool* allocated, uint64_t* run) {
  lb_extent ext = LB_EXTENT_INIT;
  int ret = lb_block_status(be, offset, count, 0, &ext);
  if (ret < 0) return ret;
  *allocated = (ext.flags & LB_STATUS_ALLOCATED) && (!top_only || ext.depth == 0);
  *run = std::min(ext.length, count);
  return 0;
}

}  // namespace

int Session::Map(std::vector<std::string>&) {
  int64_t length = lb_get_length(be_);
  if (length < 0) {
    printf("getlength: %s\n", strerror(static_cast<int>(-length)));
    return static_cast<int>(length);
  }
  uint64_t offset = 0, end = static_cast<uint64_t>(length);
  while (offset < end) {
    bool allocated = false;
    uint64_t run = 0;
    int ret = AllocationStatus(be_, offset, end - offset, false, &allocated, &run);
    // Extents with the same answer are one line, whatever the format's granularity.
    while (ret >= 0 && offset + run < end) {
      bool next_allocated = false;
      uint64_t next_run = 0;
      ret = AllocationStatus(be_, offset + run, end - offset - run, false, &next_allocated,
                             &next_run);
      if (ret < 0 || next_allocated != allocated) break;
      run += next_run;
    }
    if (ret < 0) {
      printf("Failed to get allocation status: %s\n", strerror(-ret));
      return ret;
    }
    printf("%s (0x%" PRIx64 ") bytes %s allocated at offset %s (0x%" PRIx64 ")\n",
           Cvtstr(static_cast<double>(run)).c_str(), run, allocated ? "   " : "not",
           Cvtstr(static_cast<double>(offset)).c_str(), offset);
    offset += run;
  }
  return 0;
}

int Session::Alloc(std::vector<std::string>& argv) {
  int64_t offset = Cvtnum(argv[1]);
  if (offset < 0) return static_cast<int>(offset);
  int64_t count = 512;
  if (argv.size() == 3) {
    count = Cvtnum(argv[2]);
    if (count < 0) return static_cast<int>(count);
  }
  int64_t length = lb_get_length(be_);
  if (length < 0) return static_cast<int>(length);
  int64_t remaining = std::max<int64_t>(0, std::min(count, length - offset));
  int64_t total = remaining, allocated_bytes = 0;
  uint64_t pos = static_cast<uint64_t>(offset);
  while (remaining > 0) {
    bool allocated = false;
    uint64_t run = 0;
    int ret = AllocationStatus(be_, pos, static_cast<uint64_t>(remaining), true, &allocated, &run);
    if (ret < 0) {
      printf("is_allocated failed: %s\n", strerror(-ret));
      return ret;
    }
    if (allocated) allocated_bytes += static_cast<int64_t>(run);
    pos += run;
    remaining -= static_cast<int64_t>(run);
  }
  printf("%" PRId64 "/%" PRId64 " bytes allocated at offset %s\n", allocated_bytes, total,
         Cvtstr(static_cast<double>(offset)).c_str());
  return 0;
}

bool Session::IsProtocol(const char* driver) const {
  char* names = lb_driver_list(ctx_, LB_DRIVER_PROTOCOLS);
  if (!names) return false;
  std::vector<std::string> protocols = SplitWords(names);
  lb_free(names);
  return std::find(protocols.begin(), protocols.end(), driver) != protocols.end();
}

int Session::Info(std::vector<std::string>&) {
  lb_node* node = nullptr;
  lb_image_info* info = nullptr;
  int ret = lb_backend_get_node(be_, &node);
  if (ret >= 0) ret = lb_node_get_info(node, 0, &info);
  if (ret < 0) {
    ErrorReport(LibError());
    lb_node_close(node);
    return ret;
  }
  printf("format name: %s\n", info->format);
  // qemu-io prints a protocol's name twice, as the driver's format name and protocol name.
  if (IsProtocol(info->format)) printf("format name: %s\n", info->format);
  // Drivers that cannot describe themselves (null-co, and raw over it) make qemu-io's info
  // fail without a message (bdrv_get_info: ENOTSUP). libblock's info says so by leaving out
  // the dirty flag, as qemu-img info does.
  if (!strstr(info->json, "\"dirty-flag\"")) {
    lb_image_info_free(info);
    lb_node_close(node);
    return -ENOTSUP;
  }
  printf("cluster size: %s\n", Cvtstr(info->cluster_size).c_str());
  // No libblock format has a VM state area, which qemu-io shows at offset 0 then.
  printf("vm state offset: %s\n", Cvtstr(0).c_str());
  lb_image_info_free(info);
  lb_node_close(node);
  return 0;
}

int Session::Sleep(std::vector<std::string>& argv) {
  std::optional<long> ms = ParseLong(argv[1]);
  if (!ms || *ms < 0) {
    printf("%s is not a valid number\n", argv[1].c_str());
    return -EINVAL;
  }
  usleep(static_cast<useconds_t>(*ms) * 1000);
  return 0;
}

int Session::Help(std::vector<std::string>& argv) {
  if (argv.size() == 2) {
    const Command* cmd = FindCommand(argv[1]);
    if (!cmd) {
      printf("command %s not found\n", argv[1].c_str());
      return -EINVAL;
    }
    PrintCommandLine(*cmd, argv[1].c_str());
    if (cmd->help) fputs(cmd->help, stdout);
    return 0;
  }
  for (const Command& cmd : Table()) PrintCommandLine(cmd);
  printf("\nUse 'help commandname' for extended help.\n");
  return 0;
}

// ---- blkdebug breakpoints ----------------------------------------------------------------
//
// qemu-io's break, remove_break, resume and wait_break drive a blkdebug node of the image's
// graph. libblock has no blkdebug filter yet, so every image is one without blkdebug, and
// these commands answer as qemu-io's do there: the first three fail with ENOTSUP, and
// wait_break waits for a suspension that cannot come, running the loop (so that earlier aio
// requests complete) until the process is killed.

int Session::Break(std::vector<std::string>&) {
  printf("Could not set breakpoint: %s\n", strerror(ENOTSUP));
  return -ENOTSUP;
}

int Session::RemoveBreak(std::vector<std::string>& argv) {
  printf("Could not remove breakpoint %s: %s\n", argv[1].c_str(), strerror(ENOTSUP));
  return -ENOTSUP;
}

int Session::Resume(std::vector<std::string>&) {
  printf("Could not resume request: %s\n", strerror(ENOTSUP));
  return -ENOTSUP;
}

int Session::WaitBreak(std::vector<std::string>& argv) {
  // qemu-io waits until a request is suspended at the tag, forever when no blkdebug node can
  // suspend one. libblock has no blkdebug filter, so no request can ever be suspended: the
  // wait would never end, and a command never hangs here. Requests in flight complete first.
  DrainAio();
  printf("wait_break: no request can be suspended at '%s': this image has no blkdebug node\n",
         argv[1].c_str());
  return -ENOTSUP;
}

int Session::Abort(std::vector<std::string>&) {
  abort();  // without flushing stdout, as qemu-io
}

int Session::Sigraise(std::vector<std::string>& argv) {
  int64_t sig = Cvtnum(argv[1]);
  if (sig < 0) return static_cast<int>(sig);
  if (sig > NSIG) {
    printf("signal argument '%s' is too large to be a valid signal\n", argv[1].c_str());
    return -EINVAL;
  }
  // The signal may end the process: what was printed so far goes out first, as in qemu-io.
  // raise() fails for NSIG itself and for the signals the C library reserves; qemu-io
  // ignores that too.
  fflush(stdout);
  raise(static_cast<int>(sig));
  return 0;
}

int Session::Quit(std::vector<std::string>&) {
  quit_ = true;
  return 0;
}

}  // namespace blkimg::io
