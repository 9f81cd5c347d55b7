// Block status of a backing chain (QEMU's bdrv_block_status_above / bdrv_is_allocated_above):
// which layer of `top`'s chain provides a range, and what it reads as.
//
// The walk starts at `top`'s node and follows, from each layer that leaves the range
// unallocated, its filtered child (filters) or its backing child (cow), down to — not
// including — `base`. Each layer is asked through Child::GetBlockStatus, which resolves
// pass-through (raw, filters) and recurse answers. The walk stops at the first layer that
// allocates the range or says it reads as zeroes (a format without a backing file, or whose
// backing file ends before the range), at `base`, or at the bottom of the chain.
#ifndef LIBBLOCK_CORE_BLOCK_STATUS_H_
#define LIBBLOCK_CORE_BLOCK_STATUS_H_

#include <cstdint>

#include "absl/status/statusor.h"
#include "core/driver.h"
#include "core/node.h"
#include "core/offset.h"
#include "core/task.h"

namespace libblock {

// The status of [offset, offset + bytes) of `top`'s node (offsets in its own address space),
// as seen above `base` (exclusive; nullptr: the whole chain). The result's `bytes` may be
// shorter than asked. Its `depth` is the number of backing steps from the top to the layer
// that decided (filters do not count, as in qemu-img map), and `layer` the edge to that layer;
// `file` is the edge through which the data is read (file_node() is the node holding it).
// A range that no layer above `base` allocates has no kStatusAllocated (and, when the walk
// reached `base`, no other flag but kStatusEof). kStatusEof says the range reaches the end of
// `top`'s node. A range at or past the end of the top node gives bytes == 0 and kStatusEof.
Task<absl::StatusOr<BlockStatus>> BlockStatusAbove(Child& top, Node* base, GuestOffset offset,
                                                   int64_t bytes, bool want_zero = true);

// Whether some layer of `top`'s chain above `base` (exclusive) provides the data of
// [offset, offset + *bytes): QEMU's bdrv_is_allocated_above, for stream, commit, convert -B
// and rebase. `bytes` in the result is how far the answer holds.
struct AllocationAbove {
  bool allocated = false;
  int64_t bytes = 0;
  int depth = 0;  // backing steps below the top to the layer that allocates it
};
Task<absl::StatusOr<AllocationAbove>> IsAllocatedAbove(Child& top, Node* base,
                                                       GuestOffset offset, int64_t bytes);

}  // namespace libblock

#endif  // LIBBLOCK_CORE_BLOCK_STATUS_H_
