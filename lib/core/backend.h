// Backend: the user's handle on a node (QEMU's BlockBackend).
//
// A Backend is a parent of its root node with its own perm/shared masks, chosen as QEMU
// chooses them for a guest device: consistent-read always, write unless read-only, resize on
// request; other users may read and do unchanged writes, and write too with share-rw. With
// share-all they may do everything, as next to qemu-img or qemu-io (blk_new_open).
// Requests through a Backend are bounds-checked against the root's size (QEMU's
// blk_check_byte_request), get FUA in writethrough mode, and pass a gate that queues them while
// the backend is drained and cancels them once it is closed.
#ifndef LIBBLOCK_CORE_BACKEND_H_
#define LIBBLOCK_CORE_BACKEND_H_

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/co_sync.h"
#include "core/graph.h"
#include "core/node.h"

namespace libblock {

struct BackendOptions {
  std::string name;          // named in permission conflicts; empty: "an unnamed block device"
  bool read_only = false;
  bool share_rw = false;     // let other users write (QEMU's share-rw)
  bool share_all = false;    // let other users do anything, as qemu-img/qemu-io do
  bool resize = false;       // take the resize permission (needed for Truncate)
  bool writethrough = false; // every write is durable on completion (FUA)
  bool allow_write_beyond_eof = false;
  // When set, replace the device-style masks entirely (tests, tools).
  std::optional<Perm> perm_override;
  std::optional<Perm> shared_override;
};

// Turns a "cache=" mode into node options and backend settings, as QEMU's -drive cache= does:
//   writeback: page cache, flushes honoured      none: O_DIRECT
//   writethrough: writes durable on completion    directsync: O_DIRECT + durable writes
//   unsafe: flushes ignored
absl::Status ApplyCacheMode(std::string_view mode, Options& options, bool* writethrough);

class Backend final : public ChildParent {
 public:
  // Opens `filename`/`options` (a "cache" key is understood) and attaches a backend.
  static absl::StatusOr<std::unique_ptr<Backend>> Open(Graph& graph, std::string_view filename,
                                                       Options options, BackendOptions opts);
  // Attaches a backend to an existing node.
  static absl::StatusOr<std::unique_ptr<Backend>> Attach(Graph& graph, Node& node,
                                                         BackendOptions opts);
  ~Backend() override;

  Graph& graph() const { return graph_; }
  Node* root() const { return root_ ? root_->node() : nullptr; }
  Child* root_child() const { return root_; }
  const BackendOptions& options() const { return opts_; }
  Perm perm() const { return root_ ? root_->perm() : 0; }
  Perm shared() const { return root_ ? root_->shared() : kPermAll; }
  std::string ParentDescription() const override;
  void Orphaned(Child* child) override;
  // A drained section over the root (or below it): new requests queue until it ends.
  void Drained(bool begin) override;
  bool quiesced() const { return quiesce_ > 0; }
  int queued() const { return queued_count_; }

  int64_t size() const;
  int in_flight() const { return in_flight_; }

  // ---- I/O (coroutines; sync variants run the loop) ------------------------------------------
  Task<absl::Status> Read(int64_t offset, int64_t bytes, const IoVec& qiov, ReqFlags flags = 0);
  Task<absl::Status> Write(int64_t offset, int64_t bytes, const IoVec& qiov, ReqFlags flags = 0);
  Task<absl::Status> WriteZeroes(int64_t offset, int64_t bytes, ReqFlags flags = 0);
  Task<absl::Status> Discard(int64_t offset, int64_t bytes);
  Task<absl::Status> Flush();
  Task<absl::StatusOr<BlockStatus>> GetBlockStatus(int64_t offset, int64_t bytes);
  Task<absl::Status> Truncate(int64_t size, bool exact, PreallocMode mode);

  absl::Status PreadSync(int64_t offset, void* buf, int64_t bytes);
  absl::Status PwriteSync(int64_t offset, const void* buf, int64_t bytes, ReqFlags flags = 0);

  // ---- control -----------------------------------------------------------------------------
  absl::Status SetPerm(Perm perm, Perm shared);
  // Read-only <-> read-write for the backend and the nodes below it, as one transaction.
  absl::Status Reopen(bool read_only);
  // Changes read-only, share-rw, share-all and resize together as one transaction (QEMU's
  // blk_set_perm plus a reopen when read-only changes); on failure nothing changed.
  absl::Status Reconfigure(bool read_only, bool share_rw, bool resize, bool share_all);
  // Reopens the nodes below with changed options (Graph::Reopen: `changes` names only what
  // changes, "read-only" included) and sets the backend's own permissions to `write`,
  // `share_rw`, `resize` and `share_all`, as one transaction. Unlike Reconfigure, the nodes' mode follows
  // their options, not the backend's: a backend that does not write may stay on a
  // read-write node. `writethrough` (a new cache mode) also sets the nodes' writethrough.
  // With no changes and no new cache mode, only the permissions change.
  absl::Status ReopenOptions(Options changes, bool write, bool share_rw, bool resize,
                             bool share_all, std::optional<bool> writethrough);
  // Quiesce: new requests wait until DrainEnd; returns once nothing is in flight.
  void DrainBegin();
  void DrainEnd();
  // Completes every started request, cancels (ECANCELED) the ones queued behind a drain,
  // flushes, and detaches the root. Idempotent; the destructor calls it.
  absl::Status Close();

 private:
  Backend(Graph& graph, BackendOptions opts);
  absl::Status CheckRange(int64_t offset, int64_t bytes, bool write) const;
  // Admits a request (counts it in flight) or waits for the end of a drain. TryAdmit is the
  // common case without a coroutine: false when Admit must be awaited.
  bool TryAdmit();
  Task<absl::Status> Admit();
  void Leave();

  Graph& graph_;   // valid until Orphaned (the graph may die first)
  EventLoop& loop_;
  BackendOptions opts_;
  Child* root_ = nullptr;
  int in_flight_ = 0;
  int quiesce_ = 0;
  int queued_count_ = 0;
  bool closed_ = false;
  CoQueue queued_;
};

// QEMU's guest-device masks for these options.
Perm BackendDefaultPerm(const BackendOptions& opts);
Perm BackendDefaultShared(const BackendOptions& opts);

}  // namespace libblock

#endif  // LIBBLOCK_CORE_BACKEND_H_
