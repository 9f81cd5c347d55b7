// qcow (version 1) probe. The original QEMU copy-on-write format shares its leading fields with
// qcow2 (docs/interop/qcow2.txt describes their common start):
//
//   bytes 0-3  magic    "QFI\xfb" (0x514649fb, big-endian)
//   bytes 4-7  version  big-endian; exactly 1 for qcow
//
// The version 1 header is 48 bytes (magic, version, backing file offset and size, mtime, size,
// cluster and L2 bits, padding, crypt method, L1 table offset); the probe wants all of it.
#include "formats/qcow/qcow_probe.h"

#include "util/endian.h"

#include <cstring>

namespace libblock::qcow {
namespace {

constexpr uint8_t kMagic[4] = {'Q', 'F', 'I', 0xfb};
constexpr size_t kVersionOffset = 4;
constexpr uint32_t kVersion = 1;
constexpr size_t kHeaderSize = 48;


}  // namespace

int Probe(const uint8_t* buf, size_t len, std::string_view /*filename*/) {
  if (len < kHeaderSize) return 0;
  if (std::memcmp(buf, kMagic, sizeof(kMagic)) != 0) return 0;
  return LoadBe32(buf + kVersionOffset) == kVersion ? 100 : 0;
}

}  // namespace libblock::qcow
