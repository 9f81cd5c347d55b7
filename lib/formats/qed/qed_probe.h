// Format probe for qed.
// QEMU enhanced disk (docs/interop/qed_spec.txt): little-endian magic "QED\0".
#ifndef LIBBLOCK_FORMATS_QED_QED_PROBE_H_
#define LIBBLOCK_FORMATS_QED_QED_PROBE_H_

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace libblock::qed {

// Scores how likely the image whose first `len` bytes are `buf` (and whose name is `filename`,
// possibly empty) is a qed image, as QEMU's qed probe does: 0 (not qed) .. 100 (certain).
// Reads nothing at or past buf[len]; `buf` may be null when `len` is 0.
int Probe(const uint8_t* buf, size_t len, std::string_view filename);

}  // namespace libblock::qed

#endif  // LIBBLOCK_FORMATS_QED_QED_PROBE_H_
