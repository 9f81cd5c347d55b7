// Internal snapshots of a node (QEMU's block/snapshot.c): list, create, apply (goto) and
// delete, and the VM-state area savevm/loadvm use. Each operation drains the node first (no
// request of its parents is in flight while the format changes its tables).
//
// A node whose driver keeps no snapshots hands the operation to its primary child when that
// is its only child (QEMU's bdrv_snapshot_fallback: filters, raw over an image file); others
// fail with ENOTSUP.
#ifndef LIBBLOCK_CORE_SNAPSHOT_H_
#define LIBBLOCK_CORE_SNAPSHOT_H_

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "core/driver.h"
#include "core/node.h"
#include "core/task.h"

namespace libblock {

// The node whose driver holds `node`'s snapshots, or null.
Node* SnapshotHolder(Node& node);

// QEMU's bdrv_snapshot_find: the snapshot whose id is `id_or_name`, else the first whose
// name is.
std::optional<SnapshotInfo> FindSnapshot(const std::vector<SnapshotInfo>& list,
                                         std::string_view id_or_name);

Task<absl::StatusOr<std::vector<SnapshotInfo>>> ListSnapshots(Node& node);
// `sn.id` empty: the next free id, set in `sn`. The node must be writable.
Task<absl::Status> CreateSnapshot(Node& node, SnapshotInfo& sn);
// Reverts to the snapshot `id_or_name` names (FindSnapshot's rule).
Task<absl::Status> ApplySnapshot(Node& node, std::string_view id_or_name);
// Deletes the snapshot with this id and name.
Task<absl::Status> DeleteSnapshot(Node& node, const SnapshotKey& id, const SnapshotKey& name);
// Shows the snapshot with this id and name on a read-only node until it
// is closed (convert -l).
Task<absl::Status> LoadSnapshotTemporarily(Node& node, const SnapshotKey& id, const SnapshotKey& name);
// The current state's VM-state area, `pos` bytes in.
Task<absl::Status> SaveVmState(Node& node, int64_t pos, const void* buf, int64_t bytes);
Task<absl::Status> LoadVmState(Node& node, int64_t pos, void* buf, int64_t bytes);

// ---- VM snapshots (QEMU's savevm, loadvm, delvm, info snapshots) -------------------------
// One snapshot, by name, across the disks of a VM. The disks that take part are the
// writable ones (read-only disks are skipped, as QEMU skips them); each must hold internal
// snapshots. The VM state goes to the first of them (QEMU's vmstate node).

// Takes snapshot `name` of every disk, with `vm_state` saved into the first; all or none (a
// failure deletes what was taken). Older snapshots of that name are deleted afterwards, as
// savevm replaces them.
Task<absl::Status> SaveVmSnapshot(const std::vector<Node*>& disks, const std::string& name,
                                  const std::string& vm_state, uint64_t vm_clock_nsec);
// Reverts every disk to snapshot `name` and returns the saved VM state (`need_vm_state`:
// EINVAL for a disk-only snapshot, as loadvm refuses it). All or none: every disk is first
// checked to have the snapshot, then takes an undo snapshot, so that a failure midway
// reverts the disks already switched.
Task<absl::StatusOr<std::string>> LoadVmSnapshot(const std::vector<Node*>& disks,
                                                 const std::string& name, bool need_vm_state);
// Deletes snapshot `name` from every disk that has it; every disk is checked first (a disk
// that cannot change fails the call before anything is deleted). An I/O error midway leaves
// the disks after it with their snapshot (reported).
Task<absl::Status> DeleteVmSnapshot(const std::vector<Node*>& disks, const std::string& name);
// The snapshots of the VM-state disk whose name every other taking part also has.
Task<absl::StatusOr<std::vector<SnapshotInfo>>> ListVmSnapshots(const std::vector<Node*>& disks);

}  // namespace libblock

#endif  // LIBBLOCK_CORE_SNAPSHOT_H_
