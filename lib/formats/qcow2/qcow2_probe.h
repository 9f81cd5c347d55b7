// Format probe for qcow2.
// QEMU copy-on-write v2/v3 (docs/interop/qcow2.txt): magic "QFI\xfb" and version >= 2.
#ifndef LIBBLOCK_FORMATS_QCOW2_QCOW2_PROBE_H_
#define LIBBLOCK_FORMATS_QCOW2_QCOW2_PROBE_H_

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace libblock::qcow2 {

// Scores how likely the image whose first `len` bytes are `buf` (and whose name is `filename`,
// possibly empty) is a qcow2 image, as QEMU's qcow2 probe does: 0 (not qcow2) .. 100 (certain).
// Reads nothing at or past buf[len]; `buf` may be null when `len` is 0.
int Probe(const uint8_t* buf, size_t len, std::string_view filename);

}  // namespace libblock::qcow2

#endif  // LIBBLOCK_FORMATS_QCOW2_QCOW2_PROBE_H_
