// Compression codecs (core/codec.h): round trips, "did not shrink", and hostile streams —
// truncated, garbage, too short or too long for the output, bad checksums — which must fail
// with EIO and never read or write outside their buffers (run under ASan too).
#include <catch2/catch.hpp>
#include <cstring>
#include <string>
#include <vector>

#include "core/codec.h"
#include "test_support.h"
#include "util/status.h"

namespace libblock {
namespace {

std::vector<uint8_t> Compressible(size_t n, uint32_t seed) {
  std::string words = testing::RandomBytes(64, seed);
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<uint8_t>(words[(i * 7 + i / 300) % 64] & 0x0f);
  return v;
}

std::vector<uint8_t> MustCompress(Codec codec, const std::vector<uint8_t>& in) {
  std::vector<uint8_t> out(in.size());
  absl::StatusOr<std::optional<size_t>> n = Compress(codec, in, out);
  REQUIRE(n.ok());
  REQUIRE(n->has_value());
  out.resize(**n);
  return out;
}

absl::Status DecompressInto(Codec codec, const std::vector<uint8_t>& blob, size_t out_size) {
  // Exactly-sized heap buffers, so that ASan sees any access past either end.
  auto in = std::make_unique<uint8_t[]>(blob.size());
  if (!blob.empty()) std::memcpy(in.get(), blob.data(), blob.size());
  auto out = std::make_unique<uint8_t[]>(out_size);
  return Decompress(codec, std::span<const uint8_t>(in.get(), blob.size()),
                    std::span<uint8_t>(out.get(), out_size));
}

constexpr Codec kCodecs[] = {Codec::kDeflate, Codec::kZlib, Codec::kZstd};

TEST_CASE("codecs round trip a cluster", "[codec]") {
  for (Codec codec : kCodecs) {
    INFO(CodecName(codec));
    for (size_t size : {size_t{512}, size_t{65536}, size_t{2} << 20}) {
      std::vector<uint8_t> data = Compressible(size, 1);
      std::vector<uint8_t> blob = MustCompress(codec, data);
      REQUIRE(blob.size() < size);
      std::vector<uint8_t> back(size);
      REQUIRE(Decompress(codec, blob, back).ok());
      REQUIRE(back == data);
    }
  }
}

TEST_CASE("deflate is raw deflate, zlib has its header", "[codec]") {
  std::vector<uint8_t> data = Compressible(65536, 2);
  std::vector<uint8_t> raw = MustCompress(Codec::kDeflate, data);
  std::vector<uint8_t> wrapped = MustCompress(Codec::kZlib, data);
  // RFC 1950: CMF 0x78 (deflate, 32 KiB window), a header checksum divisible by 31.
  REQUIRE(wrapped[0] == 0x78);
  REQUIRE((wrapped[0] * 256 + wrapped[1]) % 31 == 0);
  // Raw deflate does not inflate as a zlib stream, nor the reverse.
  std::vector<uint8_t> back(65536);
  REQUIRE_FALSE(Decompress(Codec::kZlib, raw, back).ok());
  REQUIRE_FALSE(Decompress(Codec::kDeflate, wrapped, back).ok());
  // zstd frames start with their magic.
  std::vector<uint8_t> z = MustCompress(Codec::kZstd, data);
  REQUIRE(z[0] == 0x28);
  REQUIRE(z[3] == 0xfd);
}

TEST_CASE("incompressible data does not shrink", "[codec]") {
  std::string noise = testing::RandomBytes(65536, 3);
  std::vector<uint8_t> data(noise.begin(), noise.end());
  for (Codec codec : kCodecs) {
    INFO(CodecName(codec));
    std::vector<uint8_t> out(65535);  // QEMU's bound: less than a cluster
    absl::StatusOr<std::optional<size_t>> n = Compress(codec, data, out);
    REQUIRE(n.ok());
    REQUIRE_FALSE(n->has_value());
  }
}

TEST_CASE("trailing bytes after the stream are ignored", "[codec]") {
  // qcow2 rounds blobs up to sectors; the next blob may start in the last one.
  for (Codec codec : kCodecs) {
    INFO(CodecName(codec));
    std::vector<uint8_t> data = Compressible(65536, 4);
    std::vector<uint8_t> blob = MustCompress(codec, data);
    std::vector<uint8_t> next = MustCompress(codec, Compressible(65536, 5));
    std::vector<uint8_t> padded = blob;
    padded.insert(padded.end(), next.begin(), next.begin() + std::min<size_t>(next.size(), 300));
    std::vector<uint8_t> back(65536);
    REQUIRE(Decompress(codec, padded, back).ok());
    REQUIRE(back == data);
    std::vector<uint8_t> zeros = blob;
    zeros.resize(blob.size() + 511, 0);
    REQUIRE(Decompress(codec, zeros, back).ok());
    REQUIRE(back == data);
  }
}

TEST_CASE("zstd blobs may hold several frames", "[codec]") {
  std::vector<uint8_t> a = Compressible(30000, 6), b = Compressible(35536, 7);
  std::vector<uint8_t> blob = MustCompress(Codec::kZstd, a);
  std::vector<uint8_t> second = MustCompress(Codec::kZstd, b);
  blob.insert(blob.end(), second.begin(), second.end());
  std::vector<uint8_t> back(65536);
  REQUIRE(Decompress(Codec::kZstd, blob, back).ok());
  REQUIRE(std::equal(a.begin(), a.end(), back.begin()));
  REQUIRE(std::equal(b.begin(), b.end(), back.begin() + 30000));
}

TEST_CASE("hostile streams fail cleanly", "[codec]") {
  for (Codec codec : kCodecs) {
    INFO(CodecName(codec));
    std::vector<uint8_t> data = Compressible(65536, 8);
    std::vector<uint8_t> blob = MustCompress(codec, data);
    // Output too long for the stream (the stream ends first) and too short (more follows).
    REQUIRE(StatusErrno(DecompressInto(codec, blob, 65537)) == EIO);
    REQUIRE(StatusErrno(DecompressInto(codec, blob, 65535)) == EIO);
    REQUIRE(DecompressInto(codec, blob, 65536).ok());
    // Every truncation fails (or, cut right at the end marker, still yields the whole
    // output), and none reads past its end.
    int failures = 0;
    for (size_t len = 0; len < blob.size(); ++len) {
      std::vector<uint8_t> cut(blob.begin(), blob.begin() + len);
      absl::Status st = DecompressInto(codec, cut, 65536);
      if (!st.ok()) {
        REQUIRE(StatusErrno(st) == EIO);
        ++failures;
      }
    }
    REQUIRE(failures >= static_cast<int>(blob.size()) - 8);
    // Garbage.
    for (uint32_t seed = 0; seed < 50; ++seed) {
      std::string g = testing::RandomBytes(1 + seed * 37, seed);
      std::vector<uint8_t> garbage(g.begin(), g.end());
      REQUIRE(StatusErrno(DecompressInto(codec, garbage, 65536)) == EIO);
    }
    // Flipped bytes: an error or different data, never a crash.
    for (size_t i = 0; i < blob.size(); i += 3) {
      std::vector<uint8_t> bad = blob;
      bad[i] ^= 0xa5;
      (void)DecompressInto(codec, bad, 65536);
    }
    REQUIRE(StatusErrno(DecompressInto(codec, {}, 65536)) == EIO);
  }
}

TEST_CASE("a zlib stream with a bad checksum fails", "[codec]") {
  std::vector<uint8_t> data = Compressible(65536, 9);
  std::vector<uint8_t> blob = MustCompress(Codec::kZlib, data);
  blob.back() ^= 1;  // adler32 is the last four bytes
  REQUIRE(StatusErrno(DecompressInto(Codec::kZlib, blob, 65536)) == EIO);
}

TEST_CASE("a zstd frame asking for a huge window is refused", "[codec]") {
  // Magic, frame header descriptor 0 (a window descriptor follows, no content size), window
  // descriptor 0x80 (exponent 16: a 2^26-byte window, which zstd itself would allocate), one
  // raw last block of 4 bytes.
  std::vector<uint8_t> frame = {0x28, 0xb5, 0x2f, 0xfd, 0x00, 0x80, 0x21, 0x00, 0x00,
                                'x',  'x',  'x',  'x'};
  REQUIRE(StatusErrno(DecompressInto(Codec::kZstd, frame, 4)) == EIO);
  // The same frame with a 2^20-byte window decodes.
  frame[5] = 0x50;
  REQUIRE(DecompressInto(Codec::kZstd, frame, 4).ok());
}

TEST_CASE("codecs the build does not have are refused", "[codec]") {
  std::vector<uint8_t> in(16), out(16);
  REQUIRE(StatusErrno(Decompress(Codec::kBzip2, in, out)) == ENOTSUP);
  REQUIRE(StatusErrno(Compress(Codec::kLzfse, in, out).status()) == ENOTSUP);
}

}  // namespace
}  // namespace libblock
