#include "core/snapshot.h"

#include <cerrno>
#include <ctime>

#include "absl/strings/str_format.h"
#include "core/graph.h"
#include "core/info.h"
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
  // Named SnapshotKeys: GCC 12 destroys converted temporaries of a co_await operand twice.
  const SnapshotKey id(sn->id), name(sn->name);
  absl::Status st = co_await (*holder)->impl()->ApplySnapshot(id, name);
  // Every node between the caller's and the holder follows the size the snapshot had.
  for (Node* n = &node; n && n != *holder; n = n->primary_child()->node()) {
    absl::Status refreshed = n->RefreshSize();
    if (st.ok()) st = refreshed;
  }
  co_return st;
}

Task<absl::Status> DeleteSnapshot(Node& node, const SnapshotKey& id, const SnapshotKey& name) {
  absl::StatusOr<Node*> holder = WritableHolder(node);
  if (!holder.ok()) co_return holder.status();
  DrainedSection drained(node.graph(), node);
  co_await drained.Wait();
  co_return co_await (*holder)->impl()->DeleteSnapshot(id, name);
}

Task<absl::Status> LoadSnapshotTemporarily(Node& node, const SnapshotKey& id, const SnapshotKey& name) {
  Node* holder = SnapshotHolder(node);
  if (!holder) {
    co_return ErrnoError(ENOTSUP, absl::StrFormat("Block format '%s' used by device '' does not "
                                                  "support temporarily loading internal "
                                                  "snapshots", node.driver().name));
  }
  if (!node.flags().read_only || !holder->flags().read_only) {
    co_return ErrnoError(EPERM, absl::StrFormat("Device '%s' is writable: a snapshot is loaded "
                                                "temporarily only read-only",
                                                DisplayFilename(node)));
  }
  DrainedSection drained(node.graph(), node);
  co_await drained.Wait();
  absl::Status st = co_await holder->impl()->LoadSnapshotTemporarily(id, name);
  for (Node* n = &node; n && n != holder; n = n->primary_child()->node()) {
    absl::Status refreshed = n->RefreshSize();
    if (st.ok()) st = refreshed;
  }
  co_return st;
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

// ---- VM snapshots ------------------------------------------------------------------------------

namespace libblock {
namespace {

// The disks that take part (writable ones), each holding snapshots.
absl::StatusOr<std::vector<Node*>> Participants(const std::vector<Node*>& disks) {
  std::vector<Node*> out;
  for (Node* n : disks) {
    if (n->flags().read_only) continue;
    if (!SnapshotHolder(*n)) {
      return ErrnoError(ENOTSUP, absl::StrFormat("Device '%s' is writable but does not support "
                                                 "snapshots", DisplayFilename(*n)));
    }
    out.push_back(n);
  }
  if (out.empty()) {
    return ErrnoError(ENOTSUP, "No block device can accept snapshots");
  }
  return out;
}

// The snapshots of `n` named `name`, in table order.
Task<absl::StatusOr<std::vector<SnapshotInfo>>> Named(Node& n, const std::string& name) {
  absl::StatusOr<std::vector<SnapshotInfo>> list = co_await ListSnapshots(n);
  if (!list.ok()) co_return list.status();
  std::vector<SnapshotInfo> out;
  for (SnapshotInfo& s : *list) {
    if (s.name == name) out.push_back(std::move(s));
  }
  co_return out;
}

SnapshotInfo Now(const std::string& name, uint64_t vm_state_size, uint64_t vm_clock_nsec) {
  struct timespec now;
  clock_gettime(CLOCK_REALTIME, &now);
  SnapshotInfo sn;
  sn.name = name;
  sn.vm_state_size = vm_state_size;
  sn.date_sec = static_cast<uint32_t>(now.tv_sec);
  sn.date_nsec = static_cast<uint32_t>(now.tv_nsec);
  sn.vm_clock_nsec = vm_clock_nsec;
  return sn;
}

}  // namespace

Task<absl::Status> SaveVmSnapshot(const std::vector<Node*>& disks, const std::string& name,
                                  const std::string& vm_state, uint64_t vm_clock_nsec) {
  absl::StatusOr<std::vector<Node*>> nodes = Participants(disks);
  if (!nodes.ok()) co_return nodes.status();
  if (name.empty()) co_return ErrnoError(EINVAL, "A VM snapshot needs a name");
  // The snapshots this replaces, found before any is taken.
  std::vector<std::vector<SnapshotInfo>> older;
  for (Node* n : *nodes) {
    absl::StatusOr<std::vector<SnapshotInfo>> same = co_await Named(*n, name);
    if (!same.ok()) co_return same.status();
    older.push_back(std::move(*same));
  }
  Node& vmstate_disk = *nodes->front();
  if (!vm_state.empty()) {
    absl::Status st = co_await SaveVmState(vmstate_disk, 0, vm_state.data(),
                                           static_cast<int64_t>(vm_state.size()));
    if (!st.ok()) {
      co_return Prepend(st, absl::StrFormat("Error while saving the VM state to '%s': ",
                                            DisplayFilename(vmstate_disk)));
    }
  }
  std::vector<std::string> taken;
  for (size_t i = 0; i < nodes->size(); ++i) {
    Node* n = (*nodes)[i];
    SnapshotInfo sn = Now(name, i == 0 ? vm_state.size() : 0, vm_clock_nsec);
    absl::Status st = co_await CreateSnapshot(*n, sn);
    if (!st.ok()) {
      // All or none: the disks that took it give it back.
      for (size_t k = 0; k < taken.size(); ++k) {
        const SnapshotKey id(taken[k]), key(name);
        (void)co_await DeleteSnapshot(*(*nodes)[k], id, key);
      }
      co_return Prepend(st, absl::StrFormat("Error while creating snapshot on '%s': ",
                                            DisplayFilename(*n)));
    }
    taken.push_back(sn.id);
  }
  for (size_t i = 0; i < nodes->size(); ++i) {
    for (const SnapshotInfo& old : older[i]) {
      const SnapshotKey id(old.id), key(old.name);
      absl::Status st = co_await DeleteSnapshot(*(*nodes)[i], id, key);
      if (!st.ok()) {
        co_return Prepend(st, absl::StrFormat("Snapshot '%s' was taken, but its older namesake "
                                              "on '%s' could not be deleted: ", name,
                                              DisplayFilename(*(*nodes)[i])));
      }
    }
  }
  co_return absl::OkStatus();
}

Task<absl::StatusOr<std::string>> LoadVmSnapshot(const std::vector<Node*>& disks,
                                                 const std::string& name, bool need_vm_state) {
  absl::StatusOr<std::vector<Node*>> nodes = Participants(disks);
  if (!nodes.ok()) co_return nodes.status();
  // Every disk has it (the first of that name is the one reverted to, as loadvm finds it).
  std::vector<SnapshotInfo> targets;
  for (Node* n : *nodes) {
    absl::StatusOr<std::vector<SnapshotInfo>> same = co_await Named(*n, name);
    if (!same.ok()) co_return same.status();
    if (same->empty()) {
      co_return ErrnoError(ENOENT, absl::StrFormat("Snapshot '%s' does not exist in device '%s'",
                                                   name, DisplayFilename(*n)));
    }
    targets.push_back(same->front());
  }
  const uint64_t vm_state_size = targets.front().vm_state_size;
  if (need_vm_state && vm_state_size == 0) {
    co_return ErrnoError(EINVAL, "This is a disk-only snapshot. Revert to it offline using "
                                 "qemu-img");
  }
  if (vm_state_size > static_cast<uint64_t>(1) << 40) {
    co_return ErrnoError(EFBIG, absl::StrFormat("The VM state of snapshot '%s' is too large "
                                                "(%u bytes)", name, vm_state_size));
  }
  // Undo points: the current state of each disk, kept until every disk has switched.
  const std::string undo_name = absl::StrFormat("libblock-undo-%d", time(nullptr));
  std::vector<std::string> undo;
  auto drop_undo = [&]() -> Task<void> {
    for (size_t k = 0; k < undo.size(); ++k) {
      const SnapshotKey id(undo[k]), key(undo_name);
      (void)co_await DeleteSnapshot(*(*nodes)[k], id, key);
    }
  };
  for (Node* n : *nodes) {
    SnapshotInfo sn = Now(undo_name, 0, 0);
    absl::Status st = co_await CreateSnapshot(*n, sn);
    if (!st.ok()) {
      co_await drop_undo();
      co_return Prepend(st, absl::StrFormat("Could not prepare '%s' for the revert: ",
                                            DisplayFilename(*n)));
    }
    undo.push_back(sn.id);
  }
  for (size_t i = 0; i < nodes->size(); ++i) {
    absl::Status st = co_await ApplySnapshot(*(*nodes)[i], targets[i].id);
    if (!st.ok()) {
      for (size_t k = 0; k < i; ++k) (void)co_await ApplySnapshot(*(*nodes)[k], undo[k]);
      co_await drop_undo();
      co_return Prepend(st, absl::StrFormat("Error while reverting '%s' to snapshot '%s' "
                                            "(every disk is back as it was): ",
                                            DisplayFilename(*(*nodes)[i]), name));
    }
  }
  co_await drop_undo();
  std::string vm_state(static_cast<size_t>(vm_state_size), '\0');
  if (vm_state_size) {
    absl::Status st = co_await LoadVmState(*nodes->front(), 0, vm_state.data(),
                                           static_cast<int64_t>(vm_state_size));
    if (!st.ok()) co_return Prepend(st, "Error while loading the VM state: ");
  }
  co_return vm_state;
}

Task<absl::Status> DeleteVmSnapshot(const std::vector<Node*>& disks, const std::string& name) {
  absl::StatusOr<std::vector<Node*>> nodes = Participants(disks);
  if (!nodes.ok()) co_return nodes.status();
  std::vector<std::vector<SnapshotInfo>> found;
  bool any = false;
  for (Node* n : *nodes) {
    absl::StatusOr<std::vector<SnapshotInfo>> same = co_await Named(*n, name);
    if (!same.ok()) co_return same.status();
    any = any || !same->empty();
    found.push_back(std::move(*same));
  }
  if (!any) co_return ErrnoError(ENOENT, absl::StrFormat("Snapshot '%s' not found", name));
  for (size_t i = 0; i < nodes->size(); ++i) {
    for (const SnapshotInfo& sn : found[i]) {
      const SnapshotKey id(sn.id), key(sn.name);
      absl::Status st = co_await DeleteSnapshot(*(*nodes)[i], id, key);
      if (!st.ok()) {
        co_return Prepend(st, absl::StrFormat("Error while deleting snapshot on '%s': ",
                                              DisplayFilename(*(*nodes)[i])));
      }
    }
  }
  co_return absl::OkStatus();
}

Task<absl::StatusOr<std::vector<SnapshotInfo>>> ListVmSnapshots(const std::vector<Node*>& disks) {
  absl::StatusOr<std::vector<Node*>> nodes = Participants(disks);
  if (!nodes.ok()) co_return nodes.status();
  absl::StatusOr<std::vector<SnapshotInfo>> list = co_await ListSnapshots(*nodes->front());
  if (!list.ok()) co_return list.status();
  std::vector<SnapshotInfo> out;
  for (SnapshotInfo& sn : *list) {
    bool everywhere = true;
    for (size_t i = 1; i < nodes->size() && everywhere; ++i) {
      absl::StatusOr<std::vector<SnapshotInfo>> same = co_await Named(*(*nodes)[i], sn.name);
      if (!same.ok()) co_return same.status();
      everywhere = !same->empty();
    }
    if (everywhere) out.push_back(std::move(sn));
  }
  co_return out;
}

}  // namespace libblock
