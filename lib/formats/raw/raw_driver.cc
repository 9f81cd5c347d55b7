// The raw format driver (QEMU's block/raw-format.c by behaviour).
//
// Without offset/size, raw is a filter over its file (the child role is "filtered"); with
// them it maps guest [0, size) to file [offset, offset+size) (role "data"). Write
// permission and resize are only asked of the file when raw's own users need them.
//
// Probed images: when the format was guessed rather than given, a guest could write a
// header into sector 0 that makes the next open probe the file as another format (and read
// a backing file of its choice). Like QEMU, such a node works on whole 512-byte sectors and
// refuses (EPERM) a write whose new sector 0 would probe as anything but raw. The checked
// bytes are copied first, so what was checked is exactly what is written.
#include "formats/raw/raw_driver.h"

#include <cerrno>
#include <cstring>

#include "absl/strings/str_format.h"
#include "core/backend.h"
#include "core/graph.h"
#include "core/info.h"
#include "core/node.h"
#include "core/registry.h"
#include "core/transaction.h"
#include "util/checked_math.h"
#include "util/status.h"

namespace libblock::raw {
namespace {

constexpr OptionSpec kSpecs[] = {
    {"offset", OptionType::kSize, "0", "offset in the image file at which the disk starts"},
    {"size", OptionType::kSize, "", "size of the disk (default: the rest of the file)"},
};
constexpr OptionSchema kSchema{"raw", kSpecs};

// raw's own creation options; the protocol's (file: preallocation, nocow, ...) are merged in
// by Graph::Create, as qemu-img does.
constexpr OptionSpec kCreateSpecs[] = {
    {"size", OptionType::kSize, "", "Virtual disk size"},
};
constexpr OptionSchema kCreateSchema{"raw", kCreateSpecs};

class RawNode final : public NodeDriver {
 public:
  using NodeDriver::NodeDriver;

  Task<absl::Status> Open(OpenContext& ctx) override {
    if (ctx.values.FindSize("size").value_or(0) % kSectorSize) {
      co_return ErrnoError(EINVAL, "Specified size is not multiple of 512");
    }
    bool window = ctx.values.GetSize("offset") || ctx.values.FindSize("size");
    ChildRole role = window ? (kRoleData | kRolePrimary) : (kRoleFiltered | kRolePrimary);
    absl::StatusOr<Child*> file = co_await ctx.OpenChild("file", role, /*allow_none=*/false);
    if (!file.ok()) co_return file.status();
    file_ = *file;
    LB_CO_RETURN_IF_ERROR(ParseWindow(ctx.values, &offset_, &size_));
    const Capabilities& below = file_->node()->impl()->caps();
    caps_.write_zeroes = true;
    caps_.discard = true;
    caps_.truncate = true;
    caps_.block_status = true;
    caps_.write_flags = below.write_flags;
    caps_.zero_flags = below.zero_flags | kReqMayUnmap | kReqNoFallback;

    if (node().flags().probed && !node().flags().read_only) {
      ctx.graph.Warn(absl::StrFormat(
          "WARNING: Image format was not specified for '%s' and probing guessed raw.\n"
          "         Automatically detecting the format is dangerous for raw images, write "
          "operations on block 0 will be restricted.\n"
          "         Specify the 'raw' format explicitly to remove the restrictions.",
          DisplayFilename(*file_->node())));  // as QEMU names it: json: over a filter
    }
    co_return absl::OkStatus();
  }

  // offset and size change in a reopen (as QEMU's raw_reopen_prepare allows), checked as at
  // open. The file child keeps the role it was opened with.
  bool CanReopenOption(std::string_view name) const override {
    return name == "offset" || name == "size";
  }
  Task<absl::Status> PrepareReopen(const ReopenState& state, Transaction& tran) override {
    int64_t offset = 0;
    std::optional<int64_t> size;
    LB_CO_RETURN_IF_ERROR(ParseWindow(state.values, &offset, &size));
    tran.OnCommit([this, offset, size] {
      offset_ = offset;
      size_ = size;
    });
    co_return absl::OkStatus();
  }

  void RefreshLimits(BlockLimits& limits) override {
    // A probed image is written in whole sectors, so sector 0 is always checked whole.
    if (node().flags().probed) limits.request_alignment = std::max<uint32_t>(limits.request_alignment, kSectorSize);
  }

  void ChildPerm(const Child& child, Perm perm, Perm shared, Perm* nperm, Perm* nshared) override {
    NodeDriver::ChildPerm(child, perm, shared, nperm, nshared);
    // The data-role defaults add write/resize for formats that grow their files; raw only
    // needs them when its users do, and asking for more would cause needless conflicts.
    *nperm = (*nperm & ~(kPermWrite | kPermResize)) | (perm & (kPermWrite | kPermResize));
  }

  absl::StatusOr<int64_t> GetLength() override {
    if (size_) return *size_;
    return std::max<int64_t>(0, file_->node()->size() - offset_);
  }

  // A new raw image is its file: it reads as zeroes when the file does.
  bool HasZeroInit() override { return libblock::HasZeroInit(*file_->node()); }
  absl::StatusOr<BlockSizes> ProbeBlockSizes() override {
    LB_ASSIGN_OR_RETURN(BlockSizes sizes, file_->node()->impl()->ProbeBlockSizes());
    if (offset_ % std::max(sizes.logical, sizes.physical)) {
      return ErrnoError(ENOTSUP, "the offset is not aligned to the device's block size");
    }
    return sizes;
  }

  void FillInfo(nlohmann::json& info) override {
    if (offset_) info["offset"] = offset_;
    if (size_) info["size"] = *size_;
  }

  Task<absl::Status> Read(int64_t offset, int64_t bytes, const IoVec& qiov, ReqFlags flags) override {
    co_return co_await file_->Read(offset + offset_, bytes, qiov, flags);
  }

  Task<absl::Status> Write(int64_t offset, int64_t bytes, const IoVec& qiov, ReqFlags flags) override {
    LB_CO_RETURN_IF_ERROR(CheckWindow(offset, bytes));
    if (node().flags().probed && offset < kSectorSize && bytes > 0) {
      // The request path aligned us to whole sectors, so this write starts at 0 and covers
      // sector 0 entirely.
      uint8_t sector0[kSectorSize];
      qiov.CopyTo(0, sector0, kSectorSize);
      ProbeMatch match = node().graph().registry().ProbeFormat(sector0, kSectorSize, "");
      if (match.driver && match.driver->name != "raw") {
        co_return ErrnoError(EPERM, absl::StrFormat("raw: refusing to write sector 0 of probed "
                                                    "image '%s': it would be detected as %s",
                                                    file_->node()->filename(), match.driver->name));
      }
      IoVec checked(sector0, kSectorSize);
      checked.AppendSlice(qiov, kSectorSize, static_cast<size_t>(bytes - kSectorSize));
      co_return co_await file_->Write(offset + offset_, bytes, checked, flags);
    }
    co_return co_await file_->Write(offset + offset_, bytes, qiov, flags);
  }

  Task<absl::Status> WriteZeroes(int64_t offset, int64_t bytes, ReqFlags flags) override {
    LB_CO_RETURN_IF_ERROR(CheckWindow(offset, bytes));
    co_return co_await file_->WriteZeroes(offset + offset_, bytes, flags);
  }

  Task<absl::Status> Discard(int64_t offset, int64_t bytes) override {
    LB_CO_RETURN_IF_ERROR(CheckWindow(offset, bytes));
    co_return co_await file_->Discard(offset + offset_, bytes);
  }

  Task<absl::StatusOr<BlockStatus>> GetBlockStatus(int64_t offset, int64_t bytes, bool) override {
    BlockStatus s;
    s.flags = kStatusRaw | kStatusOffsetValid;
    s.bytes = bytes;
    s.map = offset + offset_;
    s.file = file_;
    co_return s;
  }

  Task<absl::Status> Truncate(int64_t size, bool exact, PreallocMode mode, ReqFlags flags) override {
    if (size_) co_return ErrnoError(ENOTSUP, "Cannot resize fixed-size raw disks");
    if (kMaxLength - size < offset_) co_return ErrnoError(EINVAL, "Disk size too large for the chosen offset");
    co_return co_await file_->Truncate(size + offset_, exact, mode, flags);
  }

 private:
  // The guest window [offset, offset+size) that `values` ask for, checked against the file.
  absl::Status ParseWindow(const OptionValues& values, int64_t* offset_out,
                           std::optional<int64_t>* size_out) const {
    // Kept unsigned until it is checked against the file: QEMU's offset is a uint64_t.
    uint64_t offset = values.GetSize("offset");
    std::optional<uint64_t> size = values.FindSize("size");
    if (size && *size % kSectorSize) return ErrnoError(EINVAL, "Specified size is not multiple of 512");
    int64_t real = file_->node()->size();
    if (offset > static_cast<uint64_t>(real)) {
      return ErrnoError(EINVAL, absl::StrFormat("Offset (%d) cannot be greater than size of the "
                                                "containing file (%d)", offset, real));
    }
    *offset_out = static_cast<int64_t>(offset);
    *size_out = std::nullopt;
    if (size) {
      int64_t window = static_cast<int64_t>(std::min<uint64_t>(*size, kMaxLength));
      if (real - *offset_out < window) {
        return ErrnoError(EINVAL, absl::StrFormat("The sum of offset (%d) and size (%d) has to be "
                                                  "smaller or equal to the  actual size of the "
                                                  "containing file (%d)", *offset_out, window, real));
      }
      *size_out = window;
    }
    return absl::OkStatus();
  }

  // Writes must stay inside a fixed-size window.
  absl::Status CheckWindow(int64_t offset, int64_t bytes) const {
    if (size_ && (offset > *size_ || bytes > *size_ - offset)) {
      return ErrnoError(ENOSPC, absl::StrFormat("raw: write [%d, +%d) past the end of the %d-byte "
                                                "window", offset, bytes, *size_));
    }
    return absl::OkStatus();
  }

  Child* file_ = nullptr;
  int64_t offset_ = 0;
  std::optional<int64_t> size_;
};

std::unique_ptr<NodeDriver> Instantiate(Node& node) { return std::make_unique<RawNode>(node); }

// Creating a raw image is creating its protocol file, with the same options.
Task<absl::Status> Create(CreateContext& ctx) {
  absl::StatusOr<const Driver*> proto = ctx.graph.registry().ProtocolForFilename(ctx.filename);
  if (!proto.ok()) co_return proto.status();
  if (!(*proto)->create) {
    co_return ErrnoError(ENOTSUP, absl::StrFormat("Protocol driver '%s' does not support image "
                                                  "creation", (*proto)->name));
  }
  co_return co_await (*proto)->create(ctx);
}

}  // namespace

int Probe(const uint8_t*, size_t, std::string_view) { return 1; }

// qemu-img measure (QEMU's raw_measure): the virtual size, whatever is allocated (unallocated
// sectors count towards a raw file's size).
Task<absl::StatusOr<MeasureResult>> Measure(const OptionValues& v, Backend* in) {
  uint64_t required = in ? static_cast<uint64_t>(in->size())
                         : AlignUp<uint64_t>(v.FindSize("size").value_or(0), kSectorSize);
  co_return MeasureResult{.required = required, .fully_allocated = required};
}

// Options that change the data, as qemu-img's json: names show them (see Driver).
constexpr std::string_view kStrongOptions[] = {"offset", "size"};

const Driver kDriver = {
    .name = "raw",
    .kind = DriverKind::kFormat,
    .options = &kSchema,
    .create_options = &kCreateSchema,
    .probe = Probe,
    .instantiate = Instantiate,
    .create = Create,
    .strong_options = kStrongOptions,
    .measure = Measure,
};

}  // namespace libblock::raw
