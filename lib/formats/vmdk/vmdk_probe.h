// Format probe for vmdk.
// VMware VMDK: a sparse extent ("KDMV" / "COWD") or a text descriptor whose first
// non-comment line is `version=1`, `version=2` or `version=3`.
#ifndef LIBBLOCK_FORMATS_VMDK_VMDK_PROBE_H_
#define LIBBLOCK_FORMATS_VMDK_VMDK_PROBE_H_

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace libblock::vmdk {

// Scores how likely the image whose first `len` bytes are `buf` (and whose name is `filename`,
// possibly empty) is a vmdk image, as QEMU's vmdk probe does: 0 (not vmdk) .. 100 (certain).
// Reads nothing at or past buf[len]; `buf` may be null when `len` is 0.
int Probe(const uint8_t* buf, size_t len, std::string_view filename);

}  // namespace libblock::vmdk

#endif  // LIBBLOCK_FORMATS_VMDK_VMDK_PROBE_H_
