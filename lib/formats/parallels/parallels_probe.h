// Format probe for parallels.
// Parallels expandable images (docs/interop/parallels.txt): magic "WithoutFreeSpace" or
// "WithouFreSpacExt" and version 2.
#ifndef LIBBLOCK_FORMATS_PARALLELS_PARALLELS_PROBE_H_
#define LIBBLOCK_FORMATS_PARALLELS_PARALLELS_PROBE_H_

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace libblock::parallels {

// Scores how likely the image whose first `len` bytes are `buf` (and whose name is `filename`,
// possibly empty) is a parallels image, as QEMU's parallels probe does: 0 (not parallels) .. 100 (certain).
// Reads nothing at or past buf[len]; `buf` may be null when `len` is 0.
int Probe(const uint8_t* buf, size_t len, std::string_view filename);

}  // namespace libblock::parallels

#endif  // LIBBLOCK_FORMATS_PARALLELS_PARALLELS_PROBE_H_
