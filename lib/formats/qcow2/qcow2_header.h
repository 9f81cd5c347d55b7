// qcow2's on-disk header and header extensions (QEMU's docs/interop/qcow2.txt), parsed and
// serialised. Shared by the driver (open, header updates), create, check and the fuzz target.
//
// Parsing validates everything a later step would trust — sizes, offsets, alignments, table
// bounds — and fails with a message naming the file and the field at fault
// ("'a.qcow2': qcow2 header: cluster_bits 33 is out of range (9..21)"); it never allocates
// more than the header cluster it was given plus the extensions it holds.
#ifndef LIBBLOCK_FORMATS_QCOW2_QCOW2_HEADER_H_
#define LIBBLOCK_FORMATS_QCOW2_QCOW2_HEADER_H_

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace libblock::qcow2 {

inline constexpr uint32_t kMagic = 0x514649fb;  // "QFI\xfb"
inline constexpr uint32_t kV2HeaderLength = 72;
inline constexpr uint32_t kV3HeaderLength = 104;  // without the compression type byte
inline constexpr int kMinClusterBits = 9;
inline constexpr int kMaxClusterBits = 21;

// incompatible_features bits
inline constexpr uint64_t kIncompatDirty = 1ull << 0;
inline constexpr uint64_t kIncompatCorrupt = 1ull << 1;
inline constexpr uint64_t kIncompatDataFile = 1ull << 2;
inline constexpr uint64_t kIncompatCompression = 1ull << 3;
inline constexpr uint64_t kIncompatExtendedL2 = 1ull << 4;
inline constexpr uint64_t kIncompatKnown = 0x1f;
// compatible_features bits
inline constexpr uint64_t kCompatLazyRefcounts = 1ull << 0;
// autoclear_features bits
inline constexpr uint64_t kAutoclearBitmaps = 1ull << 0;
inline constexpr uint64_t kAutoclearDataFileRaw = 1ull << 1;
inline constexpr uint64_t kAutoclearKnown = 0x3;

// header extension types
inline constexpr uint32_t kExtEnd = 0x00000000;
inline constexpr uint32_t kExtBackingFormat = 0xe2792aca;
inline constexpr uint32_t kExtFeatureTable = 0x6803f857;
inline constexpr uint32_t kExtBitmaps = 0x23852875;
inline constexpr uint32_t kExtCryptoHeader = 0x0537be77;
inline constexpr uint32_t kExtDataFile = 0x44415441;

// L1/L2/refcount entry bits
inline constexpr uint64_t kOflagCopied = 1ull << 63;
inline constexpr uint64_t kOflagCompressed = 1ull << 62;
inline constexpr uint64_t kOflagZero = 1ull << 0;          // standard L2 entries (v3)
// The snapshot table (QEMU's QCOW_MAX_SNAPSHOTS, QCOW_MAX_SNAPSHOTS_SIZE,
// QCOW_MAX_SNAPSHOT_EXTRA_DATA): entries are at least 40 bytes, 8-byte aligned.
inline constexpr uint32_t kMaxSnapshots = 65536;
inline constexpr uint64_t kMaxSnapshotTableBytes = 64ull << 20;
inline constexpr uint64_t kSnapshotHeaderMinBytes = 40;
inline constexpr uint32_t kMaxSnapshotExtraData = 1024;
inline constexpr uint64_t kL1OffsetMask = 0x00fffffffffffe00ull;
inline constexpr uint64_t kL2OffsetMask = 0x00fffffffffffe00ull;
inline constexpr uint64_t kRefcountTableOffsetMask = 0xfffffffffffffe00ull;

enum class CompressionType : uint8_t { kZlib = 0, kZstd = 1 };

// One entry of the feature name table.
struct FeatureName {
  uint8_t type = 0;  // 0 incompatible, 1 compatible, 2 autoclear
  uint8_t bit = 0;
  std::string name;  // up to 46 bytes, NUL padding stripped
};

// A header extension kept as bytes (bitmaps, unknown ones): rewritten unchanged.
struct RawExtension {
  uint32_t type = 0;
  std::vector<uint8_t> data;
};

struct Header {
  uint32_t version = 3;
  uint64_t backing_file_offset = 0;
  uint32_t backing_file_size = 0;
  uint32_t cluster_bits = 16;
  uint64_t size = 0;
  uint32_t crypt_method = 0;  // 0 none, 1 AES (legacy), 2 LUKS
  uint32_t l1_size = 0;
  uint64_t l1_table_offset = 0;
  uint64_t refcount_table_offset = 0;
  uint32_t refcount_table_clusters = 0;
  uint32_t nb_snapshots = 0;
  uint64_t snapshots_offset = 0;
  // v3 (zero for v2)
  uint64_t incompatible_features = 0;
  uint64_t compatible_features = 0;
  uint64_t autoclear_features = 0;
  uint32_t refcount_order = 4;
  uint32_t header_length = kV3HeaderLength;
  CompressionType compression_type = CompressionType::kZlib;
  // v3 header bytes past the 112 libblock knows (header_length > 112): kept and rewritten.
  std::vector<uint8_t> unknown_header_fields;

  // From the extensions and the backing name.
  std::optional<std::string> backing_file;    // the name at backing_file_offset
  std::optional<std::string> backing_format;  // kExtBackingFormat
  std::optional<std::string> data_file;       // kExtDataFile
  std::vector<FeatureName> feature_table;     // kExtFeatureTable
  std::optional<std::pair<uint64_t, uint64_t>> crypto_header;  // kExtCryptoHeader: offset, length
  std::vector<RawExtension> other_extensions;  // bitmaps and unknown ones, in file order

  int64_t cluster_size() const { return int64_t{1} << cluster_bits; }
  int refcount_bits() const { return 1 << refcount_order; }
  bool extended_l2() const { return incompatible_features & kIncompatExtendedL2; }
  bool has_data_file() const { return incompatible_features & kIncompatDataFile; }
  // The name of incompatible feature `bit` from the feature table, or "" when not listed.
  std::string IncompatibleFeatureName(int bit) const;
};

// Parses the header cluster `buf` (the file's first min(cluster, file size) bytes; at least the
// fixed header) of the image `filename` whose file is `file_size` bytes. Validates the fixed
// fields, the extensions and the backing name against the cluster and the file, and the
// table placements (L1 and refcount table inside the file, aligned, not overlapping the
// header). Unknown incompatible features are *not* refused here (the driver names them).
absl::StatusOr<Header> ParseHeader(std::span<const uint8_t> buf, int64_t file_size,
                                   std::string_view filename);

// Serialises the header, its extensions (backing format, data file, feature name table as
// libblock writes it — v3 with clusters above 4 KiB only, as QEMU —, crypto pointer, kept ones) and the backing name into one cluster-sized
// buffer (ENOSPC-style error when they do not fit). Sets backing_file_offset/size and
// header_length consistently.
absl::StatusOr<std::vector<uint8_t>> SerializeHeader(const Header& header);

// The feature name table libblock writes (QEMU's names: "dirty bit", "corrupt bit", ...).
std::vector<FeatureName> DefaultFeatureTable();

}  // namespace libblock::qcow2

#endif  // LIBBLOCK_FORMATS_QCOW2_QCOW2_HEADER_H_
