// Graph: owns the nodes of one block graph and performs every change to it.
//
// Opening follows QEMU's bdrv_open: "json:" pseudo-filenames merge into the options; a
// format without a given driver is probed from its protocol node's first sector; children
// are opened from dotted sub-options ("file.filename=...") or references to existing nodes
// ("file=node-name") and inherit cache/read-only/force-share settings from their parent as
// QEMU's bdrv_inherited_options does.
//
// Every change (attach, detach, replace, reopen, a backend's permission change) is one
// Transaction: the new permission masks are computed for every affected node in topological
// order (parents first), every node is checked (parent conflicts, read-only, the driver's
// veto, image lock bytes), and then all of it commits or all of it is undone. Giving up
// permissions never fails. Several changes can share one transaction (the primitives' forms
// taking a Transaction&, then Graph::Commit), so the check runs once over their sum.
//
// A format's backing file is opened by the core after the driver's Open (OpenBacking), from
// what the driver read in its header (OpenContext::SetBacking) or the "backing" options.
#ifndef LIBBLOCK_CORE_GRAPH_H_
#define LIBBLOCK_CORE_GRAPH_H_

#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/node.h"
#include "core/objects.h"
#include "core/options.h"
#include "core/registry.h"
#include "core/transaction.h"

namespace libblock {

class EventLoop;

// Settings a child inherits from its parent unless its own options say otherwise.
struct InheritedFlags {
  std::optional<bool> read_only;
  std::optional<bool> auto_read_only;
  std::optional<bool> force_share;
  std::optional<bool> cache_direct;
  std::optional<bool> cache_no_flush;
  std::optional<bool> unmap;
  bool writethrough = false;
  std::string aio;          // preferred file I/O engine for protocols that do not set one
  bool no_backing = false;  // formats leave their backing files closed
};

// What a node's children inherit from it (QEMU's bdrv_inherited_options, less the role
// rules OpenChild applies on top).
InheritedFlags InheritFrom(const NodeFlags& flags);

// A backing file name as the image `overlay` refers to it, resolved as QEMU's path_combine
// does: relative names are relative to the directory of the overlay's filename; absolute
// names, json: names and names with a protocol prefix stay as they are. Fails for a relative
// name under a json: overlay, which has no directory.
absl::StatusOr<std::string> ResolveBackingName(std::string_view overlay, std::string_view name);

struct OpenParams {
  // The node must be a protocol: it is a format's storage child, never format-probed.
  bool protocol_only = false;
  InheritedFlags inherit;
  // Set by the core when it opens a backing file: the overlays above it, top first, by the
  // names that identify them (for loop detection and the depth limit).
  std::vector<std::string> overlays;
};

// What a format's image header says about its backing file (OpenContext::SetBacking).
struct BackingHeader {
  std::optional<std::string> filename;  // as stored: may be relative to the overlay
  std::optional<std::string> format;    // nullopt: not recorded (the backing is probed)
};

// Backing chains longer than this are refused (loops are caught before).
inline constexpr int kMaxBackingChain = 256;

// What a driver sees while it opens a node.
struct OpenContext {
  Graph& graph;
  Node& node;
  std::string filename;   // the filename this node was opened with (may be empty)
  Options options;        // this node's remaining options: children's "name.*", leftovers
  OptionValues values;    // the driver's own options, validated
  Node* file_hint = nullptr;  // protocol node opened for probing: becomes the "file" child

  // Opens child `name` from the "name.*" options, a node reference ("name": "node-name") or
  // (for the "file" child) this node's filename, and attaches it with `role`. Returns nullptr
  // only when nothing was specified and `allow_none`.
  Task<absl::StatusOr<Child*>> OpenChild(std::string_view name, ChildRole role, bool allow_none);

  // Formats that have backing files (QEMU's supports_backing) call this during Open with what
  // their header says (no filename: none recorded). Once Open succeeded, the core opens the
  // "backing" child (role cow) from the "backing.*" options, a node reference
  // ("backing": "node-name"), or the header's filename resolved against this image's
  // directory, with the header's format unless the options name one. "backing": null (or "")
  // and LB_OPEN_NO_BACKING (NodeFlags::no_backing) leave it closed. A format that never calls
  // this refuses "backing" options as unknown.
  void SetBacking(BackingHeader header) { backing = std::move(header); }
  std::optional<BackingHeader> backing;
  OpenParams params;  // how this node was opened (the overlays above it)
};

// A drained section over a node (QEMU's bdrv_drained_begin/end over a subtree): every node of
// the subtree is quiesced, so every parent above them (nodes, recursively, and backends) stops
// submitting new requests until the section ends; Wait/WaitSync return once no request is in
// flight on the subtree or on any node above it. Nodes of the subtree stay referenced (alive)
// until the end. Edges that move meanwhile carry their drain counts with them.
class DrainedSection {
 public:
  DrainedSection(Graph& graph, Node& node);
  ~DrainedSection();
  DrainedSection(const DrainedSection&) = delete;
  DrainedSection& operator=(const DrainedSection&) = delete;

  // Suspends until nothing is in flight (coroutines).
  Task<void> Wait();
  // Runs the loop until nothing is in flight (control plane, outside coroutines).
  void WaitSync();
  bool Idle() const;
  // Ends the section now (the destructor then does nothing).
  void End();

 private:
  Graph& graph_;
  std::vector<Node*> nodes_;
  bool ended_ = false;
};

class Graph {
 public:
  explicit Graph(EventLoop& loop, const Registry& registry = Registry::Builtin());
  ~Graph();
  Graph(const Graph&) = delete;
  Graph& operator=(const Graph&) = delete;

  EventLoop& loop() const { return loop_; }
  const Registry& registry() const { return registry_; }
  // Secrets and other user objects (--object), looked up by id when images open.
  Objects& objects() { return objects_; }
  const Objects& objects() const { return objects_; }

  Node* FindNode(std::string_view name) const;
  std::vector<Node*> nodes() const;

  // Opens a node (and its children). The caller holds one reference: Unref it, or attach
  // the node somewhere and then Unref.
  absl::StatusOr<Node*> Open(std::string_view filename, Options options,
                             const OpenParams& params = {});
  Task<absl::StatusOr<Node*>> OpenCo(std::string filename, Options options, OpenParams params);

  // Creates an image with driver `format` ("raw", or a protocol such as "file"). A format's
  // creation options are its own plus those of the protocol `filename` names (qemu-img
  // merges them the same way).
  absl::Status Create(std::string_view filename, std::string_view format, Options options,
                      bool validate_only = false);

  // The creation options `format` accepts for `filename` (its own only when `filename` is
  // empty), format's first. Fails for unknown formats and formats that cannot create.
  absl::StatusOr<std::vector<OptionSpec>> CreateOptions(std::string_view format,
                                                        std::string_view filename) const;

  void Ref(Node* node);
  // Drops a reference; the last one closes the node (drain, driver Close, detach children).
  void Unref(Node* node);

  // ---- graph changes -------------------------------------------------------------------------
  // Each primitive comes twice. The form taking a Transaction& stages the change in it: the
  // graph's structure changes at once (and is restored on abort), but permissions are only
  // recomputed and checked by Commit(tran), once over everything staged — so one transaction
  // can replace a backing child and reopen the base read-write, as commit needs. The other
  // form is a whole transaction of its own.
  //
  // Checks and commits everything staged in `tran` (the permission refresh over every node a
  // step named); on failure aborts it, and nothing changed.
  absl::Status Commit(Transaction& tran);

  // Attaches `child` under `parent`. A node parent's edge gets the permissions its driver
  // asks for; other parents (backends) pass `perm`/`shared`. Takes a reference on `child`.
  absl::StatusOr<Child*> AttachChild(ChildParent& parent, Node& child, std::string name,
                                     ChildRole role, Perm perm = 0, Perm shared = kPermAll);
  absl::StatusOr<Child*> AttachChild(ChildParent& parent, Node& child, std::string name,
                                     ChildRole role, Perm perm, Perm shared, Transaction& tran);
  // Removes the edge and drops its reference. Never fails.
  void DetachChild(Child* child);
  void DetachChild(Child* child, Transaction& tran);
  // Points `child` at `new_node` instead of its current node.
  absl::Status ReplaceChild(Child* child, Node& new_node);
  absl::Status ReplaceChild(Child* child, Node& new_node, Transaction& tran);
  // Changes the masks of an edge whose parent is not a node (a backend).
  absl::Status SetEdgePerm(Child* child, Perm perm, Perm shared);
  void SetEdgePerm(Child* child, Perm perm, Perm shared, Transaction& tran);
  // Every parent of `from` now points at `to` (QEMU's bdrv_replace_node), except the edges in
  // `except` and those whose parent `to` reaches (a filter above `from` keeps its child).
  absl::Status ReplaceNode(Node& from, Node& to, const std::vector<Child*>& except = {});
  absl::Status ReplaceNode(Node& from, Node& to, const std::vector<Child*>& except,
                           Transaction& tran);
  // Opens a filter (`filter_options` name its driver, "driver=preallocate,...") whose file is
  // `node`, and moves every parent of `node` to it, as one transaction (QEMU's
  // bdrv_insert_node). Returns the filter, referenced by its new parents only.
  absl::StatusOr<Node*> InsertFilterAbove(Node& node, Options filter_options);

  struct EdgeUpdate {
    Child* child;
    Perm perm;
    Perm shared;
  };
  // A reopen of a node and every node below it (QEMU's bdrv_reopen, old options kept).
  struct ReopenRequest {
    // What changes: the node's own options, and its children's as "child.key" ("child=NAME"
    // naming the current child is accepted). Options not named keep their values; children
    // inherit their parent's new mode and cache settings unless their own options set them,
    // as they did at open. Changeable: read-only, auto-read-only, cache.direct,
    // cache.no-flush, discard, detect-zeroes and what each driver's CanReopenOption accepts;
    // giving anything else a new value fails with "Cannot change the option 'NAME'".
    Options changes;
    // A new cache mode's writethrough setting, for the whole tree; nullopt: unchanged.
    std::optional<bool> writethrough;
    // Backend edges whose masks change in the same transaction.
    std::vector<EdgeUpdate> edge_updates;
  };
  // Stages a reopen in `tran`: a drained section over `node` begins (requests in flight below
  // it and above it complete, new ones queue) and lasts until `tran` commits or aborts; then
  // every node is prepared (parents first, each one whole before its children, as QEMU's
  // reopen queue; the drivers' PrepareReopen coroutines run here); permissions for the new
  // modes are checked by Commit(tran). On failure abort `tran`.
  Task<absl::Status> ReopenCo(Node& node, ReopenRequest request, Transaction& tran);
  // A reopen as one transaction of its own, as a coroutine and synchronously (runs the loop).
  Task<absl::Status> ReopenCo(Node& node, ReopenRequest request);
  absl::Status Reopen(Node& node, ReopenRequest request);
  // Switches `node` (and the children that inherited its mode) between read-only and
  // read-write: a reopen that changes its "read-only" option.
  absl::Status Reopen(Node& node, bool read_only, const std::vector<EdgeUpdate>& edge_updates = {});

  // Recomputes and rechecks permissions below `roots` inside `tran`.
  absl::Status RefreshPerms(const std::vector<Node*>& roots, Transaction& tran, bool relaxing);

  // ---- warnings ------------------------------------------------------------------------------
  // Non-fatal diagnostics (probing guessed raw, POSIX lock fallback, ...). Default: stderr.
  void Warn(std::string_view message);
  void SetWarningHandler(std::function<void(const std::string&)> handler) {
    warning_handler_ = std::move(handler);
  }

 private:
  struct GenericOptions;
  absl::StatusOr<GenericOptions> ParseGenericOptions(const Driver& driver, Options& options,
                                                     const OpenParams& params);
  struct ReopenEntry;
  // Prepares `node` and then, recursively, its children (skipping nodes already in
  // `entries`) for a reopen with `changes`, `inherit` standing for what its parent passes
  // down; appends one entry per node.
  Task<absl::Status> PrepareReopenTree(Node& node, Options changes, InheritedFlags inherit,
                                       std::shared_ptr<std::deque<ReopenEntry>> entries,
                                       Transaction& tran);
  // After a format's Open: its backing child (OpenContext::SetBacking).
  Task<absl::Status> OpenBacking(OpenContext& ctx);
  absl::StatusOr<std::string> AssignNodeName(std::optional<std::string> requested);
  Task<absl::StatusOr<const Driver*>> ProbeFormat(Node& file, std::string_view filename);
  void CloseNode(Node* node);
  friend class DrainedSection;
  void Link(Child* child, Transaction& tran);
  void Unlink(Child* child, Transaction& tran);
  absl::Status CheckParentConflicts(const Node& node) const;
  // After an edge below `parent` changed: its limits and size follow its children.
  void ChildrenChanged(ChildParent* parent);

  EventLoop& loop_;
  const Registry& registry_;
  Objects objects_;
  std::map<std::string, std::unique_ptr<Node>, std::less<>> nodes_;
  uint64_t next_auto_name_ = 1;
  std::function<void(const std::string&)> warning_handler_;
};

}  // namespace libblock

#endif  // LIBBLOCK_CORE_GRAPH_H_
