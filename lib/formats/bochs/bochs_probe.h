// Format probe for bochs.
// Bochs growing redolog images: "Bochs Virtual HD Image" / "Redolog" / "Growing", version
// 1.0 or 2.0.
#ifndef LIBBLOCK_FORMATS_BOCHS_BOCHS_PROBE_H_
#define LIBBLOCK_FORMATS_BOCHS_BOCHS_PROBE_H_

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace libblock::bochs {

// Scores how likely the image whose first `len` bytes are `buf` (and whose name is `filename`,
// possibly empty) is a bochs image, as QEMU's bochs probe does: 0 (not bochs) .. 100 (certain).
// Reads nothing at or past buf[len]; `buf` may be null when `len` is 0.
int Probe(const uint8_t* buf, size_t len, std::string_view filename);

}  // namespace libblock::bochs

#endif  // LIBBLOCK_FORMATS_BOCHS_BOCHS_PROBE_H_
