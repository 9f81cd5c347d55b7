#include "core/graph.h"

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "util/checked_math.h"
#include "core/event_loop.h"
#include "util/status.h"

namespace libblock {
namespace {

constexpr std::string_view kDiscardChoices[] = {"ignore", "off", "unmap", "on"};
constexpr std::string_view kDetectZeroesChoices[] = {"off", "on", "unmap"};

// Options every node accepts, whatever its driver (QEMU's bdrv_runtime_opts + the
// generic flags of blockdev-add). Inheritable ones have no default here: an unset option
// takes the parent's value.
constexpr OptionSpec kGenericSpecs[] = {
    {"node-name", OptionType::kString, "", "name of the node in the graph"},
    {"read-only", OptionType::kBool, "", "open the node read-only"},
    {"auto-read-only", OptionType::kBool, "", "use read-only when read-write is refused"},
    {"force-share", OptionType::kBool, "",
     "ignore other users' locks and share every permission (read-only nodes only)"},
    {"cache.direct", OptionType::kBool, "", "bypass the host page cache (O_DIRECT)"},
    {"cache.no-flush", OptionType::kBool, "", "ignore flush requests (unsafe)"},
    {"discard", OptionType::kEnum, "", "discard requests: ignore/off or unmap/on",
     kDiscardChoices},
    {"detect-zeroes", OptionType::kEnum, "off",
     "turn writes of zeroes into write-zeroes: off, on, unmap", kDetectZeroesChoices},
};

// The generic options among `options`, as given.
Options GivenGenericOptions(const Options& options) {
  Options given;
  for (const OptionSpec& spec : kGenericSpecs) {
    if (const OptionValue* v = options.Get(spec.name)) given.Set(std::string(spec.name), *v);
  }
  return given;
}

// The generic options a reopen may change (QEMU's bdrv_reopen_prepare handles these; others,
// node-name and force-share, must keep their values).
bool ReopenableGenericOption(std::string_view key) {
  return key == "read-only" || key == "auto-read-only" || key == "cache.direct" ||
         key == "cache.no-flush" || key == "discard" || key == "detect-zeroes";
}

// Node names follow QEMU's id_wellformed rule, and fit its 32-byte node_name field.
bool WellFormedNodeName(std::string_view name) {
  if (name.empty() || !std::isalpha(static_cast<unsigned char>(name[0]))) return false;
  for (char c : name) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '.' && c != '_') {
      return false;
    }
  }
  return true;
}

// The parent of the temporary edge used to read the probe sector.
class ProbeParent : public ChildParent {
 public:
  std::string ParentDescription() const override { return "the format probe"; }
};

void MergeLimits(BlockLimits& into, const BlockLimits& from) {
  auto min_nonzero = [](int64_t a, int64_t b) { return a == 0 ? b : (b == 0 ? a : std::min(a, b)); };
  into.max_transfer = min_nonzero(into.max_transfer, from.max_transfer);
  into.opt_transfer = std::max(into.opt_transfer, from.opt_transfer);
  into.min_mem_alignment = std::max(into.min_mem_alignment, from.min_mem_alignment);
  into.opt_mem_alignment = std::max(into.opt_mem_alignment, from.opt_mem_alignment);
  into.max_iov = std::min(into.max_iov, from.max_iov);
}

}  // namespace

InheritedFlags InheritFrom(const NodeFlags& f) {
  InheritedFlags in;
  in.read_only = f.read_only;
  in.auto_read_only = f.auto_read_only;
  in.force_share = f.force_share;
  in.cache_direct = f.cache_direct;
  in.cache_no_flush = f.cache_no_flush;
  in.unmap = f.unmap;
  in.writethrough = f.writethrough;
  in.aio = f.aio;
  in.no_backing = f.no_backing;
  return in;
}

struct Graph::GenericOptions {
  std::optional<std::string> node_name;
  NodeFlags flags;
};

// ---- Node ------------------------------------------------------------------------------------

Node::Node(Graph& graph, const Driver& driver, std::string name, bool auto_named)
    : graph_(graph), driver_(driver), name_(std::move(name)), auto_named_(auto_named) {}

Node::~Node() = default;

EventLoop& Node::loop() const { return graph_.loop(); }

Child* Node::FindChild(std::string_view name) const {
  for (Child* c : children_) {
    if (c->name() == name) return c;
  }
  return nullptr;
}

Child* Node::primary_child() const {
  for (Child* c : children_) {
    if (c->role() & (kRolePrimary | kRoleFiltered)) return c;
  }
  return nullptr;
}

std::string Node::ParentDescription() const { return absl::StrFormat("node '%s'", name_); }

absl::Status Node::RefreshSize() {
  LB_ASSIGN_OR_RETURN(int64_t len, impl_->GetLength());
  // QEMU keeps node lengths in 512-byte sectors: a 1000-byte file is a 1024-byte disk whose
  // tail reads as zeroes. Sizes, bounds and `info` output match it.
  size_ = AlignUp(len, kSectorSize);
  return absl::OkStatus();
}

void Node::RefreshLimits() {
  BlockLimits limits;
  for (Child* c : children_) {
    if (c->role() & (kRoleData | kRoleFiltered | kRoleCow)) MergeLimits(limits, c->node()->limits());
  }
  impl_->RefreshLimits(limits);
  limits_ = limits;
}

Task<void> Node::WaitIdle() {
  while (in_flight_ > 0) co_await idle_waiters_.Wait();
}

void Node::Drain() {
  loop().RunUntil([this] { return in_flight_ == 0; });
}

void Node::Drained(bool begin) {
  quiesce_counter_ += begin ? 1 : -1;
  for (Child* p : std::vector<Child*>(parents_)) p->parent()->Drained(begin);
}

// ---- DrainedSection ----------------------------------------------------------------------------

DrainedSection::DrainedSection(Graph& graph, Node& node) : graph_(graph) {
  std::function<void(Node*)> collect = [&](Node* n) {
    if (std::find(nodes_.begin(), nodes_.end(), n) != nodes_.end()) return;
    nodes_.push_back(n);
    for (Child* c : n->children()) collect(c->node());
  };
  collect(&node);
  for (Node* n : nodes_) {
    graph_.Ref(n);
    n->Drained(true);
  }
}

DrainedSection::~DrainedSection() { End(); }

void DrainedSection::End() {
  if (ended_) return;
  ended_ = true;
  for (Node* n : nodes_) n->Drained(false);
  for (Node* n : nodes_) graph_.Unref(n);
}

namespace {
// A node of `nodes` or above them (the parents that were quiesced) with a request in flight.
Node* FirstBusy(const std::vector<Node*>& nodes) {
  std::set<Node*> seen;
  std::vector<Node*> stack(nodes.begin(), nodes.end());
  while (!stack.empty()) {
    Node* n = stack.back();
    stack.pop_back();
    if (!seen.insert(n).second) continue;
    if (n->in_flight() > 0) return n;
    for (Child* p : n->parents()) {
      if (Node* pn = p->parent()->AsNode()) stack.push_back(pn);
    }
  }
  return nullptr;
}
}  // namespace

bool DrainedSection::Idle() const { return FirstBusy(nodes_) == nullptr; }

Task<void> DrainedSection::Wait() {
  // A backend's requests are in flight on its root node from admission on (nothing suspends
  // in between), so the nodes' counts cover backends too.
  for (;;) {
    Node* busy = FirstBusy(nodes_);
    if (!busy) co_return;
    co_await busy->WaitIdle();
  }
}

void DrainedSection::WaitSync() {
  graph_.loop().RunUntil([this] { return Idle(); });
}

// ---- OpenContext -------------------------------------------------------------------------------

namespace {

// What a child with `role` inherits from a parent with flags `pf` (QEMU's
// bdrv_inherited_options): backing files default to read-only, other children share the
// parent's mode; lower layers default to discard=unmap.
OpenParams ChildOpenParams(const NodeFlags& pf, ChildRole role) {
  OpenParams params;
  params.inherit = InheritFrom(pf);
  if (role & kRoleCow) {
    params.inherit.read_only = true;
    params.inherit.auto_read_only = false;
  } else {
    params.inherit.read_only = pf.read_only;
    params.inherit.auto_read_only = pf.auto_read_only;
  }
  params.inherit.unmap = true;
  return params;
}

// QEMU's path_has_protocol: a ':' before any '/' ("nbd:...", "null-co://").
bool HasProtocolPrefix(std::string_view name) {
  size_t stop = name.find_first_of(":/");
  return stop != std::string_view::npos && name[stop] == ':';
}

// What identifies an image in a backing chain: the real path of a local file, else its name.
std::string ChainKey(const std::string& name) {
  if (name.empty() || IsJsonFilename(name) || HasProtocolPrefix(name)) return name;
  char buf[PATH_MAX];
  if (realpath(name.c_str(), buf)) return buf;
  return name;
}

}  // namespace

absl::StatusOr<std::string> ResolveBackingName(std::string_view overlay, std::string_view name) {
  if (name.empty() || name[0] == '/' || IsJsonFilename(name) || HasProtocolPrefix(name)) {
    return std::string(name);
  }
  if (IsJsonFilename(overlay)) {
    return ErrnoError(EINVAL, absl::StrFormat("Cannot use relative backing file names for '%s'",
                                              overlay));
  }
  size_t slash = overlay.rfind('/');
  if (slash == std::string_view::npos) {
    // "a.img" names a file of the current directory: so does its backing file. A protocol
    // prefix stays in front ("file:a.img" -> "file:b.img").
    size_t colon = HasProtocolPrefix(overlay) ? overlay.find(':') : std::string_view::npos;
    if (colon == std::string_view::npos) return std::string(name);
    return std::string(overlay.substr(0, colon + 1)) + std::string(name);
  }
  return std::string(overlay.substr(0, slash + 1)) + std::string(name);
}

Task<absl::StatusOr<Child*>> OpenContext::OpenChild(std::string_view name, ChildRole role,
                                                     bool allow_none) {
  Options child_options = options.ExtractPrefix(name);
  std::optional<OptionValue> reference = options.Take(name);
  const NodeFlags& pf = node.flags();
  // A filter counts as a format here, as in QEMU: its file is a protocol node unless the
  // options name a driver, never probed.
  bool parent_is_format = node.driver().kind != DriverKind::kProtocol;

  Node* child_node = nullptr;
  if (reference) {
    const std::string* ref = std::get_if<std::string>(&*reference);
    if (!ref) {
      co_return ErrnoError(EINVAL, absl::StrFormat("option '%s' must name a node", name));
    }
    if (!child_options.empty()) {
      co_return ErrnoError(EINVAL, "Cannot reference an existing block device with additional "
                                   "options or a new filename");
    }
    child_node = graph.FindNode(*ref);
    if (!child_node) {
      co_return ErrnoError(ENOENT, absl::StrFormat("Cannot find device='%s' nor node-name='%s'",
                                                   *ref, *ref));
    }
    graph.Ref(child_node);
  } else if (name == "file" && file_hint) {
    child_node = std::exchange(file_hint, nullptr);
  } else {
    std::string child_filename = name == "file" ? filename : std::string();
    if (child_options.empty() && child_filename.empty()) {
      if (allow_none) co_return nullptr;
      co_return ErrnoError(EINVAL,
                           absl::StrFormat("A block device must be specified for \"%s\"", name));
    }
    // QEMU's bdrv_inherited_options: cache mode and force-share come from the parent; backing
    // files default to read-only, other children share the parent's mode; lower layers
    // default to discard=unmap because the top layer already applies the discard policy.
    // Children of formats (but backing files), metadata children and the file under a
    // filter are never format-probed: a filter passes its file through as it is (QEMU 7.2
    // opens preallocate's or blkdebug's file without probing), so no raw node whose guards
    // belong to probed images is slipped in under it.
    OpenParams params = ChildOpenParams(pf, role);
    params.protocol_only = (parent_is_format && !(role & kRoleCow)) || (role & kRoleMetadata) ||
                           (role & kRoleFiltered);
    absl::StatusOr<Node*> opened =
        co_await graph.OpenCo(std::move(child_filename), std::move(child_options), params);
    if (!opened.ok()) co_return opened.status();
    child_node = *opened;
  }

  absl::StatusOr<Child*> edge = graph.AttachChild(node, *child_node, std::string(name), role);
  graph.Unref(child_node);  // the edge holds the reference now (or the node is closed)
  co_return edge;
}

// ---- Graph -------------------------------------------------------------------------------------

Graph::Graph(EventLoop& loop, const Registry& registry) : loop_(loop), registry_(registry) {}

Graph::~Graph() {
  // Close from the roots down until nothing is left. Edges from non-node parents (backends
  // that were not closed) are cut first so every node becomes reachable as a root.
  for (auto& [name, node] : nodes_) {
    for (Child* p : std::vector<Child*>(node->parents_)) {
      if (!p->parent()->AsNode()) {
        Transaction tran;
        Unlink(p, tran);
        tran.Commit();
        --node->refcnt_;
        p->parent()->Orphaned(p);
        delete p;
      }
    }
  }
  while (!nodes_.empty()) {
    Node* root = nullptr;
    for (auto& [name, node] : nodes_) {
      if (node->parents_.empty()) {
        root = node.get();
        break;
      }
    }
    if (!root) break;  // impossible in a DAG
    root->refcnt_ = 1;
    Unref(root);
  }
}

Node* Graph::FindNode(std::string_view name) const {
  auto it = nodes_.find(name);
  return it == nodes_.end() ? nullptr : it->second.get();
}

std::vector<Node*> Graph::nodes() const {
  std::vector<Node*> out;
  for (const auto& [name, node] : nodes_) out.push_back(node.get());
  return out;
}

void Graph::Warn(std::string_view message) {
  std::string text(message);
  if (warning_handler_) {
    warning_handler_(text);
  } else {
    fprintf(stderr, "%s\n", text.c_str());
  }
}

absl::StatusOr<std::string> Graph::AssignNodeName(std::optional<std::string> requested) {
  if (requested) {
    if (!WellFormedNodeName(*requested)) {
      return ErrnoError(EINVAL, absl::StrFormat("Invalid node-name: '%s'", *requested));
    }
    if (requested->size() >= 32) return ErrnoError(EINVAL, "Node name too long");
    if (FindNode(*requested)) {
      return ErrnoError(EEXIST, absl::StrFormat("Duplicate nodes with node-name='%s'", *requested));
    }
    return *requested;
  }
  // Generated names start with '#', which a user-given name cannot, so they never collide.
  for (;;) {
    std::string name = absl::StrFormat("#block%03d", next_auto_name_++);
    if (!FindNode(name)) return name;
  }
}

absl::StatusOr<Graph::GenericOptions> Graph::ParseGenericOptions(const Driver& driver,
                                                                 Options& options,
                                                                 const OpenParams& params) {
  OptionSchema schema{driver.name, kGenericSpecs};
  LB_ASSIGN_OR_RETURN(OptionValues v, ConsumeOptions(schema, options));
  GenericOptions out;
  out.node_name = v.FindString("node-name");
  NodeFlags& f = out.flags;
  const InheritedFlags& in = params.inherit;
  f.explicit_read_only = v.IsSet("read-only");
  f.read_only = v.FindBool("read-only").value_or(in.read_only.value_or(false));
  f.auto_read_only = v.FindBool("auto-read-only").value_or(in.auto_read_only.value_or(false));
  f.force_share = v.FindBool("force-share").value_or(in.force_share.value_or(false));
  f.cache_direct = v.FindBool("cache.direct").value_or(in.cache_direct.value_or(false));
  f.cache_no_flush = v.FindBool("cache.no-flush").value_or(in.cache_no_flush.value_or(false));
  if (auto d = v.FindString("discard")) {
    f.unmap = (*d == "unmap" || *d == "on");
  } else {
    f.unmap = in.unmap.value_or(false);
  }
  std::string dz = v.GetString("detect-zeroes");
  f.detect_zeroes = dz == "on" ? DetectZeroes::kOn : dz == "unmap" ? DetectZeroes::kUnmap
                                                                    : DetectZeroes::kOff;
  f.writethrough = in.writethrough;
  f.aio = in.aio;
  f.no_backing = in.no_backing;
  if (f.force_share && !f.read_only) {
    return ErrnoError(EINVAL, "force-share=on can only be used with read-only images");
  }
  if (f.detect_zeroes == DetectZeroes::kUnmap && !f.unmap) {
    return ErrnoError(EINVAL, "setting detect-zeroes to unmap is not allowed without setting "
                              "discard operation to unmap");
  }
  return out;
}

absl::StatusOr<Node*> Graph::Open(std::string_view filename, Options options,
                                  const OpenParams& params) {
  return loop_.Run(OpenCo(std::string(filename), std::move(options), params));
}

Task<absl::StatusOr<Node*>> Graph::OpenCo(std::string filename, Options options,
                                           OpenParams params) {
  if (IsJsonFilename(filename)) {
    absl::StatusOr<Options> json = ParseJsonFilename(filename);
    if (!json.ok()) co_return json.status();
    options.MergeMissing(*json);  // explicit options win over the pseudo-filename
    filename.clear();
  }

  const Driver* drv = nullptr;
  if (std::optional<OptionValue> d = options.Take("driver")) {
    const std::string* name = std::get_if<std::string>(&*d);
    if (!name) co_return ErrnoError(EINVAL, "option 'driver' must be a string");
    drv = registry_.Find(*name);
    if (!drv) co_return ErrnoError(EINVAL, absl::StrFormat("Unknown driver '%s'", *name));
  }
  // Without a format, a top-level "filename" option names the protocol file.
  if (!drv || drv->kind == DriverKind::kProtocol) {
    if (std::optional<std::string> f = options.GetString("filename")) {
      if (!filename.empty()) {
        co_return ErrnoError(EINVAL, "Can't specify 'file' and 'filename' options at the same time");
      }
      filename = *f;
      options.Erase("filename");
    }
  }
  // Without a driver, the format is probed from a protocol layer that comes from the
  // filename or, as in QEMU, from the "file" child's options or a reference to a node.
  bool file_from_options = options.Has("file") || options.HasPrefix("file");
  if (!drv && filename.empty() && (params.protocol_only || !file_from_options)) {
    co_return ErrnoError(EINVAL, "Must specify either driver or file");
  }
  if (!drv && params.protocol_only) {
    absl::StatusOr<const Driver*> proto = registry_.ProtocolForFilename(filename);
    if (!proto.ok()) co_return proto.status();
    drv = *proto;
  }

  // Generic options belong to the node being opened; for a probed format they are parsed
  // before the format is known, so messages name the file instead.
  Driver placeholder{};
  std::string owner_name;
  if (!drv) {
    std::string shown = filename;
    if (shown.empty()) shown = options.GetString("file.filename").value_or("");
    owner_name = shown.empty() ? "image" : absl::StrFormat("image '%s'", shown);
    placeholder.name = owner_name;
  }
  Options given_generic = GivenGenericOptions(options);
  absl::StatusOr<GenericOptions> generic =
      ParseGenericOptions(drv ? *drv : placeholder, options, params);
  if (!generic.ok()) co_return generic.status();

  Node* probed_file = nullptr;
  if (!drv) {
    // QEMU's bdrv_open without a driver: open the protocol layer, then probe the format.
    OpenParams fp;
    fp.protocol_only = true;
    const NodeFlags& gf = generic->flags;
    fp.inherit = InheritFrom(gf);
    fp.inherit.unmap = true;
    absl::StatusOr<Node*> file;
    if (std::optional<OptionValue> reference = options.Take("file")) {
      // "file": "node-name" names the node to probe, as a format's file child may.
      const std::string* ref = std::get_if<std::string>(&*reference);
      if (!ref) co_return ErrnoError(EINVAL, "Must specify either driver or file");  // as QEMU
      if (options.HasPrefix("file") || !filename.empty()) {
        co_return ErrnoError(EINVAL, "Cannot reference an existing block device with additional "
                                     "options or a new filename");
      }
      Node* existing = FindNode(*ref);
      if (!existing) {
        co_return ErrnoError(ENOENT, absl::StrFormat("Cannot find device='%s' nor node-name='%s'",
                                                     *ref, *ref));
      }
      Ref(existing);
      file = existing;
    } else {
      file = co_await OpenCo(filename, options.ExtractPrefix("file"), fp);
    }
    if (!file.ok()) co_return file.status();
    probed_file = *file;
    absl::StatusOr<const Driver*> fmt = co_await ProbeFormat(*probed_file, filename);
    if (!fmt.ok()) {
      Unref(probed_file);
      co_return fmt.status();
    }
    drv = *fmt;
    generic->flags.probed = true;
  }

  absl::Status st;
  if (!drv->instantiate) {
    st = ErrnoError(ENOTSUP, absl::StrFormat("Driver '%s' is not supported by this build of "
                                             "libblock", drv->name));
  } else if (drv->kind == DriverKind::kProtocol && !filename.empty()) {
    if (drv->parse_filename) {
      st = drv->parse_filename(filename, options);
    } else {
      options.Set("filename", filename);
    }
  }
  absl::StatusOr<std::string> name = st.ok() ? AssignNodeName(generic->node_name) : st;
  if (!name.ok()) {
    if (probed_file) Unref(probed_file);
    co_return name.status();
  }

  auto owned = std::make_unique<Node>(*this, *drv, *name, !generic->node_name.has_value());
  Node* node = owned.get();
  nodes_.emplace(*name, std::move(owned));
  node->refcnt_ = 1;
  node->flags_ = generic->flags;
  node->open_options_ = options;
  node->generic_options_ = std::move(given_generic);
  node->impl_ = drv->instantiate(*node);
  if (drv->kind == DriverKind::kProtocol) node->filename_ = filename;

  OpenContext ctx{*this, *node, filename, std::move(options), {}, probed_file};
  ctx.params = params;
  if (drv->options) {
    absl::StatusOr<OptionValues> values = ConsumeOptions(*drv->options, ctx.options);
    if (values.ok()) {
      ctx.values = std::move(*values);
    } else {
      st = values.status();
    }
  }
  if (st.ok()) st = co_await node->impl_->Open(ctx);
  if (st.ok()) {
    node->opened_ = true;
    if (node->filename_.empty()) {
      if (Child* primary = node->primary_child()) node->filename_ = primary->node()->filename();
    }
    st = co_await OpenBacking(ctx);
  }
  if (st.ok()) {
    if (!ctx.options.empty()) {
      const std::string& key = ctx.options.begin()->first;
      st = ErrnoError(EINVAL, drv->kind == DriverKind::kProtocol
                                  ? absl::StrFormat("Block protocol '%s' doesn't support the option '%s'", drv->name, key)
                                  : absl::StrFormat("Block format '%s' does not support the option '%s'", drv->name, key));
    }
  }
  if (st.ok()) {
    node->RefreshLimits();
    st = node->RefreshSize();
  }
  if (ctx.file_hint) Unref(ctx.file_hint);  // the driver did not take the probed file
  if (!st.ok()) {
    Unref(node);
    co_return st;
  }
  co_return node;
}

Task<absl::Status> Graph::OpenBacking(OpenContext& ctx) {
  Node& node = ctx.node;
  std::optional<OptionValue> reference = ctx.options.Take("backing");
  Options options = ctx.options.ExtractPrefix("backing");
  if (!ctx.backing) {
    // Not a format with backing files: the options stay, and are reported as unknown.
    if (reference) ctx.options.Set("backing", *reference);
    for (const auto& [key, value] : options) ctx.options.Set(absl::StrCat("backing.", key), value);
    co_return absl::OkStatus();
  }
  const std::string* ref = reference ? std::get_if<std::string>(&*reference) : nullptr;
  if (reference && !ref) {
    co_return ErrnoError(EINVAL, "option 'backing' must name a node, or be null for none");
  }
  // "backing": null (json: names; the empty string in key=value syntax, as QEMU's keyval
  // null): no backing file.
  if (ref && ref->empty()) {
    if (!options.empty()) {
      co_return ErrnoError(EINVAL, "Option 'backing' is null: no other backing options may be given");
    }
    co_return absl::OkStatus();
  }
  if (node.flags_.no_backing) co_return absl::OkStatus();  // LB_OPEN_NO_BACKING

  Node* backing = nullptr;
  if (ref) {
    if (!options.empty()) {
      co_return ErrnoError(EINVAL, "Cannot reference an existing block device with additional "
                                   "options or a new filename");
    }
    backing = FindNode(*ref);
    if (!backing) {
      co_return ErrnoError(ENOENT, absl::StrFormat("Cannot find device='%s' nor node-name='%s'",
                                                   *ref, *ref));
    }
    Ref(backing);
  } else {
    // The header names the file unless the options say where it is.
    std::string filename;
    bool located = options.Has("file") || options.HasPrefix("file") || options.Has("filename");
    if (!located) {
      if (!ctx.backing->filename || ctx.backing->filename->empty()) {
        if (options.empty()) co_return absl::OkStatus();  // no backing file
      } else {
        absl::StatusOr<std::string> resolved =
            ResolveBackingName(node.filename(), *ctx.backing->filename);
        if (!resolved.ok()) co_return resolved.status();
        filename = std::move(*resolved);
      }
    }
    if (ctx.backing->format && !options.Has("driver")) options.Set("driver", *ctx.backing->format);

    // Loops and depth: the chain is named by the files of its images, top first.
    std::string self = ChainKey(node.filename());
    std::string key = ChainKey(!filename.empty() ? filename
                               : options.GetString("file.filename")
                                     .value_or(options.GetString("filename").value_or(options.ToString())));
    std::vector<std::string> chain = ctx.params.overlays;
    chain.push_back(self);
    if (std::find(chain.begin(), chain.end(), key) != chain.end()) {
      std::string shown;
      for (const std::string& c : chain) absl::StrAppend(&shown, "'", c, "' -> ");
      absl::StrAppend(&shown, "'", key, "'");
      co_return ErrnoError(ELOOP, absl::StrFormat("Backing file chain loops: %s", shown));
    }
    if (static_cast<int>(chain.size()) >= kMaxBackingChain) {
      co_return ErrnoError(EMLINK, absl::StrFormat(
          "The backing chain of '%s' is longer than %d images (at '%s')", chain.front(),
          kMaxBackingChain, key));
    }

    // DESIGN 1.6: a format is never probed for an image that will be written. A backing
    // file without a known format is probed only while it stays read-only, and one that
    // probes as raw is pinned read-only (a writer could turn its first sector into another
    // format's header naming any file as its backing file).
    bool probing = !options.Has("driver");
    if (probing) {
      std::optional<std::string> ro = options.GetString("read-only");
      if (ro && (*ro == "off" || *ro == "false" || *ro == "no")) {
        co_return ErrnoError(EPERM, absl::StrFormat(
            "Could not open backing file '%s' read-write: its format is not known (neither the "
            "image nor the options name it) and probing an image that is written could be "
            "spoofed; give its format", filename.empty() ? key : filename));
      }
    }
    OpenParams params = ChildOpenParams(node.flags_, kRoleCow);
    params.overlays = std::move(chain);
    absl::StatusOr<Node*> opened = co_await OpenCo(filename, std::move(options), params);
    if (!opened.ok()) co_return Prepend(opened.status(), "Could not open backing file: ");
    backing = *opened;
    if (probing && backing->flags_.probed && backing->driver_.name == "raw") {
      backing->probed_raw_backing_ = true;
    }
  }
  absl::StatusOr<Child*> edge = AttachChild(node, *backing, "backing", kRoleCow);
  Unref(backing);  // the edge holds it now (or it is closed)
  co_return edge.status();
}

Task<absl::StatusOr<const Driver*>> Graph::ProbeFormat(Node& file, std::string_view filename) {
  ProbeParent parent;
  absl::StatusOr<Child*> edge = AttachChild(parent, file, "probe", kRolePrimary, 0, kPermAll);
  if (!edge.ok()) co_return edge.status();
  uint8_t buf[kProbeBufferSize] = {};
  int64_t len = std::min<int64_t>(kProbeBufferSize, file.size());
  absl::Status st = absl::OkStatus();
  if (len > 0) st = co_await (*edge)->Pread(0, buf, len);
  DetachChild(*edge);
  if (!st.ok()) {
    co_return ErrnoError(StatusErrno(st), absl::StrFormat("Could not read image for determining "
                                                          "its format: %s", st.message()));
  }
  const Driver* drv = registry_.ProbeFormat(buf, static_cast<size_t>(len), filename).driver;
  if (!drv) co_return ErrnoError(ENOENT, "Could not determine image format: No compatible driver found");
  co_return drv;
}

absl::StatusOr<std::vector<OptionSpec>> Graph::CreateOptions(std::string_view format,
                                                             std::string_view filename) const {
  const Driver* drv = registry_.Find(format);
  // A format can create images before this build can open them (qcow2 while its driver is
  // being written); one that can do neither is unknown here.
  if (!drv || (!drv->instantiate && !drv->create)) {
    return ErrnoError(EINVAL, absl::StrFormat("Unknown file format '%s'", format));
  }
  if (!drv->create) {
    return ErrnoError(ENOTSUP, absl::StrFormat("Format driver '%s' does not support image creation",
                                               drv->name));
  }
  std::vector<OptionSpec> specs;
  auto add = [&specs](const OptionSchema* schema) {
    if (!schema) return;
    for (const OptionSpec& s : schema->specs) {
      bool dup = false;
      for (const OptionSpec& have : specs) dup = dup || have.name == s.name;
      if (!dup) specs.push_back(s);
    }
  };
  add(drv->create_options);
  if (drv->kind == DriverKind::kFormat && !filename.empty()) {
    LB_ASSIGN_OR_RETURN(const Driver* proto, registry_.ProtocolForFilename(filename));
    add(proto->create_options);
  }
  return specs;
}

absl::Status Graph::Create(std::string_view filename, std::string_view format, Options options,
                           bool validate_only) {
  absl::StatusOr<std::vector<OptionSpec>> known = CreateOptions(format, filename);
  if (!known.ok()) return Prepend(known.status(), absl::StrFormat("%s: ", filename));
  std::vector<OptionSpec> specs = std::move(*known);
  const Driver* drv = registry_.Find(format);
  bool knows_backing = false;
  for (const OptionSpec& s : specs) knows_backing = knows_backing || s.name == "backing_file";
  if (options.Has("backing_file") && !knows_backing) {
    return ErrnoError(ENOTSUP, absl::StrFormat("%s: Backing file not supported for file format '%s'",
                                               filename, drv->name));
  }
  CreateContext ctx{*this, std::string(filename), {}, {}};
  OptionSchema schema{drv->name, specs};
  absl::StatusOr<OptionValues> values = ConsumeOptions(schema, options);
  if (!values.ok()) return Prepend(values.status(), absl::StrFormat("%s: ", filename));
  ctx.values = std::move(*values);
  if (!options.empty()) {
    return ErrnoError(EINVAL, absl::StrFormat("%s: Invalid parameter '%s'", filename,
                                              options.begin()->first));
  }
  if (validate_only) return absl::OkStatus();
  return loop_.Run(drv->create(ctx));
}

void Graph::Ref(Node* node) { ++node->refcnt_; }

void Graph::Unref(Node* node) {
  if (--node->refcnt_ > 0) return;
  CloseNode(node);
}

void Graph::CloseNode(Node* node) {
  node->closing_ = true;
  node->Drain();
  if (node->opened_) {
    // As QEMU's bdrv_close: what changed in this node since its last flush (e.g. while its
    // parents detached) is made durable before the driver closes. Its children, which have
    // no writer left above them, flush when they close in turn.
    if (!node->flags_.read_only) {
      absl::Status fl = loop_.Run(node->FlushLayer());
      if (!fl.ok()) Warn(absl::StrFormat("flushing node '%s' on close: %s", node->name(), fl.message()));
    }
    absl::Status st = loop_.Run(node->impl_->Close());
    if (!st.ok()) Warn(absl::StrFormat("closing node '%s': %s", node->name(), st.message()));
  }
  while (!node->children_.empty()) DetachChild(node->children_.back());
  nodes_.erase(node->name_);
}

// ---- transactions --------------------------------------------------------------------------------

void Graph::Link(Child* child, Transaction& tran) {
  if (Node* p = child->parent()->AsNode()) {
    p->children_.push_back(child);
    tran.OnAbort([p, child] { std::erase(p->children_, child); });
  }
  Node* n = child->node_;
  n->parents_.push_back(child);
  tran.OnAbort([n, child] { std::erase(n->parents_, child); });
  // The new parent is quiesced as often as its new child is drained.
  int q = n->quiesce_counter_;
  for (int i = 0; i < q; ++i) child->parent()->Drained(true);
  if (q) tran.OnAbort([child, q] {
    for (int i = 0; i < q; ++i) child->parent()->Drained(false);
  });
}

void Graph::Unlink(Child* child, Transaction& tran) {
  if (Node* p = child->parent()->AsNode()) {
    auto pos = std::find(p->children_.begin(), p->children_.end(), child) - p->children_.begin();
    std::erase(p->children_, child);
    tran.OnAbort([p, child, pos] { p->children_.insert(p->children_.begin() + pos, child); });
  }
  Node* n = child->node_;
  auto pos = std::find(n->parents_.begin(), n->parents_.end(), child) - n->parents_.begin();
  std::erase(n->parents_, child);
  tran.OnAbort([n, child, pos] { n->parents_.insert(n->parents_.begin() + pos, child); });
  int q = n->quiesce_counter_;
  for (int i = 0; i < q; ++i) child->parent()->Drained(false);
  if (q) tran.OnAbort([child, q] {
    for (int i = 0; i < q; ++i) child->parent()->Drained(true);
  });
}

namespace {
bool IsDescendant(const Node* ancestor, const Node* candidate) {
  if (ancestor == candidate) return true;
  for (const Child* c : ancestor->children()) {
    if (IsDescendant(c->node(), candidate)) return true;
  }
  return false;
}
}  // namespace

absl::Status Graph::Commit(Transaction& tran) {
  std::vector<Node*> roots = tran.perm_roots();
  bool relaxing = tran.relaxing();
  tran.ClearPermRefresh();
  if (!roots.empty()) {
    absl::Status st = RefreshPerms(roots, tran, relaxing);
    if (!st.ok()) {
      tran.Abort();
      return st;
    }
  }
  tran.Commit();
  return absl::OkStatus();
}

absl::StatusOr<Child*> Graph::AttachChild(ChildParent& parent, Node& child, std::string name,
                                          ChildRole role, Perm perm, Perm shared) {
  Transaction tran;
  absl::StatusOr<Child*> edge = AttachChild(parent, child, std::move(name), role, perm, shared, tran);
  if (!edge.ok()) {
    tran.Abort();
    return edge;
  }
  LB_RETURN_IF_ERROR(Commit(tran));
  return edge;
}

absl::StatusOr<Child*> Graph::AttachChild(ChildParent& parent, Node& child, std::string name,
                                          ChildRole role, Perm perm, Perm shared,
                                          Transaction& tran) {
  Node* parent_node = parent.AsNode();
  if (parent_node && IsDescendant(&child, parent_node)) {
    return ErrnoError(EINVAL, absl::StrFormat("Making '%s' a child of '%s' would create a cycle",
                                              child.name(), parent_node->name()));
  }
  Child* edge = new Child(&parent, &child, std::move(name), role);
  edge->perm_ = parent_node ? 0 : perm;
  edge->shared_ = parent_node ? kPermAll : shared;
  ++child.refcnt_;
  // Registered before Link's undo steps, so it runs after them.
  tran.OnAbort([edge, c = &child] {
    --c->refcnt_;
    delete edge;
  });
  Link(edge, tran);
  tran.NeedPermRefresh(parent_node ? parent_node : &child, /*relaxing=*/false);
  tran.AfterCommit([this, p = &parent] { ChildrenChanged(p); });
  return edge;
}

void Graph::ChildrenChanged(ChildParent* parent) {
  Node* n = parent->AsNode();
  if (!n || !n->opened_ || n->closing_) return;
  n->RefreshLimits();
  (void)n->RefreshSize();
}

void Graph::DetachChild(Child* child) {
  Transaction tran;
  DetachChild(child, tran);
  (void)Commit(tran);  // relaxing: cannot fail
}

void Graph::DetachChild(Child* child, Transaction& tran) {
  Node* node = child->node_;
  ChildParent* parent = child->parent();
  Unlink(child, tran);
  tran.NeedPermRefresh(node, /*relaxing=*/true);
  tran.AfterCommit([this, child, node, parent] {
    delete child;
    ChildrenChanged(parent);
    Unref(node);
  });
}

absl::Status Graph::ReplaceChild(Child* child, Node& new_node) {
  Transaction tran;
  absl::Status st = ReplaceChild(child, new_node, tran);
  if (!st.ok()) {
    tran.Abort();
    return st;
  }
  return Commit(tran);
}

absl::Status Graph::ReplaceChild(Child* child, Node& new_node, Transaction& tran) {
  Node* old = child->node_;
  if (old == &new_node) return absl::OkStatus();
  Node* parent_node = child->parent()->AsNode();
  if (parent_node && IsDescendant(&new_node, parent_node)) {
    return ErrnoError(EINVAL, absl::StrFormat("Making '%s' a child of '%s' would create a cycle",
                                              new_node.name(), parent_node->name()));
  }
  Unlink(child, tran);
  tran.Assign(&child->node_, &new_node);
  Link(child, tran);
  ++new_node.refcnt_;
  tran.OnAbort([n = &new_node] { --n->refcnt_; });
  tran.NeedPermRefresh(parent_node ? parent_node : &new_node, /*relaxing=*/false);
  tran.NeedPermRefresh(old, /*relaxing=*/false);
  tran.AfterCommit([this, parent = child->parent(), old] {
    ChildrenChanged(parent);
    Unref(old);
  });
  return absl::OkStatus();
}

absl::Status Graph::SetEdgePerm(Child* child, Perm perm, Perm shared) {
  Transaction tran;
  SetEdgePerm(child, perm, shared, tran);
  return Commit(tran);
}

void Graph::SetEdgePerm(Child* child, Perm perm, Perm shared, Transaction& tran) {
  bool relaxing = (perm & ~child->perm_) == 0 && (child->shared_ & ~shared) == 0;
  tran.Assign(&child->perm_, perm);
  tran.Assign(&child->shared_, shared);
  tran.NeedPermRefresh(child->node_, relaxing);
}

absl::Status Graph::ReplaceNode(Node& from, Node& to, const std::vector<Child*>& except) {
  Transaction tran;
  absl::Status st = ReplaceNode(from, to, except, tran);
  if (!st.ok()) {
    tran.Abort();
    return st;
  }
  return Commit(tran);
}

absl::Status Graph::ReplaceNode(Node& from, Node& to, const std::vector<Child*>& except,
                                Transaction& tran) {
  if (&from == &to) return absl::OkStatus();
  for (Child* c : std::vector<Child*>(from.parents_)) {
    if (std::find(except.begin(), except.end(), c) != except.end()) continue;
    // A parent that `to` reaches (a filter inserted above `from`, `to` itself) keeps its
    // edge: moving it would make a cycle.
    Node* pn = c->parent()->AsNode();
    if (pn && IsDescendant(&to, pn)) continue;
    LB_RETURN_IF_ERROR(ReplaceChild(c, to, tran));
  }
  return absl::OkStatus();
}

absl::StatusOr<Node*> Graph::InsertFilterAbove(Node& node, Options filter_options) {
  filter_options.Set("file", node.name());
  LB_ASSIGN_OR_RETURN(Node* filter, Open("", std::move(filter_options)));
  absl::Status st;
  Child* below = filter->primary_child();
  if (filter->driver().kind != DriverKind::kFilter) {
    st = ErrnoError(EINVAL, absl::StrFormat("'%s' is not a filter driver", filter->driver().name));
  } else if (!below || below->node() != &node) {
    st = ErrnoError(EINVAL, absl::StrFormat("filter '%s' does not filter node '%s'",
                                            filter->name(), node.name()));
  } else {
    Transaction tran;
    st = ReplaceNode(node, *filter, {}, tran);
    if (st.ok()) {
      st = Commit(tran);
    } else {
      tran.Abort();
    }
  }
  Unref(filter);  // its new parents hold it (or, on failure, it closes)
  if (!st.ok()) return st;
  return filter;
}

// One node of a reopen: what it will be once the transaction commits.
struct Graph::ReopenEntry {
  Node* node;
  NodeFlags flags;      // its generic settings
  OptionValues values;  // its driver's options, validated
  Options generic;      // the generic options it is given
  Options own;          // the driver options it is given
};

absl::Status Graph::Reopen(Node& node, bool read_only,
                           const std::vector<EdgeUpdate>& edge_updates) {
  ReopenRequest request;
  request.changes.Set("read-only", read_only);
  request.edge_updates = edge_updates;
  return Reopen(node, std::move(request));
}

absl::Status Graph::Reopen(Node& node, ReopenRequest request) {
  return loop_.Run(ReopenCo(node, std::move(request)));
}

Task<absl::Status> Graph::ReopenCo(Node& node, ReopenRequest request) {
  Transaction tran;
  absl::Status st = co_await ReopenCo(node, std::move(request), tran);
  if (!st.ok()) {
    tran.Abort();
    co_return st;
  }
  co_return Commit(tran);
}

Task<absl::Status> Graph::ReopenCo(Node& node, ReopenRequest request, Transaction& tran) {
  // Like QEMU, drain what is reopened: requests in flight finish in the old mode, on the old
  // descriptors (the file protocol closes its old one on commit), before anything changes, and
  // the parents above start nothing new until the transaction ends.
  auto section = std::make_shared<DrainedSection>(*this, node);
  // Registered first, so it runs after every other undo step of this reopen.
  tran.OnAbort([section] { section->End(); });
  co_await section->Wait();

  for (const EdgeUpdate& u : request.edge_updates) SetEdgePerm(u.child, u.perm, u.shared, tran);
  // The node keeps whatever it inherited at open unless the request changes it.
  InheritedFlags inherit = InheritFrom(node.flags_);
  if (request.writethrough) inherit.writethrough = *request.writethrough;
  auto entries = std::make_shared<std::deque<ReopenEntry>>();
  absl::Status st = co_await PrepareReopenTree(node, std::move(request.changes), inherit, entries, tran);
  if (!st.ok()) co_return st;
  // Permissions are computed (by Commit) for the new modes while I/O still runs in the old
  // ones (a filter may still write while it gives up its permissions); the modes flip on
  // commit.
  for (ReopenEntry& e : *entries) {
    tran.Assign(&e.node->pending_read_only_, std::optional<bool>(e.flags.read_only));
  }
  tran.NeedPermRefresh(&node, /*relaxing=*/false);
  // After the drivers' and the permissions' commits: the settings themselves.
  for (ReopenEntry& e : *entries) {
    tran.OnCommit([entries, e = &e] {
      Node* n = e->node;
      n->flags_ = e->flags;
      n->pending_read_only_.reset();
      n->generic_options_ = e->generic;
      if (const OptionSchema* schema = n->driver_.options) {
        for (const OptionSpec& spec : schema->specs) n->open_options_.Erase(spec.name);
      }
      for (const auto& [key, value] : e->own) n->open_options_.Set(key, value);
    });
  }
  // Limits and sizes follow the new settings, children first (a raw window over its file);
  // then the section ends and queued requests run in the new mode.
  tran.AfterCommit([this, entries, n = &node] {
    for (auto it = entries->rbegin(); it != entries->rend(); ++it) {
      it->node->RefreshLimits();
      (void)it->node->RefreshSize();
    }
    for (Child* p : n->parents_) ChildrenChanged(p->parent());
  });
  tran.AfterCommit([section] { section->End(); });
  co_return absl::OkStatus();
}

Task<absl::Status> Graph::PrepareReopenTree(Node& n, Options changes, InheritedFlags inherit,
                                            std::shared_ptr<std::deque<ReopenEntry>> entries,
                                            Transaction& tran) {
  for (const ReopenEntry& e : *entries) {
    if (e.node == &n) co_return absl::OkStatus();  // below two parents: the first one's changes
  }
  // Children's options go to them; a reference must name the current child.
  std::vector<Options> child_changes;
  for (Child* c : n.children_) child_changes.push_back(changes.ExtractPrefix(c->name()));
  for (Child* c : n.children_) {
    std::optional<OptionValue> ref = changes.Take(c->name());
    if (!ref) continue;
    std::string name = OptionValueText(*ref);
    if (name == c->node_->name()) continue;
    if (!FindNode(name)) {
      co_return ErrnoError(ENOENT, absl::StrFormat("Cannot find device='' nor node-name='%s'", name));
    }
    co_return ErrnoError(EINVAL, absl::StrFormat("Cannot change the option '%s'", c->name()));
  }

  // The node's options afterwards: what it was given, with the changes it may take over them.
  // Changes it may not take leave the old value in place, and fail once the driver has seen
  // the rest (QEMU checks them last).
  const OptionSchema* schema = n.driver_.options;
  Options given = n.generic_options_;
  if (schema) {
    for (const OptionSpec& spec : schema->specs) {
      if (const OptionValue* v = n.open_options_.Get(spec.name)) given.Set(std::string(spec.name), *v);
    }
  }
  std::optional<std::string> refused;
  Options changed;  // driver options that take a new value
  for (const auto& [key, value] : changes) {
    bool driver_option = schema && schema->Find(key) && n.impl_->CanReopenOption(key);
    bool allowed = ReopenableGenericOption(key) || driver_option;
    if (allowed) {
      if (driver_option) {
        // Compared with what it is now: the value given before, or the default.
        std::string now = given.Has(key) ? OptionValueText(*given.Get(key))
                                         : std::string(schema->Find(key)->default_value);
        if (now != OptionValueText(value)) changed.Set(key, value);
      }
      given.Set(key, value);
      continue;
    }
    bool same = key == "driver" ? OptionValueText(value) == n.driver_.name
                                : given.Has(key) && OptionValueText(*given.Get(key)) == OptionValueText(value);
    if (!same && !refused) refused = key;
  }

  OpenParams params;
  params.inherit = inherit;
  Options rest = given;
  absl::StatusOr<GenericOptions> generic = ParseGenericOptions(n.driver_, rest, params);
  if (!generic.ok()) co_return generic.status();
  OptionValues values;
  if (schema) {
    absl::StatusOr<OptionValues> parsed = ConsumeOptions(*schema, rest);
    if (!parsed.ok()) co_return parsed.status();
    values = std::move(*parsed);
  }
  ReopenEntry& e = entries->emplace_back();
  e.node = &n;
  e.flags = generic->flags;
  e.flags.probed = n.flags_.probed;
  e.values = std::move(values);
  e.generic = GivenGenericOptions(given);
  e.own = given;
  for (const OptionSpec& spec : kGenericSpecs) e.own.Erase(spec.name);
  if (n.probed_raw_backing_ && !e.flags.read_only) {
    co_return ErrnoError(EPERM, absl::StrFormat(
        "Cannot make backing file '%s' writable: its format was probed as raw (probing an image "
        "that is written could be spoofed); open it with an explicit format",
        n.filename()));
  }
  ReopenState state{e.flags, e.values, changed, n.flags_.read_only};
  absl::Status prepared = co_await n.impl_->PrepareReopen(state, tran);
  if (!prepared.ok()) co_return prepared;
  if (refused) {
    co_return ErrnoError(EINVAL, absl::StrFormat("Cannot change the option '%s'", *refused));
  }

  // Then the children, inheriting from this node's new settings as they did at open
  // (OpenContext::OpenChild): backing files stay read-only, lower layers default to unmap.
  for (size_t i = 0; i < n.children_.size(); ++i) {
    Child* c = n.children_[i];
    InheritedFlags child_inherit = InheritFrom(e.flags);
    if (c->role() & kRoleCow) {
      child_inherit.read_only = true;
      child_inherit.auto_read_only = false;
    }
    child_inherit.unmap = true;
    absl::Status child_st = co_await PrepareReopenTree(*c->node_, std::move(child_changes[i]),
                                                       child_inherit, entries, tran);
    if (!child_st.ok()) co_return child_st;
  }
  co_return absl::OkStatus();
}

absl::Status Graph::CheckParentConflicts(const Node& node) const {
  for (const Child* a : node.parents_) {
    for (const Child* b : node.parents_) {
      if (a == b) continue;
      Perm conflict = b->perm_ & ~a->shared_;
      if (!conflict) continue;
      return ErrnoError(
          EPERM,
          absl::StrFormat("Permission conflict on node '%s': permissions '%s' are both required "
                          "by %s (uses node '%s' as '%s' child) and unshared by %s (uses node "
                          "'%s' as '%s' child).",
                          node.name(), PermNames(conflict), b->parent()->ParentDescription(),
                          node.name(), b->name(), a->parent()->ParentDescription(), node.name(),
                          a->name()));
    }
  }
  return absl::OkStatus();
}

absl::Status Graph::RefreshPerms(const std::vector<Node*>& roots, Transaction& tran,
                                 bool relaxing) {
  // Reverse post-order of a DFS over children: every node comes after all of its parents
  // that are reachable from the roots, so its incoming edges are final when it is checked.
  std::vector<Node*> order;
  std::set<Node*> visited;
  std::function<void(Node*)> visit = [&](Node* n) {
    if (!visited.insert(n).second) return;
    for (Child* c : n->children_) visit(c->node_);
    order.push_back(n);
  };
  for (Node* r : roots) visit(r);
  std::reverse(order.begin(), order.end());

  for (Node* n : order) {
    Perm perm = 0, shared = kPermAll;
    for (const Child* p : n->parents_) {
      perm |= p->perm_;
      shared &= p->shared_;
    }
    absl::Status st = CheckParentConflicts(*n);
    if (st.ok() && (perm & (kPermWrite | kPermWriteUnchanged)) && n->EffectiveReadOnly()) {
      // QEMU 7.2's two messages: a node that is read-only now, or one a reopen would make
      // read-only under a writer.
      st = !n->flags_.read_only
               ? ErrnoError(EPERM, absl::StrFormat("Read-only block node '%s' cannot support "
                                                   "read-write users", n->name()))
               : ErrnoError(EPERM, "Block node is read-only");
    }
    if (st.ok()) st = n->impl_->PreparePerm(perm, shared, tran);
    // Losing permissions cannot be refused: a relaxing refresh carries on regardless.
    if (!st.ok() && !relaxing) return st;
    tran.Assign(&n->perm_, perm);
    tran.Assign(&n->shared_, shared);
    for (Child* c : n->children_) {
      Perm np = 0, ns = kPermAll;
      n->impl_->ChildPerm(*c, perm, shared, &np, &ns);
      if (c->node_->flags_.force_share) ns = kPermAll;
      tran.Assign(&c->perm_, np);
      tran.Assign(&c->shared_, ns);
    }
  }
  return absl::OkStatus();
}

}  // namespace libblock
