// qcow2 header parse/serialise: real headers written by qemu-img 7.2 parse to the fields
// qemu-img reports and serialise back byte for byte; every malformed field is refused with a
// message naming the file and the field (issue 8, "Bad input").
#include "formats/qcow2/qcow2_header.h"
#include "formats/qcow2/qcow2_info.h"

#include <catch2/catch.hpp>

#include <cstring>
#include <string>
#include <vector>

#include "util/endian.h"
#include "util/status.h"
#include "test_support.h"

namespace libblock::qcow2 {
namespace {

// qemu-img 7.2 `create -f qcow2 ...` (a.qcow2), first 475 bytes; the rest of the cluster is zero.
constexpr const char* kQemuV3_1G =
    "514649fb0000000300000000000000000000000000000010000000004000000000000000000000020000000000030000"
    "000000000001000000000001000000000000000000000000000000000000000000000000000000000000000000000000"
    "000000040000007000000000000000006803f85700000180000064697274792062697400000000000000000000000000"
    "0000000000000000000000000000000000000000000000000001636f7272757074206269740000000000000000000000"
    "000000000000000000000000000000000000000000000000000265787465726e616c20646174612066696c6500000000"
    "0000000000000000000000000000000000000000000000000003636f6d7072657373696f6e2074797065000000000000"
    "0000000000000000000000000000000000000000000000000004657874656e646564204c3220656e7472696573000000"
    "00000000000000000000000000000000000000000000000001006c617a7920726566636f756e74730000000000000000"
    "00000000000000000000000000000000000000000000000002006269746d617073000000000000000000000000000000"
    "00000000000000000000000000000000000000000000000002017261772065787465726e616c2064617461"
;
// qemu-img 7.2 `create -f qcow2 ...` (v2.qcow2), first 60 bytes; the rest of the cluster is zero.
constexpr const char* kQemuV2_1M =
    "514649fb0000000200000000000000000000000000000010000000000010000000000000000000010000000000030000"
    "000000000001000000000001"
;
// qemu-img 7.2 `create -f qcow2 ...` (c.qcow2), first 552 bytes; the rest of the cluster is zero.
constexpr const char* kQemuV3BackingDataZstd =
    "514649fb0000000300000000000002200000000800000010000000000010000000000000000000010000000000030000"
    "000000000001000000000001000000000000000000000000000000000000000c00000000000000000000000000000000"
    "00000004000000700100000000000000e2792aca0000000372617700000000004441544100000005642e726177000000"
    "6803f8570000018000006469727479206269740000000000000000000000000000000000000000000000000000000000"
    "00000000000000000001636f727275707420626974000000000000000000000000000000000000000000000000000000"
    "0000000000000000000265787465726e616c20646174612066696c650000000000000000000000000000000000000000"
    "00000000000000000003636f6d7072657373696f6e207479706500000000000000000000000000000000000000000000"
    "00000000000000000004657874656e646564204c3220656e747269657300000000000000000000000000000000000000"
    "000000000000000001006c617a7920726566636f756e7473000000000000000000000000000000000000000000000000"
    "000000000000000002006269746d61707300000000000000000000000000000000000000000000000000000000000000"
    "000000000000000002017261772065787465726e616c2064617461000000000000000000000000000000000000000000"
    "00000000000000000000000000000000626173652e726177"
;

// Creation commands, for regenerating the fixtures above:
//   a.qcow2  qemu-img create -f qcow2 a.qcow2 1G                       (file: 196624 bytes)
//   v2.qcow2 qemu-img create -f qcow2 -o compat=0.10 v2.qcow2 1M       (file: 196616 bytes)
//   c.qcow2  qemu-img create -f qcow2 -b base.raw -F raw
//                -o data_file=d.raw,compression_type=zstd c.qcow2      (file: 196616 bytes; 1M)
constexpr int64_t kFileSizeA = 196624;
constexpr int64_t kFileSizeV2 = 196616;
constexpr int64_t kFileSizeC = 196616;

std::vector<uint8_t> Cluster(const char* hex, size_t cluster_size = 65536) {
  std::vector<uint8_t> out(cluster_size, 0);
  const size_t n = std::strlen(hex) / 2;
  for (size_t i = 0; i < n; ++i) out[i] = static_cast<uint8_t>(std::stoi(std::string(hex + 2 * i, 2), nullptr, 16));
  return out;
}

std::string ParseError(const std::vector<uint8_t>& buf, int64_t file_size = kFileSizeA) {
  auto h = ParseHeader(buf, file_size, "bad.qcow2");
  REQUIRE_FALSE(h.ok());
  return testing::Message(h.status());
}

TEST_CASE("qemu-img's default v3 header parses to its fields", "[qcow2][header]") {
  auto buf = Cluster(kQemuV3_1G);
  auto h = ParseHeader(buf, kFileSizeA, "a.qcow2");
  REQUIRE(h.ok());
  CHECK(h->version == 3);
  CHECK(h->cluster_bits == 16);
  CHECK(h->cluster_size() == 65536);
  CHECK(h->size == (1ull << 30));
  CHECK(h->l1_size == 2);
  CHECK(h->l1_table_offset == 0x30000);
  CHECK(h->refcount_table_offset == 0x10000);
  CHECK(h->refcount_table_clusters == 1);
  CHECK(h->refcount_order == 4);
  CHECK(h->refcount_bits() == 16);
  CHECK(h->header_length == 112);
  CHECK(h->incompatible_features == 0);
  CHECK(h->compression_type == CompressionType::kZlib);
  CHECK_FALSE(h->backing_file);
  CHECK_FALSE(h->backing_format);
  CHECK_FALSE(h->data_file);
  CHECK(h->other_extensions.empty());
  REQUIRE(h->feature_table.size() == 8);
  CHECK(h->IncompatibleFeatureName(4) == "extended L2 entries");
  CHECK(h->IncompatibleFeatureName(9) == "");
  std::vector<FeatureName> def = DefaultFeatureTable();
  REQUIRE(def.size() == h->feature_table.size());
  for (size_t i = 0; i < def.size(); ++i) {
    CHECK(def[i].type == h->feature_table[i].type);
    CHECK(def[i].bit == h->feature_table[i].bit);
    CHECK(def[i].name == h->feature_table[i].name);
  }
}

TEST_CASE("qemu-img's headers serialise back byte for byte", "[qcow2][header]") {
  struct Case { const char* hex; int64_t file_size; };
  for (const Case& c : {Case{kQemuV3_1G, kFileSizeA}, Case{kQemuV2_1M, kFileSizeV2},
                        Case{kQemuV3BackingDataZstd, kFileSizeC}}) {
    auto buf = Cluster(c.hex);
    auto h = ParseHeader(buf, c.file_size, "x.qcow2");
    REQUIRE(h.ok());
    auto out = SerializeHeader(*h);
    REQUIRE(out.ok());
    CHECK(*out == buf);
  }
}

TEST_CASE("v2 header and the extensions of a backed, data-file, zstd image", "[qcow2][header]") {
  auto v2 = ParseHeader(Cluster(kQemuV2_1M), kFileSizeV2, "v2.qcow2");
  REQUIRE(v2.ok());
  CHECK(v2->version == 2);
  CHECK(v2->header_length == 72);
  CHECK(v2->refcount_order == 4);
  CHECK(v2->feature_table.empty());

  auto c = ParseHeader(Cluster(kQemuV3BackingDataZstd), kFileSizeC, "c.qcow2");
  REQUIRE(c.ok());
  CHECK(c->backing_file == "base.raw");
  CHECK(c->backing_file_offset == 0x220);
  CHECK(c->backing_format == "raw");
  CHECK(c->data_file == "d.raw");
  CHECK(c->has_data_file());
  CHECK(c->compression_type == CompressionType::kZstd);
  CHECK(c->incompatible_features == (kIncompatDataFile | kIncompatCompression));
}

TEST_CASE("unknown extensions, crypto pointer and extra header bytes round trip", "[qcow2][header]") {
  auto base = ParseHeader(Cluster(kQemuV3_1G), kFileSizeA, "a.qcow2");
  REQUIRE(base.ok());
  Header h = *base;
  h.other_extensions.push_back(RawExtension{kExtBitmaps, std::vector<uint8_t>(24, 0x5a)});
  h.other_extensions.push_back(RawExtension{0x12345678, {1, 2, 3}});
  h.crypto_header = std::make_pair(uint64_t{0x40000}, uint64_t{0x2000});
  h.unknown_header_fields = {9, 8, 7, 6, 5, 4, 3, 2};
  h.feature_table.push_back(FeatureName{1, 7, "future feature"});
  h.backing_file = "some/backing.img";
  h.backing_format = "qcow2";
  auto out = SerializeHeader(h);
  REQUIRE(out.ok());
  auto again = ParseHeader(*out, kFileSizeA, "a.qcow2");
  REQUIRE(again.ok());
  CHECK(again->header_length == 120);
  CHECK(again->unknown_header_fields == h.unknown_header_fields);
  REQUIRE(again->other_extensions.size() == 2);
  CHECK(again->other_extensions[0].type == kExtBitmaps);
  CHECK(again->other_extensions[0].data == std::vector<uint8_t>(24, 0x5a));
  CHECK(again->other_extensions[1].type == 0x12345678);
  CHECK(again->other_extensions[1].data == std::vector<uint8_t>{1, 2, 3});
  CHECK(again->crypto_header == h.crypto_header);
  CHECK(again->backing_file == "some/backing.img");
  CHECK(again->backing_format == "qcow2");
  REQUIRE(again->feature_table.size() == 9);
  CHECK(again->feature_table[8].name == "future feature");
  auto twice = SerializeHeader(*again);
  REQUIRE(twice.ok());
  CHECK(*twice == *out);
}

TEST_CASE("a header that does not fit its cluster is refused", "[qcow2][header]") {
  Header h;
  h.cluster_bits = 9;
  h.backing_file = std::string(1000, 'b');
  auto out = SerializeHeader(h);
  REQUIRE_FALSE(out.ok());
  CHECK(StatusErrno(out.status()) == ENOSPC);
  h.backing_file = std::string(1024, 'b');
  h.cluster_bits = 16;
  CHECK_FALSE(SerializeHeader(h).ok());
}

// Each bad-input case of the issue, and the other fields the parser guards.
TEST_CASE("malformed headers are refused naming the file and the field", "[qcow2][header]") {
  const auto good = Cluster(kQemuV3_1G);
  auto with32 = [&](size_t off, uint32_t v) { auto b = good; StoreBe32(b.data() + off, v); return b; };
  auto with64 = [&](size_t off, uint64_t v) { auto b = good; StoreBe64(b.data() + off, v); return b; };
  using Catch::Matchers::Contains;
  using Catch::Matchers::StartsWith;

  CHECK_THAT(ParseError(with32(0, 0x514649fa)), StartsWith("'bad.qcow2': qcow2 header: bad magic"));
  CHECK_THAT(ParseError(with32(4, 4)), Contains("Unsupported qcow2 version 4"));
  // A huge L1 size: QEMU's limit is 32 MiB of entries ("Active L1 table too large").
  CHECK_THAT(ParseError(with32(36, 0x400001)),
             Contains("'bad.qcow2': qcow2 header: l1_size 4194305: Active L1 table too large"));
  CHECK_THAT(ParseError(with32(36, 1)), Contains("l1_size 1: L1 table is too small"));
  // An L1 table whose end is past EOF, and one that is not aligned or overlaps the header.
  CHECK_THAT(ParseError(with32(36, 3)), Contains("l1_table_offset: L1 table at offset 0x30000 "
                                                 "(24 bytes) is past the end of the file"));
  CHECK_THAT(ParseError(with64(40, 0x30200)), Contains("l1_table_offset: L1 table offset 0x30200 "
                                                       "is not cluster-aligned"));
  CHECK_THAT(ParseError(with64(40, 0)), Contains("L1 table at offset 0x0 overlaps the header"));
  // A refcount table overlapping the header.
  CHECK_THAT(ParseError(with64(48, 0)),
             Contains("refcount_table_offset: refcount table at offset 0x0 overlaps the header"));
  CHECK_THAT(ParseError(with64(48, 0x10008)), Contains("not cluster-aligned"));
  CHECK_THAT(ParseError(with32(56, 0x100000)),
             Contains("refcount_table_clusters 1048576: Reference count table too large"));
  CHECK_THAT(ParseError(with32(56, 0)), Contains("refcount_table_clusters 0"));
  CHECK_THAT(ParseError(with32(56, 3)), Contains("past the end of the file"));
  // cluster_bits out of range.
  CHECK(ParseError(with32(20, 33)) == "'bad.qcow2': qcow2 header: cluster_bits 33 is out of range (9..21)");
  CHECK_THAT(ParseError(with32(20, 8)), Contains("cluster_bits 8 is out of range"));
  CHECK_THAT(ParseError(with32(20, 22)), Contains("cluster_bits 22 is out of range"));
  // A header length below 104 (v3); v2's is fixed at 72 and a 72-byte buffer is enough for it.
  CHECK_THAT(ParseError(with32(100, 100)), Contains("header_length 100: qcow2 header too short"));
  CHECK_THAT(ParseError(with32(100, 0x20000)), Contains("qcow2 header exceeds cluster size"));
  CHECK_THAT(ParseError(std::vector<uint8_t>(good.begin(), good.begin() + 71)),
             Contains("header truncated"));
  CHECK_THAT(ParseError(std::vector<uint8_t>(good.begin(), good.begin() + 100)),
             Contains("header truncated"));
  // A backing-name offset past the cluster, and names too long for QEMU.
  {
    auto b = with64(8, 0x10001);
    StoreBe32(b.data() + 16, 4);
    CHECK_THAT(ParseError(b), Contains("backing_file_offset 0x10001: Invalid backing file offset"));
    b = with64(8, 0xfff0);
    StoreBe32(b.data() + 16, 0x20);
    CHECK_THAT(ParseError(b), Contains("backing_file_size 32: Backing file name too long"));
    b = with64(8, 0x1000);
    StoreBe32(b.data() + 16, 1024);
    CHECK_THAT(ParseError(b), Contains("Backing file name too long"));
    b = with64(8, 0x10);
    StoreBe32(b.data() + 16, 4);
    CHECK_THAT(ParseError(b), Contains("inside the 112-byte header"));
  }
  CHECK_THAT(ParseError(with32(96, 7)), Contains("refcount_order 7: Reference count entry width too large"));
  CHECK_THAT(ParseError(with32(32, 3)), Contains("crypt_method 3: Unsupported encryption method 3"));
  CHECK_THAT(ParseError(with64(24, 0x7fffffffffffffffull)), Contains("Image is too big"));
  // Extensions: a length past the cluster, a type/length pair cut by the cluster's end.
  CHECK_THAT(ParseError(with32(0x74, 0xfff0)), Contains("Header extension too large"));
  {
    auto b = good;
    StoreBe32(b.data() + 0x70 + 8 + 0x180, 0x12345678);  // replace the end marker
    StoreBe32(b.data() + 0x70 + 8 + 0x180 + 4, 0xffff);
    CHECK_THAT(ParseError(b), Contains("header extension 0x12345678 at offset 504: Header "
                                       "extension too large"));
  }
  {
    // The extension area ends where the file does when the file is shorter than a cluster.
    auto b = std::vector<uint8_t>(good.begin(), good.begin() + 0x100);
    CHECK_THAT(ParseError(b), Contains("Header extension too large"));
  }
  // Compression type byte and bit must agree.
  {
    auto b = good;
    b[104] = 1;
    CHECK_THAT(ParseError(b), Contains("compression type incompatible feature bit is not set"));
    b[104] = 2;
    CHECK_THAT(ParseError(b), Contains("compression_type 2: unknown compression type"));
    CHECK_THAT(ParseError(with64(72, kIncompatCompression)), Contains("compression_type is zlib"));
  }
  CHECK_THAT(ParseError(with32(60, 65537)), Contains("Too many snapshots"));
  {
    auto b = with32(60, 1);
    CHECK_THAT(ParseError(b), Contains("snapshots_offset: snapshot table at offset 0x0 overlaps"));
  }
}

TEST_CASE("unknown incompatible features parse (the driver refuses them by name)", "[qcow2][header]") {
  auto b = Cluster(kQemuV3_1G);
  StoreBe64(b.data() + 72, 1ull << 9);
  auto h = ParseHeader(b, kFileSizeA, "a.qcow2");
  REQUIRE(h.ok());
  CHECK(h->incompatible_features == (1ull << 9));
}

}  // namespace
}  // namespace libblock::qcow2

namespace libblock::qcow2 {
namespace {

// qemu-img 7.2 `info --output=json`'s "format-specific" for the fixtures above.
TEST_CASE("format-specific info is qemu-img's", "[qcow2][info]") {
  auto a = ParseHeader(Cluster(kQemuV3_1G), kFileSizeA, "a.qcow2");
  REQUIRE(a.ok());
  CHECK(FormatSpecificInfo(*a).dump() ==
        R"({"type":"qcow2","data":{"compat":"1.1","compression-type":"zlib","lazy-refcounts":false,)"
        R"("refcount-bits":16,"corrupt":false,"extended-l2":false}})");
  auto v2 = ParseHeader(Cluster(kQemuV2_1M), kFileSizeV2, "v2.qcow2");
  REQUIRE(v2.ok());
  CHECK(FormatSpecificInfo(*v2).dump() ==
        R"({"type":"qcow2","data":{"compat":"0.10","compression-type":"zlib","refcount-bits":16}})");
  auto c = ParseHeader(Cluster(kQemuV3BackingDataZstd), kFileSizeC, "c.qcow2");
  REQUIRE(c.ok());
  Header h = *c;
  h.compatible_features |= kCompatLazyRefcounts;
  h.autoclear_features |= kAutoclearDataFileRaw;
  h.incompatible_features |= kIncompatCorrupt | kIncompatExtendedL2;
  h.refcount_order = 0;
  CHECK(FormatSpecificInfo(h).dump() ==
        R"({"type":"qcow2","data":{"compat":"1.1","compression-type":"zstd","lazy-refcounts":true,)"
        R"("refcount-bits":1,"data-file":"d.raw","data-file-raw":true,"corrupt":true,"extended-l2":true}})");
}

}  // namespace
}  // namespace libblock::qcow2
