// The codecs (core/codec.h) against qemu-img's compressed qcow2 clusters, both ways, for
// compression_type=zlib and zstd:
//   * qemu-img convert -c writes an image; its blobs, found by walking L1/L2 here, decompress
//     with Decompress into the source's clusters (including the sector padding QEMU leaves);
//   * every compressed L2 entry of such an image is pointed at a blob that Compress made
//     (appended to the file), and qemu-img compare must find the image identical to the
//     source: QEMU reads what we write.
// The qcow2 walk is the minimum for a one-L2-table image qemu-img just wrote (the driver
// proper lives in lib/formats/qcow2). Exits 77 without qemu-img.
#include <catch2/catch.hpp>
#include <cstring>
#include <string>
#include <vector>

#include "core/codec.h"
#include "test_support.h"
#include "util/status.h"

namespace libblock {
namespace {

using testing::Run;

uint64_t Be64(const std::string& d, size_t at) {
  uint64_t v = 0;
  for (size_t i = 0; i < 8; ++i) v = v << 8 | static_cast<uint8_t>(d.at(at + i));
  return v;
}
uint32_t Be32(const std::string& d, size_t at) {
  uint32_t v = 0;
  for (size_t i = 0; i < 4; ++i) v = v << 8 | static_cast<uint8_t>(d.at(at + i));
  return v;
}
void PutBe64(std::string& d, size_t at, uint64_t v) {
  for (int i = 7; i >= 0; --i, v >>= 8) d[at + i] = static_cast<char>(v & 0xff);
}

// Source data: compressible clusters of several kinds, one incompressible one.
std::string Source(int64_t cluster) {
  std::string s;
  while (s.size() < static_cast<size_t>(cluster)) s += "compressed cluster " + std::to_string(s.size()) + "\n";
  s.resize(static_cast<size_t>(cluster));
  std::string text2(static_cast<size_t>(cluster), 'z');
  for (size_t i = 0; i < text2.size(); i += 1000) text2[i] = 'a';
  std::string noise = testing::RandomBytes(static_cast<size_t>(cluster), 5);
  // A block repeated every 2 KiB: within a 4 KiB window.
  std::string period;
  std::string block = testing::RandomBytes(2048, 6);
  while (period.size() < static_cast<size_t>(cluster)) period += block;
  return s + text2 + noise + period;
}

struct CompressedEntry {
  size_t l2_index;
  uint64_t host;
  uint64_t stored;
};

struct Qcow2Image {
  std::string bytes;
  int cluster_bits = 0;
  uint64_t l2_offset = 0;
  std::vector<uint64_t> l2;
  std::vector<CompressedEntry> compressed;
};

Qcow2Image Walk(const std::string& path) {
  Qcow2Image img;
  img.bytes = testing::ReadFile(path);
  REQUIRE(img.bytes.substr(0, 4) == "QFI\xfb");
  img.cluster_bits = static_cast<int>(Be32(img.bytes, 20));
  uint64_t l1_offset = Be64(img.bytes, 40);
  img.l2_offset = Be64(img.bytes, l1_offset) & 0x00fffffffffffe00ull;
  REQUIRE(img.l2_offset != 0);
  int x = 62 - (img.cluster_bits - 8);
  size_t entries = size_t{1} << (img.cluster_bits - 3);
  for (size_t i = 0; i < entries; ++i) {
    uint64_t e = Be64(img.bytes, img.l2_offset + 8 * i);
    img.l2.push_back(e);
    if (!((e >> 62) & 1)) continue;
    uint64_t host = e & ((uint64_t{1} << x) - 1);
    uint64_t more = (e >> x) & ((uint64_t{1} << (img.cluster_bits - 8)) - 1);
    img.compressed.push_back({i, host, (more + 1) * 512 - (host & 511)});
  }
  return img;
}

TEST_CASE("qemu-img's compressed clusters decompress here, ours decompress in QEMU",
          "[codec][interop]") {
  testing::TempDir dir;
  for (std::string type : {"zlib", "zstd"}) {
    INFO(type);
    Codec codec = type == "zlib" ? Codec::kDeflate : Codec::kZstd;
    const int64_t cluster = 65536;
    std::string src = Source(cluster);
    std::string raw = dir.File("src.raw"), img_path = dir.File(type + ".qcow2");
    testing::WriteFile(raw, src);
    testing::CommandResult r = Run({"qemu-img", "convert", "-c", "-O", "qcow2", "-o",
                                    "compression_type=" + type, "-f", "raw", raw, img_path});
    INFO(r.out);
    REQUIRE(r.exit_code == 0);
    Qcow2Image img = Walk(img_path);
    REQUIRE(img.cluster_bits == 16);
    // Three clusters shrink; the noise does not and is stored as it is.
    REQUIRE(img.compressed.size() == 3);
    REQUIRE(!((img.l2[2] >> 62) & 1));

    for (const CompressedEntry& c : img.compressed) {
      INFO("cluster " << c.l2_index);
      std::vector<uint8_t> out(static_cast<size_t>(cluster));
      std::span<const uint8_t> in(reinterpret_cast<const uint8_t*>(img.bytes.data()) + c.host,
                                  std::min<uint64_t>(c.stored, img.bytes.size() - c.host));
      absl::Status st = Decompress(codec, in, out);
      INFO(st.ToString());
      REQUIRE(st.ok());
      REQUIRE(std::memcmp(out.data(), src.data() + c.l2_index * cluster, out.size()) == 0);
    }

    // Ours, in their place.
    std::string patched = img.bytes;
    int x = 62 - (img.cluster_bits - 8);
    for (const CompressedEntry& c : img.compressed) {
      std::span<const uint8_t> in(reinterpret_cast<const uint8_t*>(src.data()) + c.l2_index * cluster,
                                  static_cast<size_t>(cluster));
      std::vector<uint8_t> blob(static_cast<size_t>(cluster - 1));
      absl::StatusOr<std::optional<size_t>> n = Compress(codec, in, blob);
      REQUIRE(n.ok());
      REQUIRE(n->has_value());
      // Appended at an offset inside a sector, as QEMU packs blobs.
      uint64_t host = patched.size() + 100;
      patched.append(100, '\0');
      patched.append(reinterpret_cast<const char*>(blob.data()), **n);
      patched.append((512 - patched.size() % 512) % 512, '\0');
      uint64_t sectors = (host % 512 + **n + 511) / 512;
      uint64_t e = (uint64_t{1} << 62) | ((sectors - 1) << x) | host;
      PutBe64(patched, img.l2_offset + 8 * c.l2_index, e);
    }
    std::string ours = dir.File(type + "-ours.qcow2");
    testing::WriteFile(ours, patched);
    r = Run({"qemu-img", "compare", "-f", "qcow2", "-F", "raw", ours, raw});
    INFO(r.out);
    REQUIRE(r.exit_code == 0);
  }
}

}  // namespace
}  // namespace libblock

LB_TEST_REQUIRES(.programs = {"qemu-img"})
