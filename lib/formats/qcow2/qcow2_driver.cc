// qcow2: options, open, close, flush, reopen, info, header updates and corruption marking.
// See qcow2_driver.h for the locking and the write ordering.
#include "formats/qcow2/qcow2_driver.h"

#include <sys/mman.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "core/event_loop.h"
#include "core/graph.h"
#include "core/info.h"
#include "core/node.h"
#include "core/transaction.h"
#include "formats/qcow2/qcow2_check.h"
#include "util/checked_math.h"
#include "util/endian.h"
#include "util/status.h"

namespace libblock::qcow2 {
namespace {

constexpr std::string_view kOverlapModes[] = {"none", "constant", "cached", "all"};

constexpr OptionSpec kSpecs[] = {
    {"lazy-refcounts", OptionType::kBool, "", "Postpone refcount updates"},
    {"pass-discard-request", OptionType::kBool, "",
     "Pass guest discard requests to the layer below"},
    {"pass-discard-snapshot", OptionType::kBool, "on",
     "Generate discard requests when snapshot related space is freed"},
    {"pass-discard-other", OptionType::kBool, "off",
     "Generate discard requests when other clusters are freed"},
    {"overlap-check", OptionType::kEnum, "",
     "Selects which overlap checks to perform from a range of templates (none, constant, "
     "cached, all)",
     kOverlapModes},
    {"overlap-check.template", OptionType::kEnum, "",
     "Selects which overlap checks to perform from a range of templates (none, constant, "
     "cached, all)",
     kOverlapModes},
    {"overlap-check.main-header", OptionType::kBool, "",
     "Check for unintended writes into the main qcow2 header"},
    {"overlap-check.active-l1", OptionType::kBool, "",
     "Check for unintended writes into the active L1 table"},
    {"overlap-check.active-l2", OptionType::kBool, "",
     "Check for unintended writes into an active L2 table"},
    {"overlap-check.refcount-table", OptionType::kBool, "",
     "Check for unintended writes into the refcount table"},
    {"overlap-check.refcount-block", OptionType::kBool, "",
     "Check for unintended writes into a refcount block"},
    {"overlap-check.snapshot-table", OptionType::kBool, "",
     "Check for unintended writes into the snapshot table"},
    {"overlap-check.inactive-l1", OptionType::kBool, "",
     "Check for unintended writes into an inactive L1 table"},
    {"overlap-check.inactive-l2", OptionType::kBool, "",
     "Check for unintended writes into an inactive L2 table"},
    {"overlap-check.bitmap-directory", OptionType::kBool, "",
     "Check for unintended writes into the bitmap directory"},
    {"cache-size", OptionType::kSize, "",
     "Maximum combined metadata (L2 tables and refcount blocks) cache size"},
    {"l2-cache-size", OptionType::kSize, "", "Maximum L2 table cache size"},
    {"l2-cache-entry-size", OptionType::kSize, "", "Size of each entry in the L2 cache"},
    {"refcount-cache-size", OptionType::kSize, "", "Maximum refcount block cache size"},
    {"cache-clean-interval", OptionType::kInt, "600",
     "Clean unused cache entries after this time (in seconds)"},
};

// QEMU's defaults: the L2 cache covers the whole image up to 32 MiB; the refcount cache
// holds 4 clusters; at least 2 L2 slices.
constexpr int64_t kDefaultL2CacheMax = 32 * 1024 * 1024;
constexpr int64_t kMinRefcountCacheClusters = 4;
constexpr int64_t kMinL2CacheSlots = 2;

constexpr uint32_t kOlConstant = kOlMainHeader | kOlActiveL1 | kOlRefcountTable |
                                 kOlSnapshotTable | kOlInactiveL1 | kOlBitmapDirectory;
constexpr uint32_t kOlCached = kOlConstant | kOlActiveL2 | kOlRefcountBlock;
constexpr uint32_t kOlAll = kOlCached | kOlInactiveL2;

struct OverlapOption {
  std::string_view option;
  uint32_t bit;
  std::string_view name;  // QEMU's metadata_ol_names
};
constexpr OverlapOption kOverlapOptions[] = {
    {"overlap-check.main-header", kOlMainHeader, "qcow2_header"},
    {"overlap-check.active-l1", kOlActiveL1, "active L1 table"},
    {"overlap-check.active-l2", kOlActiveL2, "active L2 table"},
    {"overlap-check.refcount-table", kOlRefcountTable, "refcount table"},
    {"overlap-check.refcount-block", kOlRefcountBlock, "refcount block"},
    {"overlap-check.snapshot-table", kOlSnapshotTable, "snapshot table"},
    {"overlap-check.inactive-l1", kOlInactiveL1, "inactive L1 table"},
    {"overlap-check.inactive-l2", kOlInactiveL2, "inactive L2 table"},
    {"overlap-check.bitmap-directory", kOlBitmapDirectory, "bitmap directory"},
};

uint32_t OverlapTemplate(std::string_view mode) {
  if (mode == "none") return 0;
  if (mode == "constant") return kOlConstant;
  if (mode == "all") return kOlAll;
  return kOlCached;
}

// Byte offsets of header fields rewritten in place.
constexpr int64_t kOffRefcountTable = 48;
constexpr int64_t kOffIncompatible = 72;

}  // namespace

constexpr OptionSchema kOptions{"qcow2", kSpecs};

std::unique_ptr<NodeDriver> Instantiate(Node& node) { return std::make_unique<Qcow2Node>(node); }

Qcow2Node::~Qcow2Node() {
  if (clean_timer_) node().loop().CancelTimer(clean_timer_);
}

void Qcow2Node::ArmCacheCleanTimer() {
  clean_timer_ = 0;
  if (cache_clean_interval_s_ <= 0) return;
  int64_t deadline = EventLoop::NowNs() + cache_clean_interval_s_ * 1000000000LL;
  clean_timer_ = node().loop().AddTimer(deadline, [this] {
    // QEMU's cache_clean_timer: clean slots unused for a whole interval are dropped (their
    // memory given back). Skipped for this round while metadata work holds the caches.
    if (meta_.TryLock()) {
      DropIdleSlots();
      meta_.Unlock();
    }
    ArmCacheCleanTimer();
  });
}

size_t Qcow2Node::CachedSlotsForTest() {
  size_t n = 0;
  for (MetadataCache* c : {l2_cache_.get(), rc_cache_.get()}) {
    if (!c) continue;
    for (Slot& s : c->slots()) n += s.valid ? 1 : 0;
  }
  return n;
}

void Qcow2Node::DropIdleSlots() {
  uint64_t now = static_cast<uint64_t>(EventLoop::NowNs());
  uint64_t limit = static_cast<uint64_t>(cache_clean_interval_s_) * 1000000000ull;
  for (MetadataCache* c : {l2_cache_.get(), rc_cache_.get()}) {
    if (!c) continue;
    for (Slot& s : c->slots()) {
      if (s.valid && !s.dirty && now - s.last_use_ns >= limit) c->Unbind(&s);
    }
  }
}

std::string Qcow2Node::DisplayName() const { return filename_; }

bool Qcow2Node::writable() const { return !node().flags().read_only; }

absl::Status Qcow2Node::ReadOptions(const OptionValues& values) {
  // lazy-refcounts: the header's bit unless given.
  lazy_refcounts_ = values.FindBool("lazy-refcounts")
                        .value_or(header_.compatible_features & kCompatLazyRefcounts);
  if (lazy_refcounts_ && header_.version < 3) {
    return ErrnoError(EINVAL, "Lazy refcounts require a qcow2 image with at least qemu 1.1 "
                              "compatibility level");
  }
  discard_request_ = values.FindBool("pass-discard-request").value_or(node().flags().unmap);
  discard_snapshot_ = values.GetBool("pass-discard-snapshot");
  discard_other_ = values.GetBool("pass-discard-other");

  std::optional<std::string> mode = values.FindString("overlap-check");
  std::optional<std::string> tmpl = values.FindString("overlap-check.template");
  if (mode && tmpl && *mode != *tmpl) {
    return ErrnoError(EINVAL, absl::StrFormat("Conflicting values for qcow2 options "
                                              "'overlap-check' ('%s') and "
                                              "'overlap-check.template' ('%s')",
                                              *mode, *tmpl));
  }
  overlap_checks_ = OverlapTemplate(mode ? *mode : tmpl.value_or("cached"));
  for (const OverlapOption& o : kOverlapOptions) {
    if (std::optional<bool> on = values.FindBool(o.option)) {
      overlap_checks_ = *on ? (overlap_checks_ | o.bit) : (overlap_checks_ & ~o.bit);
    }
  }

  int64_t cache_clean = values.GetInt("cache-clean-interval");
  if (cache_clean < 0 || cache_clean > UINT32_MAX) {
    return ErrnoError(EINVAL, "Cache clean interval too big");
  }
  cache_clean_interval_s_ = cache_clean;
  return absl::OkStatus();
}

Task<absl::Status> Qcow2Node::Open(OpenContext& ctx) {
  absl::StatusOr<Child*> file = co_await ctx.OpenChild("file", kRoleImage | kRolePrimary,
                                                       /*allow_none=*/false);
  if (!file.ok()) co_return file.status();
  file_ = *file;
  data_file_ = file_;
  filename_ = file_->node()->filename();
  int64_t file_size = file_->node()->size();

  absl::StatusOr<Header> parsed = co_await ReadHeader();
  if (!parsed.ok()) co_return parsed.status();
  header_ = std::move(*parsed);

  // Unknown incompatible features refuse the open, named from the feature table.
  if (uint64_t unknown = header_.incompatible_features & ~kIncompatKnown) {
    std::vector<std::string> names;
    for (int bit = 0; bit < 64; ++bit) {
      if (!(unknown & (uint64_t{1} << bit))) continue;
      std::string name = header_.IncompatibleFeatureName(bit);
      if (name.empty()) continue;
      names.push_back(name);
      unknown &= ~(uint64_t{1} << bit);
    }
    if (unknown) names.push_back(absl::StrFormat("Unknown incompatible feature: %x", unknown));
    co_return ErrnoError(ENOTSUP, "Unsupported qcow2 feature(s): " + absl::StrJoin(names, ", "));
  }
  if (header_.crypt_method != 0) {
    co_return ErrnoError(ENOTSUP, absl::StrFormat("qcow2: image '%s': encrypted images are not "
                                                  "supported by this build of libblock",
                                                  filename_));
  }
  corrupt_ = header_.incompatible_features & kIncompatCorrupt;
  corrupt_on_disk_ = corrupt_;
  if (corrupt_ && writable()) {
    co_return ErrnoError(EACCES, "qcow2: Image is corrupt; cannot be opened read/write");
  }
  if (corrupt_) {
    node().graph().Warn(absl::StrFormat("qcow2: image '%s' is marked corrupt: it is opened "
                                        "read-only, and read-write opens are refused until "
                                        "check -r repairs it", filename_));
  }
  dirty_on_disk_ = header_.incompatible_features & kIncompatDirty;
  if (dirty_on_disk_ && writable()) {
    // As QEMU does: refcounts left stale by lazy refcounts are repaired before anything
    // trusts them (the repair clears the dirty bit when nothing is left broken).
    absl::StatusOr<CheckResult> checked = co_await Check(*file_, header_, kFixLeaks | kFixErrors);
    if (!checked.ok()) co_return Prepend(checked.status(), "Could not repair dirty image: ");
    if (checked->corruptions > checked->corruptions_fixed || checked->check_errors) {
      co_return ErrnoError(EIO, "Could not repair dirty image");
    }
    absl::StatusOr<Header> again = co_await ReadHeader();
    if (!again.ok()) co_return again.status();
    header_ = std::move(*again);
    dirty_on_disk_ = header_.incompatible_features & kIncompatDirty;
    file_size = file_->node()->size();
  }

  cluster_bits_ = static_cast<int>(header_.cluster_bits);
  cluster_size_ = header_.cluster_size();
  entry_bytes_ = header_.extended_l2() ? 16 : 8;
  l2_entries_ = cluster_size_ / entry_bytes_;
  rb_bits_ = cluster_bits_ + 3 - static_cast<int>(header_.refcount_order);
  refcount_max_ = header_.refcount_order == 6 ? UINT64_MAX
                                              : (uint64_t{1} << header_.refcount_bits()) - 1;
  csize_shift_ = 62 - (cluster_bits_ - 8);
  csize_mask_ = (uint64_t{1} << (cluster_bits_ - 8)) - 1;
  coffset_mask_ = (uint64_t{1} << csize_shift_) - 1;
  geometry_.cluster_size = cluster_size_;
  geometry_.subcluster_size = header_.extended_l2() ? cluster_size_ / 32 : cluster_size_;
  geometry_.crypt_sector = 0;

  LB_CO_RETURN_IF_ERROR(ReadOptions(ctx.values));

  // The L1 table must cover the virtual size.
  uint64_t l2_span = static_cast<uint64_t>(cluster_size_) * static_cast<uint64_t>(l2_entries_);
  uint64_t l1_needed = (header_.size + l2_span - 1) / l2_span;
  if (header_.l1_size < l1_needed) {
    co_return ErrnoError(EINVAL, "L1 table is too small");
  }
  l1_.resize(header_.l1_size);
  if (header_.l1_size) {
    std::vector<uint8_t> raw(static_cast<size_t>(header_.l1_size) * 8);
    absl::Status st = co_await file_->Pread(static_cast<int64_t>(header_.l1_table_offset),
                                            raw.data(), static_cast<int64_t>(raw.size()));
    if (!st.ok()) co_return Prepend(st, "Could not read L1 table: ");
    for (size_t i = 0; i < l1_.size(); ++i) {
      l1_[i] = LoadBe64(raw.data() + 8 * i);
      if (uint64_t l2 = l1_[i] & kL1OffsetMask) l2_tables_.insert(l2);
    }
  }
  {
    int64_t rt_bytes = int64_t{header_.refcount_table_clusters} * cluster_size_;
    std::vector<uint8_t> raw(static_cast<size_t>(rt_bytes));
    if (rt_bytes) {
      absl::Status st = co_await file_->Pread(static_cast<int64_t>(header_.refcount_table_offset),
                                              raw.data(), rt_bytes);
      if (!st.ok()) co_return Prepend(st, "Could not read refcount table: ");
    }
    reftable_.resize(static_cast<size_t>(rt_bytes / 8));
    for (size_t i = 0; i < reftable_.size(); ++i) {
      reftable_[i] = LoadBe64(raw.data() + 8 * i) & kRefcountTableOffsetMask;
      if (reftable_[i]) refcount_blocks_.insert(reftable_[i]);
    }
  }

  // Caches (QEMU's read_cache_sizes).
  {
    int64_t entry_size = static_cast<int64_t>(
        ctx.values.FindSize("l2-cache-entry-size").value_or(static_cast<uint64_t>(cluster_size_)));
    if (entry_size < 512 || entry_size > cluster_size_ || !IsPowerOf2(entry_size)) {
      co_return ErrnoError(EINVAL, absl::StrFormat("L2 cache entry size must be a power of two "
                                                   "between %d and the cluster size (%d)",
                                                   512, cluster_size_));
    }
    std::optional<uint64_t> combined = ctx.values.FindSize("cache-size");
    std::optional<uint64_t> l2 = ctx.values.FindSize("l2-cache-size");
    std::optional<uint64_t> rc = ctx.values.FindSize("refcount-cache-size");
    uint64_t min_rc = static_cast<uint64_t>(kMinRefcountCacheClusters * cluster_size_);
    uint64_t max_l2 = AlignUp<uint64_t>(((header_.size + cluster_size_ - 1) / cluster_size_) *
                                            static_cast<uint64_t>(entry_bytes_),
                                        static_cast<uint64_t>(cluster_size_));
    uint64_t l2_size = 0, rc_size = 0;
    if (combined) {
      if (l2 && rc) {
        co_return ErrnoError(EINVAL, "cache-size, l2-cache-size and refcount-cache-size may "
                                     "not be set at the same time");
      }
      if (l2 && *l2 > *combined) {
        co_return ErrnoError(EINVAL, "l2-cache-size may not exceed cache-size");
      }
      if (rc && *rc > *combined) {
        co_return ErrnoError(EINVAL, "refcount-cache-size may not exceed cache-size");
      }
      if (l2) {
        l2_size = *l2;
        rc_size = *combined - *l2;
      } else if (rc) {
        rc_size = *rc;
        l2_size = *combined - *rc;
      } else if (*combined >= max_l2 + min_rc) {
        l2_size = max_l2;
        rc_size = *combined - l2_size;
      } else {
        rc_size = std::min(*combined, min_rc);
        l2_size = *combined - rc_size;
      }
    } else {
      l2_size = l2 ? *l2 : std::min<uint64_t>(max_l2, kDefaultL2CacheMax);
      rc_size = rc ? *rc : min_rc;
    }
    uint64_t l2_slots = std::max<uint64_t>(l2_size / static_cast<uint64_t>(entry_size),
                                           kMinL2CacheSlots);
    uint64_t rc_slots = std::max<uint64_t>(rc_size / static_cast<uint64_t>(cluster_size_),
                                           kMinRefcountCacheClusters);
    if (l2_slots > INT32_MAX) co_return ErrnoError(EINVAL, "L2 cache size too big");
    if (rc_slots > INT32_MAX) co_return ErrnoError(EINVAL, "Refcount cache size too big");
    l2_cache_ = std::make_unique<MetadataCache>(entry_size, static_cast<int64_t>(l2_slots));
    rc_cache_ = std::make_unique<MetadataCache>(cluster_size_, static_cast<int64_t>(rc_slots));
    slice_entries_ = entry_size / entry_bytes_;
  }

  // The external data file: the "data-file" child, from the options or the header's name.
  if (header_.has_data_file()) {
    if (!ctx.options.Has("data-file") && !ctx.options.HasPrefix("data-file")) {
      if (!header_.data_file) {
        co_return ErrnoError(EINVAL, "'data-file' is required for this image");
      }
      absl::StatusOr<std::string> name = ResolveBackingName(filename_, *header_.data_file);
      if (!name.ok()) co_return name.status();
      ctx.options.Set("data-file.filename", *name);
    }
    absl::StatusOr<Child*> df = co_await ctx.OpenChild("data-file", kRoleData, false);
    if (!df.ok()) co_return Prepend(df.status(), "Could not open data file: ");
    data_file_ = *df;
  } else if (ctx.options.Has("data-file") || ctx.options.HasPrefix("data-file")) {
    co_return ErrnoError(EINVAL, "'data-file' can only be set for images with an external "
                                 "data file");
  }

  ctx.SetBacking(BackingHeader{header_.backing_file, header_.backing_format});

  alloc_end_ = static_cast<uint64_t>((file_size + cluster_size_ - 1) / cluster_size_);

  // A read-write open clears the autoclear bits this driver does not maintain: bitmaps
  // (writes here do not update them, so they would go stale) and unknown ones. data_file_raw
  // stays: this driver keeps the data file raw (guest offset = host offset).
  if (writable() && (header_.autoclear_features & ~kAutoclearDataFileRaw)) {
    header_.autoclear_features &= kAutoclearDataFileRaw;
    absl::StatusOr<std::vector<uint8_t>> cluster = SerializeHeader(header_);
    if (!cluster.ok()) co_return cluster.status();
    absl::Status st = co_await file_->Pwrite(0, cluster->data(),
                                             static_cast<int64_t>(cluster->size()));
    if (!st.ok()) co_return Prepend(st, "Could not update qcow2 header: ");
    absl::Status fl = co_await file_->Flush();
    if (!fl.ok()) co_return fl;
  }

  co_await LoadSnapshotTable();
  co_await LoadBitmapDirectory();
  InitMapping(/*compressed_writes=*/!header_.has_data_file());
  caps_.truncate = true;
  opened_ = true;
  ArmCacheCleanTimer();
  co_return absl::OkStatus();
}

Task<absl::Status> Qcow2Node::ChangeBackingFile(const std::optional<std::string>& name,
                                                const std::optional<std::string>& format) {
  if (!writable()) co_return ErrnoError(EACCES, "Image is read-only");
  if (name && (header_.autoclear_features & kAutoclearDataFileRaw)) {
    co_return ErrnoError(EINVAL, "Cannot use a backing file with a raw external data file");
  }
  CoMutex::Guard guard = co_await meta_.ScopedLock();
  absl::Status st = co_await FlushLocked();
  if (!st.ok()) co_return st;
  // The whole header cluster is rewritten, as QEMU's qcow2_update_header does.
  Header h = header_;
  h.backing_file = name && !name->empty() ? name : std::nullopt;
  h.backing_format = h.backing_file ? format : std::nullopt;
  absl::StatusOr<std::vector<uint8_t>> cluster = SerializeHeader(h);
  if (!cluster.ok()) co_return cluster.status();
  st = co_await file_->Pwrite(0, cluster->data(), static_cast<int64_t>(cluster->size()));
  if (!st.ok()) co_return Prepend(st, "Could not update qcow2 header: ");
  files_need_flush_ = true;
  st = co_await FlushFiles();
  if (!st.ok()) co_return st;
  header_ = std::move(h);
  node().NoteMetadataChanged();
  co_return absl::OkStatus();
}

Task<absl::StatusOr<Header>> Qcow2Node::ReadHeader() {
  int64_t file_size = file_->node()->size();
  // The fixed header first (for cluster_bits), then the header cluster.
  std::vector<uint8_t> buf(static_cast<size_t>(std::min<int64_t>(file_size, kV3HeaderLength + 8)));
  if (!buf.empty()) {
    absl::Status st = co_await file_->Pread(0, buf.data(), static_cast<int64_t>(buf.size()));
    if (!st.ok()) co_return Prepend(st, "Could not read qcow2 header: ");
  }
  if (buf.size() >= 24) {
    uint32_t bits = LoadBe32(buf.data() + 20);
    if (bits >= static_cast<uint32_t>(kMinClusterBits) &&
        bits <= static_cast<uint32_t>(kMaxClusterBits)) {
      buf.resize(static_cast<size_t>(std::min<int64_t>(file_size, int64_t{1} << bits)));
      absl::Status st = co_await file_->Pread(0, buf.data(), static_cast<int64_t>(buf.size()));
      if (!st.ok()) co_return Prepend(st, "Could not read qcow2 header: ");
    }
  }
  co_return ParseHeader(buf, file_size, filename_);
}

Codec Qcow2Node::compression_codec() const {
  return header_.compression_type == CompressionType::kZstd ? Codec::kZstd : Codec::kDeflate;
}

bool Qcow2Node::HasZeroInit() {
  // QEMU's rule: an image whose first L1 entry is empty was not preallocated and reads as
  // zeroes; a preallocated one reads as its data storage does.
  bool preallocated = !l1_.empty() && l1_[0] != 0;
  if (!preallocated) return true;
  return libblock::HasZeroInit(*data_file_->node());
}

absl::Status Qcow2Node::GetImageInfo(ImageInfo& info) {
  info.cluster_size = static_cast<uint32_t>(cluster_size_);
  info.snapshots = SnapshotListJson();
  info.dirty = header_.incompatible_features & kIncompatDirty;
  info.backing_filename = header_.backing_file;
  info.backing_format = header_.backing_format;
  nlohmann::ordered_json data;
  if (header_.version == 2) {
    data["compat"] = "0.10";
    data["compression-type"] = header_.compression_type == CompressionType::kZstd ? "zstd" : "zlib";
    data["refcount-bits"] = header_.refcount_bits();
  } else {
    data["compat"] = "1.1";
    data["compression-type"] = header_.compression_type == CompressionType::kZstd ? "zstd" : "zlib";
    data["lazy-refcounts"] = static_cast<bool>(header_.compatible_features & kCompatLazyRefcounts);
    if (!bitmaps_.empty()) {
      // QEMU's Qcow2BitmapInfo: flags in-use, then auto.
      nlohmann::ordered_json list = nlohmann::ordered_json::array();
      for (const PersistentBitmap& b : bitmaps_) {
        nlohmann::ordered_json flags = nlohmann::ordered_json::array();
        if (b.in_use) flags.push_back("in-use");
        if (b.auto_enabled) flags.push_back("auto");
        list.push_back({{"flags", std::move(flags)}, {"name", b.name}, {"granularity", b.granularity}});
      }
      data["bitmaps"] = std::move(list);
    }
    data["refcount-bits"] = header_.refcount_bits();
    if (header_.has_data_file()) {
      if (header_.data_file) data["data-file"] = *header_.data_file;
      data["data-file-raw"] =
          static_cast<bool>(header_.autoclear_features & kAutoclearDataFileRaw);
    }
    data["corrupt"] = static_cast<bool>(header_.incompatible_features & kIncompatCorrupt);
    data["extended-l2"] = header_.extended_l2();
  }
  info.format_specific = {{"type", "qcow2"}, {"data", std::move(data)}};
  return absl::OkStatus();
}

// ---- header updates --------------------------------------------------------------------------

Task<absl::Status> Qcow2Node::WriteIncompatibleFeatures() {
  uint8_t raw[8];
  StoreBe64(raw, header_.incompatible_features);
  absl::Status st = co_await file_->Pwrite(kOffIncompatible, raw, 8);
  if (!st.ok()) co_return st;
  co_return co_await file_->Flush();
}

Task<absl::Status> Qcow2Node::EnsureDirtyBit() {
  if (!lazy_refcounts_) co_return absl::OkStatus();
  co_return co_await SetDirtyBit();
}

Task<absl::Status> Qcow2Node::SetDirtyBit() {
  if (dirty_on_disk_ || header_.version < 3) co_return absl::OkStatus();
  // Whatever was written before this is consistent; flush it before the bit goes on.
  absl::Status fl = co_await file_->Flush();
  if (!fl.ok()) co_return fl;
  header_.incompatible_features |= kIncompatDirty;
  absl::Status st = co_await WriteIncompatibleFeatures();
  if (!st.ok()) {
    header_.incompatible_features &= ~kIncompatDirty;
    co_return st;
  }
  dirty_on_disk_ = true;
  co_return absl::OkStatus();
}

Task<absl::Status> Qcow2Node::ClearDirtyBit() {
  if (!dirty_on_disk_) co_return absl::OkStatus();
  // Everything the bit covered is written and flushed by the caller (FlushLocked).
  absl::Status fl = co_await FlushFiles();
  if (!fl.ok()) co_return fl;
  header_.incompatible_features &= ~kIncompatDirty;
  absl::Status st = co_await WriteIncompatibleFeatures();
  if (!st.ok()) co_return st;
  dirty_on_disk_ = false;
  co_return absl::OkStatus();
}

absl::Status Qcow2Node::CorruptionStatus(const std::string& message) {
  return ErrnoError(EIO, absl::StrFormat("qcow2: image '%s': %s", filename_, message));
}

Task<absl::Status> Qcow2Node::SignalCorruption(std::string message) {
  // QEMU's qcow2_signal_corruption: only a writable image is marked; a read-only one reports.
  bool fatal = writable();
  if (!corrupt_) {
    if (fatal) {
      node().graph().Warn(absl::StrFormat("qcow2: Marking image as corrupt: %s; further "
                                          "corruption events will be suppressed", message));
    } else {
      node().graph().Warn(absl::StrFormat("qcow2: Image is corrupt: %s; further non-fatal "
                                          "corruption events will be suppressed", message));
    }
  }
  if (fatal && !corrupt_on_disk_) {
    header_.incompatible_features |= kIncompatCorrupt;
    absl::Status st = co_await WriteIncompatibleFeatures();
    if (st.ok()) corrupt_on_disk_ = true;  // the request fails with EIO either way
  }
  corrupt_ = true;
  co_return CorruptionStatus(message);
}

absl::Status Qcow2Node::ReportCorruption(absl::Status problem) {
  // Synchronous hook: the header bit is written by the next flush or the close.
  std::string message(problem.message());
  if (!corrupt_) {
    node().graph().Warn(absl::StrFormat("qcow2: %s: %s; further corruption events will be "
                                        "suppressed",
                                        writable() ? "Marking image as corrupt"
                                                   : "Image is corrupt",
                                        message));
    corrupt_ = true;
    if (writable()) header_.incompatible_features |= kIncompatCorrupt;
  }
  return CorruptionStatus(message);
}

// ---- caches ------------------------------------------------------------------------------------

Task<absl::StatusOr<Qcow2Node::Slot*>> Qcow2Node::GetSlot(MetadataCache& cache, uint64_t offset,
                                                          bool load) {
  if (Slot* s = cache.Lookup(offset)) co_return s;
  Slot* victim = cache.Victim();
  if (!victim) co_return ErrnoError(EBUSY, "qcow2: metadata cache exhausted");
  if (victim->dirty) {
    absl::Status st = &cache == l2_cache_.get() ? co_await WriteBackL2(victim)
                                                : co_await WriteSlot(cache, victim);
    if (!st.ok()) co_return st;
  }
  cache.Bind(victim, offset);
  if (load) {
    if (offset + static_cast<uint64_t>(cache.entry_size()) >
        static_cast<uint64_t>(file_->node()->size())) {
      cache.Unbind(victim);
      absl::Status bad = co_await SignalCorruption(absl::StrFormat(
          "%s at %#x is past the end of the image file",
          &cache == l2_cache_.get() ? "L2 table" : "refcount block", offset));
      co_return bad;
    }
    absl::Status st = co_await file_->Pread(static_cast<int64_t>(offset), victim->data,
                                            cache.entry_size());
    if (!st.ok()) {
      cache.Unbind(victim);
      co_return st;
    }
  } else {
    std::memset(victim->data, 0, static_cast<size_t>(cache.entry_size()));
  }
  cache.MarkValid(victim, static_cast<uint64_t>(EventLoop::NowNs()));
  co_return victim;
}

Task<absl::Status> Qcow2Node::WriteSlot(MetadataCache& cache, Slot* slot) {
  if (!slot->dirty) co_return absl::OkStatus();
  absl::Status dirty = co_await EnsureDirtyBit();
  if (!dirty.ok()) co_return dirty;
  uint64_t offset = *slot->offset;
  absl::Status st = co_await file_->Pwrite(static_cast<int64_t>(offset), slot->data,
                                           cache.entry_size());
  if (!st.ok()) co_return st;
  // The slot may have been re-dirtied meanwhile only under meta_, which we hold.
  slot->dirty = false;
  files_need_flush_ = true;
  co_return absl::OkStatus();
}

Task<absl::Status> Qcow2Node::WriteBackRefcounts() {
  for (Slot* s : rc_cache_->DirtySlots()) {
    absl::Status st = co_await WriteSlot(*rc_cache_, s);
    if (!st.ok()) co_return st;
  }
  co_return absl::OkStatus();
}

Task<absl::Status> Qcow2Node::FlushFiles() {
  if (!files_need_flush_ && !data_written_) co_return absl::OkStatus();
  if (data_file_ != file_ && data_written_) {
    absl::Status st = co_await data_file_->Flush();
    if (!st.ok()) co_return st;
  }
  absl::Status st = co_await file_->Flush();
  if (!st.ok()) co_return st;
  files_need_flush_ = false;
  data_written_ = false;
  co_return absl::OkStatus();
}

Task<absl::Status> Qcow2Node::WriteBackL2(Slot* only) {
  std::vector<Slot*> slots;
  if (only) {
    if (only->dirty) slots.push_back(only);
  } else {
    slots = l2_cache_->DirtySlots();
  }
  if (slots.empty()) co_return absl::OkStatus();
  // Refcounts of the clusters these entries use go first (lazy refcounts: the dirty bit
  // stands for them), then the data they point at.
  if (!lazy_refcounts_) {
    absl::Status st = co_await WriteBackRefcounts();
    if (!st.ok()) co_return st;
  }
  absl::Status fl = co_await FlushFiles();
  if (!fl.ok()) co_return fl;
  for (Slot* s : slots) {
    absl::Status st = co_await WriteSlot(*l2_cache_, s);
    if (!st.ok()) co_return st;
  }
  co_return absl::OkStatus();
}

Task<absl::Status> Qcow2Node::FlushLocked() {
  if (corrupt_ && !corrupt_on_disk_) {
    header_.incompatible_features |= kIncompatCorrupt;
    absl::Status w = co_await WriteIncompatibleFeatures();
    if (!w.ok()) co_return w;
    corrupt_on_disk_ = true;
  }
  absl::Status st = co_await WriteBackRefcounts();
  if (!st.ok()) co_return st;
  st = co_await WriteBackL2(nullptr);
  if (!st.ok()) co_return st;
  if (!pending_frees_.empty()) {
    // The L2 entries that dropped these clusters must be on disk before the refcounts say
    // the clusters are free.
    st = co_await FlushFiles();
    if (!st.ok()) co_return st;
    st = co_await ApplyPendingFrees();
    if (!st.ok()) co_return st;
    st = co_await WriteBackRefcounts();
    if (!st.ok()) co_return st;
  }
  co_return absl::OkStatus();
}

Task<absl::Status> Qcow2Node::Flush() {
  if (!writable() || !l2_cache_) co_return absl::OkStatus();
  CoMutex::Guard guard = co_await meta_.ScopedLock();
  co_return co_await FlushLocked();
}

Task<absl::Status> Qcow2Node::Close() {
  if (!opened_ || !writable()) co_return absl::OkStatus();
  CoMutex::Guard guard = co_await meta_.ScopedLock();
  absl::Status st = co_await FlushLocked();
  if (!st.ok()) co_return st;
  co_return co_await ClearDirtyBit();
}

Task<absl::Status> Qcow2Node::PrepareReopen(const ReopenState& state, Transaction& tran) {
  bool to_ro = !state.was_read_only && state.flags.read_only;
  bool to_rw = state.was_read_only && !state.flags.read_only;
  if (to_ro) {
    // Everything cached is written back and the dirty bit cleared while we may still write.
    CoMutex::Guard guard = co_await meta_.ScopedLock();
    absl::Status st = co_await FlushLocked();
    if (!st.ok()) co_return st;
    st = co_await ClearDirtyBit();
    if (!st.ok()) co_return st;
  }
  if (to_rw) {
    if (corrupt_) {
      co_return ErrnoError(EACCES, "qcow2: Image is corrupt; cannot be opened read/write");
    }
    if (dirty_on_disk_) {
      // The repair needs the file writable, which it becomes only at commit.
      co_return ErrnoError(ENOTSUP, absl::StrFormat(
          "qcow2: image '%s' was not closed cleanly (dirty bit set with lazy refcounts): "
          "reopen it read-write after a read-write open has repaired it", filename_));
    }
    if (header_.autoclear_features & ~kAutoclearDataFileRaw) {
      // Cleared once the node is read-write (the file edge gets write permission at commit).
      co_return ErrnoError(ENOTSUP, absl::StrFormat(
          "qcow2: image '%s' has autoclear features (%#x) that a read-write reopen would have "
          "to clear; open it read-write instead", filename_, header_.autoclear_features));
    }
  }
  (void)tran;
  co_return absl::OkStatus();
}

}  // namespace libblock::qcow2
