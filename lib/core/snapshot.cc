#include "core/snapshot.h"

#include <cerrno>

#include "absl/strings/str_format.h"
#include "core/graph.h"
#include "util/status.h"

namespace libblock {

Node* SnapshotHolder(Node& node) {
  Node* n = &node;
  while (n && !n->impl()->SupportsSnapshots()) {
    Child* primary = n->primary_child();
    if (!primary || n->children().size() != 1) return nullptr;
    n = primary->node();
  }
  return n;
}

std::optional<SnapshotInfo> FindSnapshot(const std::vector<SnapshotInfo>& list,
                                         std::string_view id_or_name) {
  for (const SnapshotInfo& s : list) {
    if (s.id == id_or_name) return s;
  }
  for (const SnapshotInfo& s : list) {
    if (s.name == id_or_name) return s;
  }
  return std::nullopt;
}

namespace {

absl::StatusOr<Node*> Holder(Node& node) {
  Node* holder = SnapshotHolder(node);
  if (!holder) {
    return ErrnoError(ENOTSUP, absl::StrFormat("Block format '%s' used by node '%s' does not "
                                               "support internal snapshots",
                                               node.driver().name, node.name()));
  }
  return holder;
}

absl::StatusOr<Node*> WritableHolder(Node& node) {
  LB_ASSIGN_OR_RETURN(Node* holder, Holder(node));
  if (holder->flags().read_only) {
    return ErrnoError(EACCES, absl::StrFormat("node '%s' is read-only: internal snapshots "
                                              "cannot change", holder->name()));
  }
  return holder;
}

}  // namespace

Task<absl::StatusOr<std::vector<SnapshotInfo>>> ListSnapshots(Node& node) {
  absl::StatusOr<Node*> holder = Holder(node);
  if (!holder.ok()) co_return holder.status();
  co_return co_await (*holder)->impl()->ListSnapshots();
}

Task<absl::Status> CreateSnapshot(Node& node, SnapshotInfo& sn) {
  absl::StatusOr<Node*> holder = WritableHolder(node);
  if (!holder.ok()) co_return holder.status();
  DrainedSection drained(node.graph(), node);
  co_await drained.Wait();
  co_return co_await (*holder)->impl()->CreateSnapshot(sn);
}

Task<absl::Status> ApplySnapshot(Node& node, std::string_view id_or_name) {
  absl::StatusOr<Node*> holder = WritableHolder(node);
  if (!holder.ok()) co_return holder.status();
  DrainedSection drained(node.graph(), node);
  co_await drained.Wait();
  absl::StatusOr<std::vector<SnapshotInfo>> list = co_await (*holder)->impl()->ListSnapshots();
  if (!list.ok()) co_return list.status();
  std::optional<SnapshotInfo> sn = FindSnapshot(*list, id_or_name);
  if (!sn) co_return ErrnoError(ENOENT, "Failed to load snapshot: No such file or directory");
  absl::Status st = co_await (*holder)->impl()->ApplySnapshot(sn->id, sn->name);
  // Every node between the caller's and the holder follows the size the snapshot had.
  for (Node* n = &node; n && n != *holder; n = n->primary_child()->node()) {
    absl::Status refreshed = n->RefreshSize();
    if (st.ok()) st = refreshed;
  }
  co_return st;
}

Task<absl::Status> DeleteSnapshot(Node& node, const std::string& id, const std::string& name) {
  absl::StatusOr<Node*> holder = WritableHolder(node);
  if (!holder.ok()) co_return holder.status();
  DrainedSection drained(node.graph(), node);
  co_await drained.Wait();
  co_return co_await (*holder)->impl()->DeleteSnapshot(id, name);
}

Task<absl::Status> SaveVmState(Node& node, int64_t pos, const void* buf, int64_t bytes) {
  absl::StatusOr<Node*> holder = WritableHolder(node);
  if (!holder.ok()) co_return holder.status();
  co_return co_await (*holder)->impl()->VmStateIo(pos, const_cast<void*>(buf), bytes, true);
}

Task<absl::Status> LoadVmState(Node& node, int64_t pos, void* buf, int64_t bytes) {
  absl::StatusOr<Node*> holder = Holder(node);
  if (!holder.ok()) co_return holder.status();
  co_return co_await (*holder)->impl()->VmStateIo(pos, buf, bytes, false);
}

}  // namespace libblock
