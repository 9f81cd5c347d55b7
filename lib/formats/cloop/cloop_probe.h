// Format probe for cloop.
// Linux compressed loop (cloop) V2.0: the shell-script preamble at the start of the file.
#ifndef LIBBLOCK_FORMATS_CLOOP_CLOOP_PROBE_H_
#define LIBBLOCK_FORMATS_CLOOP_CLOOP_PROBE_H_

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace libblock::cloop {

// Scores how likely the image whose first `len` bytes are `buf` (and whose name is `filename`,
// possibly empty) is a cloop image, as QEMU's cloop probe does: 0 (not cloop) .. 100 (certain).
// Reads nothing at or past buf[len]; `buf` may be null when `len` is 0.
int Probe(const uint8_t* buf, size_t len, std::string_view filename);

}  // namespace libblock::cloop

#endif  // LIBBLOCK_FORMATS_CLOOP_CLOOP_PROBE_H_
