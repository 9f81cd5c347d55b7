// The preallocate filter (QEMU's block/preallocate.c, by behaviour and options).
//
// When a write ends past the end of the data written so far and past the end of the file,
// the filter first extends the file with allocated zeroes up to
// align_up(end + prealloc-size, prealloc-align), using write-zeroes without fallback
// (fallocate), and then lets the write through. The filter reports the data end as its
// length, and truncates the file back to it when it loses write/resize permission (its
// users detach or reopen read-only) and on close.
//
// State (valid only while the filter holds write+resize on its file, and it shares neither,
// so nobody else changes the file's length):
//   data_end    end of the data written through the filter
//   zero_start  start of the area past data_end known to read as zeroes
//   file_end    length of the file, preallocation included
// Concurrency: preallocations (and truncates) run one at a time under prealloc_lock_. The
// zero write is a serialising request on the file, so a data write that lands inside the
// area being preallocated waits for the zeroing instead of being wiped by it; data writes
// below file_end never wait for the lock.
#include "filters/preallocate/preallocate_driver.h"

#include <cerrno>

#include "absl/strings/str_format.h"
#include "core/co_sync.h"
#include "core/event_loop.h"
#include "core/graph.h"
#include "core/node.h"
#include "core/transaction.h"
#include "util/checked_math.h"
#include "util/status.h"

namespace libblock::preallocate {
namespace {

constexpr OptionSpec kSpecs[] = {
    {"prealloc-align", OptionType::kSize, "1M",
     "on preallocation, align the file length to this number of bytes"},
    {"prealloc-size", OptionType::kSize, "128M",
     "on preallocation, preallocate this many bytes past the end of the data"},
};
constexpr OptionSchema kSchema{"preallocate", kSpecs};

bool CanWriteResize(Perm perm) { return (perm & kPermWrite) && (perm & kPermResize); }

class PreallocateNode final : public FilterDriver {
 public:
  using FilterDriver::FilterDriver;

  Task<absl::Status> Open(OpenContext& ctx) override {
    LB_CO_RETURN_IF_ERROR(ParseSizes(ctx.values, &align_, &size_));
    LB_CO_RETURN_IF_ERROR(co_await OpenFiltered(ctx));
    co_return CheckFileAlignment(align_);
  }

  // Both options change in a reopen, checked as at open (QEMU's preallocate_reopen_prepare).
  bool CanReopenOption(std::string_view name) const override {
    return name == "prealloc-align" || name == "prealloc-size";
  }
  // A reopen gives the preallocation back first, while the file edge still has write and
  // resize: the same transaction may take them away (read-only, or a backend that stops
  // writing), and the permission refresh that follows cannot wait for I/O. QEMU drops it on
  // read-only reopens only; here every reopen does, and the next extending write preallocates
  // again.
  Task<absl::Status> PrepareReopen(const ReopenState& state, Transaction& tran) override {
    int64_t align = 0, size = 0;
    LB_CO_RETURN_IF_ERROR(ParseSizes(state.values, &align, &size));
    LB_CO_RETURN_IF_ERROR(CheckFileAlignment(align));
    if (state_ && CanWriteResize(filtered_->perm())) {
      LB_CO_RETURN_IF_ERROR(co_await DropPreallocation());
    }
    tran.OnCommit([this, align, size] {
      align_ = align;
      size_ = size;
    });
    co_return absl::OkStatus();
  }

  void ChildPerm(const Child& child, Perm perm, Perm shared, Perm* nperm, Perm* nshared) override {
    NodeDriver::ChildPerm(child, perm, shared, nperm, nshared);
    if (CanWriteResize(perm)) {
      // Own the file's length: keep write+resize and share neither, so data_end/file_end
      // stay true.
      *nperm |= kPermWrite | kPermResize;
      *nshared &= ~(kPermWrite | kPermResize);
    }
  }

  absl::Status PreparePerm(Perm perm, Perm shared, Transaction& tran) override {
    if (CanWriteResize(perm) || !state_) return absl::OkStatus();
    tran.OnCommit([this] { state_.reset(); });
    // A reopen has already dropped it (PrepareReopen).
    if (state_->file_end <= state_->data_end) return absl::OkStatus();
    // Losing write/resize outside a reopen (the last writer detaches): give the preallocated
    // space back now, while the file edge still has the permission to do it (it is recomputed
    // after this node in the transaction). The loop runs here: permission changes are
    // synchronous.
    return node().loop().Run(DropPreallocation());
  }

  Task<absl::Status> Close() override {
    if (state_ && CanWriteResize(filtered_->perm())) co_return co_await DropPreallocation();
    co_return absl::OkStatus();
  }

  absl::StatusOr<int64_t> GetLength() override {
    if (state_) return state_->data_end;
    return filtered_->node()->size();
  }

  void FillInfo(nlohmann::json& info) override {
    info["prealloc-align"] = align_;
    info["prealloc-size"] = size_;
    if (state_) info["file-end"] = state_->file_end;
  }

  Task<absl::Status> Write(int64_t offset, int64_t bytes, const IoVec& qiov, ReqFlags flags) override {
    co_await HandleWrite(offset, bytes, /*zero=*/false);
    co_return co_await filtered_->Write(offset, bytes, qiov, flags);
  }

  Task<absl::Status> WriteZeroes(int64_t offset, int64_t bytes, ReqFlags flags) override {
    // Zeroes landing in the known-zero tail need no I/O at all. (The result goes through a
    // local: GCC 12 miscompiles a co_await inside an if condition here — it traps.)
    bool skip = co_await HandleWrite(offset, bytes, /*zero=*/true);
    if (skip) co_return absl::OkStatus();
    co_return co_await filtered_->WriteZeroes(offset, bytes, flags);
  }

  Task<absl::Status> Truncate(int64_t size, bool exact, PreallocMode mode, ReqFlags flags) override {
    auto guard = co_await prealloc_lock_.ScopedLock();
    if (state_ && size > state_->data_end) {
      if (mode == PreallocMode::kFalloc && size <= state_->file_end) {
        state_->data_end = size;  // already allocated, and it reads as zeroes
        co_return absl::OkStatus();
      }
      if (state_->file_end > state_->data_end) {
        // Growing past data_end must expose zeroes, not our preallocation bookkeeping:
        // drop the preallocation first.
        absl::Status st = co_await filtered_->Truncate(state_->data_end, true, PreallocMode::kOff);
        if (!st.ok()) {
          state_.reset();
          co_return st;
        }
        state_->file_end = state_->data_end;
      }
    }
    absl::Status st = co_await filtered_->Truncate(size, exact, mode, flags);
    if (!st.ok()) {
      state_.reset();
      co_return st;
    }
    if (state_) state_->data_end = state_->zero_start = state_->file_end = filtered_->node()->size();
    co_return absl::OkStatus();
  }

 private:
  static absl::Status ParseSizes(const OptionValues& values, int64_t* align, int64_t* size) {
    *align = static_cast<int64_t>(values.GetSize("prealloc-align"));
    *size = static_cast<int64_t>(values.GetSize("prealloc-size"));
    // 0 is accepted, as by QEMU: it means the file's request alignment.
    if (*align % 512) {
      return ErrnoError(EINVAL, "prealloc-align parameter of preallocate filter is not aligned to 512");
    }
    if (*size > kMaxLength || *align > kMaxLength / 2) {
      return ErrnoError(EINVAL, "preallocate: prealloc-size or prealloc-align is too large");
    }
    return absl::OkStatus();
  }
  absl::Status CheckFileAlignment(int64_t align) const {
    uint32_t file_align = filtered_->node()->limits().request_alignment;
    if (align % file_align) {
      return ErrnoError(EINVAL, absl::StrFormat("prealloc-align parameter of preallocate filter "
                                                "is not aligned to %d", file_align));
    }
    return absl::OkStatus();
  }
  struct State {
    int64_t data_end;
    int64_t zero_start;
    int64_t file_end;
  };

  // Updates the state for a write of [offset, offset+bytes) and preallocates if it ends past
  // the file. Returns true when the write is of zeroes into the known-zero tail (skippable).
  Task<bool> HandleWrite(int64_t offset, int64_t bytes, bool zero) {
    if (disabled_ || !CanWriteResize(filtered_->perm())) co_return false;
    if (!state_) {
      int64_t len = filtered_->node()->size();
      state_ = State{len, len, len};
    }
    int64_t end = offset + bytes;
    // Any data write, extending or not, ends the known-zero area at its end: a later zero
    // write over it must not be skipped.
    if (!zero) state_->zero_start = std::max(state_->zero_start, end);
    if (end <= state_->data_end) co_return false;
    state_->data_end = end;
    if (end <= state_->file_end) co_return zero && offset >= state_->zero_start;

    auto guard = co_await prealloc_lock_.ScopedLock();
    if (!state_) co_return false;  // a failed truncate invalidated it meanwhile
    if (end <= state_->file_end) co_return zero && offset >= state_->zero_start;
    // While we waited for the lock, later writes may have moved data_end past our end and,
    // ending below it, gone straight to the file: they may have written (even completed)
    // anywhere below data_end. Zero only from the current data_end on. A zero write that is
    // still the furthest one may fold its own range into the preallocation.
    int64_t file_align = filtered_->node()->limits().request_alignment;
    bool merge = zero && end == state_->data_end;
    int64_t start = AlignUp(merge ? offset : state_->data_end, file_align);
    // Capped at kMaxLength (both terms are at most that), so aligning up cannot overflow; a
    // preallocation past it is refused by the request path and skipped.
    int64_t want = std::max(start, end);
    want = size_ > kMaxLength - want ? kMaxLength : want + size_;
    int64_t prealloc_end = AlignUp(want, std::max(align_, file_align));
    // Nothing to zero (prealloc-size=0 and the start already aligned): file_end must not
    // claim a length the file does not have.
    if (prealloc_end <= start) co_return false;
    absl::Status st = co_await filtered_->WriteZeroes(start, prealloc_end - start,
                                                      kReqNoFallback | kReqSerialising);
    if (!st.ok()) {
      // Not fatal: the write goes through without preallocation. If the file system cannot
      // preallocate at all, stop trying.
      if (StatusErrno(st) == ENOTSUP) disabled_ = true;
      co_return false;
    }
    if (!state_) co_return false;
    state_->file_end = std::max(state_->file_end, prealloc_end);
    co_return merge && offset >= start;
  }

  Task<absl::Status> DropPreallocation() {
    auto guard = co_await prealloc_lock_.ScopedLock();
    if (!state_ || state_->file_end <= state_->data_end) co_return absl::OkStatus();
    absl::Status st = co_await filtered_->Truncate(state_->data_end, true, PreallocMode::kOff);
    if (!st.ok()) {
      co_return ErrnoError(StatusErrno(st), absl::StrFormat("Failed to drop preallocation: %s",
                                                            st.message()));
    }
    state_->file_end = state_->data_end;
    co_return absl::OkStatus();
  }

  int64_t align_ = 0, size_ = 0;
  bool disabled_ = false;
  std::optional<State> state_;
  CoMutex prealloc_lock_;
};

std::unique_ptr<NodeDriver> Instantiate(Node& node) { return std::make_unique<PreallocateNode>(node); }

}  // namespace

const Driver kDriver = {
    .name = "preallocate",
    .kind = DriverKind::kFilter,
    .options = &kSchema,
    .instantiate = Instantiate,
};

}  // namespace libblock::preallocate
