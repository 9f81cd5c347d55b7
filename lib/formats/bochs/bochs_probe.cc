// Bochs disk image probe. Bochs "redolog" images (growing, undoable and volatile disks in
// Bochs' terminology) open with a 512-byte little-endian header:
//
//   0   char[32]  magic    "Bochs Virtual HD Image", NUL-terminated
//   32  char[16]  type     "Redolog"
//   48  char[16]  subtype  "Growing", "Undoable" or "Volatile"
//   64  uint32    version  0x00020000 (2.0) or 0x00010000 (1.0, an older redolog layout)
//   68  uint32    header size, then the redolog fields
//
// As in QEMU, only growing images are recognised: undoable and volatile ones are redo logs over
// a separate base image, which this driver does not read. Each text field must hold exactly the
// expected string followed by a NUL.
#include "formats/bochs/bochs_probe.h"

#include "util/endian.h"

#include <cstring>

namespace libblock::bochs {
namespace {

constexpr size_t kHeaderSize = 512;
constexpr size_t kMagicOffset = 0, kMagicSize = 32;
constexpr size_t kTypeOffset = 32, kTypeSize = 16;
constexpr size_t kSubtypeOffset = 48, kSubtypeSize = 16;
constexpr size_t kVersionOffset = 64;
constexpr uint32_t kVersion2 = 0x00020000;
constexpr uint32_t kVersion1 = 0x00010000;

// True when the NUL-terminated string in the field equals `expected`.
bool FieldIs(const uint8_t* field, size_t field_size, std::string_view expected) {
  return expected.size() < field_size &&
         std::memcmp(field, expected.data(), expected.size()) == 0 && field[expected.size()] == 0;
}


}  // namespace

int Probe(const uint8_t* buf, size_t len, std::string_view /*filename*/) {
  if (len < kHeaderSize) return 0;
  if (!FieldIs(buf + kMagicOffset, kMagicSize, "Bochs Virtual HD Image")) return 0;
  if (!FieldIs(buf + kTypeOffset, kTypeSize, "Redolog")) return 0;
  if (!FieldIs(buf + kSubtypeOffset, kSubtypeSize, "Growing")) return 0;
  const uint32_t version = LoadLe32(buf + kVersionOffset);
  return version == kVersion2 || version == kVersion1 ? 100 : 0;
}

}  // namespace libblock::bochs
