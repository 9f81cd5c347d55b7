// The "file" and "host_device" protocols, after QEMU's file-posix by behaviour.
//
// Open flags: O_RDONLY/O_RDWR by the node's mode, O_DIRECT for cache.direct, O_DSYNC when the
// node inherited writethrough (cache=writethrough|directsync). Data moves through the loop's
// io_uring ring (aio=io_uring, the default when the ring exists) or the worker pool
// (aio=threads); short transfers are continued, reads past EOF return zeroes. With O_DIRECT
// the request and buffer alignments are probed (BLKSSZGET for devices) and misaligned
// buffers are bounced.
//
// Inline transfers (DESIGN.md §4): a read the page cache can answer is answered on the loop
// thread by preadv2(RWF_NOWAIT), and only what would block (EAGAIN, or the part after a short
// transfer) goes to io_uring or the worker pool. Writes try the same where the file system
// takes RWF_NOWAIT writes (not with O_DSYNC or FUA, which wait by definition). A descriptor
// that refuses RWF_NOWAIT (EOPNOTSUPP) is remembered and not asked again. On a memory file
// system (tmpfs, ramfs), which refuses RWF_NOWAIT but never waits for a device, transfers are
// plain inline calls. O_DIRECT never runs inline: it always waits for the device, nor do
// transfers over 256 KiB (copies worth running on other cores, several at once). Errors are
// never reported from the inline attempt: the asynchronous path redoes that part and reports.
//
// Write-zeroes uses fallocate (PUNCH_HOLE when unmapping is allowed, else ZERO_RANGE, plain
// allocation past EOF; BLKZEROOUT on devices); discard punches holes (BLKDISCARD on
// devices); block status comes from SEEK_DATA/SEEK_HOLE. Image locks (file_lock.h) follow
// the permission transaction: prepare locks the union of old and new and checks for
// conflicts, commit shrinks to the new set, abort restores the old one. A reopen that changes
// the mode, cache.direct or writethrough opens a new descriptor and moves the locks to it.
#include "protocols/file/file_driver.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <linux/magic.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_format.h"
#include "core/event_loop.h"
#include "core/graph.h"
#include "core/node.h"
#include "core/transaction.h"
#include "core/uring.h"
#include "protocols/file/file_lock.h"
#include "util/checked_math.h"
#include "util/status.h"

namespace libblock::file {
namespace {

constexpr std::string_view kAioChoices[] = {"threads", "native", "io_uring"};
constexpr std::string_view kLockingChoices[] = {"auto", "on", "off"};
constexpr OptionSpec kRuntimeSpecs[] = {
    {"filename", OptionType::kString, "", "file name of the image"},
    {"aio", OptionType::kEnum, "",
     "host AIO implementation: threads, io_uring (default when available), native (io_uring, "
     "needs cache.direct=on)", kAioChoices},
    {"locking", OptionType::kEnum, "auto", "image file locking: auto, on, off", kLockingChoices},
};
constexpr OptionSchema kFileSchema{"file", kRuntimeSpecs};
constexpr OptionSchema kHostDeviceSchema{"host_device", kRuntimeSpecs};

// "metadata" parses (it is a QEMU preallocation mode) so that create can refuse it with
// QEMU's "Unsupported preallocation mode: metadata".
constexpr std::string_view kPreallocChoices[] = {"off", "falloc", "full", "metadata"};
// Help texts as qemu-img create -o help prints them.
// In QEMU's order (qemu-img's "Formatting" line follows it; -o help sorts by name).
constexpr OptionSpec kCreateSpecs[] = {
    {"size", OptionType::kSize, "", "Virtual disk size"},
    {"nocow", OptionType::kBool, "off", "Turn off copy-on-write (valid only on btrfs)"},
    {"preallocation", OptionType::kEnum, "off",
     "Preallocation mode (allowed values: off, falloc, full)", kPreallocChoices},
    {"extent_size_hint", OptionType::kSize, "1M",
     "Extent size hint for the image file, 0 to disable"},
};
constexpr OptionSchema kFileCreateSchema{"file", kCreateSpecs};
constexpr OptionSchema kHostDeviceCreateSchema{"host_device", kCreateSpecs};

// Filename prefixes that name the protocol explicitly ("file:a.img", "host_device:/dev/sdb").
constexpr std::string_view kFilePrefix = "file:";
constexpr std::string_view kHostDevicePrefix = "host_device:";

// What kind of file a descriptor refers to.
bool IsDevice(const struct stat& st) { return S_ISBLK(st.st_mode) || S_ISCHR(st.st_mode); }

// QEMU allocates the first block of a file that grows from empty with preallocation off (and
// after fallocating a new file): it
// makes later O_DIRECT alignment probing reliable (a read of allocated data is checked) and
// `qemu-img map` of a fresh image shows it. Failures are ignored, as there.
void AllocateFirstBlock(int fd, int64_t size) {
  size_t len = size < 4096 ? 512 : 4096;
  AlignedBuffer zeroes(4096, 4096, true);
  ssize_t r;
  do {
    r = pwrite(fd, zeroes.data(), len, 0);
  } while (r < 0 && errno == EINTR);
}

int64_t DeviceLength(int fd) {
  uint64_t len = 0;
  if (ioctl(fd, BLKGETSIZE64, &len) == 0) return static_cast<int64_t>(len);
  off_t end = lseek(fd, 0, SEEK_END);
  return end < 0 ? -errno : end;
}

// How transfers of one descriptor may run inline (see the top of the file). Owned by the
// node; operations in flight see a downgrade (EOPNOTSUPP) at once.
enum class InlineMode : uint8_t {
  kOff,     // always io_uring / the worker pool
  kNowait,  // try preadv2/pwritev2 with RWF_NOWAIT first
  kMemory,  // a memory file system: plain inline calls
};
struct InlinePolicy {
  InlineMode read = InlineMode::kOff;
  InlineMode write = InlineMode::kOff;
};

// The policy for a descriptor opened with these flags.
InlinePolicy InlinePolicyFor(int fd, bool direct, bool dsync) {
  InlinePolicy p;
  if (direct) return p;
  struct statfs fs;
  if (fstatfs(fd, &fs) == 0 && (fs.f_type == TMPFS_MAGIC || fs.f_type == RAMFS_MAGIC)) {
    p.read = p.write = InlineMode::kMemory;
    return p;
  }
  p.read = InlineMode::kNowait;
  p.write = dsync ? InlineMode::kOff : InlineMode::kNowait;
  return p;
}

// One descriptor's syscall plumbing: each operation goes through io_uring or the worker pool
// (never a blocking call on the loop thread) and returns >= 0 or -errno; ftruncate runs inline
// with io_uring (no thread is started for a metadata call). A FileIo is a small value copied
// into each operation's frame; the descriptor and the filename must outlive the operation.
// Open nodes and image creation share it, so both preallocate through the same path.
struct FileIo {
  EventLoop* loop;
  int fd;
  bool use_uring;
  bool direct;                 // O_DIRECT: whole aligned blocks, aligned buffers
  uint32_t request_align = 1;  // O_DIRECT's alignments (1 without it)
  uint32_t buf_align = 1;
  std::string_view filename;   // for messages
  InlinePolicy* inline_policy = nullptr;  // null: never inline (image creation)
};

Task<int64_t> IoBlocking(EventLoop* loop, std::function<int64_t()> fn);
Task<int64_t> IoPreadv(FileIo io, const IoVec& v, int64_t offset);
Task<int64_t> IoPwritev(FileIo io, const IoVec& v, int64_t offset, int rw_flags);
Task<int64_t> IoFallocate(FileIo io, int mode, int64_t offset, int64_t len);
Task<int64_t> IoFtruncate(FileIo io, int64_t size);
Task<int64_t> IoFdatasync(FileIo io);
// What of `v` can be transferred at `offset` without blocking (see the top of the file):
// returns the bytes done from the start; a read that meets the end of the file zero-fills
// the rest and counts it as done.
size_t TransferInline(const FileIo& io, bool write, int64_t offset, const IoVec& v,
                      int rw_flags);
// Full transfers: continue short ones; reads past EOF zero-fill. The first `done` bytes are
// already transferred (by TransferInline).
Task<absl::Status> IoTransferAll(FileIo io, bool write, int64_t offset, const IoVec& v,
                                 int rw_flags, size_t done = 0);
// Full preallocation (QEMU's preallocation=full) from the current length `cur` to `size`:
// sets the size, writes zeroes over [cur, size) and makes them durable. With O_DIRECT, the
// block holding the old end is rewritten as read. On failure the file may be longer than
// `cur`; the caller cuts it back.
Task<absl::Status> PreallocateFull(FileIo io, int64_t cur, int64_t size);

class FileNode final : public NodeDriver {
 public:
  FileNode(Node& node, bool host_device) : NodeDriver(node), host_device_(host_device) {}
  ~FileNode() override {
    if (fd_ >= 0) close(fd_);
  }

  Task<absl::Status> Open(OpenContext& ctx) override;
  void RefreshLimits(BlockLimits& limits) override;
  absl::Status PreparePerm(Perm perm, Perm shared, Transaction& tran) override;
  Task<absl::Status> PrepareReopen(const ReopenState& state, Transaction& tran) override;
  absl::Status PrepareReopenSync(const ReopenState& state, Transaction& tran);
  absl::StatusOr<int64_t> GetLength() override;
  // A new regular file reads as zeroes (holes or zeroed preallocation); a device keeps its
  // old contents.
  bool HasZeroInit() override { return !is_device_; }
  absl::StatusOr<int64_t> GetAllocatedSize() override;
  absl::StatusOr<BlockSizes> ProbeBlockSizes() override;
  void FillInfo(nlohmann::json& info) override;
  absl::Status GetImageInfo(ImageInfo&) override { return absl::OkStatus(); }

  Task<absl::Status> Read(int64_t offset, int64_t bytes, const IoVec& qiov, ReqFlags flags) override;
  Task<absl::Status> Write(int64_t offset, int64_t bytes, const IoVec& qiov, ReqFlags flags) override;
  Task<absl::Status> WriteZeroes(int64_t offset, int64_t bytes, ReqFlags flags) override;
  Task<absl::Status> Discard(int64_t offset, int64_t bytes) override;
  Task<absl::Status> Flush() override;
  Task<absl::StatusOr<BlockStatus>> GetBlockStatus(int64_t offset, int64_t bytes,
                                                   bool want_zero) override;
  Task<absl::Status> Truncate(int64_t size, bool exact, PreallocMode mode, ReqFlags flags) override;

 private:
  // Grows the file from `cur` to `size` bytes with falloc or full preallocation. On failure
  // the file may be longer than `cur`; the caller cuts it back.
  Task<absl::Status> Preallocate(PreallocMode mode, int64_t cur, int64_t size);
  int OpenFlags(bool read_only, bool direct, bool dsync) const;
  // O_DIRECT's request and buffer alignments for `fd`.
  void ProbeAlignment(int fd, uint32_t* request_align, uint32_t* buf_align) const;
  absl::Status ApplyLocks(int fd, Perm held, Perm unshared, bool unlock);
  std::string Who() const { return absl::StrFormat("'%s'", filename_); }

  // The descriptor's plumbing as it is now (see FileIo).
  FileIo Io() {
    return FileIo{&node().loop(), fd_,        use_uring_, direct_, request_align_,
                  buf_align_,     filename_, &inline_};
  }
  Task<int64_t> Preadv(const IoVec& v, int64_t offset) { return IoPreadv(Io(), v, offset); }
  Task<int64_t> Pwritev(const IoVec& v, int64_t offset, int rw_flags) {
    return IoPwritev(Io(), v, offset, rw_flags);
  }
  Task<int64_t> Fallocate(int mode, int64_t offset, int64_t len) {
    return IoFallocate(Io(), mode, offset, len);
  }
  Task<int64_t> Fdatasync() { return IoFdatasync(Io()); }
  Task<int64_t> Blocking(std::function<int64_t()> fn) {
    return IoBlocking(&node().loop(), std::move(fn));
  }
  Task<int64_t> Ftruncate(int64_t size) { return IoFtruncate(Io(), size); }

  bool host_device_;
  std::string filename_;
  int fd_ = -1;
  bool is_device_ = false;
  bool use_uring_ = false;
  bool direct_ = false;
  bool dsync_ = false;
  bool no_flush_ = false;
  bool use_lock_ = false;
  LockKind lock_kind_ = LockKind::kOfd;
  // Lock state: the committed permission masks, and the bytes physically locked now.
  Perm perm_ = 0, shared_ = kPermAll;
  Perm locked_held_ = 0, locked_unshared_ = 0;
  uint32_t request_align_ = 1, buf_align_ = 1;
  bool has_fallocate_ = true;  // cleared when the file system refuses fallocate
  InlinePolicy inline_;
};

int FileNode::OpenFlags(bool read_only, bool direct, bool dsync) const {
  int flags = (read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC;
  if (direct) flags |= O_DIRECT;
  if (dsync) flags |= O_DSYNC;
  return flags;
}

Task<absl::Status> FileNode::Open(OpenContext& ctx) {
  Node& n = node();
  std::optional<std::string> filename = ctx.values.FindString("filename");
  if (!filename || filename->empty()) {
    co_return ErrnoError(EINVAL, absl::StrFormat("%s: parameter 'filename' is required",
                                                 n.driver().name));
  }
  filename_ = *filename;
  n.set_filename(filename_);
  direct_ = n.flags().cache_direct;
  dsync_ = n.flags().writethrough;
  no_flush_ = n.flags().cache_no_flush;

  // The node's own aio option, else what the open asked for the whole tree.
  std::string aio = ctx.values.FindString("aio").value_or(n.flags().aio);
  Uring* ring = n.loop().uring();
  if (aio == "native" && !direct_) {
    co_return ErrnoError(EINVAL, "aio=native was specified, but it requires cache.direct=on, "
                                 "which was not specified.");
  }
  if (aio == "io_uring" || aio == "native") {
    if (!ring) co_return ErrnoError(ENOTSUP, "Unable to use io_uring: not available on this host");
    use_uring_ = true;
  } else if (aio.empty()) {
    use_uring_ = ring != nullptr;
  }

  bool read_only = n.flags().read_only;
  fd_ = open(filename_.c_str(), OpenFlags(read_only, direct_, dsync_));
  if (fd_ < 0 && !read_only && n.flags().auto_read_only &&
      (errno == EACCES || errno == EROFS || errno == EPERM)) {
    // auto-read-only: take what the file allows.
    fd_ = open(filename_.c_str(), OpenFlags(true, direct_, dsync_));
    if (fd_ >= 0) n.mutable_flags().read_only = true;
  }
  if (fd_ < 0) {
    int err = errno;
    if (err == EINVAL && direct_) {
      co_return ErrnoError(err, absl::StrFormat("Could not open '%s': the file system does not "
                                                "support O_DIRECT (cache.direct=on)", filename_));
    }
    co_return ErrnoStatus(err, absl::StrFormat("Could not open '%s'", filename_));
  }
  struct stat st;
  if (fstat(fd_, &st) != 0) co_return ErrnoStatus(errno, absl::StrFormat("Could not stat '%s'", filename_));
  is_device_ = IsDevice(st);
  if (host_device_ && !is_device_) {
    co_return ErrnoError(EINVAL, absl::StrFormat("'host_device' driver requires '%s' to be either "
                                                 "a character or block device", filename_));
  }
  if (!host_device_ && !S_ISREG(st.st_mode)) {
    co_return ErrnoError(EINVAL, absl::StrFormat("'file' driver requires '%s' to be a regular file",
                                                 filename_));
  }

  std::string locking = ctx.values.GetString("locking");
  if (locking == "on") {
    use_lock_ = true;
    if (!OfdLocksAvailable()) {
      lock_kind_ = LockKind::kPosix;
      ctx.graph.Warn("warning: File lock requested but OFD locking syscall is unavailable, "
                     "falling back to POSIX file locks\nDue to the implementation, locks can be "
                     "lost unexpectedly.");
    }
  } else if (locking == "auto") {
    use_lock_ = OfdLocksAvailable();
  }

  if (direct_) ProbeAlignment(fd_, &request_align_, &buf_align_);
  inline_ = InlinePolicyFor(fd_, direct_, dsync_);

  caps_.write_zeroes = true;
  caps_.discard = true;
  caps_.truncate = true;
  caps_.block_status = !is_device_;
  // FUA: O_DSYNC makes every write durable; otherwise RWF_DSYNC does it per write.
  caps_.write_flags = kReqFua;
  caps_.zero_flags = kReqMayUnmap | kReqNoFallback;
  co_return absl::OkStatus();
}

void FileNode::ProbeAlignment(int fd, uint32_t* request_align, uint32_t* buf_align) const {
  // Request alignment: the device's logical block size, else the smallest length an
  // O_DIRECT read accepts. Buffer alignment: the smallest buffer offset a read accepts.
  constexpr uint32_t kMaxAlign = 4096 * 16;
  uint32_t request = 0, buffer = 0;
  if (is_device_) {
    int sector = 0;
    if (ioctl(fd, BLKSSZGET, &sector) == 0 && sector > 0) request = static_cast<uint32_t>(sector);
  }
  AlignedBuffer buf(2 * kMaxAlign, kMaxAlign);
  if (request == 0) {
    for (uint32_t align = 1; align <= kMaxAlign; align = align == 1 ? 512 : align << 1) {
      if (pread(fd, buf.data(), align, 0) >= 0 || errno != EINVAL) {
        // When even a 1-byte read passes, the file cannot tell (it is empty: reads at EOF
        // are not checked): assume 4096, as QEMU does, or a 4k-sector disk refuses the
        // first 512-byte write.
        request = align == 1 ? std::max<uint32_t>(4096, static_cast<uint32_t>(getpagesize())) : align;
        break;
      }
    }
  }
  if (request == 0) request = 4096;
  for (uint32_t align : {1u, 512u, 1024u, 2048u, 4096u}) {
    if (pread(fd, buf.data() + align, request, 0) >= 0 || errno != EINVAL) {
      // A read into any address proves nothing (an empty file reads nothing; newer kernels
      // take one misaligned buffer but refuse vectors of odd-length pieces, which padding
      // builds): fall back to the request alignment, as QEMU does.
      buffer = align == 1 ? request : align;
      break;
    }
  }
  if (buffer == 0) buffer = 4096;
  *request_align = request;
  *buf_align = buffer;
}

void FileNode::RefreshLimits(BlockLimits& limits) {
  limits.request_alignment = request_align_;
  limits.min_mem_alignment = buf_align_;
  limits.opt_mem_alignment = direct_ ? std::max<uint32_t>(buf_align_, 4096) : buf_align_;
  limits.max_iov = IOV_MAX;
}

absl::Status FileNode::ApplyLocks(int fd, Perm held, Perm unshared, bool unlock) {
  absl::Status st = ApplyLockBytes(fd, lock_kind_, held, unshared, unlock);
  if (st.ok()) {
    locked_held_ = unlock ? held : (locked_held_ | held);
    locked_unshared_ = unlock ? unshared : (locked_unshared_ | unshared);
  }
  return st;
}

absl::Status FileNode::PreparePerm(Perm perm, Perm shared, Transaction& tran) {
  if (!use_lock_) {
    perm_ = perm;
    shared_ = shared;
    return absl::OkStatus();
  }
  Perm old_perm = perm_, old_shared = shared_;
  bool relaxing = (old_perm | perm) == old_perm && (old_shared & shared) == old_shared;
  if (!relaxing) {
    // Lock the union first, so nobody can slip in between the check and the commit.
    absl::Status st = ApplyLocks(fd_, old_perm | perm, ~old_shared | ~shared, false);
    if (st.ok()) st = CheckLockBytes(fd_, lock_kind_, perm, shared);
    if (!st.ok()) {
      (void)ApplyLocks(fd_, old_perm, ~old_shared & kPermAll, true);
      return ErrnoError(StatusErrno(st),
                        absl::StrFormat("%s\nIs another process using the image [%s]?",
                                        st.message(), filename_));
    }
  }
  tran.OnCommit([this, perm, shared] {
    perm_ = perm;
    shared_ = shared;
    // Shrinking a lock set only unlocks bytes; nothing useful can be done if the kernel
    // refuses that.
    (void)ApplyLocks(fd_, perm, ~shared & kPermAll, true);
  });
  tran.OnAbort([this, old_perm, old_shared] {
    (void)ApplyLocks(fd_, old_perm, ~old_shared & kPermAll, true);
  });
  return absl::OkStatus();
}

// Nothing here waits: a new descriptor is opened with open(2), as at open.
Task<absl::Status> FileNode::PrepareReopen(const ReopenState& state, Transaction& tran) {
  co_return PrepareReopenSync(state, tran);
}

absl::Status FileNode::PrepareReopenSync(const ReopenState& state, Transaction& tran) {
  bool read_only = state.flags.read_only, direct = state.flags.cache_direct;
  bool dsync = state.flags.writethrough, no_flush = state.flags.cache_no_flush;
  tran.OnCommit([this, no_flush] { no_flush_ = no_flush; });
  int accmode = fcntl(fd_, F_GETFL) & O_ACCMODE;
  if ((accmode == O_RDONLY) == read_only && direct == direct_ && dsync == dsync_) {
    return absl::OkStatus();
  }
  // A new descriptor for the new mode (O_DIRECT and O_DSYNC cannot all be changed in place).
  int new_fd = open(filename_.c_str(), OpenFlags(read_only, direct, dsync));
  if (new_fd < 0 && !read_only && state.flags.auto_read_only &&
      (errno == EACCES || errno == EROFS || errno == EPERM)) {
    // auto-read-only: take what the file allows, as at open.
    state.flags.read_only = read_only = true;
    if ((accmode == O_RDONLY) && direct == direct_ && dsync == dsync_) return absl::OkStatus();
    new_fd = open(filename_.c_str(), OpenFlags(true, direct, dsync));
  }
  if (new_fd < 0) {
    if (errno == EINVAL && direct) {
      return ErrnoError(EINVAL, absl::StrFormat("Could not reopen '%s': the file system does "
                                                "not support O_DIRECT (cache.direct=on)",
                                                filename_));
    }
    return ErrnoStatus(errno, absl::StrFormat("Could not reopen file '%s'", filename_));
  }
  tran.OnAbort([new_fd] { close(new_fd); });
  uint32_t request_align = 1, buf_align = 1;
  if (direct) ProbeAlignment(new_fd, &request_align, &buf_align);
  // Commit (registered before the permission commit): carry the locks held now over to the
  // new descriptor before the old one, and its locks, go away.
  tran.OnCommit([this, new_fd, direct, dsync, request_align, buf_align] {
    if (use_lock_) (void)ApplyLockBytes(new_fd, lock_kind_, locked_held_, locked_unshared_, false);
    close(fd_);
    fd_ = new_fd;
    direct_ = direct;
    dsync_ = dsync;
    request_align_ = request_align;
    buf_align_ = buf_align;
    inline_ = InlinePolicyFor(fd_, direct_, dsync_);
  });
  return absl::OkStatus();
}

absl::StatusOr<int64_t> FileNode::GetLength() {
  if (is_device_) {
    int64_t len = DeviceLength(fd_);
    if (len < 0) return ErrnoStatus(static_cast<int>(-len), absl::StrFormat("%s: cannot get the device size", Who()));
    return len;
  }
  struct stat st;
  if (fstat(fd_, &st) != 0) return ErrnoStatus(errno, absl::StrFormat("%s: fstat", Who()));
  return static_cast<int64_t>(st.st_size);
}

absl::StatusOr<int64_t> FileNode::GetAllocatedSize() {
  struct stat st;
  if (fstat(fd_, &st) != 0) return ErrnoStatus(errno, absl::StrFormat("%s: fstat", Who()));
  return static_cast<int64_t>(st.st_blocks) * 512;
}

absl::StatusOr<BlockSizes> FileNode::ProbeBlockSizes() {
  if (!is_device_) return ErrnoError(ENOTSUP, "block sizes are only known for host devices");
  BlockSizes sizes;
  int logical = 0;
  unsigned int physical = 0;
  if (ioctl(fd_, BLKSSZGET, &logical) != 0) return ErrnoStatus(errno, absl::StrFormat("%s: BLKSSZGET", Who()));
  if (ioctl(fd_, BLKPBSZGET, &physical) != 0) return ErrnoStatus(errno, absl::StrFormat("%s: BLKPBSZGET", Who()));
  sizes.logical = static_cast<uint32_t>(logical);
  sizes.physical = physical;
  return sizes;
}

void FileNode::FillInfo(nlohmann::json& info) {
  info["aio"] = use_uring_ ? "io_uring" : "threads";
  info["locking"] = use_lock_ ? (lock_kind_ == LockKind::kOfd ? "ofd" : "posix") : "off";
  if (direct_) info["request-alignment"] = request_align_;
}

// ---- syscall plumbing ------------------------------------------------------------------------

// ---- syscall plumbing definitions ---------------------------------------------------------

Task<int64_t> IoBlocking(EventLoop* loop, std::function<int64_t()> fn) {
  co_return co_await loop->RunInThread(std::move(fn));
}

Task<int64_t> IoPreadv(FileIo io, const IoVec& v, int64_t offset) {
  if (io.use_uring) co_return co_await io.loop->uring()->Readv(io.fd, v.iov(), v.niov(), offset);
  int fd = io.fd;
  co_return co_await IoBlocking(io.loop, [fd, &v, offset]() -> int64_t {
    ssize_t r = preadv(fd, v.iov(), v.niov(), offset);
    return r < 0 ? -errno : r;
  });
}

Task<int64_t> IoPwritev(FileIo io, const IoVec& v, int64_t offset, int rw_flags) {
  if (io.use_uring) {
    co_return co_await io.loop->uring()->Writev(io.fd, v.iov(), v.niov(), offset, rw_flags);
  }
  int fd = io.fd;
  co_return co_await IoBlocking(io.loop, [fd, &v, offset, rw_flags]() -> int64_t {
    ssize_t r = pwritev2(fd, v.iov(), v.niov(), offset, rw_flags);
    return r < 0 ? -errno : r;
  });
}

Task<int64_t> IoFallocate(FileIo io, int mode, int64_t offset, int64_t len) {
  Uring* ring = io.loop->uring();
  if (io.use_uring && ring->SupportsFallocate()) {
    co_return co_await ring->Fallocate(io.fd, mode, offset, len);
  }
  int fd = io.fd;
  auto call = [fd, mode, offset, len]() -> int64_t {
    return fallocate(fd, mode, offset, len) < 0 ? -errno : 0;
  };
  if (!io.use_uring) co_return co_await IoBlocking(io.loop, call);
  co_return call();
}

Task<int64_t> IoFtruncate(FileIo io, int64_t size) {
  int fd = io.fd;
  auto call = [fd, size]() -> int64_t { return ftruncate(fd, size) < 0 ? -errno : 0; };
  if (io.use_uring) co_return call();
  co_return co_await IoBlocking(io.loop, call);
}

Task<int64_t> IoFdatasync(FileIo io) {
  if (io.use_uring) co_return co_await io.loop->uring()->Fsync(io.fd, /*datasync=*/true);
  int fd = io.fd;
  co_return co_await IoBlocking(io.loop,
                                [fd]() -> int64_t { return fdatasync(fd) < 0 ? -errno : 0; });
}

constexpr size_t kInlineMaxBytes = 256 * 1024;

size_t TransferInline(const FileIo& io, bool write, int64_t offset, const IoVec& qiov,
                      int rw_flags) {
  if (!io.inline_policy) return 0;
  InlineMode& mode = write ? io.inline_policy->write : io.inline_policy->read;
  if (mode == InlineMode::kOff) return 0;
  // Large transfers are memory copies long enough to be worth another core: they go to the
  // asynchronous path, where several run at once (convert's 2 MiB buffers).
  if (qiov.size() > kInlineMaxBytes) return 0;
  int flags = rw_flags;
  if (mode == InlineMode::kNowait) {
    if (flags & RWF_DSYNC) return 0;  // waits for the device by definition
    flags |= RWF_NOWAIT;
  }
  internal::FileSyscalls& sys = internal::FileSyscallsForTest();
  internal::FileIoStats& stats = internal::FileIoStatsForTest();
  size_t done = 0, total = qiov.size();
  while (done < total) {
    IoVec rest = done == 0 ? IoVec() : qiov.Slice(done, total - done);
    const IoVec& v = done == 0 ? qiov : rest;
    int64_t off = offset + static_cast<int64_t>(done);
    ssize_t r;
    if (flags == 0 && v.niov() == 1) {
      // pread/pwrite: the kernel need not import a vector (what plain pread's limit pays).
      const struct iovec& one = v.iov()[0];
      r = write ? sys.pwrite(io.fd, one.iov_base, one.iov_len, off)
                : sys.pread(io.fd, one.iov_base, one.iov_len, off);
    } else {
      r = write ? sys.pwritev2(io.fd, v.iov(), v.niov(), off, flags)
                : sys.preadv2(io.fd, v.iov(), v.niov(), off, flags);
    }
    if (r < 0) {
      if (errno == EINTR) continue;
      // Refused for this descriptor: not worth another system call per request.
      if (errno == EOPNOTSUPP && mode == InlineMode::kNowait) mode = InlineMode::kOff;
      break;  // EAGAIN (would block) and real errors: the asynchronous path takes over
    }
    if (r == 0) {
      if (!write) {
        qiov.Memset(done, 0, total - done);  // end of file: the rest reads as zeroes
        done = total;
      }
      break;
    }
    done += static_cast<size_t>(r);
  }
  if (done == total) {
    ++stats.inline_transfers;
  } else if (done > 0) {
    ++stats.partial_transfers;
  }
  return done;
}

Task<absl::Status> IoTransferAll(FileIo io, bool write, int64_t offset, const IoVec& qiov,
                                 int rw_flags, size_t done) {
  if (done == qiov.size()) co_return absl::OkStatus();
  // O_DIRECT needs buffers aligned to the probed buffer alignment: bounce the others (O_DIRECT
  // never runs inline, so nothing is done yet).
  if (io.direct && done == 0 && !qiov.IsAligned(io.buf_align)) {
    AlignedBuffer bounce(qiov.size(), std::max<uint32_t>(io.buf_align, 512));
    IoVec b(bounce.data(), qiov.size());
    if (write) qiov.CopyTo(0, bounce.data(), qiov.size());
    absl::Status st = co_await IoTransferAll(io, write, offset, b, rw_flags);
    if (st.ok() && !write) qiov.CopyFrom(0, bounce.data(), qiov.size());
    co_return st;
  }
  ++internal::FileIoStatsForTest().async_transfers;
  // A memory file system's transfers that did not run inline (large ones) go to the worker
  // pool: io_uring hands buffered tmpfs I/O to its kernel workers one at a time, slower.
  if (io.inline_policy &&
      (write ? io.inline_policy->write : io.inline_policy->read) == InlineMode::kMemory) {
    io.use_uring = false;
  }
  size_t total = qiov.size();
  while (done < total) {
    IoVec rest = done == 0 ? qiov : qiov.Slice(done, total - done);
    int64_t off = offset + static_cast<int64_t>(done);
    int64_t r;
    if (write) {
      r = co_await IoPwritev(io, rest, off, rw_flags);
    } else {
      r = co_await IoPreadv(io, rest, off);
    }
    if (r == -EINTR || r == -EAGAIN) continue;
    if (r < 0) {
      co_return ErrnoStatus(static_cast<int>(-r),
                            absl::StrFormat("'%s': %s at offset %d failed", io.filename,
                                            write ? "write" : "read", off));
    }
    if (r == 0) {
      if (write) {
        co_return ErrnoError(EIO, absl::StrFormat("'%s': write made no progress", io.filename));
      }
      qiov.Memset(done, 0, total - done);  // end of file: the rest reads as zeroes
      break;
    }
    done += static_cast<size_t>(r);
  }
  co_return absl::OkStatus();
}

Task<absl::Status> PreallocateFull(FileIo io, int64_t cur, int64_t size) {
  // Set the final size first so the file system can allocate in one go, then write zeroes.
  int64_t r = co_await IoFtruncate(io, size);
  if (r < 0) co_return ErrnoStatus(static_cast<int>(-r), "Failed to resize the file");
  // Write failures are reported as QEMU reports them, with the syscall's errno.
  auto zero_error = [](const absl::Status& st) {
    return ErrnoStatus(StatusErrno(st), "Could not write zeros for preallocation");
  };
  constexpr int64_t kChunk = 1 << 20;
  AlignedBuffer zeroes(kChunk, 4096, true);
  int64_t pos = cur;
  int64_t align = io.request_align;
  if (io.direct && pos < size && pos % align != 0) {
    // O_DIRECT writes whole blocks, and the block holding the old end still has data:
    // rewrite it as read (the file is already longer, so its tail reads as zeroes).
    int64_t start = AlignDown(pos, align);
    AlignedBuffer block(static_cast<size_t>(align), std::max<uint32_t>(io.buf_align, 4096));
    IoVec b(block.data(), static_cast<size_t>(align));
    absl::Status st = co_await IoTransferAll(io, false, start, b, 0);
    if (st.ok()) st = co_await IoTransferAll(io, true, start, b, 0);
    if (!st.ok()) co_return zero_error(st);
    pos = start + align;
  }
  for (; pos < size;) {
    int64_t len = std::min(kChunk, size - pos);
    int64_t start = pos;
    int64_t wlen = len;
    if (io.direct) {  // O_DIRECT: write whole aligned blocks (all past the old end)
      start = AlignDown(pos, align);
      wlen = AlignUp(pos + len, align) - start;
      if (wlen > kChunk) wlen = kChunk;
      len = start + wlen - pos;
    }
    IoVec v(zeroes.data(), static_cast<size_t>(wlen));
    absl::Status st = co_await IoTransferAll(io, true, start, v, 0);
    if (!st.ok()) co_return zero_error(st);
    pos += len;
  }
  if (io.direct) {  // whole blocks may have gone past the size
    int64_t fix = co_await IoFtruncate(io, size);
    if (fix < 0) co_return ErrnoStatus(static_cast<int>(-fix), "Failed to resize the file");
  }
  int64_t synced = co_await IoFdatasync(io);
  if (synced < 0) co_return ErrnoStatus(static_cast<int>(-synced), "Could not flush file to disk");
  co_return absl::OkStatus();
}

// ---- I/O ---------------------------------------------------------------------------------------

// Read and Write try the transfer inline first and only then start the asynchronous path:
// a transfer done inline costs this one coroutine frame.
Task<absl::Status> FileNode::Read(int64_t offset, int64_t bytes, const IoVec& qiov, ReqFlags) {
  FileIo io = Io();
  if (static_cast<int64_t>(qiov.size()) != bytes) {
    IoVec part = qiov.Slice(0, static_cast<size_t>(bytes));
    size_t done = TransferInline(io, false, offset, part, 0);
    co_return co_await IoTransferAll(io, false, offset, part, 0, done);
  }
  size_t done = TransferInline(io, false, offset, qiov, 0);
  if (done == qiov.size()) co_return absl::OkStatus();
  co_return co_await IoTransferAll(io, false, offset, qiov, 0, done);
}

Task<absl::Status> FileNode::Write(int64_t offset, int64_t bytes, const IoVec& qiov, ReqFlags flags) {
  int rw_flags = ((flags & kReqFua) && !dsync_) ? RWF_DSYNC : 0;
  FileIo io = Io();
  if (static_cast<int64_t>(qiov.size()) != bytes) {
    IoVec part = qiov.Slice(0, static_cast<size_t>(bytes));
    size_t done = TransferInline(io, true, offset, part, rw_flags);
    co_return co_await IoTransferAll(io, true, offset, part, rw_flags, done);
  }
  size_t done = TransferInline(io, true, offset, qiov, rw_flags);
  if (done == qiov.size()) co_return absl::OkStatus();
  co_return co_await IoTransferAll(io, true, offset, qiov, rw_flags, done);
}

Task<absl::Status> FileNode::WriteZeroes(int64_t offset, int64_t bytes, ReqFlags flags) {
  if (is_device_) {
    // Block devices: fallocate maps to the device's write-zeroes/discard-and-zero, with
    // BLKZEROOUT as the fallback for older kernels.
    int mode = (flags & kReqMayUnmap) ? (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)
                                      : (FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE);
    int64_t r = co_await Fallocate(mode, offset, bytes);
    if (r == -EOPNOTSUPP || r == -ENOTTY || r == -EINVAL) {
      int fd = fd_;
      r = co_await Blocking([fd, offset, bytes]() -> int64_t {
        uint64_t range[2] = {static_cast<uint64_t>(offset), static_cast<uint64_t>(bytes)};
        return ioctl(fd, BLKZEROOUT, range) < 0 ? -errno : 0;
      });
    }
    if (r == -EOPNOTSUPP || r == -ENOTTY || r == -EINVAL) co_return ErrnoError(ENOTSUP, "write-zeroes not supported");
    if (r < 0) co_return ErrnoStatus(static_cast<int>(-r), absl::StrFormat("%s: write-zeroes failed", Who()));
    co_return absl::OkStatus();
  }
  if (!has_fallocate_) co_return ErrnoError(ENOTSUP, "write-zeroes not supported");
  absl::StatusOr<int64_t> len = GetLength();
  if (!len.ok()) co_return len.status();
  int64_t r = -EOPNOTSUPP;
  if ((flags & kReqMayUnmap) && offset + bytes <= *len) {
    // A punched hole reads as zeroes on every Linux file system that supports it.
    r = co_await Fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, bytes);
  }
  if (r == -EOPNOTSUPP || r == -EINVAL) r = co_await Fallocate(FALLOC_FL_ZERO_RANGE, offset, bytes);
  if ((r == -EOPNOTSUPP || r == -EINVAL) && offset >= *len) {
    // Entirely past the end: plain allocation extends the file with zeroes.
    r = co_await Fallocate(0, offset, bytes);
  }
  if (r == -EOPNOTSUPP) {
    has_fallocate_ = false;
    co_return ErrnoError(ENOTSUP, "write-zeroes not supported");
  }
  if (r == -EINVAL) co_return ErrnoError(ENOTSUP, "write-zeroes not supported for this range");
  if (r < 0) co_return ErrnoStatus(static_cast<int>(-r), absl::StrFormat("%s: write-zeroes failed", Who()));
  co_return absl::OkStatus();
}

Task<absl::Status> FileNode::Discard(int64_t offset, int64_t bytes) {
  int64_t r;
  if (is_device_) {
    int fd = fd_;
    r = co_await Blocking([fd, offset, bytes]() -> int64_t {
      uint64_t range[2] = {static_cast<uint64_t>(offset), static_cast<uint64_t>(bytes)};
      return ioctl(fd, BLKDISCARD, range) < 0 ? -errno : 0;
    });
  } else {
    r = co_await Fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, bytes);
  }
  if (r == -EOPNOTSUPP || r == -ENOTTY || r == -EINVAL) co_return ErrnoError(ENOTSUP, "discard not supported");
  if (r < 0) co_return ErrnoStatus(static_cast<int>(-r), absl::StrFormat("%s: discard failed", Who()));
  co_return absl::OkStatus();
}

Task<absl::Status> FileNode::Flush() {
  if (no_flush_) co_return absl::OkStatus();  // cache.no-flush / cache=unsafe
  int64_t r = co_await Fdatasync();
  if (r < 0) co_return ErrnoStatus(static_cast<int>(-r), absl::StrFormat("%s: flush failed", Who()));
  co_return absl::OkStatus();
}

Task<absl::StatusOr<BlockStatus>> FileNode::GetBlockStatus(int64_t offset, int64_t bytes,
                                                           bool want_zero) {
  BlockStatus s;
  s.map = offset;
  s.file = nullptr;  // this node: the core names the queried edge
  s.flags = kStatusData | kStatusOffsetValid;
  s.bytes = bytes;
  if (!want_zero) co_return s;
  off_t data = lseek(fd_, offset, SEEK_DATA);
  if (data < 0 && errno == ENXIO) {
    s.flags = kStatusZero | kStatusOffsetValid;  // a hole up to the end of the file
  } else if (data > offset) {
    s.flags = kStatusZero | kStatusOffsetValid;
    s.bytes = std::min<int64_t>(bytes, data - offset);
  } else if (data == offset) {
    off_t hole = lseek(fd_, offset, SEEK_HOLE);
    if (hole > offset) s.bytes = std::min<int64_t>(bytes, hole - offset);
  }
  // With O_DIRECT a boundary inside a block cannot be acted on: round holes down and data up,
  // and call a block that is part data, part hole, data.
  if (request_align_ > 1 && s.bytes < bytes) {
    int64_t end = offset + s.bytes;
    if (s.flags & kStatusZero) {
      int64_t aligned = AlignDown(end, request_align_);
      if (aligned > offset) {
        s.bytes = aligned - offset;
      } else {
        s.flags = kStatusData | kStatusOffsetValid;
        s.bytes = std::min<int64_t>(bytes, AlignUp(end, request_align_) - offset);
      }
    } else {
      s.bytes = std::min<int64_t>(bytes, AlignUp(end, request_align_) - offset);
    }
  }
  co_return s;
}

Task<absl::Status> FileNode::Truncate(int64_t size, bool exact, PreallocMode mode, ReqFlags) {
  if (is_device_) {
    int64_t cur = DeviceLength(fd_);
    if (mode != PreallocMode::kOff) {
      co_return ErrnoError(ENOTSUP, absl::StrFormat("Preallocation mode '%s' unsupported for this "
                                                    "non-regular file", PreallocModeName(mode)));
    }
    if (size != cur && exact) co_return ErrnoError(ENOTSUP, "Cannot resize device files");
    if (size > cur) co_return ErrnoError(EINVAL, "Cannot grow device files");
    co_return absl::OkStatus();
  }
  absl::StatusOr<int64_t> cur_or = GetLength();
  if (!cur_or.ok()) co_return cur_or.status();
  int64_t cur = *cur_or;
  switch (mode) {
    case PreallocMode::kOff: {
      int64_t r = co_await Ftruncate(size);
      if (r < 0) co_return ErrnoStatus(static_cast<int>(-r), "Failed to resize the file");
      if (cur == 0 && size > 0) AllocateFirstBlock(fd_, size);
      co_return absl::OkStatus();
    }
    case PreallocMode::kFalloc:
    case PreallocMode::kFull: {
      if (size < cur) co_return ErrnoError(ENOTSUP, "Cannot use preallocation for shrinking files");
      if (size == cur && mode == PreallocMode::kFalloc) co_return absl::OkStatus();
      absl::Status st = co_await Preallocate(mode, cur, size);
      if (!st.ok()) {
        // As in QEMU, a failed preallocation leaves the file as it was: at its old length,
        // without the space it got so far (on a full file system, that space is all there was).
        int64_t r = co_await Ftruncate(cur);
        if (r < 0) {
          node().graph().Warn(absl::StrFormat("%s: failed to restore the old file length %d: %s",
                                              Who(), cur, std::strerror(static_cast<int>(-r))));
        }
      }
      co_return st;
    }
    case PreallocMode::kMetadata:
      break;
  }
  co_return ErrnoError(ENOTSUP, absl::StrFormat("Unsupported preallocation mode: %s",
                                                PreallocModeName(mode)));
}

Task<absl::Status> FileNode::Preallocate(PreallocMode mode, int64_t cur, int64_t size) {
  if (mode == PreallocMode::kFalloc) {
    int64_t r = co_await Fallocate(0, cur, size - cur);
    if (r < 0) co_return ErrnoStatus(static_cast<int>(-r), "Could not preallocate new data");
    co_return absl::OkStatus();
  }
  co_return co_await PreallocateFull(Io(), cur, size);
}

// ---- create ------------------------------------------------------------------------------------

Task<absl::Status> CreateFile(CreateContext& ctx, bool host_device) {
  std::string filename = ctx.filename;
  std::string_view prefix = host_device ? kHostDevicePrefix : kFilePrefix;
  if (std::string_view(filename).substr(0, prefix.size()) == prefix) filename.erase(0, prefix.size());
  std::optional<uint64_t> size = ctx.values.FindSize("size");
  if (!size) co_return ErrnoError(EINVAL, "Parameter 'size' is required");
  // Image sizes are whole sectors, as QEMU rounds them.
  if (*size <= static_cast<uint64_t>(kMaxLength)) *size = AlignUp<uint64_t>(*size, kSectorSize);
  if (*size > static_cast<uint64_t>(kMaxLength)) {
    co_return ErrnoError(EFBIG, absl::StrFormat("Image size must be less than %d bytes", kMaxLength));
  }
  absl::StatusOr<PreallocMode> mode = ParsePreallocMode(ctx.values.GetString("preallocation"));
  if (!mode.ok()) co_return mode.status();

  int fd = open(filename.c_str(), O_RDWR | O_CLOEXEC | (host_device ? 0 : O_CREAT), 0644);
  if (fd < 0) co_return ErrnoStatus(errno, absl::StrFormat("Could not create '%s'", filename));
  struct stat st;
  fstat(fd, &st);
  absl::Status status;
  if (host_device || IsDevice(st)) {
    // A device cannot be created, only checked: it must hold the requested size. The
    // messages are QEMU's for creating on a device.
    if (*mode != PreallocMode::kOff) {
      status = ErrnoError(ENOTSUP, absl::StrFormat("Unsupported preallocation mode '%s'",
                                                   PreallocModeName(*mode)));
    } else if (!IsDevice(st)) {
      status = ErrnoError(EINVAL, absl::StrFormat("'%s' is not a device", filename));
    } else if (DeviceLength(fd) < static_cast<int64_t>(*size)) {
      status = ErrnoError(ENOSPC, "Cannot grow device files");
    }
    close(fd);
    co_return status;
  }
  // Take the write and resize permissions, and make sure no one else is using the image:
  // creating truncates it. Nobody may resize it until we return with the promised size.
  LockKind kind = OfdLocksAvailable() ? LockKind::kOfd : LockKind::kPosix;
  Perm perm = kPermWrite | kPermResize;
  Perm shared = kPermAll & ~kPermResize;
  status = ApplyLockBytes(fd, kind, perm, ~shared & kPermAll, false);
  if (status.ok()) {
    status = CheckLockBytes(fd, kind, perm, shared);
    if (!status.ok()) {
      status = ErrnoError(StatusErrno(status),
                          absl::StrFormat("%s\nIs another process using the image [%s]?",
                                          status.message(), filename));
    }
  }
  if (status.ok() && ftruncate(fd, 0) != 0) status = ErrnoStatus(errno, "Could not clear the file");
  if (status.ok() && ctx.values.GetBool("nocow")) {
    // btrfs only; elsewhere the flag is unknown and the ioctl fails harmlessly.
    int attr = 0;
    if (ioctl(fd, FS_IOC_GETFLAGS, &attr) == 0) {
      attr |= FS_NOCOW_FL;
      (void)ioctl(fd, FS_IOC_SETFLAGS, &attr);
    }
  }
  if (status.ok()) {
    uint64_t hint = ctx.values.GetSize("extent_size_hint");
    struct fsxattr attr = {};
    if (hint > 1 && ioctl(fd, FS_IOC_FSGETXATTR, &attr) == 0) {
      attr.fsx_xflags |= FS_XFLAG_EXTSIZE;
      attr.fsx_extsize = static_cast<uint32_t>(std::min<uint64_t>(hint, UINT32_MAX));
      if (ioctl(fd, FS_IOC_FSSETXATTR, &attr) != 0 && ctx.values.IsSet("extent_size_hint")) {
        status = ErrnoStatus(errno, "Failed to set extent size hint");
      }
    }
  }
  if (status.ok()) {
    int64_t target = static_cast<int64_t>(*size);
    switch (*mode) {
      case PreallocMode::kOff:
        if (ftruncate(fd, target) != 0) {
          status = ErrnoStatus(errno, "Could not resize file");
        } else if (target > 0) {
          AllocateFirstBlock(fd, target);
        }
        break;
      case PreallocMode::kFalloc:
        if (target > 0 && fallocate(fd, 0, 0, target) != 0) {
          status = ErrnoStatus(errno, "Could not preallocate new data");
        } else if (target > 0) {
          // QEMU writes the first block of a falloc'd file too (SEEK_DATA sees it).
          AllocateFirstBlock(fd, target);
        }
        break;
      case PreallocMode::kFull: {
        // The open node's path, through the loop's I/O engine (never blocking the loop).
        EventLoop& loop = ctx.graph.loop();
        FileIo io{&loop, fd, loop.uring() != nullptr, /*direct=*/false, 1, 1, filename};
        status = co_await PreallocateFull(io, 0, target);
        break;
      }
      case PreallocMode::kMetadata:
        status = ErrnoError(ENOTSUP, "Unsupported preallocation mode: metadata");
        break;
    }
    // A failed preallocation leaves the file empty, as qemu-img leaves it (it was cleared
    // above), not holding whatever space it got before the file system filled up.
    if (!status.ok() && ftruncate(fd, 0) != 0) {
      int err = errno;
      status = ErrnoError(StatusErrno(status),
                          absl::StrFormat("%s (emptying the file again failed: %s)",
                                          status.message(), std::strerror(err)));
    }
  }
  (void)ApplyLockBytes(fd, kind, 0, 0, true);
  close(fd);
  co_return status;
}

Task<absl::Status> CreateRegular(CreateContext& ctx) { return CreateFile(ctx, false); }
Task<absl::Status> CreateDevice(CreateContext& ctx) { return CreateFile(ctx, true); }

std::unique_ptr<NodeDriver> InstantiateFile(Node& node) {
  return std::make_unique<FileNode>(node, false);
}
std::unique_ptr<NodeDriver> InstantiateHostDevice(Node& node) {
  return std::make_unique<FileNode>(node, true);
}

// "file:a.img" / "host_device:/dev/sdb" name the protocol explicitly; the rest is the path.
template <const std::string_view& kPrefix>
absl::Status ParseFilenameWithPrefix(std::string_view filename, Options& options) {
  if (filename.substr(0, kPrefix.size()) == kPrefix) filename.remove_prefix(kPrefix.size());
  options.Set("filename", std::string(filename));
  return absl::OkStatus();
}
int ProbeHostDevice(std::string_view filename) {
  std::string name(filename);
  if (name.rfind("/dev/cdrom", 0) == 0) return 50;
  struct stat st;
  if (stat(name.c_str(), &st) == 0 && IsDevice(st)) return 100;
  return 0;
}

}  // namespace

namespace internal {
FileSyscalls& FileSyscallsForTest() {
  static FileSyscalls calls{::preadv2, ::pwritev2, ::pread, ::pwrite};
  return calls;
}
FileIoStats& FileIoStatsForTest() {
  static FileIoStats stats;
  return stats;
}
}  // namespace internal

// Options that change the data, as qemu-img's json: names show them (see Driver).
constexpr std::string_view kStrongOptions[] = {"filename"};

const Driver kFileDriver = {
    .name = "file",
    .kind = DriverKind::kProtocol,
    .protocol_prefix = "file",
    .options = &kFileSchema,
    .create_options = &kFileCreateSchema,
    .instantiate = InstantiateFile,
    .create = CreateRegular,
    .parse_filename = ParseFilenameWithPrefix<kFilePrefix>,
    .strong_options = kStrongOptions,
};

const Driver kHostDeviceDriver = {
    .name = "host_device",
    .kind = DriverKind::kProtocol,
    .protocol_prefix = "host_device",
    .options = &kHostDeviceSchema,
    .create_options = &kHostDeviceCreateSchema,
    .probe_device = ProbeHostDevice,
    .instantiate = InstantiateHostDevice,
    .create = CreateDevice,
    .parse_filename = ParseFilenameWithPrefix<kHostDevicePrefix>,
    .strong_options = kStrongOptions,
};

}  // namespace libblock::file
