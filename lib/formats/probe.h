// Image format probing: which format driver should open an image whose format was not given.
//
// Each format has a probe (lib/formats/<fmt>/<fmt>_probe.h) that scores the first bytes of the
// image and its filename from 0 (not this format) to 100 (certain), with QEMU's scores, so that
// an image probes here as it does in `qemu-img info` without -f. ProbeFormat runs them all, plus
// raw, which scores 1 for anything: raw is chosen only when no format claims the image.
#ifndef LIBBLOCK_FORMATS_PROBE_H_
#define LIBBLOCK_FORMATS_PROBE_H_

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace libblock {

// How many bytes from offset 0 a prober looks at (QEMU's BLOCK_PROBE_BUF_SIZE).
inline constexpr size_t kProbeBufferSize = 512;

struct ProbeResult {
  std::string_view format;  // a driver name ("qcow2", "raw", ...); static storage
  int score;                // 1..100
};

// The best-scoring format for an image whose first `len` bytes are `buf` and whose name is
// `filename` (may be empty; only dmg looks at it).
//
// `len` is how many bytes could be read from offset 0: min(image size, kProbeBufferSize) for a
// whole image. Bytes past kProbeBufferSize are ignored. A shorter buffer is treated as the
// image's start padded with zeros to kProbeBufferSize, because that is what QEMU probes (it reads
// a full buffer, and reads past the end of a file return zeros); an empty buffer is an empty
// image, which QEMU opens as raw without probing.
//
// Ties go to the format QEMU tries first. With distinct magics at offset 0, the only possible
// ties are VDI (whose signature sits at 0x40) against a format whose header leaves those bytes
// free, and cloop against dmg; qemu-img 7.2 resolves them as qed, parallels > vdi > qcow2, qcow,
// vmdk, vpc, vhdx, luks, and dmg > cloop.
//
// Thread-safe; reads nothing at or past buf[len].
ProbeResult ProbeFormat(const uint8_t* buf, size_t len, std::string_view filename);

}  // namespace libblock

#endif  // LIBBLOCK_FORMATS_PROBE_H_
