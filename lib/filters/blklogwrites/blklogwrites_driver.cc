// The blklogwrites filter (see blklogwrites_driver.h). Options, as QEMU 7.2's:
//   file, log                     the filtered child and the log (its own node: any protocol)
//   log-sector-size (512)         the log's sector size, also the filter's request alignment
//   log-append (off)              continue an existing log (its super block gives the sector
//                                 size; an empty log starts afresh); excludes log-sector-size
//   log-super-update-interval (4096)
//                                 the super block's entry count is rewritten (and the log
//                                 flushed) every that many entries, and after every flush
//
// Order: a request goes to the file first; when it completed, its entry's place in the log is
// taken at once (no suspension in between), so the log lists requests in the order they
// completed on the file, and a flush entry follows every request that completed before the
// flush was issued. The entry is written with its data in one request; the caller's request
// completes once both the file and the log write completed (QEMU's rule: a failed log write
// fails the request). The super block counts only entries whose log writes all completed
// (a contiguous prefix), so a crash never leaves it pointing at entries not yet written.
//
// Truncate passes through unlogged (the format has no record for it), as in QEMU.
#include "filters/blklogwrites/blklogwrites_driver.h"

#include <cerrno>
#include <cstring>
#include <deque>

#include "absl/strings/str_format.h"
#include "core/graph.h"
#include "core/node.h"
#include "filters/blklogwrites/log_format.h"
#include "util/checked_math.h"
#include "util/status.h"

namespace libblock::blklogwrites {
namespace {

constexpr OptionSpec kSpecs[] = {
    {"log-append", OptionType::kBool, "off", "Append to an existing log"},
    {"log-sector-size", OptionType::kSize, "512", "Log sector size"},
    {"log-super-update-interval", OptionType::kInt, "4096",
     "Log superblock update interval (# of write requests)"},
};
constexpr OptionSchema kSchema{"blklogwrites", kSpecs};

class BlkLogWritesNode final : public FilterDriver {
 public:
  using FilterDriver::FilterDriver;

  Task<absl::Status> Open(OpenContext& ctx) override {
    LB_CO_RETURN_IF_ERROR(co_await OpenFiltered(ctx));
    absl::StatusOr<Child*> log = co_await ctx.OpenChild("log", kRoleMetadata, /*allow_none=*/false);
    if (!log.ok()) co_return log.status();
    log_ = *log;
    caps_.write_flags = kReqFua;
    caps_.zero_flags = kReqFua | kReqMayUnmap | kReqNoFallback;
    caps_.truncate = filtered_->node()->impl()->caps().truncate;

    int64_t interval = ctx.values.GetInt("log-super-update-interval");
    // QEMU's option is unsigned: -1 is its largest value.
    update_interval_ = static_cast<uint64_t>(interval);
    if (update_interval_ == 0) {
      co_return ErrnoError(EINVAL, "Invalid log superblock update interval 0");
    }
    uint64_t sector_size = ctx.values.GetSize("log-sector-size");
    if (ctx.values.GetBool("log-append")) {
      if (ctx.values.IsSet("log-sector-size")) {
        co_return ErrnoError(EINVAL, "log-append and log-sector-size are mutually exclusive");
      }
      absl::StatusOr<uint64_t> found = co_await ReadExistingLog();
      if (!found.ok()) co_return found.status();
      sector_size = *found;
    } else if (!ValidSectorSize(sector_size)) {
      co_return ErrnoError(EINVAL, absl::StrFormat("Invalid log sector size %d", sector_size));
    }
    sector_size_ = static_cast<uint32_t>(sector_size);
    durable_entries_ = nr_entries_;
    co_return absl::OkStatus();
  }

  void RefreshLimits(BlockLimits& limits) override {
    limits.request_alignment = std::max(limits.request_alignment, sector_size_);
  }

  void ChildPerm(const Child& child, Perm perm, Perm shared, Perm* nperm, Perm* nshared) override {
    NodeDriver::ChildPerm(child, perm, shared, nperm, nshared);
    if (&child == log_) {
      // The log is written only when the filter's users write.
      if (!(perm & kPermWrite)) *nperm &= ~(kPermWrite | kPermResize);
    }
  }

  void FillInfo(nlohmann::json& info) override {
    info["log-sector-size"] = sector_size_;
    info["log-entries"] = nr_entries_;
  }

  Task<absl::Status> Write(int64_t offset, int64_t bytes, const IoVec& qiov, ReqFlags flags) override {
    absl::Status file_st = co_await filtered_->Write(offset, bytes, qiov, flags);
    LogEntry e = Entry(offset, bytes, (flags & kReqFua) ? kFlagFua : 0);
    absl::Status log_st = co_await Log(e, &qiov, /*zeroes=*/false);
    co_return log_st.ok() ? file_st : log_st;
  }

  Task<absl::Status> WriteZeroes(int64_t offset, int64_t bytes, ReqFlags flags) override {
    absl::Status file_st = co_await filtered_->WriteZeroes(offset, bytes, flags);
    LogEntry e = Entry(offset, bytes, (flags & kReqFua) ? kFlagFua : 0);
    absl::Status log_st = co_await Log(e, nullptr, /*zeroes=*/true);
    co_return log_st.ok() ? file_st : log_st;
  }

  Task<absl::Status> Discard(int64_t offset, int64_t bytes) override {
    absl::Status file_st = co_await filtered_->Discard(offset, bytes);
    absl::Status log_st = co_await Log(Entry(offset, bytes, kFlagDiscard), nullptr, false);
    co_return log_st.ok() ? file_st : log_st;
  }

  Task<absl::Status> Flush() override {
    absl::Status file_st = co_await filtered_->Flush();
    absl::Status log_st = co_await Log(Entry(0, 0, kFlagFlush), nullptr, false);
    co_return log_st.ok() ? file_st : log_st;
  }

 private:
  LogEntry Entry(int64_t offset, int64_t bytes, uint64_t flags) const {
    return LogEntry{static_cast<uint64_t>(offset) / sector_size_,
                    static_cast<uint64_t>(bytes) / sector_size_, flags, 0};
  }

  // log-append: the sector size and the end of the entries the super block counts.
  Task<absl::StatusOr<uint64_t>> ReadExistingLog() {
    nr_entries_ = 0;
    next_sector_ = 1;
    if (log_->node()->size() == 0) co_return uint64_t{512};
    uint8_t sb[kSuperBytes];
    absl::Status st = co_await log_->Pread(0, sb, sizeof sb);
    if (!st.ok()) co_return ErrnoStatus(StatusErrno(st), "Could not read log superblock");
    LogSuper super = DecodeSuper(sb);
    if (super.magic != kLogMagic) co_return ErrnoError(EINVAL, "Invalid log superblock magic");
    if (super.version != kLogVersion) {
      co_return ErrnoError(EINVAL, absl::StrFormat("Unsupported log version %d", super.version));
    }
    if (!ValidSectorSize(super.sector_size)) {
      co_return ErrnoError(EINVAL, absl::StrFormat("Invalid log sector size %d", super.sector_size));
    }
    uint64_t ss = super.sector_size;
    uint64_t pos = 1;
    for (uint64_t i = 0; i < super.nr_entries; ++i) {
      uint8_t raw[kEntryBytes];
      if (pos > static_cast<uint64_t>(kMaxLength) / ss - 1) {
        co_return ErrnoError(EINVAL, absl::StrFormat("Failed to read log entry %d", i));
      }
      st = co_await log_->Pread(static_cast<int64_t>(pos * ss), raw, sizeof raw);
      if (!st.ok()) {
        co_return ErrnoStatus(StatusErrno(st), absl::StrFormat("Failed to read log entry %d", i));
      }
      LogEntry e = DecodeEntry(raw);
      if (e.flags & ~kFlagMask) {
        co_return ErrnoError(EINVAL, absl::StrFormat("Invalid flags 0x%x in log entry %d", e.flags, i));
      }
      if (DataSectors(e) > static_cast<uint64_t>(kMaxLength) / ss) {
        co_return ErrnoError(EINVAL, absl::StrFormat("Failed to read log entry %d", i));
      }
      pos += 1 + DataSectors(e);
    }
    nr_entries_ = super.nr_entries;
    next_sector_ = pos;
    co_return ss;
  }

  // Appends `e` (its data: `data`, or zeroes) to the log; then the super block when due.
  Task<absl::Status> Log(LogEntry e, const IoVec* data, bool zeroes) {
    // Taken before any suspension: the log's order is the order requests got here.
    uint64_t index = nr_entries_++;
    int64_t at = static_cast<int64_t>(next_sector_) * sector_size_;
    next_sector_ += 1 + DataSectors(e);
    pending_.push_back(false);

    AlignedBuffer head(sector_size_, std::max<size_t>(log_->node()->limits().opt_mem_alignment, 512),
                       /*zero=*/true);
    EncodeEntry(e, head.data());
    IoVec v(head.data(), sector_size_);
    if (data) v.AppendSlice(*data, 0, data->size());
    absl::Status st = co_await log_->Write(at, static_cast<int64_t>(v.size()), v);
    if (st.ok() && zeroes && e.nr_sectors) {
      st = co_await log_->WriteZeroes(at + sector_size_,
                                      static_cast<int64_t>(e.nr_sectors) * sector_size_);
    }
    if (!st.ok()) co_return st;
    pending_[index - durable_entries_] = true;
    while (!pending_.empty() && pending_.front()) {
      pending_.pop_front();
      durable_entries_++;
    }
    if ((e.flags & kFlagFlush) || nr_entries_ % update_interval_ == 0) {
      co_return co_await WriteSuper();
    }
    co_return absl::OkStatus();
  }

  Task<absl::Status> WriteSuper() {
    AlignedBuffer buf(sector_size_, std::max<size_t>(log_->node()->limits().opt_mem_alignment, 512),
                      /*zero=*/true);
    LogSuper super;
    super.nr_entries = durable_entries_;
    super.sector_size = sector_size_;
    EncodeSuper(super, buf.data());
    absl::Status st = co_await log_->Pwrite(0, buf.data(), sector_size_);
    if (!st.ok()) co_return st;
    co_return co_await log_->Flush();
  }

  Child* log_ = nullptr;
  uint32_t sector_size_ = 512;
  uint64_t update_interval_ = 4096;
  uint64_t nr_entries_ = 0;       // entries placed in the log
  uint64_t next_sector_ = 1;      // where the next entry goes
  uint64_t durable_entries_ = 0;  // entries whose log writes all completed (a prefix)
  std::deque<bool> pending_;      // completion of entries durable_entries_, ...
};

std::unique_ptr<NodeDriver> Instantiate(Node& node) { return std::make_unique<BlkLogWritesNode>(node); }

}  // namespace

const Driver kDriver = {
    .name = "blklogwrites",
    .kind = DriverKind::kFilter,
    .options = &kSchema,
    .instantiate = Instantiate,
};

}  // namespace libblock::blklogwrites
