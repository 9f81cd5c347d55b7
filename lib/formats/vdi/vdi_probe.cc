// VDI probe (VirtualBox Disk Image). The 512-byte header is little-endian:
//
//   0x00  char[64]  text, "<<< Oracle VM VirtualBox Disk Image >>>\n" or similar (not checked:
//                   it has varied between VirtualBox releases)
//   0x40  uint32    signature 0xbeda107f
//   0x44  uint32    version (major << 16 | minor)
//   ...             header size, image type, flags, description, offsets, geometry, UUIDs
//
// Only the signature decides, and only once the whole header is in the buffer (as QEMU does).
#include "formats/vdi/vdi_probe.h"

#include "util/endian.h"

namespace libblock::vdi {
namespace {

constexpr size_t kSignatureOffset = 0x40;
constexpr uint32_t kSignature = 0xbeda107f;
constexpr size_t kHeaderSize = 512;


}  // namespace

int Probe(const uint8_t* buf, size_t len, std::string_view /*filename*/) {
  if (len < kHeaderSize) return 0;
  return LoadLe32(buf + kSignatureOffset) == kSignature ? 100 : 0;
}

}  // namespace libblock::vdi
