// Test-side reading of a qcow2 header from a file, for tests that need the fields without
// going through the driver: the fixed fields and the extensions (bitmaps and unknown ones kept
// as bytes, the crypto header pointer), as qcow2::ParseHeader fills them, without its checks.
// REQUIREs a readable file with the qcow2 magic.
#ifndef LIBBLOCK_TESTS_QCOW2_TEST_IMAGE_H_
#define LIBBLOCK_TESTS_QCOW2_TEST_IMAGE_H_

#include <string>

#include "formats/qcow2/qcow2_header.h"
#include "test_support.h"
#include "util/endian.h"

namespace libblock::testing {

inline qcow2::Header ReadQcow2Header(const std::string& path) {
  std::string data = ReadFile(path);
  REQUIRE(data.size() >= 72);
  const uint8_t* p = reinterpret_cast<const uint8_t*>(data.data());
  REQUIRE(LoadBe32(p) == qcow2::kMagic);
  qcow2::Header h;
  h.version = LoadBe32(p + 4);
  h.backing_file_offset = LoadBe64(p + 8);
  h.backing_file_size = LoadBe32(p + 16);
  h.cluster_bits = LoadBe32(p + 20);
  h.size = LoadBe64(p + 24);
  h.crypt_method = LoadBe32(p + 32);
  h.l1_size = LoadBe32(p + 36);
  h.l1_table_offset = LoadBe64(p + 40);
  h.refcount_table_offset = LoadBe64(p + 48);
  h.refcount_table_clusters = LoadBe32(p + 56);
  h.nb_snapshots = LoadBe32(p + 60);
  h.snapshots_offset = LoadBe64(p + 64);
  size_t ext = 72;
  if (h.version >= 3) {
    REQUIRE(data.size() >= 104);
    h.incompatible_features = LoadBe64(p + 72);
    h.compatible_features = LoadBe64(p + 80);
    h.autoclear_features = LoadBe64(p + 88);
    h.refcount_order = LoadBe32(p + 96);
    h.header_length = LoadBe32(p + 100);
    if (h.header_length > 104) h.compression_type = static_cast<qcow2::CompressionType>(p[104]);
    ext = h.header_length;
  } else {
    h.refcount_order = 4;
    h.header_length = 72;
  }
  size_t end = std::min<size_t>(data.size(), size_t{1} << h.cluster_bits);
  while (ext + 8 <= end) {
    uint32_t type = LoadBe32(p + ext), len = LoadBe32(p + ext + 4);
    if (type == qcow2::kExtEnd || ext + 8 + len > end) break;
    std::vector<uint8_t> bytes(p + ext + 8, p + ext + 8 + len);
    if (type == qcow2::kExtCryptoHeader && len >= 16) {
      h.crypto_header = std::make_pair(LoadBe64(bytes.data()), LoadBe64(bytes.data() + 8));
    } else if (type == qcow2::kExtBackingFormat) {
      h.backing_format = std::string(bytes.begin(), bytes.end());
    } else if (type == qcow2::kExtDataFile) {
      h.data_file = std::string(bytes.begin(), bytes.end());
    } else if (type != qcow2::kExtFeatureTable) {
      h.other_extensions.push_back({type, std::move(bytes)});
    }
    ext += 8 + ((len + 7) & ~size_t{7});
  }
  return h;
}

}  // namespace libblock::testing

#endif  // LIBBLOCK_TESTS_QCOW2_TEST_IMAGE_H_
