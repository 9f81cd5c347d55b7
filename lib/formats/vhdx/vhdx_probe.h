// Format probe for vhdx.
// Microsoft VHDX: the file type identifier "vhdxfile" at offset 0.
#ifndef LIBBLOCK_FORMATS_VHDX_VHDX_PROBE_H_
#define LIBBLOCK_FORMATS_VHDX_VHDX_PROBE_H_

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace libblock::vhdx {

// Scores how likely the image whose first `len` bytes are `buf` (and whose name is `filename`,
// possibly empty) is a vhdx image, as QEMU's vhdx probe does: 0 (not vhdx) .. 100 (certain).
// Reads nothing at or past buf[len]; `buf` may be null when `len` is 0.
int Probe(const uint8_t* buf, size_t len, std::string_view filename);

}  // namespace libblock::vhdx

#endif  // LIBBLOCK_FORMATS_VHDX_VHDX_PROBE_H_
