// qcow2 persistent dirty bitmaps (qcow2.txt "Bitmaps"): the bitmaps extension and the bitmap
// directory. This file reads the directory (for measure and info); the bitmaps' tables and
// the extension are kept intact on disk otherwise.
//
// Extension: nb_bitmaps (4), reserved (4), bitmap_directory_size (8),
// bitmap_directory_offset (8). Directory entries, each 8-byte aligned: bitmap_table_offset
// (8), bitmap_table_size (4), flags (4: bit 0 in_use, bit 1 auto), type (1), granularity_bits
// (1), name_size (2), extra_data_size (4), extra data, the name.
#include <cerrno>

#include "absl/strings/str_format.h"
#include "core/graph.h"
#include "core/node.h"
#include "formats/qcow2/qcow2_driver.h"
#include "util/checked_math.h"
#include "util/endian.h"

namespace libblock::qcow2 {

namespace {
constexpr uint32_t kMaxBitmaps = 65535;                   // QEMU's QCOW2_MAX_BITMAPS
constexpr uint64_t kMaxBitmapDirectoryBytes = 64ull << 20;  // QCOW2_MAX_BITMAP_DIRECTORY_SIZE
constexpr uint32_t kFlagInUse = 1u << 0;
constexpr uint32_t kFlagAuto = 1u << 1;
}  // namespace

Task<void> Qcow2Node::LoadBitmapDirectory() {
  bitmaps_.clear();
  const RawExtension* ext = nullptr;
  for (const RawExtension& e : header_.other_extensions) {
    if (e.type == kExtBitmaps) ext = &e;
  }
  // Without the autoclear bit the extension is stale (written by a program that did not know
  // it): QEMU ignores it, and so do we.
  if (!ext || !(header_.autoclear_features & kAutoclearBitmaps) || header_.version < 3) co_return;
  auto warn = [this](const std::string& what) {
    node().graph().Warn(absl::StrFormat("qcow2: image '%s': the bitmap directory is not "
                                        "readable (%s); its bitmaps are left out", filename_, what));
  };
  if (ext->data.size() < 24) {
    warn("the bitmaps extension is too short");
    co_return;
  }
  const uint32_t count = LoadBe32(ext->data.data());
  const uint64_t bytes = LoadBe64(ext->data.data() + 8);
  const uint64_t offset = LoadBe64(ext->data.data() + 16);
  const uint64_t file_size = static_cast<uint64_t>(file_->node()->size());
  if (count == 0 || count > kMaxBitmaps || bytes > kMaxBitmapDirectoryBytes ||
      offset % static_cast<uint64_t>(cluster_size_) || offset > file_size ||
      bytes > file_size - offset) {
    warn(absl::StrFormat("%u bitmaps, %u bytes at offset %#x", count, bytes, offset));
    co_return;
  }
  std::vector<uint8_t> dir(static_cast<size_t>(bytes));
  absl::Status st = co_await file_->Pread(static_cast<int64_t>(offset), dir.data(),
                                          static_cast<int64_t>(bytes));
  if (!st.ok()) {
    warn(std::string(st.message()));
    co_return;
  }
  std::vector<PersistentBitmap> out;
  size_t pos = 0;
  for (uint32_t i = 0; i < count; ++i) {
    if (dir.size() - pos < 24) {
      warn(absl::StrFormat("entry %u is truncated", i));
      co_return;
    }
    const uint8_t* e = dir.data() + pos;
    const uint32_t flags = LoadBe32(e + 12);
    const uint8_t granularity_bits = e[17];
    const uint16_t name_size = LoadBe16(e + 18);
    const uint32_t extra = LoadBe32(e + 20);
    const uint64_t entry = AlignUp<uint64_t>(24 + uint64_t{extra} + name_size, 8);
    if (entry > dir.size() - pos || granularity_bits < 9 || granularity_bits > 31) {
      warn(absl::StrFormat("entry %u is invalid", i));
      co_return;
    }
    PersistentBitmap b;
    b.name.assign(reinterpret_cast<const char*>(e) + 24 + extra, name_size);
    b.granularity = uint32_t{1} << granularity_bits;
    b.in_use = flags & kFlagInUse;
    b.auto_enabled = flags & kFlagAuto;
    out.push_back(std::move(b));
    pos += static_cast<size_t>(entry);
  }
  bitmaps_ = std::move(out);
}

}  // namespace libblock::qcow2
