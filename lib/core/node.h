// Node, Child and ChildParent: the block graph (QEMU's BlockDriverState and BdrvChild).
//
// A Node is one driver instance. A Child is an edge parent -> child node with a role and the
// parent's perm/shared masks. Parents are nodes or Backends (the user's handles); both are
// ChildParents. The Graph owns every node; a node lives while it has parents or explicit
// references (Graph::Ref/Unref) and is closed and freed when the last one goes.
//
// Invariants (between transactions):
//   * node.perm() == OR of parents' edge perm; node.shared() == AND of parents' edge shared;
//   * no parent needs a bit another parent of the same node does not share;
//   * a read-only node has no parent holding write or write-unchanged.
// All I/O enters a node through a Child (io.cc), which enforces that edge's permissions.
#ifndef LIBBLOCK_CORE_NODE_H_
#define LIBBLOCK_CORE_NODE_H_

#include <cstdint>
#include <list>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/co_sync.h"
#include "core/driver.h"
#include "core/offset.h"
#include "core/range_lock.h"
#include "core/perm.h"
#include "core/task.h"

namespace libblock {

class EventLoop;
class Graph;
class Node;

class ChildParent {
 public:
  virtual ~ChildParent() = default;
  // How conflict messages name this parent: "node 'qcow2-0'", "block device 'vda'".
  virtual std::string ParentDescription() const = 0;
  virtual Node* AsNode() { return nullptr; }
  // The graph cut this parent's edge `child` (the graph is being destroyed); the edge is
  // deleted right after this call.
  virtual void Orphaned(Child* child) {}
  // Drained sections (Graph::DrainedSection): a child of this parent entered (begin) or left
  // a drained section. Calls nest and pair up; while any is open the parent submits no new
  // request to its children (a backend queues its callers', a node quiesces its own parents).
  // An edge moving between nodes carries the drain counts over (Graph::Link/Unlink).
  virtual void Drained(bool begin) {}
};

enum class DetectZeroes { kOff, kOn, kUnmap };

// The generic (driver-independent) state of a node, from its generic options.
struct NodeFlags {
  bool read_only = false;
  bool explicit_read_only = false;  // "read-only" was given: reopen keeps it
  bool auto_read_only = false;
  bool force_share = false;
  bool cache_direct = false;
  bool cache_no_flush = false;
  bool unmap = false;               // discard=unmap
  DetectZeroes detect_zeroes = DetectZeroes::kOff;
  bool writethrough = false;        // from cache=writethrough|directsync: protocols write O_DSYNC
  bool probed = false;              // the format was chosen by probing, not given
  std::string aio;                  // inherited preferred I/O engine ("threads", "io_uring")
  bool no_backing = false;          // do not open backing files
};

class Child {
 public:
  Child(ChildParent* parent, Node* node, std::string name, ChildRole role)
      : parent_(parent), node_(node), name_(std::move(name)), role_(role) {}

  ChildParent* parent() const { return parent_; }
  Node* node() const { return node_; }
  const std::string& name() const { return name_; }
  ChildRole role() const { return role_; }
  Perm perm() const { return perm_; }
  Perm shared() const { return shared_; }

  // ---- I/O through this edge (core/io.cc) --------------------------------------------------
  // Byte-granular requests of any alignment and size: the core pads, splits and bounds them.
  Task<absl::Status> Read(int64_t offset, int64_t bytes, const IoVec& qiov, ReqFlags flags = 0);
  Task<absl::Status> Write(int64_t offset, int64_t bytes, const IoVec& qiov, ReqFlags flags = 0);
  Task<absl::Status> WriteZeroes(int64_t offset, int64_t bytes, ReqFlags flags = 0);
  Task<absl::Status> Discard(int64_t offset, int64_t bytes);
  Task<absl::Status> Flush();
  Task<absl::StatusOr<BlockStatus>> GetBlockStatus(int64_t offset, int64_t bytes,
                                                   bool want_zero = true);
  Task<absl::Status> Truncate(int64_t size, bool exact, PreallocMode mode, ReqFlags flags = 0);
  // Flat-buffer conveniences.
  Task<absl::Status> Pread(int64_t offset, void* buf, int64_t bytes);
  Task<absl::Status> Pwrite(int64_t offset, const void* buf, int64_t bytes, ReqFlags flags = 0);

 private:
  friend class Graph;
  ChildParent* parent_;
  Node* node_;
  std::string name_;
  ChildRole role_;
  Perm perm_ = 0;
  Perm shared_ = kPermAll;
};

class Node final : public ChildParent {
 public:
  Node(Graph& graph, const Driver& driver, std::string name, bool auto_named);
  ~Node() override;
  Node(const Node&) = delete;
  Node& operator=(const Node&) = delete;

  const std::string& name() const { return name_; }
  bool auto_named() const { return auto_named_; }
  const Driver& driver() const { return driver_; }
  NodeDriver* impl() const { return impl_.get(); }
  Graph& graph() const { return graph_; }
  EventLoop& loop() const;

  const NodeFlags& flags() const { return flags_; }
  NodeFlags& mutable_flags() { return flags_; }
  // The mode permissions are computed for: during a reopen, the mode being switched to;
  // flags().read_only (what I/O obeys) only changes when the reopen commits.
  bool EffectiveReadOnly() const { return pending_read_only_.value_or(flags_.read_only); }
  // The filename the node was opened with (protocols), or that of its primary child.
  const std::string& filename() const { return filename_; }
  void set_filename(std::string f) { filename_ = std::move(f); }
  // The options that reopen this node (for info/json:); filled by the open path. Generic
  // options (read-only, cache.*, ...) are not among them: see generic_options().
  const Options& open_options() const { return open_options_; }
  // The generic options the node was given (at open, or changed by a reopen since), which a
  // reopen keeps unless it names them.
  const Options& generic_options() const { return generic_options_; }

  const std::vector<Child*>& children() const { return children_; }
  const std::vector<Child*>& parents() const { return parents_; }
  Child* FindChild(std::string_view name) const;
  // The "file" child, or the filtered child of a filter (QEMU's bdrv_primary_child).
  Child* primary_child() const;

  Perm perm() const { return perm_; }
  Perm shared() const { return shared_; }
  const BlockLimits& limits() const { return limits_; }
  int64_t size() const { return size_; }
  // Re-reads the length from the driver.
  absl::Status RefreshSize();
  // Recomputes limits: defaults merged from children, then the driver's adjustments.
  void RefreshLimits();

  std::string ParentDescription() const override;
  Node* AsNode() override { return this; }
  // This node is quiesced (a drained section covers it or a node below it): its parents are
  // told in turn.
  void Drained(bool begin) override;
  bool drained() const { return quiesce_counter_ > 0; }
  // While set, the node's backing child lets others write and resize the backing file even
  // when the node's own users do not share write (a commit writing into the base: what the
  // node reads does not change, the written ranges being its own). Takes effect at the next
  // permission refresh.
  void set_backing_writes_allowed(bool allowed) { backing_writes_allowed_ = allowed; }
  bool backing_writes_allowed() const { return backing_writes_allowed_; }

  // ---- request accounting (core/io.cc) -----------------------------------------------------
  int in_flight() const { return in_flight_; }
  // Suspends until no request is in flight on this node.
  Task<void> WaitIdle();
  // Runs the loop until no request is in flight (control plane).
  void Drain();
  // Makes this node's own completed writes durable (its driver's Flush), skipped when nothing
  // was written since the last successful flush. Children are not flushed (Child::Flush is).
  Task<absl::Status> FlushLayer();
  // For drivers: the node's own metadata changed outside the request path (a snapshot, an
  // amend, a bitmap), so the next flush must not be skipped as "nothing written".
  void NoteMetadataChanged() { ++write_gen_; }
  // The in-flight requests' ranges (serialising requests are exclusive), in node offsets.
  const RangeLock<GuestOffset>& request_ranges() const { return requests_; }

 private:
  friend class Graph;
  friend class Child;
  friend class RequestScope;
  friend struct NodeIo;

  Graph& graph_;
  const Driver& driver_;
  std::unique_ptr<NodeDriver> impl_;
  std::string name_;
  bool auto_named_;
  NodeFlags flags_;
  std::string filename_;
  Options open_options_;
  Options generic_options_;

  std::vector<Child*> children_;  // owned (created by Graph::AttachChild)
  std::vector<Child*> parents_;
  int refcnt_ = 0;                // parents + explicit references
  bool closing_ = false;
  bool opened_ = false;           // the driver's Open succeeded
  std::optional<bool> pending_read_only_;  // set while a reopen is being prepared
  bool probed_raw_backing_ = false;  // a backing file probed as raw: never made writable
  bool backing_writes_allowed_ = false;

  Perm perm_ = 0;
  Perm shared_ = kPermAll;
  BlockLimits limits_;
  int64_t size_ = 0;

  int in_flight_ = 0;
  int quiesce_counter_ = 0;   // open drained sections over this node (nested, counted)
  CoQueue idle_waiters_;
  uint64_t write_gen_ = 0;    // bumped by every write; flushes skip when nothing changed
  uint64_t flushed_gen_ = 0;
  RangeLock<GuestOffset> requests_;  // aligned by the request path itself: granularity 1
};

}  // namespace libblock

#endif  // LIBBLOCK_CORE_NODE_H_
