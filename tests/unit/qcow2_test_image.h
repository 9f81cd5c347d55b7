// Test-side reading of a qcow2 header from a file through qcow2::ParseHeader, for tests that
// need the fields without going through the driver. REQUIREs a file ParseHeader accepts.
#ifndef LIBBLOCK_TESTS_QCOW2_TEST_IMAGE_H_
#define LIBBLOCK_TESTS_QCOW2_TEST_IMAGE_H_

#include <algorithm>
#include <span>
#include <string>

#include "formats/qcow2/qcow2_header.h"
#include "test_support.h"

namespace libblock::testing {

inline qcow2::Header ReadQcow2Header(const std::string& path) {
  std::string data = ReadFile(path);
  REQUIRE(data.size() >= 24);
  const uint8_t* p = reinterpret_cast<const uint8_t*>(data.data());
  uint32_t cluster_bits = (uint32_t{p[20]} << 24) | (uint32_t{p[21]} << 16) |
                          (uint32_t{p[22]} << 8) | p[23];
  size_t cluster = cluster_bits < 32 ? size_t{1} << cluster_bits : data.size();
  std::span<const uint8_t> buf(p, std::min(data.size(), cluster));
  absl::StatusOr<qcow2::Header> h =
      qcow2::ParseHeader(buf, static_cast<int64_t>(data.size()), path);
  INFO(h.status().ToString());
  REQUIRE(h.ok());
  return *h;
}

}  // namespace libblock::testing

#endif  // LIBBLOCK_TESTS_QCOW2_TEST_IMAGE_H_
