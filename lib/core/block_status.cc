// Block status above a base: the walk down a backing chain (see block_status.h).
#include "core/block_status.h"

#include <algorithm>

#include "core/info.h"

namespace libblock {
namespace {

// The next layer below `node` for a range it leaves unallocated: a filter's filtered child,
// or a format's backing child.
Child* NextLayer(const Node& node) {
  if (node.driver().kind == DriverKind::kFilter) {
    for (Child* c : node.children()) {
      if (c->role() & kRoleFiltered) return c;
    }
    return nullptr;
  }
  return BackingChild(node);
}

}  // namespace

Task<absl::StatusOr<BlockStatus>> BlockStatusAbove(Child& top, Node* base, GuestOffset start,
                                                   int64_t bytes, bool want_zero) {
  int64_t offset = start.value();
  Child* layer = &top;
  int depth = 0;
  BlockStatus out;
  for (;;) {
    if (layer->node() == base) {
      // Nothing above the base provides the range.
      out = BlockStatus{};
      out.bytes = bytes;
      break;
    }
    absl::StatusOr<BlockStatus> r = co_await layer->GetBlockStatus(offset, bytes, want_zero);
    if (!r.ok()) co_return r;
    out = *r;
    if (out.bytes == 0) {
      if (layer == &top) break;  // at or past the end of the top node
      // Past the end of a shorter lower layer: it reads as zeroes, and that layer decided it.
      out.flags = kStatusZero | kStatusAllocated;
      out.bytes = bytes;
      out.file = nullptr;
      break;
    }
    if (out.flags & (kStatusAllocated | kStatusZero)) break;
    Child* next = NextLayer(*layer->node());
    if (!next) break;
    if (next->role() & kRoleCow) ++depth;
    bytes = out.bytes;
    layer = next;
  }
  out.depth = depth;
  out.layer = layer;
  // End of file is the top node's, not that of the layer that answered.
  out.flags &= ~kStatusEof;
  if (offset + out.bytes >= top.node()->size()) out.flags |= kStatusEof;
  co_return out;
}

Task<absl::StatusOr<AllocationAbove>> IsAllocatedAbove(Child& top, Node* base,
                                                       GuestOffset offset, int64_t bytes) {
  absl::StatusOr<BlockStatus> s = co_await BlockStatusAbove(top, base, offset, bytes, false);
  if (!s.ok()) co_return s.status();
  AllocationAbove a;
  a.allocated = (s->flags & kStatusAllocated) != 0;
  a.bytes = s->bytes;
  a.depth = s->depth;
  co_return a;
}

}  // namespace libblock
