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
// permissions never fails.
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

struct OpenParams {
  // The node must be a protocol: it is a format's storage child, never format-probed.
  bool protocol_only = false;
  InheritedFlags inherit;
};

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

  // ---- graph changes, each one permission transaction --------------------------------------
  // Attaches `child` under `parent`. A node parent's edge gets the permissions its driver
  // asks for; other parents (backends) pass `perm`/`shared`. Takes a reference on `child`.
  absl::StatusOr<Child*> AttachChild(ChildParent& parent, Node& child, std::string name,
                                     ChildRole role, Perm perm = 0, Perm shared = kPermAll);
  // Removes the edge and drops its reference. Never fails.
  void DetachChild(Child* child);
  // Points `child` at `new_node` instead of its current node.
  absl::Status ReplaceChild(Child* child, Node& new_node);
  // Changes the masks of an edge whose parent is not a node (a backend).
  absl::Status SetEdgePerm(Child* child, Perm perm, Perm shared);
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
  // One transaction: requests in flight below `node` complete first, then every node is
  // prepared (parents first, each one whole before its children, as QEMU's reopen queue),
  // permissions are rechecked for the new modes, and all of it commits or nothing changes.
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
  absl::Status PrepareReopenTree(Node& node, Options changes, const InheritedFlags& inherit,
                                 std::deque<ReopenEntry>& entries, Transaction& tran);
  absl::StatusOr<std::string> AssignNodeName(std::optional<std::string> requested);
  Task<absl::StatusOr<const Driver*>> ProbeFormat(Node& file, std::string_view filename);
  void CloseNode(Node* node);
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
