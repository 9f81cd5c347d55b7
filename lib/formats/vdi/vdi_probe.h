// Format probe for vdi.
// VirtualBox VDI: signature 0xbeda107f (little-endian) at offset 0x40 of the 512-byte header.
#ifndef LIBBLOCK_FORMATS_VDI_VDI_PROBE_H_
#define LIBBLOCK_FORMATS_VDI_VDI_PROBE_H_

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace libblock::vdi {

// Scores how likely the image whose first `len` bytes are `buf` (and whose name is `filename`,
// possibly empty) is a vdi image, as QEMU's vdi probe does: 0 (not vdi) .. 100 (certain).
// Reads nothing at or past buf[len]; `buf` may be null when `len` is 0.
int Probe(const uint8_t* buf, size_t len, std::string_view filename);

}  // namespace libblock::vdi

#endif  // LIBBLOCK_FORMATS_VDI_VDI_PROBE_H_
