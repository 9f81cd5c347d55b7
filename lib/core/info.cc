#include "core/info.h"

#include <cerrno>

#include "core/graph.h"
#include "core/json_text.h"
#include "util/status.h"

namespace libblock {

Child* BackingChild(const Node& node) {
  for (Child* c : node.children()) {
    if (c->role() & kRoleCow) return c;
  }
  return nullptr;
}

namespace {

// Whether `key`, one of the node's own options, changes what its data is (see
// Driver::strong_options); the others (locking, aio, node-name, cache, ...) are left out of
// names, as QEMU leaves them out.
bool IsStrong(const Node& node, std::string_view key) {
  if (key == "filename" && node.driver().kind == DriverKind::kProtocol) return true;
  for (std::string_view strong : node.driver().strong_options) {
    if (strong == key) return true;
  }
  return false;
}

}  // namespace

nlohmann::ordered_json OptionsTree(const Node& node) {
  nlohmann::ordered_json tree = nlohmann::ordered_json::object();
  tree["driver"] = std::string(node.driver().name);
  // The node's own explicit options that matter: keys without a dot that are not children.
  nlohmann::json own = node.open_options().ToJson();
  for (auto& [key, value] : own.items()) {
    if (value.is_object() || node.FindChild(key) || !IsStrong(node, key)) continue;
    tree[key] = value;
  }
  for (const Child* c : node.children()) tree[c->name()] = OptionsTree(*c->node());
  return tree;
}

namespace {

// True when the tree under `node` holds nothing but drivers and one protocol filename (or a
// protocol's own name, like null-co://), and no filter: then that name names the image, as
// in QEMU.
bool PlainTree(const Node& node) {
  if (node.driver().kind == DriverKind::kFilter) return false;
  nlohmann::json own = node.open_options().ToJson();
  for (auto& [key, value] : own.items()) {
    if (value.is_object() || node.FindChild(key) || !IsStrong(node, key)) continue;
    if (key == "filename" && node.driver().kind == DriverKind::kProtocol) continue;
    return false;
  }
  // A format over exactly one storage child (its backing file is part of the image, not
  // of its name).
  int storage_children = 0;
  for (const Child* c : node.children()) {
    if (c->role() & kRoleCow) continue;
    if (++storage_children > 1 || !PlainTree(*c->node())) return false;
  }
  return true;
}

}  // namespace

std::string DisplayFilename(const Node& node) {
  if (PlainTree(node)) return node.filename();
  nlohmann::ordered_json tree = OptionsTree(node);
  // Backing files are described separately, not as part of the image's name.
  for (const Child* c : node.children()) {
    if (c->role() & kRoleCow) tree.erase(c->name());
  }
  // QEMU's text (and never nlohmann's dump, which throws on names that are not UTF-8).
  return "json:" + QemuJsonText(tree, /*pretty=*/false);
}

namespace {

absl::StatusOr<nlohmann::ordered_json> OneImage(Node& node) {
  nlohmann::ordered_json j = nlohmann::ordered_json::object();
  ImageInfo info;
  absl::Status have_info = node.impl()->GetImageInfo(info);
  if (have_info.ok() && info.snapshots.is_array() && !info.snapshots.empty()) {
    j["snapshots"] = info.snapshots;  // first, as qemu-img prints it
  }
  j["virtual-size"] = node.size();
  j["filename"] = DisplayFilename(node);
  if (have_info.ok() && info.cluster_size) j["cluster-size"] = *info.cluster_size;
  j["format"] = std::string(node.driver().name);
  absl::StatusOr<int64_t> actual = node.impl()->GetAllocatedSize();
  if (actual.ok()) j["actual-size"] = *actual;
  if (have_info.ok() && info.encrypted) j["encrypted"] = true;
  if (have_info.ok() && !info.format_specific.is_null()) j["format-specific"] = info.format_specific;
  if (have_info.ok() && info.backing_filename) {
    j["backing-filename"] = *info.backing_filename;
    if (Child* b = BackingChild(node)) {
      j["full-backing-filename"] = DisplayFilename(*b->node());
    }
    if (info.backing_format) j["backing-filename-format"] = *info.backing_format;
  }
  if (have_info.ok()) j["dirty-flag"] = info.dirty;
  return j;
}

}  // namespace

absl::StatusOr<nlohmann::ordered_json> ImageInfoJson(Node& node, bool chain) {
  LB_ASSIGN_OR_RETURN(nlohmann::ordered_json first, OneImage(node));
  if (!chain) return first;
  nlohmann::ordered_json list = nlohmann::ordered_json::array();
  list.push_back(std::move(first));
  for (Child* b = BackingChild(node); b; b = BackingChild(*b->node())) {
    LB_ASSIGN_OR_RETURN(nlohmann::ordered_json next, OneImage(*b->node()));
    list.push_back(std::move(next));
  }
  return list;
}

}  // namespace libblock
