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

// qemu-io's error_report: "blkimg: MESSAGE" on stderr. Unlike blkimg's Error, it does not
// flush stdout first: as in qemu-io, what is still buffered for a pipe stays there (and comes
// after the message, or is lost if a later command aborts).
void ErrorReport(const std::string& message);

// qemu-io's cvtnum (qemu_strtosz): decimal with an optional fraction and suffix, or hex.
// On failure prints qemu-io's "Parsing error: ..." line and returns a negative value.
int64_t Cvtnum(const std::string& text);

// The sharing blkimg io's backends ask for. qemu-io shares every permission with other users
// (blk_new_open): LB_OPEN_SHARE_ALL.
constexpr uint32_t kIoSharing = LB_OPEN_SHARE_ALL;

// How to open an image: what qemu-io's command line and its open command can say.
struct OpenRequest {
  std::string filename;              // empty: the options name the image (--image-opts, -o)
  std::string format;                // -f (command line only); empty: probe
  std::vector<std::string> options;  // --image-opts text or open's -o texts, merged in order
  bool read_only = false;            // -r
  bool force_share = false;          // -U
  bool snapshot = false;             // -s
  bool copy_on_read = false;         // -C
  std::string cache;                 // -t (-n: "none"); empty: writethrough, qemu-io's default
  std::string aio;                   // -i (-k: "native"); empty: libblock's default
  std::string discard;               // -d; empty: unmap, qemu-io's default
};

// qemu-io's checks of -t, -i and -d values: false (after printing qemu-io's message) when
// `mode` is not one.
bool ValidCacheMode(const std::string& mode);
bool ValidAioMode(const std::string& mode);
bool ValidDiscardMode(const std::string& mode);

// One session, with an image open or none (as qemu-io without a file, or after close).
class Session {
 public:
  explicit Session(lb_context* ctx);
  // Drains and closes the image, if one is open.
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  // Opens an image as qemu-io's openfile does. Returns 0, or a negative errno after printing
  // qemu-io's message ("can't open device NAME: ...", "file open already, ...").
  int Open(const OpenRequest& request);
  // Completes the aio requests in flight and closes the image. Returns 0 or the negative
  // errno of the final flush (printed).
  int Close();

  // Runs one command line. Returns 0 on success and a negative value when the command
  // failed (qemu-io then exits with 1).
  int Execute(const std::string& line);
  // Waits for every asynchronous request in flight and prints its report.
  void DrainAio();
  bool quit_requested() const { return quit_; }

  struct Command;
  struct AioRequest;
  // qemu-io's command table, sorted by name as its help lists it.
  static const std::vector<Command>& Table();

 private:
  int Dispatch(const Command& cmd, std::vector<std::string>& argv);
  void Complete(AioRequest* req, int ret);
  // Whether `driver` is a protocol (file, host_device, null-co, ...).
  bool IsProtocol(const char* driver) const;

  int Abort(std::vector<std::string>& argv);
  int OpenCommand(std::vector<std::string>& argv);
  int Reopen(std::vector<std::string>& argv);
  int CloseCommand(std::vector<std::string>& argv);
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
  lb_backend* be_ = nullptr;  // NULL: no image open
  // be_'s permissions: kIoSharing, plus LB_OPEN_RDWR while it holds the write permission.
  // As qemu-io's, a read-write open takes it; after reopen -r a command that writes takes it
  // back, and reopen -w alone does not (so another user's locks stop the write, not the
  // reopen).
  uint32_t perm_flags_ = 0;
  bool quit_ = false;
};

}  // namespace blkimg::io

#endif  // LIBBLOCK_TOOLS_BLKIMG_IO_COMMANDS_H_
