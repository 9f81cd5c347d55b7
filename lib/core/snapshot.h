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
// Deletes the snapshot with this id and name (either may be empty: not compared).
Task<absl::Status> DeleteSnapshot(Node& node, const std::string& id, const std::string& name);
// The current state's VM-state area, `pos` bytes in.
Task<absl::Status> SaveVmState(Node& node, int64_t pos, const void* buf, int64_t bytes);
Task<absl::Status> LoadVmState(Node& node, int64_t pos, void* buf, int64_t bytes);

}  // namespace libblock

#endif  // LIBBLOCK_CORE_SNAPSHOT_H_
