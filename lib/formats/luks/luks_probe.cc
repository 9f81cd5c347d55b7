// LUKS probe, after the LUKS1 on-disk format specification (cryptsetup): the phdr is big-endian
// and begins
//
//   offset 0  char[6]   magic {'L','U','K','S',0xba,0xbe}
//   offset 6  uint16    version, 1
//
// LUKS2 shares the magic but has version 2; QEMU 7.2 cannot open it, so it scores 0 here too.
#include "formats/luks/luks_probe.h"

#include "util/endian.h"

#include <cstring>

namespace libblock::luks {
namespace {

constexpr uint8_t kMagic[6] = {'L', 'U', 'K', 'S', 0xba, 0xbe};
constexpr size_t kVersionOffset = 6;
constexpr uint16_t kVersion = 1;

}  // namespace

int Probe(const uint8_t* buf, size_t len, std::string_view /*filename*/) {
  if (len < kVersionOffset + 2) return 0;
  if (std::memcmp(buf, kMagic, sizeof(kMagic)) != 0) return 0;
  const uint16_t version = LoadBe16(buf + kVersionOffset);
  return version == kVersion ? 100 : 0;
}

}  // namespace libblock::luks
