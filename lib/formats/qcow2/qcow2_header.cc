// qcow2 header parse and serialise (docs/interop/qcow2.txt, "Header" and "Header extensions").
//
// Invariants a parsed Header gives its users (driver, create, check, fuzz target):
//  - version is 2 or 3; v2 headers have header_length 72, refcount_order 4 and no feature bits;
//  - cluster_bits is 9..21, refcount_order 0..6, crypt_method 0..2, compression_type known and
//    consistent with the compression incompatible bit;
//  - the L1 table (when l1_size > 0), the refcount table and the snapshot table (when
//    nb_snapshots > 0) are cluster-aligned, lie inside the file, do not overlap the header
//    cluster and are no bigger than QEMU's limits (32 MiB L1, 8 MiB refcount table, 64 MiB and
//    65536 snapshots); l1_size covers the virtual size;
//  - every extension and the backing name lie inside the header cluster and the buffer.
// Limits and the reason texts in the messages follow what qemu-img 7.2 reports for the same
// fault ("Active L1 table too large"); each message names the file and the field.
#include "formats/qcow2/qcow2_header.h"

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_format.h"
#include "util/checked_math.h"
#include "util/endian.h"
#include "util/status.h"

namespace libblock::qcow2 {
namespace {

// Byte offsets of the fixed header fields.
constexpr size_t kOffMagic = 0;
constexpr size_t kOffVersion = 4;
constexpr size_t kOffBackingFileOffset = 8;
constexpr size_t kOffBackingFileSize = 16;
constexpr size_t kOffClusterBits = 20;
constexpr size_t kOffSize = 24;
constexpr size_t kOffCryptMethod = 32;
constexpr size_t kOffL1Size = 36;
constexpr size_t kOffL1TableOffset = 40;
constexpr size_t kOffRefcountTableOffset = 48;
constexpr size_t kOffRefcountTableClusters = 56;
constexpr size_t kOffNbSnapshots = 60;
constexpr size_t kOffSnapshotsOffset = 64;
constexpr size_t kOffIncompatible = 72;
constexpr size_t kOffCompatible = 80;
constexpr size_t kOffAutoclear = 88;
constexpr size_t kOffRefcountOrder = 96;
constexpr size_t kOffHeaderLength = 100;
constexpr size_t kOffCompressionType = 104;
// The v3 header QEMU writes: through the compression type byte and 7 bytes of padding.
constexpr size_t kFullV3HeaderLength = 112;

// QEMU's limits (block/qcow2.h): QCOW_MAX_L1_SIZE, QCOW_MAX_REFTABLE_SIZE,
// QCOW_MAX_SNAPSHOTS, QCOW_MAX_SNAPSHOTS_SIZE; the backing name is at most 1023 bytes.
constexpr uint64_t kMaxL1Bytes = 32ull << 20;
constexpr uint64_t kMaxRefcountTableBytes = 8ull << 20;
constexpr uint32_t kMaxBackingNameBytes = 1023;
// QEMU stores the backing format in a 16-byte buffer (so at most 15 characters).
constexpr uint32_t kMaxBackingFormatBytes = 15;
constexpr size_t kFeatureEntryBytes = 48;
constexpr size_t kFeatureNameBytes = 46;
constexpr size_t kCryptoHeaderExtBytes = 16;

class Parser {
 public:
  Parser(std::span<const uint8_t> buf, int64_t file_size, std::string_view filename)
      : buf_(buf), file_size_(file_size), filename_(filename) {}

  absl::StatusOr<Header> Parse();

 private:
  absl::Status Fail(int err, std::string_view what) const {
    return ErrnoError(err, absl::StrFormat("'%s': qcow2 header: %s", filename_, what));
  }
  // A table of `bytes` at `offset` (field names `name`): aligned, inside the file, past the
  // header cluster.
  absl::Status CheckTable(std::string_view name, uint64_t offset, uint64_t bytes,
                          uint64_t cluster_size) const;
  absl::Status ParseExtensions(Header& h, size_t start, size_t end) const;

  std::span<const uint8_t> buf_;
  int64_t file_size_;
  std::string_view filename_;
};

absl::Status Parser::CheckTable(std::string_view name, uint64_t offset, uint64_t bytes,
                                uint64_t cluster_size) const {
  if (offset % cluster_size != 0) {
    return Fail(EINVAL, absl::StrFormat("%s offset 0x%x is not cluster-aligned", name, offset));
  }
  if (offset < cluster_size) {
    return Fail(EINVAL, absl::StrFormat("%s at offset 0x%x overlaps the header", name, offset));
  }
  uint64_t end = 0;
  if (!CheckedAdd(offset, bytes, &end) || end > static_cast<uint64_t>(file_size_)) {
    return Fail(EINVAL, absl::StrFormat("%s at offset 0x%x (%u bytes) is past the end of the "
                                        "file (%d bytes)", name, offset, bytes, file_size_));
  }
  return absl::OkStatus();
}

absl::Status Parser::ParseExtensions(Header& h, size_t start, size_t end) const {
  size_t offset = start;
  while (offset < end) {
    if (end - offset < 8) {
      return Fail(EINVAL, absl::StrFormat("header extension at offset %u: Header extension too "
                                          "large (its type and length pass offset %u)",
                                          offset, end));
    }
    const uint32_t type = LoadBe32(buf_.data() + offset);
    const uint32_t len = LoadBe32(buf_.data() + offset + 4);
    offset += 8;
    if (type == kExtEnd) return absl::OkStatus();
    if (len > end - offset) {
      return Fail(EINVAL, absl::StrFormat("header extension 0x%08x at offset %u: Header "
                                          "extension too large (length %u passes offset %u)",
                                          type, offset - 8, len, end));
    }
    const uint8_t* data = buf_.data() + offset;
    switch (type) {
      case kExtBackingFormat:
        if (len > kMaxBackingFormatBytes) {
          return Fail(EINVAL, absl::StrFormat("backing format extension: length %u is too "
                                              "large (at most %u)", len, kMaxBackingFormatBytes));
        }
        h.backing_format = std::string(reinterpret_cast<const char*>(data),
                                       strnlen(reinterpret_cast<const char*>(data), len));
        break;
      case kExtDataFile:
        h.data_file = std::string(reinterpret_cast<const char*>(data),
                                  strnlen(reinterpret_cast<const char*>(data), len));
        break;
      case kExtFeatureTable:
        // A trailing partial entry is ignored, as QEMU does.
        for (size_t i = 0; i + kFeatureEntryBytes <= len; i += kFeatureEntryBytes) {
          FeatureName f;
          f.type = data[i];
          f.bit = data[i + 1];
          const char* name = reinterpret_cast<const char*>(data + i + 2);
          f.name.assign(name, strnlen(name, kFeatureNameBytes));
          h.feature_table.push_back(std::move(f));
        }
        break;
      case kExtCryptoHeader:
        if (len != kCryptoHeaderExtBytes) {
          return Fail(EINVAL, absl::StrFormat("crypto header extension: length %u, expected %u",
                                              len, kCryptoHeaderExtBytes));
        }
        h.crypto_header = std::make_pair(LoadBe64(data), LoadBe64(data + 8));
        break;
      default:  // bitmaps and unknown ones: kept as bytes
        h.other_extensions.push_back(RawExtension{type, std::vector<uint8_t>(data, data + len)});
        break;
    }
    // Extension data is padded to a multiple of 8 bytes; the padding may end the area.
    const size_t padded = (static_cast<size_t>(len) + 7) & ~size_t{7};
    offset += std::min(padded, end - offset);
  }
  return absl::OkStatus();
}

absl::StatusOr<Header> Parser::Parse() {
  if (buf_.size() < kV2HeaderLength) {
    return Fail(EINVAL, absl::StrFormat("header truncated (%u bytes, at least %u needed)",
                                        buf_.size(), kV2HeaderLength));
  }
  const uint8_t* p = buf_.data();
  const uint32_t magic = LoadBe32(p + kOffMagic);
  if (magic != kMagic) {
    return Fail(EINVAL, absl::StrFormat("bad magic 0x%08x: Image is not in qcow2 format", magic));
  }
  Header h;
  h.version = LoadBe32(p + kOffVersion);
  if (h.version != 2 && h.version != 3) {
    return Fail(ENOTSUP, absl::StrFormat("version %u: Unsupported qcow2 version %u", h.version,
                                         h.version));
  }
  h.backing_file_offset = LoadBe64(p + kOffBackingFileOffset);
  h.backing_file_size = LoadBe32(p + kOffBackingFileSize);
  h.cluster_bits = LoadBe32(p + kOffClusterBits);
  h.size = LoadBe64(p + kOffSize);
  h.crypt_method = LoadBe32(p + kOffCryptMethod);
  h.l1_size = LoadBe32(p + kOffL1Size);
  h.l1_table_offset = LoadBe64(p + kOffL1TableOffset);
  h.refcount_table_offset = LoadBe64(p + kOffRefcountTableOffset);
  h.refcount_table_clusters = LoadBe32(p + kOffRefcountTableClusters);
  h.nb_snapshots = LoadBe32(p + kOffNbSnapshots);
  h.snapshots_offset = LoadBe64(p + kOffSnapshotsOffset);

  if (h.cluster_bits < kMinClusterBits || h.cluster_bits > kMaxClusterBits) {
    return Fail(EINVAL, absl::StrFormat("cluster_bits %u is out of range (%d..%d)",
                                        h.cluster_bits, kMinClusterBits, kMaxClusterBits));
  }
  const uint64_t cluster_size = uint64_t{1} << h.cluster_bits;

  if (h.version == 2) {
    h.incompatible_features = 0;
    h.compatible_features = 0;
    h.autoclear_features = 0;
    h.refcount_order = 4;
    h.header_length = kV2HeaderLength;
  } else {
    if (buf_.size() < kV3HeaderLength) {
      return Fail(EINVAL, absl::StrFormat("header truncated (%u bytes, a version 3 header has "
                                          "at least %u)", buf_.size(), kV3HeaderLength));
    }
    h.incompatible_features = LoadBe64(p + kOffIncompatible);
    h.compatible_features = LoadBe64(p + kOffCompatible);
    h.autoclear_features = LoadBe64(p + kOffAutoclear);
    h.refcount_order = LoadBe32(p + kOffRefcountOrder);
    h.header_length = LoadBe32(p + kOffHeaderLength);
    if (h.header_length < kV3HeaderLength) {
      return Fail(EINVAL, absl::StrFormat("header_length %u: qcow2 header too short (a version "
                                          "3 header has at least %u bytes)", h.header_length,
                                          kV3HeaderLength));
    }
    if (h.header_length > cluster_size) {
      return Fail(EINVAL, absl::StrFormat("header_length %u: qcow2 header exceeds cluster size "
                                          "(%u)", h.header_length, cluster_size));
    }
    if (h.header_length > buf_.size()) {
      return Fail(EINVAL, absl::StrFormat("header_length %u is past the end of the file (%u "
                                          "bytes)", h.header_length, buf_.size()));
    }
    if (h.header_length > kOffCompressionType) {
      const uint8_t type = p[kOffCompressionType];
      if (type > static_cast<uint8_t>(CompressionType::kZstd)) {
        return Fail(ENOTSUP, absl::StrFormat("compression_type %u: unknown compression type",
                                             type));
      }
      h.compression_type = static_cast<CompressionType>(type);
    }
    if (h.header_length > kFullV3HeaderLength) {
      h.unknown_header_fields.assign(p + kFullV3HeaderLength, p + h.header_length);
    }
    const bool bit = h.incompatible_features & kIncompatCompression;
    if (h.compression_type != CompressionType::kZlib && !bit) {
      return Fail(EINVAL, "compression_type is not zlib but the compression type incompatible "
                          "feature bit is not set");
    }
    if (h.compression_type == CompressionType::kZlib && bit) {
      return Fail(EINVAL, "the compression type incompatible feature bit is set but "
                          "compression_type is zlib");
    }
  }
  if (h.refcount_order > 6) {
    return Fail(EINVAL, absl::StrFormat("refcount_order %u: Reference count entry width too "
                                        "large; may not exceed 64 bits", h.refcount_order));
  }
  if (h.crypt_method > 2) {
    return Fail(ENOTSUP, absl::StrFormat("crypt_method %u: Unsupported encryption method %u",
                                         h.crypt_method, h.crypt_method));
  }

  // The virtual size and the L1 table that must cover it.
  const int l2_bits = static_cast<int>(h.cluster_bits) - (h.extended_l2() ? 4 : 3);
  const int l1_shift = static_cast<int>(h.cluster_bits) + l2_bits;  // bytes one L1 entry maps
  if (h.size > static_cast<uint64_t>(kMaxLength)) {
    return Fail(EFBIG, absl::StrFormat("size %u: Image is too big", h.size));
  }
  const uint64_t l1_needed = (h.size + (uint64_t{1} << l1_shift) - 1) >> l1_shift;
  if (l1_needed > INT32_MAX) {
    return Fail(EFBIG, absl::StrFormat("size %u: Image is too big", h.size));
  }
  if (h.l1_size > kMaxL1Bytes / 8) {
    return Fail(EFBIG, absl::StrFormat("l1_size %u: Active L1 table too large (at most %u "
                                       "entries)", h.l1_size, kMaxL1Bytes / 8));
  }
  if (h.l1_size < l1_needed) {
    return Fail(EINVAL, absl::StrFormat("l1_size %u: L1 table is too small (size %u needs %u "
                                        "entries)", h.l1_size, h.size, l1_needed));
  }
  if (h.l1_size > 0) {
    LB_RETURN_IF_ERROR(CheckTable("l1_table_offset: L1 table", h.l1_table_offset,
                                  uint64_t{h.l1_size} * 8, cluster_size));
  }

  if (h.refcount_table_clusters == 0) {
    return Fail(EINVAL, "refcount_table_clusters 0: the image has no refcount table");
  }
  if (h.refcount_table_clusters > kMaxRefcountTableBytes / cluster_size) {
    return Fail(EFBIG, absl::StrFormat("refcount_table_clusters %u: Reference count table too "
                                       "large (at most %u bytes)", h.refcount_table_clusters,
                                       kMaxRefcountTableBytes));
  }
  LB_RETURN_IF_ERROR(CheckTable("refcount_table_offset: refcount table", h.refcount_table_offset,
                                uint64_t{h.refcount_table_clusters} * cluster_size,
                                cluster_size));

  if (h.nb_snapshots > kMaxSnapshots) {
    return Fail(EFBIG, absl::StrFormat("nb_snapshots %u: Too many snapshots (at most %u)",
                                       h.nb_snapshots, kMaxSnapshots));
  }
  if (h.nb_snapshots > 0) {
    if (uint64_t{h.nb_snapshots} * kSnapshotHeaderMinBytes > kMaxSnapshotTableBytes) {
      return Fail(EFBIG, absl::StrFormat("nb_snapshots %u: Snapshot table too large",
                                         h.nb_snapshots));
    }
    LB_RETURN_IF_ERROR(CheckTable("snapshots_offset: snapshot table", h.snapshots_offset,
                                  uint64_t{h.nb_snapshots} * kSnapshotHeaderMinBytes,
                                  cluster_size));
  }

  // The header cluster as far as the file has it: extensions and the backing name live there.
  const size_t area = static_cast<size_t>(std::min<uint64_t>(cluster_size, buf_.size()));

  if (h.backing_file_offset != 0) {
    if (h.backing_file_offset > cluster_size) {
      return Fail(EINVAL, absl::StrFormat("backing_file_offset 0x%x: Invalid backing file "
                                          "offset (past the header cluster of %u bytes)",
                                          h.backing_file_offset, cluster_size));
    }
    if (h.backing_file_offset < h.header_length) {
      return Fail(EINVAL, absl::StrFormat("backing_file_offset 0x%x: Invalid backing file "
                                          "offset (inside the %u-byte header)",
                                          h.backing_file_offset, h.header_length));
    }
    if (h.backing_file_size > kMaxBackingNameBytes ||
        h.backing_file_size > cluster_size - h.backing_file_offset) {
      return Fail(EINVAL, absl::StrFormat("backing_file_size %u: Backing file name too long "
                                          "(at most %u bytes, inside the header cluster)",
                                          h.backing_file_size, kMaxBackingNameBytes));
    }
    if (h.backing_file_offset + h.backing_file_size > area) {
      return Fail(EINVAL, absl::StrFormat("backing file name at offset 0x%x (%u bytes) is past "
                                          "the end of the file", h.backing_file_offset,
                                          h.backing_file_size));
    }
    h.backing_file = std::string(reinterpret_cast<const char*>(p + h.backing_file_offset),
                                 h.backing_file_size);
  }

  // Extensions run from the end of the header to the backing name (or the cluster's end).
  const size_t ext_start = h.header_length;
  size_t ext_end = h.backing_file_offset != 0 ? static_cast<size_t>(h.backing_file_offset)
                                              : area;
  ext_end = std::min(ext_end, area);
  if (ext_start < ext_end) LB_RETURN_IF_ERROR(ParseExtensions(h, ext_start, ext_end));
  return h;
}

void PutExtension(std::vector<uint8_t>& out, uint32_t type, std::span<const uint8_t> data) {
  const size_t at = out.size();
  out.resize(at + 8 + ((data.size() + 7) & ~size_t{7}), 0);
  StoreBe32(out.data() + at, type);
  StoreBe32(out.data() + at + 4, static_cast<uint32_t>(data.size()));
  if (!data.empty()) std::memcpy(out.data() + at + 8, data.data(), data.size());
}

std::span<const uint8_t> Bytes(const std::string& s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

}  // namespace

std::string Header::IncompatibleFeatureName(int bit) const {
  for (const FeatureName& f : feature_table) {
    if (f.type == 0 && f.bit == bit) return f.name;
  }
  return "";
}

absl::StatusOr<Header> ParseHeader(std::span<const uint8_t> buf, int64_t file_size,
                                   std::string_view filename) {
  return Parser(buf, file_size, filename).Parse();
}

std::vector<FeatureName> DefaultFeatureTable() {
  return {
      {0, 0, "dirty bit"},
      {0, 1, "corrupt bit"},
      {0, 2, "external data file"},
      {0, 3, "compression type"},
      {0, 4, "extended L2 entries"},
      {1, 0, "lazy refcounts"},
      {2, 0, "bitmaps"},
      {2, 1, "raw external data"},
  };
}

absl::StatusOr<std::vector<uint8_t>> SerializeHeader(const Header& header) {
  if (header.version != 2 && header.version != 3) {
    return ErrnoError(EINVAL, absl::StrFormat("qcow2 header: version %u cannot be written",
                                              header.version));
  }
  if (header.cluster_bits < kMinClusterBits || header.cluster_bits > kMaxClusterBits) {
    return ErrnoError(EINVAL, absl::StrFormat("qcow2 header: cluster_bits %u is out of range "
                                              "(%d..%d)", header.cluster_bits, kMinClusterBits,
                                              kMaxClusterBits));
  }
  const bool v3 = header.version == 3;
  if (!v3 && (header.incompatible_features || header.compatible_features ||
              header.autoclear_features || header.refcount_order != 4 ||
              header.compression_type != CompressionType::kZlib || header.data_file ||
              header.crypto_header)) {
    return ErrnoError(EINVAL, "qcow2 header: a version 2 header has no feature bits, "
                              "refcount_order 4, zlib compression and no data file or crypto "
                              "header extension");
  }
  const size_t cluster_size = size_t{1} << header.cluster_bits;
  const size_t header_length =
      v3 ? kFullV3HeaderLength + ((header.unknown_header_fields.size() + 7) & ~size_t{7})
         : kV2HeaderLength;
  std::vector<uint8_t> out(header_length, 0);
  uint8_t* p = out.data();
  StoreBe32(p + kOffMagic, kMagic);
  StoreBe32(p + kOffVersion, header.version);
  StoreBe32(p + kOffClusterBits, header.cluster_bits);
  StoreBe64(p + kOffSize, header.size);
  StoreBe32(p + kOffCryptMethod, header.crypt_method);
  StoreBe32(p + kOffL1Size, header.l1_size);
  StoreBe64(p + kOffL1TableOffset, header.l1_table_offset);
  StoreBe64(p + kOffRefcountTableOffset, header.refcount_table_offset);
  StoreBe32(p + kOffRefcountTableClusters, header.refcount_table_clusters);
  StoreBe32(p + kOffNbSnapshots, header.nb_snapshots);
  StoreBe64(p + kOffSnapshotsOffset, header.snapshots_offset);
  if (v3) {
    StoreBe64(p + kOffIncompatible, header.incompatible_features);
    StoreBe64(p + kOffCompatible, header.compatible_features);
    StoreBe64(p + kOffAutoclear, header.autoclear_features);
    StoreBe32(p + kOffRefcountOrder, header.refcount_order);
    StoreBe32(p + kOffHeaderLength, static_cast<uint32_t>(header_length));
    p[kOffCompressionType] = static_cast<uint8_t>(header.compression_type);
    if (!header.unknown_header_fields.empty()) {
      std::memcpy(p + kFullV3HeaderLength, header.unknown_header_fields.data(),
                  header.unknown_header_fields.size());
    }
  }

  // Extensions in QEMU's order: backing format, data file, crypto header, feature table (v3,
  // clusters above 4 KiB),
  // then the kept ones, then the end marker.
  if (header.backing_format) {
    if (header.backing_format->size() > kMaxBackingFormatBytes) {
      return ErrnoError(EINVAL, absl::StrFormat("qcow2 header: backing format '%s' is too long",
                                                *header.backing_format));
    }
    PutExtension(out, kExtBackingFormat, Bytes(*header.backing_format));
  }
  if (header.data_file) PutExtension(out, kExtDataFile, Bytes(*header.data_file));
  if (header.crypto_header) {
    uint8_t data[kCryptoHeaderExtBytes];
    StoreBe64(data, header.crypto_header->first);
    StoreBe64(data + 8, header.crypto_header->second);
    PutExtension(out, kExtCryptoHeader, data);
  }
  if (v3 && cluster_size > 4096) {
    // libblock's table, plus any entries another writer listed that it does not know. Like
    // QEMU, images with clusters of 4 KiB or less go without, leaving the header cluster's
    // room to the backing file name.
    std::vector<FeatureName> table = DefaultFeatureTable();
    const size_t known = table.size();
    for (const FeatureName& f : header.feature_table) {
      const bool listed = std::any_of(table.begin(), table.begin() + known, [&](const auto& k) {
        return k.type == f.type && k.bit == f.bit;
      });
      if (!listed) table.push_back(f);
    }
    std::vector<uint8_t> data(table.size() * kFeatureEntryBytes, 0);
    for (size_t i = 0; i < table.size(); ++i) {
      uint8_t* e = data.data() + i * kFeatureEntryBytes;
      e[0] = table[i].type;
      e[1] = table[i].bit;
      std::memcpy(e + 2, table[i].name.data(), std::min(table[i].name.size(), kFeatureNameBytes));
    }
    PutExtension(out, kExtFeatureTable, data);
  }
  for (const RawExtension& ext : header.other_extensions) PutExtension(out, ext.type, ext.data);
  PutExtension(out, kExtEnd, {});

  uint64_t backing_offset = 0;
  uint32_t backing_size = 0;
  if (header.backing_file) {
    if (header.backing_file->size() > kMaxBackingNameBytes) {
      return ErrnoError(EINVAL, absl::StrFormat("qcow2 header: backing file name is %u bytes "
                                                "(at most %u)", header.backing_file->size(),
                                                kMaxBackingNameBytes));
    }
    backing_offset = out.size();
    backing_size = static_cast<uint32_t>(header.backing_file->size());
    out.insert(out.end(), header.backing_file->begin(), header.backing_file->end());
  }
  if (out.size() > cluster_size) {
    return ErrnoError(ENOSPC, absl::StrFormat("qcow2 header: the header, its extensions and "
                                              "the backing file name need %u bytes, more than "
                                              "the %u-byte cluster", out.size(), cluster_size));
  }
  StoreBe64(out.data() + kOffBackingFileOffset, backing_offset);
  StoreBe32(out.data() + kOffBackingFileSize, backing_size);
  out.resize(cluster_size, 0);
  return out;
}

}  // namespace libblock::qcow2
