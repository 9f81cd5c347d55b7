// The command interpreter behind `blkimg io`: qemu-io's commands (read, write, aio_*, map,
// ...) with qemu-io's argument syntax, messages and report lines, run on one lb_backend.
//
// Invariants: asynchronous requests are owned by the session until lb_reap hands their
// completion back; every accepted request is reaped before the session is destroyed.
#ifndef LIBBLOCK_TOOLS_BLKIMG_IO_COMMANDS_H_
#define LIBBLOCK_TOOLS_BLKIMG_IO_COMMANDS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "libblock.h"

namespace blkimg::io {

// qemu-io's cvtstr: "4 KiB", "1.500 KiB", "40 bytes", "87.792412 bytes".
std::string Cvtstr(double value);

// qemu-io's cvtnum (qemu_strtosz): decimal with an optional fraction and suffix, or hex.
// On failure prints qemu-io's "Parsing error: ..." line and returns a negative value.
int64_t Cvtnum(const std::string& text);

// One session over an open image (or none: `be` may be NULL, as qemu-io without a file).
class Session {
 public:
  // `backend_flags`: the LB_OPEN_RDWR / LB_OPEN_SHARE_RW flags `be` was opened with. The
  // session owns `be` from now on (it may replace it); close it with backend().
  Session(lb_context* ctx, lb_backend* be, uint32_t backend_flags);
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  // Runs one command line. Returns 0 on success and a negative value when the command
  // failed (qemu-io then exits with 1).
  int Execute(const std::string& line);
  // Waits for every asynchronous request in flight and prints its report.
  void DrainAio();
  bool quit_requested() const { return quit_; }
  lb_backend* backend() const { return be_; }

  struct Command;
  struct AioRequest;
  // qemu-io's command table, sorted by name as its help lists it.
  static const std::vector<Command>& Table();

 private:
  int Dispatch(const Command& cmd, std::vector<std::string>& argv);
  void Complete(AioRequest* req, int ret);

  int Abort(std::vector<std::string>& argv);
  int Break(std::vector<std::string>& argv);
  int RemoveBreak(std::vector<std::string>& argv);
  int Resume(std::vector<std::string>& argv);
  int WaitBreak(std::vector<std::string>& argv);
  int Sigraise(std::vector<std::string>& argv);
  int Read(std::vector<std::string>& argv);
  int Write(std::vector<std::string>& argv);
  int ReadV(std::vector<std::string>& argv);
  int WriteV(std::vector<std::string>& argv);
  int AioRead(std::vector<std::string>& argv);
  int AioWrite(std::vector<std::string>& argv);
  int AioFlush(std::vector<std::string>& argv);
  int Discard(std::vector<std::string>& argv);
  int Flush(std::vector<std::string>& argv);
  int Length(std::vector<std::string>& argv);
  int Truncate(std::vector<std::string>& argv);
  int Map(std::vector<std::string>& argv);
  int Alloc(std::vector<std::string>& argv);
  int Info(std::vector<std::string>& argv);
  int Sleep(std::vector<std::string>& argv);
  int Help(std::vector<std::string>& argv);
  int Quit(std::vector<std::string>& argv);

  lb_context* ctx_;
  lb_backend* be_;
  uint32_t backend_flags_;
  bool writable_;
  bool quit_ = false;
};

}  // namespace blkimg::io

#endif  // LIBBLOCK_TOOLS_BLKIMG_IO_COMMANDS_H_
