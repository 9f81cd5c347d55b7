// Format probe for qcow.
// QEMU copy-on-write v1: the qcow2 magic "QFI\xfb" with version 1.
#ifndef LIBBLOCK_FORMATS_QCOW_QCOW_PROBE_H_
#define LIBBLOCK_FORMATS_QCOW_QCOW_PROBE_H_

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace libblock::qcow {

// Scores how likely the image whose first `len` bytes are `buf` (and whose name is `filename`,
// possibly empty) is a qcow image, as QEMU's qcow probe does: 0 (not qcow) .. 100 (certain).
// Reads nothing at or past buf[len]; `buf` may be null when `len` is 0.
int Probe(const uint8_t* buf, size_t len, std::string_view filename);

}  // namespace libblock::qcow

#endif  // LIBBLOCK_FORMATS_QCOW_QCOW_PROBE_H_
