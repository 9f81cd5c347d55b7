// qcow2's block of `info` (QEMU's ImageInfoSpecificQCow2), from the image header: what the
// driver's GetImageInfo puts in ImageInfo::format_specific.
#ifndef LIBBLOCK_FORMATS_QCOW2_QCOW2_INFO_H_
#define LIBBLOCK_FORMATS_QCOW2_QCOW2_INFO_H_

#include "formats/qcow2/qcow2_header.h"
#include "nlohmann/json.hpp"

namespace libblock::qcow2 {

// {"type": "qcow2", "data": {...}} with qemu-img 7.2's keys and order: compat,
// compression-type, lazy-refcounts (v3), refcount-bits, data-file and data-file-raw (with a
// data file), corrupt and extended-l2 (v3). Bitmaps and encryption are not listed yet.
nlohmann::ordered_json FormatSpecificInfo(const Header& header);

}  // namespace libblock::qcow2

#endif  // LIBBLOCK_FORMATS_QCOW2_QCOW2_INFO_H_
