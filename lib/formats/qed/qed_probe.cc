// QED probe (docs/interop/qed_spec.txt, "Header"): all fields are little-endian and the header
// starts with
//
//   uint32_t magic;  /* QED\0 */
//
// i.e. the bytes 'Q' 'E' 'D' 0 (0x00444551 read little-endian). The fixed header is 64 bytes
// (magic through backing_filename_size); the probe wants all of it, as QEMU's does.
#include "formats/qed/qed_probe.h"

#include <cstring>

namespace libblock::qed {
namespace {

constexpr uint8_t kMagic[4] = {'Q', 'E', 'D', 0};
constexpr size_t kHeaderSize = 64;

}  // namespace

int Probe(const uint8_t* buf, size_t len, std::string_view /*filename*/) {
  if (len < kHeaderSize) return 0;
  return std::memcmp(buf, kMagic, sizeof(kMagic)) == 0 ? 100 : 0;
}

}  // namespace libblock::qed
