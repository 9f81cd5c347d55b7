// qcow2's format-specific `info` block (see qcow2_info.h), in qemu-img 7.2's order.
#include "formats/qcow2/qcow2_info.h"

namespace libblock::qcow2 {

nlohmann::ordered_json FormatSpecificInfo(const Header& h) {
  nlohmann::ordered_json data = nlohmann::ordered_json::object();
  const bool v3 = h.version >= 3;
  data["compat"] = v3 ? "1.1" : "0.10";
  data["compression-type"] = h.compression_type == CompressionType::kZstd ? "zstd" : "zlib";
  if (v3) data["lazy-refcounts"] = (h.compatible_features & kCompatLazyRefcounts) != 0;
  data["refcount-bits"] = h.refcount_bits();
  if (h.data_file) {
    data["data-file"] = *h.data_file;
    data["data-file-raw"] = (h.autoclear_features & kAutoclearDataFileRaw) != 0;
  }
  if (v3) {
    data["corrupt"] = (h.incompatible_features & kIncompatCorrupt) != 0;
    data["extended-l2"] = h.extended_l2();
  }
  nlohmann::ordered_json out = nlohmann::ordered_json::object();
  out["type"] = "qcow2";
  out["data"] = std::move(data);
  return out;
}

}  // namespace libblock::qcow2
