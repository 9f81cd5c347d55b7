// Parallels probe (docs/interop/parallels.txt, "Header"); all numbers little-endian:
//
//   bytes  0-15  magic    "WithoutFreeSpace" or "WithouFreSpacExt"
//   bytes 16-19  version  must be 2
//
// The header is 64 bytes; the probe wants all of it, as QEMU's does.
#include "formats/parallels/parallels_probe.h"

#include "util/endian.h"

#include <cstring>

namespace libblock::parallels {
namespace {

constexpr char kMagic[16] = {'W', 'i', 't', 'h', 'o', 'u', 't', 'F',
                             'r', 'e', 'e', 'S', 'p', 'a', 'c', 'e'};
constexpr char kMagicExt[16] = {'W', 'i', 't', 'h', 'o', 'u', 'F', 'r',
                                'e', 'S', 'p', 'a', 'c', 'E', 'x', 't'};
constexpr size_t kVersionOffset = 16;
constexpr uint32_t kVersion = 2;
constexpr size_t kHeaderSize = 64;


}  // namespace

int Probe(const uint8_t* buf, size_t len, std::string_view /*filename*/) {
  if (len < kHeaderSize) return 0;
  if (std::memcmp(buf, kMagic, sizeof(kMagic)) != 0 &&
      std::memcmp(buf, kMagicExt, sizeof(kMagicExt)) != 0) {
    return 0;
  }
  return LoadLe32(buf + kVersionOffset) == kVersion ? 100 : 0;
}

}  // namespace libblock::parallels
