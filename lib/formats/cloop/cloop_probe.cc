// cloop probe. A cloop V2.0 image (Linux compressed loop, as written by create_compressed_fs)
// starts with a shell-script preamble that loads the module and mounts the image:
//
//   #!/bin/sh
//   #V2.0 Format
//   modprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1
//
// followed by the block size and block count (big-endian) at offset 128. A matching preamble is
// weak evidence (it is ordinary text), so the score is only 2, as in QEMU.
//
// The whole preamble must be in the buffer. QEMU compares only the bytes it was given, but it
// always probes a 512-byte buffer padded with zeros past the end of the file, so the preamble
// must be complete there too.
#include "formats/cloop/cloop_probe.h"

#include <cstring>

namespace libblock::cloop {
namespace {

constexpr std::string_view kPreamble =
    "#!/bin/sh\n"
    "#V2.0 Format\n"
    "modprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\n";

}  // namespace

int Probe(const uint8_t* buf, size_t len, std::string_view /*filename*/) {
  if (len < kPreamble.size()) return 0;
  return std::memcmp(buf, kPreamble.data(), kPreamble.size()) == 0 ? 2 : 0;
}

}  // namespace libblock::cloop
