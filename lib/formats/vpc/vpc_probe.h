// Format probe for vpc.
// Microsoft Virtual PC / VHD: a dynamic disk starts with a copy of the "conectix" footer.
// A fixed disk has its footer only at the end of the file and is not recognised (it probes raw).
#ifndef LIBBLOCK_FORMATS_VPC_VPC_PROBE_H_
#define LIBBLOCK_FORMATS_VPC_VPC_PROBE_H_

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace libblock::vpc {

// Scores how likely the image whose first `len` bytes are `buf` (and whose name is `filename`,
// possibly empty) is a vpc image, as QEMU's vpc probe does: 0 (not vpc) .. 100 (certain).
// Reads nothing at or past buf[len]; `buf` may be null when `len` is 0.
int Probe(const uint8_t* buf, size_t len, std::string_view filename);

}  // namespace libblock::vpc

#endif  // LIBBLOCK_FORMATS_VPC_VPC_PROBE_H_
