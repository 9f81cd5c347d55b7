#include "core/commit.h"

#include <cerrno>
#include <climits>
#include <cstdlib>
#include <memory>
#include <vector>

#include "absl/strings/str_format.h"
#include "core/block_status.h"
#include "core/event_loop.h"
#include "core/graph.h"
#include "core/info.h"
#include "core/transaction.h"
#include "util/status.h"

namespace libblock {

namespace {

constexpr int64_t kChunk = 1 << 20;  // bytes per copy step (QEMU's commit buffer size)

std::string RealPath(const std::string& path) {
  char buf[PATH_MAX];
  return realpath(path.c_str(), buf) ? std::string(buf) : path;
}

// The node below `n` along the backing chain (filters passed), or null.
Node* NextInChain(Node& n) {
  for (Node* cur = &n; cur;) {
    if (Child* b = BackingChild(*cur)) return b->node();
    Child* p = cur->primary_child();
    if (!p || cur->driver().kind != DriverKind::kFilter) return nullptr;
    cur = p->node();
  }
  return nullptr;
}

}  // namespace

Node* FindBackingImage(Node& top, std::string_view name) {
  const std::string want = RealPath(std::string(name));
  for (Node* above = &top; above;) {
    Node* below = NextInChain(*above);
    if (!below) return nullptr;
    ImageInfo info;
    bool stored = above->impl()->GetImageInfo(info).ok() && info.backing_filename &&
                  *info.backing_filename == name;
    if (stored || RealPath(DisplayFilename(*below)) == want) return below;
    above = below;
  }
  return nullptr;
}

namespace {

// The copy: every range allocated above `base`, read through `top`, written to `dst`.
Task<absl::Status> CopyAbove(Backend& top, Node* base, Backend& dst, const CommitOptions& opts) {
  const int64_t total = top.size();
  if (dst.size() < total) LB_CO_RETURN_IF_ERROR(co_await dst.Truncate(total, false, PreallocMode::kOff));
  std::vector<uint8_t> buf(static_cast<size_t>(kChunk));
  const int64_t start_ns = EventLoop::NowNs();
  int64_t copied = 0;
  for (int64_t offset = 0; offset < total;) {
    absl::StatusOr<BlockStatus> st = co_await BlockStatusAbove(
        *top.root_child(), base, GuestOffset(offset), std::min(kChunk, total - offset), true);
    if (!st.ok()) co_return st.status();
    const int64_t n = st->bytes;
    if (n <= 0) break;
    if (st->flags & kStatusAllocated) {
      if (st->flags & kStatusZero) {
        LB_CO_RETURN_IF_ERROR(co_await dst.WriteZeroes(offset, n, 0));
      } else {
        IoVec v(buf.data(), static_cast<size_t>(n));
        LB_CO_RETURN_IF_ERROR(co_await top.Read(offset, n, v));
        LB_CO_RETURN_IF_ERROR(co_await dst.Write(offset, n, v, 0));
      }
      copied += n;
      if (opts.rate_limit) {
        // Ahead of the allowed rate: wait until the bytes copied are due.
        const int64_t due = start_ns + static_cast<int64_t>(static_cast<double>(copied) * 1e9 /
                                                            static_cast<double>(opts.rate_limit));
        const int64_t now = EventLoop::NowNs();
        if (due > now) co_await top.graph().loop().Sleep(due - now);
      }
    }
    offset += n;
    if (opts.progress) opts.progress(static_cast<uint64_t>(offset), static_cast<uint64_t>(total));
  }
  co_return co_await dst.Flush();
}

Task<absl::Status> MakeEmptyDrained(Graph& graph, Node& node) {
  DrainedSection drained(graph, node);
  co_await drained.Wait();
  co_return co_await node.impl()->MakeEmpty();
}

}  // namespace

static absl::Status CommitInto(Backend& top, Node* base, const CommitOptions& opts);

absl::Status Commit(Backend& top, const CommitOptions& opts) {
  Node* root = top.root();
  if (!root) return ErrnoError(EINVAL, "the backend has no node");
  Node* base = opts.base ? opts.base : NextInChain(*root);
  if (!base) return ErrnoError(ENOTSUP, "Image does not have a backing file");
  Graph& graph = top.graph();
  // The images above the base let it be written meanwhile, whatever their users share (QEMU's
  // commit filters do the same): the ranges written are ones they shadow.
  std::vector<Node*> above;
  for (Node* n = root; n && n != base; n = NextInChain(*n)) above.push_back(n);
  auto allow = [&](bool on) {
    for (Node* n : above) n->set_backing_writes_allowed(on);
    Transaction tran;
    absl::Status st = graph.RefreshPerms({root}, tran, /*relaxing=*/on);
    if (st.ok()) st = graph.Commit(tran);
    return st;
  };
  LB_RETURN_IF_ERROR(allow(true));
  absl::Status result = CommitInto(top, base, opts);
  absl::Status restored = allow(false);
  if (result.ok()) result = restored;
  if (!result.ok() || opts.keep_top || opts.base) return result;
  // The top reads through to the base again; a format that cannot be emptied stays as it is
  // (qemu-img ignores ENOTSUP there).
  if (!root->impl()->SupportsMakeEmpty()) return absl::OkStatus();
  return graph.loop().Run(MakeEmptyDrained(graph, *root));
}

static absl::Status CommitInto(Backend& top, Node* base, const CommitOptions& opts) {
  Graph& graph = top.graph();
  const bool was_read_only = base->flags().read_only;
  if (was_read_only) LB_RETURN_IF_ERROR(graph.Reopen(*base, /*read_only=*/false));
  absl::Status result;
  {
    BackendOptions bo;
    bo.name = "commit";
    bo.share_all = true;
    bo.resize = true;
    absl::StatusOr<std::unique_ptr<Backend>> out = Backend::Attach(graph, *base, bo);
    if (!out.ok()) {
      result = out.status();
    } else {
      result = graph.loop().Run(CopyAbove(top, base, **out, opts));
      absl::Status closed = (*out)->Close();
      if (result.ok()) result = closed;
    }
  }
  if (was_read_only) {
    absl::Status st = graph.Reopen(*base, /*read_only=*/true);
    if (result.ok()) result = st;
  }
  return result;
}

}  // namespace libblock
