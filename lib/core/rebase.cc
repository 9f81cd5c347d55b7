#include "core/rebase.h"

#include <cerrno>
#include <cstring>
#include <memory>
#include <vector>

#include "absl/strings/str_format.h"
#include "core/block_status.h"
#include "core/graph.h"
#include "core/info.h"
#include "util/checked_math.h"
#include "util/status.h"

namespace libblock {

namespace {

constexpr int64_t kChunk = 2 << 20;  // QEMU's IO_BUF_SIZE

// Writes into the image the old content of every unallocated sector where `next` (null: a
// backing file of zeroes) reads differently.
Task<absl::Status> CopyDifferences(Backend& be, Node* old_backing, Backend* next,
                                   const RebaseOptions& opts) {
  const int64_t size = be.size();
  const int64_t next_size = next ? next->size() : 0;
  std::vector<uint8_t> old_buf(static_cast<size_t>(kChunk)), new_buf(static_cast<size_t>(kChunk));
  for (int64_t offset = 0; offset < size;) {
    const int64_t want = std::min(kChunk, size - offset);
    absl::StatusOr<BlockStatus> st = co_await BlockStatusAbove(*be.root_child(), old_backing,
                                                               GuestOffset(offset), want, false);
    if (!st.ok()) co_return st.status();
    const int64_t n = st->bytes;
    if (n <= 0) break;
    if (!(st->flags & kStatusAllocated)) {
      IoVec ov(old_buf.data(), static_cast<size_t>(n));
      LB_CO_RETURN_IF_ERROR(co_await be.Read(offset, n, ov));
      std::memset(new_buf.data(), 0, static_cast<size_t>(n));
      const int64_t from_next = std::clamp<int64_t>(next_size - offset, 0, n);
      if (from_next > 0) {
        IoVec nv(new_buf.data(), static_cast<size_t>(from_next));
        LB_CO_RETURN_IF_ERROR(co_await next->Read(offset, from_next, nv));
      }
      // Runs of differing 512-byte sectors (QEMU's compare_buffers granularity).
      for (int64_t s = 0; s < n;) {
        auto differs = [&](int64_t at) {
          int64_t len = std::min<int64_t>(kSectorSize, n - at);
          return std::memcmp(old_buf.data() + at, new_buf.data() + at, static_cast<size_t>(len)) != 0;
        };
        if (!differs(s)) {
          s += kSectorSize;
          continue;
        }
        int64_t e = s;
        while (e < n && differs(e)) e += kSectorSize;
        e = std::min(e, n);
        IoVec wv(old_buf.data() + s, static_cast<size_t>(e - s));
        LB_CO_RETURN_IF_ERROR(co_await be.Write(offset + s, e - s, wv));
        s = e;
      }
    }
    offset += n;
    if (opts.progress) opts.progress(static_cast<uint64_t>(offset), static_cast<uint64_t>(size));
  }
  co_return co_await be.Flush();
}

Task<absl::Status> ChangeBacking(Node& node, const RebaseOptions& opts) {
  // Named locals: GCC 12 destroys temporaries of a co_await operand twice.
  std::optional<std::string> name, format;
  if (!opts.backing.empty()) {
    name = opts.backing;
    format = opts.format;
  }
  absl::Status st = co_await node.impl()->ChangeBackingFile(name, format);
  co_return st;
}

}  // namespace

absl::Status Rebase(Backend& be, const RebaseOptions& opts) {
  Node* root = be.root();
  if (!root) return ErrnoError(EINVAL, "the backend has no node");
  if (!opts.backing.empty() && !opts.format) {
    return ErrnoError(EINVAL, "backing format must be specified");
  }
  Graph& graph = be.graph();
  if (opts.unsafe) return graph.loop().Run(ChangeBacking(*root, opts));

  std::unique_ptr<Backend> next;
  if (!opts.backing.empty()) {
    absl::StatusOr<std::string> path = ResolveBackingName(DisplayFilename(*root), opts.backing);
    if (!path.ok()) return path.status();
    Options o = opts.backing_options;
    o.Set("driver", *opts.format);
    o.Set("read-only", true);
    absl::StatusOr<Node*> node = graph.Open(*path, std::move(o));
    if (!node.ok()) {
      return Prepend(node.status(), absl::StrFormat("Could not open new backing file '%s': ",
                                                    opts.backing));
    }
    BackendOptions bo;
    bo.read_only = true;
    bo.share_all = true;
    absl::StatusOr<std::unique_ptr<Backend>> attached = Backend::Attach(graph, **node, bo);
    graph.Unref(*node);
    if (!attached.ok()) return attached.status();
    next = std::move(*attached);
  }
  Child* old_edge = BackingChild(*root);
  LB_RETURN_IF_ERROR(graph.loop().Run(
      CopyDifferences(be, old_edge ? old_edge->node() : nullptr, next.get(), opts)));
  LB_RETURN_IF_ERROR(graph.loop().Run(ChangeBacking(*root, opts)));
  // The graph follows the header: the node reads through the new backing file now.
  absl::Status st;
  if (next) {
    Node* nb = next->root();
    st = old_edge ? graph.ReplaceChild(old_edge, *nb)
                  : graph.AttachChild(*root, *nb, "backing", kRoleCow).status();
  } else if (old_edge) {
    graph.DetachChild(old_edge);
  }
  if (next) {
    absl::Status closed = next->Close();
    if (st.ok()) st = closed;
  }
  return st;
}

}  // namespace libblock
