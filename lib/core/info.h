// Image information as qemu-img info reports it, computed from the graph.
#ifndef LIBBLOCK_CORE_INFO_H_
#define LIBBLOCK_CORE_INFO_H_

#include <string>

#include "absl/status/statusor.h"
#include "core/node.h"
#include "nlohmann/json.hpp"

namespace libblock {

// The name QEMU gives a node's image (bdrv_refresh_filename): the protocol file's name when
// the tree was opened from a plain filename, else a "json:{...}" of the options that
// reopen it.
std::string DisplayFilename(const Node& node);

// The node's own options as a tree (driver, its explicit options, and its children's trees).
nlohmann::ordered_json OptionsTree(const Node& node);

// One qemu-img info --output=json object for the image of `node` (a format or protocol
// node). With `chain`, an array: the image followed by its backing files.
absl::StatusOr<nlohmann::ordered_json> ImageInfoJson(Node& node, bool chain);

// The backing child of `node` (role cow), or nullptr.
Child* BackingChild(const Node& node);

}  // namespace libblock

#endif  // LIBBLOCK_CORE_INFO_H_
