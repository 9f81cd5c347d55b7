// VPC (VHD) probe, after Microsoft's "Virtual Hard Disk Image Format Specification": every VHD
// ends with a 512-byte footer whose cookie (bytes 0-7) is "conectix". Dynamic and differencing
// disks also keep a copy of the footer at offset 0, which is what the probe sees. Fixed disks
// have only the trailing footer, so they probe as raw, exactly as in QEMU.
#include "formats/vpc/vpc_probe.h"

#include <cstring>

namespace libblock::vpc {
namespace {

constexpr char kCookie[8] = {'c', 'o', 'n', 'e', 'c', 't', 'i', 'x'};

}  // namespace

int Probe(const uint8_t* buf, size_t len, std::string_view /*filename*/) {
  if (len < sizeof(kCookie)) return 0;
  return std::memcmp(buf, kCookie, sizeof(kCookie)) == 0 ? 100 : 0;
}

}  // namespace libblock::vpc
