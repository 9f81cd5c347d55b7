// Format probe for luks.
// LUKS version 1 (cryptsetup's on-disk format spec): magic "LUKS\xba\xbe" and big-endian
// version 1. LUKS2 images score 0, as in QEMU 7.2.
#ifndef LIBBLOCK_FORMATS_LUKS_LUKS_PROBE_H_
#define LIBBLOCK_FORMATS_LUKS_LUKS_PROBE_H_

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace libblock::luks {

// Scores how likely the image whose first `len` bytes are `buf` (and whose name is `filename`,
// possibly empty) is a luks image, as QEMU's luks probe does: 0 (not luks) .. 100 (certain).
// Reads nothing at or past buf[len]; `buf` may be null when `len` is 0.
int Probe(const uint8_t* buf, size_t len, std::string_view filename);

}  // namespace libblock::luks

#endif  // LIBBLOCK_FORMATS_LUKS_LUKS_PROBE_H_
