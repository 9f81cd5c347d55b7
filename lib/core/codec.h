// Compression codecs of stored blobs (mapping.h's Codec): one cluster in, one blob out, and
// back. Pure functions on caller-owned buffers, safe to run on any thread (the engine runs
// them on the loop's CPU pool).
//
// Framing, as the formats store it (checked against qemu-img 7.2's compressed clusters):
//   kDeflate  raw deflate (no zlib header or checksum), as qcow2's compression_type=zlib and
//             qcow store it. Written with a 4 KiB window (windowBits 12) as qemu-img writes it:
//             a cluster repeating every 8 KiB does not shrink in `qemu-img convert -c`, and
//             would with a larger window. Read with the largest window, which inflates any
//             raw deflate stream (QEMU 7.2 reads a 32 KiB-window blob too: checked by patching
//             one into an image and `qemu-img compare`);
//   kZlib     a zlib stream (RFC 1950 header, adler32 trailer) with the default 32 KiB window;
//   kZstd     one or more zstd frames back to back (qcow2's compression_type=zstd).
//
// Decompression fills exactly `out.size()` bytes from at most `in.size()` stored bytes and never
// reads or writes outside the two spans. The stored range may end with bytes that are not part
// of the stream (qcow2 rounds a blob up to whole sectors, and the next blob may start in that
// last sector): once the output is full, decoding stops without looking at them, except to
// make sure the stream that filled the output has no more data of its own. Everything else is
// an error (EIO, naming what was wrong), never a crash: a stream that ends early (or is
// truncated), one that would produce more than `out.size()` bytes, garbage, a bad checksum.
#ifndef LIBBLOCK_CORE_CODEC_H_
#define LIBBLOCK_CORE_CODEC_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string_view>

#include "absl/status/statusor.h"
#include "core/mapping.h"

namespace libblock {

// "deflate", "zlib", "zstd", ...
std::string_view CodecName(Codec codec);

// Compresses `in` into `out`. Returns the stored length, or nullopt when the result would not
// fit in `out` ("did not shrink": callers pass a bound below the cluster size and store the
// cluster uncompressed, as QEMU does). Errors only for codecs this build cannot write
// (ENOTSUP) and library failures.
absl::StatusOr<std::optional<size_t>> Compress(Codec codec, std::span<const uint8_t> in,
                                               std::span<uint8_t> out);

// Decompresses the stream at the start of `in` into exactly `out.size()` bytes (see above).
absl::Status Decompress(Codec codec, std::span<const uint8_t> in, std::span<uint8_t> out);

}  // namespace libblock

#endif  // LIBBLOCK_CORE_CODEC_H_
