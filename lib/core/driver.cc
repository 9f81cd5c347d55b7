// Default behaviour of NodeDriver operations and the pass-through FilterDriver.
#include "core/driver.h"

#include <cerrno>

#include "absl/strings/str_format.h"
#include "core/graph.h"
#include "core/node.h"
#include "util/status.h"

namespace libblock {

std::string_view PreallocModeName(PreallocMode mode) {
  switch (mode) {
    case PreallocMode::kOff: return "off";
    case PreallocMode::kMetadata: return "metadata";
    case PreallocMode::kFalloc: return "falloc";
    case PreallocMode::kFull: return "full";
  }
  return "off";
}

absl::StatusOr<PreallocMode> ParsePreallocMode(std::string_view text) {
  if (text == "off") return PreallocMode::kOff;
  if (text == "metadata") return PreallocMode::kMetadata;
  if (text == "falloc") return PreallocMode::kFalloc;
  if (text == "full") return PreallocMode::kFull;
  return ErrnoError(EINVAL, absl::StrFormat("Invalid preallocation mode: '%s'", text));
}

void NodeDriver::ChildPerm(const Child& child, Perm perm, Perm shared, Perm* nperm,
                           Perm* nshared) {
  ChildPermContext ctx;
  ctx.parent_writable = !node().EffectiveReadOnly();
  ctx.backing_may_change = node().backing_writes_allowed();
  DefaultChildPerm(child.role(), ctx, perm, shared, nperm, nshared);
}

absl::StatusOr<int64_t> NodeDriver::GetAllocatedSize() {
  // QEMU's default: the sum over the children that store this node's data.
  int64_t total = 0;
  bool any = false;
  for (Child* c : node().children()) {
    if (!(c->role() & (kRoleData | kRoleMetadata | kRoleFiltered))) continue;
    LB_ASSIGN_OR_RETURN(int64_t size, c->node()->impl()->GetAllocatedSize());
    total += size;
    any = true;
  }
  if (!any) return ErrnoError(ENOTSUP, "allocated size unknown");
  return total;
}

absl::Status NodeDriver::GetImageInfo(ImageInfo& info) {
  if (Child* c = node().primary_child()) return c->node()->impl()->GetImageInfo(info);
  return ErrnoError(ENOTSUP, "no image information");
}

Node* BlockStatus::file_node() const { return file ? file->node() : nullptr; }

namespace {

// The child whose data a filter passes through (QEMU's bdrv_filter_child), or null.
Child* FilteredChild(const Node& node) {
  if (node.driver().kind != DriverKind::kFilter) return nullptr;
  for (Child* c : node.children()) {
    if (c->role() & kRoleFiltered) return c;
  }
  return nullptr;
}

}  // namespace

namespace {
absl::Status NoSnapshots(const Node& node) {
  return ErrnoError(ENOTSUP, absl::StrFormat("Block format '%s' used by node '%s' does not "
                                             "support internal snapshots",
                                             node.driver().name, node.name()));
}
}  // namespace

Task<absl::Status> NodeDriver::ChangeBackingFile(const std::optional<std::string>&,
                                                 const std::optional<std::string>&) {
  co_return ErrnoError(ENOTSUP, "Operation not supported");
}

Task<absl::Status> NodeDriver::MakeEmpty() {
  co_return ErrnoError(ENOTSUP, absl::StrFormat("Block format '%s' cannot be emptied",
                                                node().driver().name));
}

Task<absl::StatusOr<std::vector<SnapshotInfo>>> NodeDriver::ListSnapshots() {
  co_return NoSnapshots(node());
}
Task<absl::Status> NodeDriver::CreateSnapshot(SnapshotInfo&) { co_return NoSnapshots(node()); }
Task<absl::Status> NodeDriver::ApplySnapshot(const SnapshotKey&, const SnapshotKey&) {
  co_return NoSnapshots(node());
}
Task<absl::Status> NodeDriver::DeleteSnapshot(const SnapshotKey&, const SnapshotKey&) {
  co_return NoSnapshots(node());
}
Task<absl::Status> NodeDriver::VmStateIo(int64_t, void*, int64_t, bool) {
  co_return NoSnapshots(node());
}
Task<absl::Status> NodeDriver::LoadSnapshotTemporarily(const SnapshotKey&, const SnapshotKey&) {
  co_return NoSnapshots(node());
}

bool NodeDriver::HasZeroInit() {
  // A filter shows its child's data; any other driver must say so itself (the safe default:
  // a format's metadata may make a new image read as anything).
  if (Child* c = FilteredChild(node())) return libblock::HasZeroInit(*c->node());
  return false;
}

bool HasZeroInit(Node& node) {
  // A copy-on-write image starts as its backing file's contents, which need not be zeroes.
  for (Child* c : node.children()) {
    if (c->role() & kRoleCow) return false;
  }
  return node.impl()->HasZeroInit();
}

absl::StatusOr<BlockSizes> NodeDriver::ProbeBlockSizes() {
  // Filters and raw without an offset see their child's block sizes.
  if (Child* c = node().primary_child()) return c->node()->impl()->ProbeBlockSizes();
  return ErrnoError(ENOTSUP, "block sizes unknown");
}

Task<absl::Status> NodeDriver::WriteZeroes(int64_t, int64_t, ReqFlags) {
  co_return ErrnoError(ENOTSUP, "write-zeroes not supported");
}

Task<absl::Status> NodeDriver::Discard(int64_t, int64_t) {
  co_return ErrnoError(ENOTSUP, "discard not supported");
}

Task<absl::StatusOr<BlockStatus>> NodeDriver::GetBlockStatus(int64_t offset, int64_t bytes, bool) {
  BlockStatus s;
  s.flags = kStatusData | kStatusAllocated;
  s.bytes = bytes;
  co_return s;
}

Task<absl::Status> NodeDriver::Truncate(int64_t, bool, PreallocMode, ReqFlags) {
  co_return ErrnoError(ENOTSUP, "Image format driver does not support resize");
}

// ---- FilterDriver ------------------------------------------------------------------------------

Task<absl::Status> FilterDriver::OpenFiltered(OpenContext& ctx) {
  absl::StatusOr<Child*> child =
      co_await ctx.OpenChild("file", kRoleFiltered | kRolePrimary, /*allow_none=*/false);
  if (!child.ok()) co_return child.status();
  filtered_ = *child;
  const Capabilities& below = filtered_->node()->impl()->caps();
  caps_.write_zeroes = true;
  caps_.discard = true;
  caps_.truncate = below.truncate;
  caps_.block_status = true;
  caps_.write_flags = below.write_flags;
  caps_.zero_flags = below.zero_flags | kReqMayUnmap | kReqNoFallback;
  co_return absl::OkStatus();
}

absl::StatusOr<int64_t> FilterDriver::GetLength() { return filtered_->node()->size(); }

Task<absl::Status> FilterDriver::Read(int64_t offset, int64_t bytes, const IoVec& qiov,
                                      ReqFlags flags) {
  co_return co_await filtered_->Read(offset, bytes, qiov, flags);
}

Task<absl::Status> FilterDriver::Write(int64_t offset, int64_t bytes, const IoVec& qiov,
                                       ReqFlags flags) {
  co_return co_await filtered_->Write(offset, bytes, qiov, flags);
}

Task<absl::Status> FilterDriver::WriteZeroes(int64_t offset, int64_t bytes, ReqFlags flags) {
  co_return co_await filtered_->WriteZeroes(offset, bytes, flags);
}

Task<absl::Status> FilterDriver::Discard(int64_t offset, int64_t bytes) {
  co_return co_await filtered_->Discard(offset, bytes);
}

Task<absl::StatusOr<BlockStatus>> FilterDriver::GetBlockStatus(int64_t offset, int64_t bytes,
                                                               bool) {
  BlockStatus s;
  s.flags = kStatusRaw | kStatusOffsetValid;
  s.bytes = bytes;
  s.map = offset;
  s.file = filtered_;
  co_return s;
}

Task<absl::Status> FilterDriver::Truncate(int64_t size, bool exact, PreallocMode mode,
                                          ReqFlags flags) {
  co_return co_await filtered_->Truncate(size, exact, mode, flags);
}

}  // namespace libblock
