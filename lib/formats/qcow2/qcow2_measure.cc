// qemu-img measure for qcow2 targets (QEMU's qcow2_measure): the metadata a fully allocated
// image of the virtual size needs (header, L2 and L1 tables, refcount structures: QEMU's
// qcow2_calc_prealloc_size), plus the data clusters a copy of the input needs, plus room for
// the input's persistent bitmaps.
#include <cerrno>

#include "absl/strings/str_format.h"
#include "core/backend.h"
#include "core/measure.h"
#include "core/node.h"
#include "formats/qcow2/qcow2_create.h"
#include "util/checked_math.h"
#include "util/status.h"

namespace libblock::qcow2 {

namespace {

absl::Status Invalid(std::string_view message) { return ErrnoError(EINVAL, message); }

uint64_t PreallocSize(uint64_t virtual_size, uint64_t cs, int refcount_order, bool extended_l2) {
  const uint64_t aligned = AlignUp<uint64_t>(virtual_size, cs);
  const uint64_t l2e = extended_l2 ? 16 : 8;
  uint64_t meta = cs;  // the header
  uint64_t nl2e = AlignUp<uint64_t>(aligned / cs, cs / l2e);
  meta += nl2e * l2e;
  uint64_t nl1e = AlignUp<uint64_t>(nl2e * l2e / cs, cs / 8);
  meta += nl1e * 8;
  const int64_t clusters = static_cast<int64_t>((meta + aligned) / cs);
  const int64_t blocks = RefblocksNeeded(clusters, static_cast<int64_t>(cs), refcount_order, false);
  const int64_t table = (blocks + static_cast<int64_t>(cs / 8) - 1) / static_cast<int64_t>(cs / 8);
  meta += static_cast<uint64_t>(blocks + table) * cs;
  return meta + aligned;
}

// QEMU's qcow2_get_persistent_dirty_bitmap_size: every bitmap fully allocated, its table,
// and its directory entry.
uint64_t BitmapsSize(const std::vector<PersistentBitmap>& bitmaps, uint64_t disk_size, uint64_t cs) {
  uint64_t total = 0, dir = 0;
  for (const PersistentBitmap& b : bitmaps) {
    const uint64_t bits = (disk_size + b.granularity - 1) / b.granularity;
    const uint64_t bytes = (bits + 7) / 8;
    const uint64_t clusters = (bytes + cs - 1) / cs;
    total += clusters * cs;
    total += AlignUp<uint64_t>(clusters * 8, cs);
    dir += AlignUp<uint64_t>(24 + b.name.size(), 8);
  }
  return total + AlignUp<uint64_t>(dir, cs);
}

}  // namespace

Task<absl::StatusOr<MeasureResult>> Measure(const OptionValues& v, Backend* in) {
  // The options qcow2_measure reads, with its messages.
  const bool extended_l2 = v.GetBool("extended_l2");
  const uint64_t cs = v.GetSize("cluster_size");
  if (!IsPowerOf2(cs) || cs < 512 || cs > (2u << 20)) {
    co_return Invalid("Cluster size must be a power of two between 512 and 2048k");
  }
  if (extended_l2 && cs < 16384) {
    co_return Invalid("Extended L2 entries are only supported with cluster sizes of at least "
                      "16384 bytes");
  }
  int version = 3;
  if (std::optional<std::string> compat = v.FindString("compat")) {
    if (*compat == "0.10" || *compat == "v2") {
      version = 2;
    } else if (*compat != "1.1" && *compat != "v3") {
      co_return Invalid(absl::StrFormat("Invalid compatibility level: '%s'", *compat));
    }
  }
  const int64_t refcount_bits = v.GetInt("refcount_bits");
  if (refcount_bits <= 0 || refcount_bits > 64 || !IsPowerOf2(refcount_bits)) {
    co_return Invalid("Refcount width must be a power of two and may not exceed 64 bits");
  }
  if (version < 3 && refcount_bits != 16) {
    co_return Invalid("Different refcount widths than 16 bits require compatibility level 1.1 "
                      "or above (use compat=1.1 or greater)");
  }
  PreallocMode prealloc = PreallocMode::kOff;
  if (std::optional<std::string> p = v.FindString("preallocation")) {
    absl::StatusOr<PreallocMode> mode = ParsePreallocMode(*p);
    if (!mode.ok()) co_return Invalid(absl::StrFormat("invalid parameter value: %s", *p));
    prealloc = *mode;
  }
  const bool has_backing = v.FindString("backing_file").has_value();
  if (std::optional<std::string> enc = v.FindString("encrypt.format"); enc && *enc == "luks") {
    co_return ErrnoError(ENOTSUP, "qcow2: measuring LUKS-encrypted images is not supported by "
                                  "this build of libblock");
  }
  uint64_t virtual_size = AlignUp<uint64_t>(v.FindSize("size").value_or(0), cs);
  const uint64_t l2e = extended_l2 ? 16 : 8;
  const uint64_t l2_tables = (virtual_size / cs + cs / l2e - 1) / (cs / l2e);
  if (l2_tables * 8 > (32ull << 20)) {
    co_return Invalid("The image size is too large (try using a larger cluster size)");
  }
  uint64_t required = 0;
  if (in) {
    virtual_size = AlignUp<uint64_t>(static_cast<uint64_t>(in->size()), cs);
    if (has_backing) {
      // How much the new backing file shares with the input is unknown: all of it is copied.
      required = virtual_size;
    } else {
      absl::StatusOr<uint64_t> data = co_await MeasureDataBytes(*in, cs);
      if (!data.ok()) co_return data.status();
      required = *data;
    }
  }
  if (prealloc == PreallocMode::kFull || prealloc == PreallocMode::kFalloc) required = virtual_size;
  MeasureResult r;
  r.fully_allocated = PreallocSize(virtual_size, cs, __builtin_ctzll(static_cast<uint64_t>(refcount_bits)),
                                   extended_l2);
  r.required = r.fully_allocated - virtual_size + required;
  Node* root = in ? in->root() : nullptr;
  if (version >= 3 && root && root->impl()->SupportsPersistentBitmaps()) {
    r.bitmaps = BitmapsSize(root->impl()->PersistentBitmaps(), static_cast<uint64_t>(in->size()), cs);
  }
  co_return r;
}

}  // namespace libblock::qcow2
