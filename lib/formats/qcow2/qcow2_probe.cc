// qcow2 probe (docs/interop/qcow2.txt, "Header"):
//
//   bytes 0-3  magic    "QFI\xfb" (0x514649fb, big-endian)
//   bytes 4-7  version  big-endian; 2 or 3 for qcow2 (1 is the older qcow format)
//
// Like QEMU, the probe only answers once the buffer covers the whole fixed header QEMU declares
// (the v3 header through the compression type byte and its padding, 112 bytes); the format
// prober hands every probe a 512-byte buffer, so only direct callers see the difference.
#include "formats/qcow2/qcow2_probe.h"

#include "util/endian.h"

#include <cstring>

namespace libblock::qcow2 {
namespace {

constexpr uint8_t kMagic[4] = {'Q', 'F', 'I', 0xfb};
constexpr size_t kVersionOffset = 4;
constexpr size_t kHeaderSize = 112;


}  // namespace

int Probe(const uint8_t* buf, size_t len, std::string_view /*filename*/) {
  if (len < kHeaderSize) return 0;
  if (std::memcmp(buf, kMagic, sizeof(kMagic)) != 0) return 0;
  return LoadBe32(buf + kVersionOffset) >= 2 ? 100 : 0;
}

}  // namespace libblock::qcow2
