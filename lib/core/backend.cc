#include "core/backend.h"

#include <cerrno>

#include "absl/strings/str_format.h"
#include "core/block_status.h"
#include "core/event_loop.h"
#include "core/info.h"
#include "util/checked_math.h"
#include "util/status.h"

namespace libblock {

Perm BackendDefaultPerm(const BackendOptions& opts) {
  if (opts.perm_override) return *opts.perm_override;
  Perm p = kPermConsistentRead;
  if (!opts.read_only) {
    p |= kPermWrite;
    if (opts.resize) p |= kPermResize;
  }
  return p;
}

Perm BackendDefaultShared(const BackendOptions& opts) {
  if (opts.shared_override) return *opts.shared_override;
  if (opts.share_all) return kPermAll;
  Perm s = kPermConsistentRead | kPermWriteUnchanged;
  if (opts.share_rw) s |= kPermWrite;
  return s;
}

absl::Status ApplyCacheMode(std::string_view mode, Options& options, bool* writethrough) {
  bool direct, no_flush = false;
  if (mode == "writeback") {
    direct = false;
    *writethrough = false;
  } else if (mode == "none" || mode == "off") {
    direct = true;
    *writethrough = false;
  } else if (mode == "writethrough") {
    direct = false;
    *writethrough = true;
  } else if (mode == "directsync") {
    direct = true;
    *writethrough = true;
  } else if (mode == "unsafe") {
    direct = false;
    no_flush = true;
    *writethrough = false;
  } else {
    return ErrnoError(EINVAL, absl::StrFormat("invalid cache option '%s' (expected writeback, "
                                              "none, writethrough, directsync or unsafe)",
                                              mode));
  }
  // Explicit cache.* options win over the shorthand, as in QEMU.
  options.SetDefault("cache.direct", direct);
  options.SetDefault("cache.no-flush", no_flush);
  return absl::OkStatus();
}

Backend::Backend(Graph& graph, BackendOptions opts)
    : graph_(graph), loop_(graph.loop()), opts_(std::move(opts)) {}

Backend::~Backend() { (void)Close(); }

std::string Backend::ParentDescription() const {
  if (opts_.name.empty()) return "an unnamed block device";
  return absl::StrFormat("block device '%s'", opts_.name);
}

void Backend::Orphaned(Child* child) {
  if (child == root_) root_ = nullptr;
  closed_ = true;
}

absl::StatusOr<std::unique_ptr<Backend>> Backend::Open(Graph& graph, std::string_view filename,
                                                       Options options, BackendOptions opts) {
  OpenParams params;
  if (std::optional<std::string> cache = options.GetString("cache")) {
    options.Erase("cache");
    bool wt = false;
    LB_RETURN_IF_ERROR(ApplyCacheMode(*cache, options, &wt));
    opts.writethrough = opts.writethrough || wt;
  }
  params.inherit.writethrough = opts.writethrough;
  if (opts.read_only) options.SetDefault("read-only", true);
  LB_ASSIGN_OR_RETURN(Node* node, graph.Open(filename, std::move(options), params));
  absl::StatusOr<std::unique_ptr<Backend>> be = Attach(graph, *node, std::move(opts));
  graph.Unref(node);  // the backend's edge holds it now (or it is closed on failure)
  return be;
}

absl::StatusOr<std::unique_ptr<Backend>> Backend::Attach(Graph& graph, Node& node,
                                                         BackendOptions opts) {
  std::unique_ptr<Backend> be(new Backend(graph, std::move(opts)));
  LB_ASSIGN_OR_RETURN(be->root_,
                      graph.AttachChild(*be, node, "root", kRoleData | kRolePrimary,
                                        BackendDefaultPerm(be->opts_), BackendDefaultShared(be->opts_)));
  return be;
}

int64_t Backend::size() const { return root_ ? root_->node()->size() : 0; }

absl::Status Backend::CheckRange(int64_t offset, int64_t bytes, bool write) const {
  if (!RangeIsValid(offset, bytes)) {
    return ErrnoError(EIO, absl::StrFormat("request [%d, +%d) is out of range", offset, bytes));
  }
  if (write && opts_.allow_write_beyond_eof) return absl::OkStatus();
  int64_t len = size();
  if (offset > len || bytes > len - offset) {
    return ErrnoError(EIO, absl::StrFormat("request [%d, +%d) is beyond the end of the device "
                                           "(%d bytes)", offset, bytes, len));
  }
  return absl::OkStatus();
}

Task<absl::Status> Backend::Admit() {
  while (quiesce_ > 0 && !closed_) {
    ++queued_count_;
    co_await queued_.Wait();
    --queued_count_;
  }
  if (closed_ || !root_) co_return ErrnoError(ECANCELED, "the block device is closed");
  ++in_flight_;
  co_return absl::OkStatus();
}

bool Backend::TryAdmit() {
  if (quiesce_ > 0 || closed_ || !root_) return false;
  ++in_flight_;
  return true;
}

void Backend::Leave() { --in_flight_; }

Task<absl::Status> Backend::Read(int64_t offset, int64_t bytes, const IoVec& qiov, ReqFlags flags) {
  if (!TryAdmit()) LB_CO_RETURN_IF_ERROR(co_await Admit());
  absl::Status st = CheckRange(offset, bytes, false);
  if (st.ok()) st = co_await root_->Read(offset, bytes, qiov, flags);
  Leave();
  co_return st;
}

Task<absl::Status> Backend::Write(int64_t offset, int64_t bytes, const IoVec& qiov, ReqFlags flags) {
  if (!TryAdmit()) LB_CO_RETURN_IF_ERROR(co_await Admit());
  if (opts_.writethrough) flags |= kReqFua;
  absl::Status st = CheckRange(offset, bytes, true);
  if (st.ok()) st = co_await root_->Write(offset, bytes, qiov, flags);
  Leave();
  co_return st;
}

Task<absl::Status> Backend::WriteZeroes(int64_t offset, int64_t bytes, ReqFlags flags) {
  LB_CO_RETURN_IF_ERROR(co_await Admit());
  if (opts_.writethrough) flags |= kReqFua;
  absl::Status st = CheckRange(offset, bytes, true);
  if (st.ok()) st = co_await root_->WriteZeroes(offset, bytes, flags | kReqKeepUnmap);
  Leave();
  co_return st;
}

Task<absl::Status> Backend::Discard(int64_t offset, int64_t bytes) {
  LB_CO_RETURN_IF_ERROR(co_await Admit());
  absl::Status st = CheckRange(offset, bytes, true);
  if (st.ok()) st = co_await root_->Discard(offset, bytes);
  Leave();
  co_return st;
}

Task<absl::Status> Backend::Flush() {
  LB_CO_RETURN_IF_ERROR(co_await Admit());
  absl::Status st = co_await root_->Flush();
  Leave();
  co_return st;
}

Task<absl::StatusOr<BlockStatus>> Backend::GetBlockStatus(int64_t offset, int64_t bytes) {
  absl::Status admitted = co_await Admit();
  if (!admitted.ok()) co_return admitted;
  absl::Status range = CheckRange(offset, bytes, false);
  if (!range.ok()) {
    Leave();
    co_return range;
  }
  // The whole chain (no base), with zero detection, as qemu-img map asks.
  absl::StatusOr<BlockStatus> result =
      co_await BlockStatusAbove(*root_, nullptr, GuestOffset(offset), bytes, true);
  Leave();
  co_return result;
}

Task<absl::Status> Backend::Truncate(int64_t size, bool exact, PreallocMode mode) {
  LB_CO_RETURN_IF_ERROR(co_await Admit());
  absl::Status st = co_await root_->Truncate(size, exact, mode);
  Leave();
  co_return st;
}

absl::Status Backend::PreadSync(int64_t offset, void* buf, int64_t bytes) {
  IoVec v(buf, static_cast<size_t>(bytes));
  return loop_.Run(Read(offset, bytes, v));
}

absl::Status Backend::PwriteSync(int64_t offset, const void* buf, int64_t bytes, ReqFlags flags) {
  IoVec v(const_cast<void*>(buf), static_cast<size_t>(bytes));
  return loop_.Run(Write(offset, bytes, v, flags));
}

absl::Status Backend::SetPerm(Perm perm, Perm shared) {
  if (!root_) return ErrnoError(ENOMEDIUM, "the block device is closed");
  return graph_.SetEdgePerm(root_, perm, shared);
}

absl::Status Backend::Reopen(bool read_only) {
  return Reconfigure(read_only, opts_.share_rw, opts_.resize, opts_.share_all);
}

absl::Status Backend::Reconfigure(bool read_only, bool share_rw, bool resize, bool share_all) {
  if (!root_) return ErrnoError(ENOMEDIUM, "the block device is closed");
  BackendOptions next = opts_;
  next.read_only = read_only;
  next.share_rw = share_rw;
  next.resize = resize;
  next.share_all = share_all;
  if (read_only == opts_.read_only) {
    LB_RETURN_IF_ERROR(graph_.SetEdgePerm(root_, BackendDefaultPerm(next),
                                          BackendDefaultShared(next)));
    opts_ = next;
    return absl::OkStatus();
  }
  Perm perm = BackendDefaultPerm(next);
  if (read_only) perm &= ~(kPermWrite | kPermWriteUnchanged | kPermResize);
  LB_RETURN_IF_ERROR(graph_.Reopen(*root_->node(), read_only,
                                   {{root_, perm, BackendDefaultShared(next)}}));
  opts_ = next;
  return absl::OkStatus();
}

absl::Status Backend::ReopenOptions(Options changes, bool write, bool share_rw, bool resize,
                                    bool share_all, std::optional<bool> writethrough) {
  if (!root_) return ErrnoError(ENOMEDIUM, "the block device is closed");
  BackendOptions next = opts_;
  next.read_only = !write;
  next.share_rw = share_rw;
  next.resize = resize;
  next.share_all = share_all;
  if (writethrough) next.writethrough = *writethrough;
  if (changes.empty() && !writethrough) {
    LB_RETURN_IF_ERROR(graph_.SetEdgePerm(root_, BackendDefaultPerm(next),
                                          BackendDefaultShared(next)));
  } else {
    Graph::ReopenRequest request;
    request.changes = std::move(changes);
    request.writethrough = writethrough;
    request.edge_updates = {{root_, BackendDefaultPerm(next), BackendDefaultShared(next)}};
    LB_RETURN_IF_ERROR(graph_.Reopen(*root_->node(), std::move(request)));
  }
  opts_ = next;
  return absl::OkStatus();
}

void Backend::Drained(bool begin) {
  if (begin) {
    ++quiesce_;
  } else if (quiesce_ > 0 && --quiesce_ == 0) {
    internal::CurrentLoopScope scope(&loop_);
    queued_.WakeAll();
  }
}

void Backend::DrainBegin() {
  Drained(true);
  Node* node = root();
  loop_.RunUntil([&] { return in_flight_ == 0 && (!node || node->in_flight() == 0); });
}

void Backend::DrainEnd() { Drained(false); }

absl::Status Backend::Close() {
  if (closed_) return absl::OkStatus();
  closed_ = true;
  {
    internal::CurrentLoopScope scope(&loop_);
    queued_.WakeAll();
  }
  loop_.RunUntil([&] { return in_flight_ == 0 && queued_count_ == 0; });
  absl::Status st;
  if (root_) {
    if (root_->perm() & (kPermWrite | kPermWriteUnchanged)) st = loop_.Run(root_->Flush());
    graph_.DetachChild(std::exchange(root_, nullptr));
  }
  return st;
}

}  // namespace libblock
