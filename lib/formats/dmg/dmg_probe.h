// Format probe for dmg.
// Apple disk images: recognised by the ".dmg" filename suffix only (their UDIF trailer is at the
// end of the file, out of reach of the probe buffer).
#ifndef LIBBLOCK_FORMATS_DMG_DMG_PROBE_H_
#define LIBBLOCK_FORMATS_DMG_DMG_PROBE_H_

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace libblock::dmg {

// Scores how likely the image whose first `len` bytes are `buf` (and whose name is `filename`,
// possibly empty) is a dmg image, as QEMU's dmg probe does: 0 (not dmg) .. 100 (certain).
// Reads nothing at or past buf[len]; `buf` may be null when `len` is 0.
int Probe(const uint8_t* buf, size_t len, std::string_view filename);

}  // namespace libblock::dmg

#endif  // LIBBLOCK_FORMATS_DMG_DMG_PROBE_H_
