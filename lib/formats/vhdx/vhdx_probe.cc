// VHDX probe, after Microsoft's VHDX format specification: the file type identifier structure
// at offset 0 starts with the 8-byte signature "vhdxfile", followed by a UTF-16 creator
// string.
#include "formats/vhdx/vhdx_probe.h"

#include <cstring>

namespace libblock::vhdx {
namespace {

constexpr char kSignature[8] = {'v', 'h', 'd', 'x', 'f', 'i', 'l', 'e'};

}  // namespace

int Probe(const uint8_t* buf, size_t len, std::string_view /*filename*/) {
  if (len < sizeof(kSignature)) return 0;
  return std::memcmp(buf, kSignature, sizeof(kSignature)) == 0 ? 100 : 0;
}

}  // namespace libblock::vhdx
