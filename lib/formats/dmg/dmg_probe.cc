// DMG probe. Apple UDIF disk images keep their "koly" trailer in the last 512 bytes and have
// nothing recognisable at the start, so QEMU decides on the name alone: a filename longer than
// ".dmg" that ends in ".dmg" (case-sensitive) scores 2, enough to beat raw (1). Without a
// filename the answer is 0.
#include "formats/dmg/dmg_probe.h"

namespace libblock::dmg {
namespace {

constexpr std::string_view kSuffix = ".dmg";

}  // namespace

int Probe(const uint8_t* /*buf*/, size_t /*len*/, std::string_view filename) {
  if (filename.size() <= kSuffix.size()) return 0;
  return filename.ends_with(kSuffix) ? 2 : 0;
}

}  // namespace libblock::dmg
