// qcow2 creation (docs/interop/qcow2.txt; QEMU 7.2's qcow2_co_create by behaviour).
//
// PlanImage replays, in memory, the allocations QEMU makes while it creates an image: the
// header, a one-cluster refcount table and its first refcount block at clusters 0..2; the L1
// table that `truncate` then allocates (refcount blocks appear as the clusters need them,
// with QEMU's retry-after-new-refblock rule, so they land where QEMU puts them); for
// preallocation=metadata one L2 table and a run of data clusters per L2 range; for
// falloc/full the refcount area QEMU's truncate builds (new refcount blocks and table after
// the existing clusters, the old table freed and reused), the data area, then the L2 tables.
// The result is the same bytes, file length and allocated extents as qemu-img's, which the
// interop tests compare.
//
// Nothing touches the disk until ParseCreateParams and PlanImage succeeded.
#include "formats/qcow2/qcow2_create.h"

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <map>

#include "absl/strings/str_format.h"
#include "core/backend.h"
#include "core/graph.h"
#include "core/node.h"
#include "core/registry.h"
#include "util/checked_math.h"
#include "util/endian.h"
#include "util/status.h"

namespace libblock::qcow2 {

// Help texts, defaults and order as QEMU 7.2's qcow2 creation options (the order is what
// qemu-img's "Formatting ..." line follows; -o help sorts by name). The defaults are those
// QEMU prints in that line; the other defaults are applied in ParseCreateParams.
constexpr OptionSpec kCreateSpecs[] = {
    {"encryption", OptionType::kBool, "",
     "Encrypt the image with format 'aes'. (Deprecated in favor of encrypt.format=aes)"},
    {"encrypt.format", OptionType::kString, "", "Encrypt the image, format choices: 'aes', 'luks'"},
    {"encrypt.key-secret", OptionType::kString, "", "ID of secret providing qcow AES key or LUKS passphrase"},
    {"encrypt.cipher-alg", OptionType::kString, "", "Name of encryption cipher algorithm"},
    {"encrypt.cipher-mode", OptionType::kString, "", "Name of encryption cipher mode"},
    {"encrypt.ivgen-alg", OptionType::kString, "", "Name of IV generator algorithm"},
    {"encrypt.ivgen-hash-alg", OptionType::kString, "", "Name of IV generator hash algorithm"},
    {"encrypt.hash-alg", OptionType::kString, "", "Name of encryption hash algorithm"},
    {"encrypt.iter-time", OptionType::kInt, "", "Time to spend in PBKDF in milliseconds"},
    {"cluster_size", OptionType::kSize, "65536", "qcow2 cluster size"},
    {"extended_l2", OptionType::kBool, "off", "Extended L2 tables"},
    {"preallocation", OptionType::kString, "",
     "Preallocation mode (allowed values: off, metadata, falloc, full)"},
    {"compression_type", OptionType::kString, "zlib",
     "Compression method used for image cluster compression"},
    {"size", OptionType::kSize, "", "Virtual disk size"},
    {"compat", OptionType::kString, "", "Compatibility level (v2 [0.10] or v3 [1.1])"},
    {"backing_file", OptionType::kString, "", "File name of a base image"},
    {"backing_fmt", OptionType::kString, "", "Image format of the base image"},
    {"data_file", OptionType::kString, "", "File name of an external data file"},
    {"data_file_raw", OptionType::kBool, "",
     "The external data file must stay valid as a raw image"},
    {"lazy_refcounts", OptionType::kBool, "off", "Postpone refcount updates"},
    {"refcount_bits", OptionType::kInt, "16", "Width of a reference count entry in bits"},
};
const OptionSchema kCreateSchema{"qcow2", kCreateSpecs};

namespace {

constexpr uint64_t kMaxL1Entries = (32ull << 20) / 8;       // QEMU's QCOW_MAX_L1_SIZE
constexpr uint64_t kMaxRefcountTableBytes = 8ull << 20;      // QCOW_MAX_REFTABLE_SIZE
// BDRV_REQUEST_MAX_BYTES: one allocation never covers more.
constexpr int64_t kMaxRequestBytes = (INT_MAX >> 9) << 9;

absl::Status Invalid(std::string_view message) { return ErrnoError(EINVAL, message); }

// Sets of clusters, as sorted disjoint [start, end) runs: the clusters with refcount 1 (a new
// image has no other counts). Compact for preallocated images of millions of clusters.
class ClusterSet {
 public:
  bool Contains(int64_t c) const {
    auto it = runs_.upper_bound(c);
    if (it == runs_.begin()) return false;
    --it;
    return c < it->second;
  }
  // The first cluster >= c that is not in the set.
  int64_t FirstFreeFrom(int64_t c) const {
    auto it = runs_.upper_bound(c);
    if (it != runs_.begin()) {
      auto prev = std::prev(it);
      if (c < prev->second) return prev->second;  // runs never touch, so that one is free
    }
    return c;
  }
  // The number of clusters from c on (at most n) that are free.
  int64_t FreeRunFrom(int64_t c, int64_t n) const {
    if (Contains(c)) return 0;
    auto it = runs_.upper_bound(c);
    if (it == runs_.end()) return n;
    return std::min(n, it->first - c);
  }
  void Add(int64_t start, int64_t end) {
    if (start >= end) return;
    auto it = runs_.upper_bound(start);
    if (it != runs_.begin()) {
      auto prev = std::prev(it);
      if (prev->second >= start) {
        start = prev->first;
        end = std::max(end, prev->second);
        it = runs_.erase(prev);
      }
    }
    while (it != runs_.end() && it->first <= end) {
      end = std::max(end, it->second);
      it = runs_.erase(it);
    }
    runs_[start] = end;
  }
  void Remove(int64_t start, int64_t end) {
    if (start >= end) return;
    auto it = runs_.upper_bound(start);
    if (it != runs_.begin()) --it;
    while (it != runs_.end() && it->first < end) {
      int64_t s = it->first, e = it->second;
      if (e <= start) {
        ++it;
        continue;
      }
      it = runs_.erase(it);
      if (s < start) runs_[s] = start;
      if (e > end) {
        runs_[end] = e;
        break;
      }
    }
  }
  const std::map<int64_t, int64_t>& runs() const { return runs_; }

 private:
  std::map<int64_t, int64_t> runs_;
};

// Allocation returned "a refcount block was hooked up, start over" (QEMU's -EAGAIN).
struct Again {};

// The image under construction, with QEMU's allocator.
class Builder {
 public:
  explicit Builder(const CreateParams& p)
      : p_(p),
        cs_(int64_t{1} << p.cluster_bits),
        refblock_bits_(p.cluster_bits + 3 - p.refcount_order),
        l2_entry_bytes_(p.extended_l2 ? 16 : 8),
        l2_entries_(cs_ / l2_entry_bytes_) {}

  absl::StatusOr<ImagePlan> Build();

 private:
  // Where each cluster's final content comes from.
  enum class Kind { kHeader, kRefTable, kOldRefTable, kRefBlock, kL1, kL2 };
  struct Owner {
    Kind kind;
    int64_t index = 0;  // refblock: reftable index; L2: L1 index; reftable: cluster within
    std::vector<uint8_t> snapshot;  // kOldRefTable: the bytes it was left with
  };

  int64_t RefblockEntries() const { return int64_t{1} << refblock_bits_; }
  bool HasRefblockFor(int64_t cluster) const {
    uint64_t i = static_cast<uint64_t>(cluster) >> refblock_bits_;
    return i < reftable_.size() && reftable_[i] != 0;
  }
  int64_t AllocNoref(int64_t n);
  absl::Status UpdateRefcount(int64_t start, int64_t n, bool increase, bool* again);
  absl::Status AllocRefcountBlock(int64_t cluster, bool* again);
  absl::StatusOr<int64_t> AllocClusters(int64_t n);
  absl::StatusOr<int64_t> AllocClustersAt(int64_t start, int64_t n);
  void FreeClusters(int64_t start, int64_t n);
  absl::StatusOr<int64_t> RefcountArea(int64_t start_cluster, int64_t additional, bool exact,
                                       std::optional<std::pair<int64_t, int64_t>> new_block);
  absl::StatusOr<int64_t> EnsureL2(int64_t l1_index);
  absl::Status PreallocateMetadata();
  absl::Status PreallocateArea();
  void SetL2(int64_t guest_cluster, int64_t host_offset);
  std::vector<uint8_t> RefblockBytes(int64_t table_index) const;
  std::vector<uint8_t> ReftableBytes() const;
  void Own(int64_t cluster, Owner owner) { owners_[cluster] = std::move(owner); }
  void NoteFileEnd(int64_t end) { file_end_ = std::max(file_end_, end); }

  const CreateParams& p_;
  const int64_t cs_;
  const int refblock_bits_;
  const int64_t l2_entry_bytes_;
  const int64_t l2_entries_;

  ClusterSet used_;
  int64_t free_cluster_index_ = 0;
  std::vector<uint64_t> reftable_;  // entries (cluster-sized multiples)
  int64_t reftable_cluster_ = 1;
  int64_t reftable_clusters_ = 1;
  uint64_t l1_size_ = 0;
  int64_t l1_cluster_ = 0;  // 0: no L1
  int64_t l1_written_ = 0;  // bytes of the L1 that were written
  std::vector<int64_t> l2_cluster_;  // per L1 entry, 0: none
  std::map<int64_t, std::vector<uint64_t>> l2_;  // L1 index -> L2 entries (words)
  std::map<int64_t, Owner> owners_;
  int64_t file_end_ = 0;
  std::optional<int64_t> grow_to_;
  int64_t grow_from_ = 0;  // the file's length when it grows (falloc/full)
};

int64_t Builder::AllocNoref(int64_t n) {
  // QEMU's alloc_clusters_noref: the first run of n free clusters from the free index on.
  int64_t c = free_cluster_index_;
  for (;;) {
    c = used_.FirstFreeFrom(c);
    int64_t run = used_.FreeRunFrom(c, n);
    if (run == n) break;
    c += run;
  }
  free_cluster_index_ = c + n;
  return c;
}

absl::Status Builder::UpdateRefcount(int64_t start, int64_t n, bool increase, bool* again) {
  for (int64_t c = start; c < start + n; ++c) {
    if (!HasRefblockFor(c)) {
      bool inner_again = false;
      absl::Status st = AllocRefcountBlock(c, &inner_again);
      if (!st.ok() || inner_again) {
        // QEMU undoes what this call did so far, then the caller starts over.
        if (increase) {
          used_.Remove(start, c);
          if (c > start) free_cluster_index_ = std::min(free_cluster_index_, start);
        }
        *again = inner_again;
        return st;
      }
    }
    if (increase) {
      used_.Add(c, c + 1);
    } else {
      used_.Remove(c, c + 1);
      free_cluster_index_ = std::min(free_cluster_index_, c);
    }
  }
  return absl::OkStatus();
}

absl::Status Builder::AllocRefcountBlock(int64_t cluster, bool* again) {
  const uint64_t index = static_cast<uint64_t>(cluster) >> refblock_bits_;
  const int64_t new_block = AllocNoref(1);
  if ((static_cast<uint64_t>(new_block) >> refblock_bits_) == index) {
    used_.Add(new_block, new_block + 1);  // it describes itself
  } else {
    bool inner_again = false;
    LB_RETURN_IF_ERROR(UpdateRefcount(new_block, 1, true, &inner_again));
    if (inner_again) {
      *again = true;
      return absl::OkStatus();
    }
  }
  Own(new_block, Owner{Kind::kRefBlock, static_cast<int64_t>(index), {}});
  NoteFileEnd((new_block + 1) * cs_);
  if (index < reftable_.size()) {
    reftable_[index] = static_cast<uint64_t>(new_block * cs_);
    *again = true;
    return absl::OkStatus();
  }
  // The refcount table is too small: a new refcount area (self-describing blocks and a
  // bigger table) goes at the next refcount-block boundary past both the cluster that needed
  // a block and the block just allocated, and hooks the new block up there. (QEMU 7.2 puts
  // it there in the cases the interop test compares.)
  const int64_t past = std::max(cluster, new_block + 1);
  const uint64_t blocks_used = (static_cast<uint64_t>(past) + RefblockEntries() - 1) >> refblock_bits_;
  if (blocks_used > kMaxRefcountTableBytes / 8) {
    return ErrnoError(EFBIG, "refcount table too large");
  }
  const int64_t meta_cluster = static_cast<int64_t>(blocks_used << refblock_bits_);
  LB_ASSIGN_OR_RETURN(int64_t end, RefcountArea(meta_cluster, 0, false,
                                                std::make_pair(static_cast<int64_t>(index),
                                                               new_block)));
  (void)end;
  *again = true;
  return absl::OkStatus();
}

absl::StatusOr<int64_t> Builder::AllocClusters(int64_t n) {
  for (;;) {
    int64_t c = AllocNoref(n);
    bool again = false;
    LB_RETURN_IF_ERROR(UpdateRefcount(c, n, true, &again));
    if (!again) return c;
  }
}

absl::StatusOr<int64_t> Builder::AllocClustersAt(int64_t start, int64_t n) {
  for (;;) {
    int64_t free = used_.FreeRunFrom(start, n);
    bool again = false;
    LB_RETURN_IF_ERROR(UpdateRefcount(start, free, true, &again));
    if (!again) return free;
  }
}

void Builder::FreeClusters(int64_t start, int64_t n) {
  used_.Remove(start, start + n);
  free_cluster_index_ = std::min(free_cluster_index_, start);
}

absl::StatusOr<int64_t> Builder::RefcountArea(int64_t start_cluster, int64_t additional,
                                              bool exact,
                                              std::optional<std::pair<int64_t, int64_t>> new_block) {
  const int64_t total_blocks =
      RefblocksNeeded(start_cluster + additional, cs_, p_.refcount_order, !exact);
  if (static_cast<uint64_t>(total_blocks) > kMaxRefcountTableBytes) {
    return ErrnoError(EFBIG, "refcount table too large");
  }
  const int64_t area_index = start_cluster >> refblock_bits_;
  int64_t table_size = exact ? total_blocks : total_blocks + (total_blocks + 1) / 2;
  const int64_t per_cluster = cs_ / 8;
  table_size = (table_size + per_cluster - 1) / per_cluster * per_cluster;
  const int64_t table_clusters = table_size * 8 / cs_;
  if (static_cast<uint64_t>(table_size) * 8 > kMaxRefcountTableBytes) {
    return ErrnoError(EFBIG, "refcount table too large");
  }
  std::vector<uint64_t> table(static_cast<size_t>(table_size), 0);
  std::copy_n(reftable_.begin(), std::min(reftable_.size(), table.size()), table.begin());
  if (new_block) table[static_cast<size_t>(new_block->first)] = static_cast<uint64_t>(new_block->second * cs_);
  int64_t additional_blocks = 0;
  for (int64_t i = area_index; i < total_blocks; ++i) additional_blocks += table[i] == 0;
  const int64_t table_cluster = start_cluster + additional_blocks;
  const int64_t end_cluster = table_cluster + table_clusters;
  int64_t block_cluster = start_cluster;
  for (int64_t i = area_index; i < total_blocks; ++i) {
    if (!table[i]) {
      table[i] = static_cast<uint64_t>(block_cluster * cs_);
      Own(block_cluster, Owner{Kind::kRefBlock, i, {}});
      ++block_cluster;
    }
  }
  // The new structures' own refcounts.
  used_.Add(start_cluster, end_cluster);
  // Switch to the new table; the old one is freed (its clusters keep their bytes).
  std::vector<uint8_t> old_bytes = ReftableBytes();
  const int64_t old_cluster = reftable_cluster_, old_clusters = reftable_clusters_;
  reftable_ = std::move(table);
  reftable_cluster_ = table_cluster;
  reftable_clusters_ = table_clusters;
  for (int64_t i = 0; i < table_clusters; ++i) Own(table_cluster + i, Owner{Kind::kRefTable, i, {}});
  for (int64_t i = 0; i < old_clusters; ++i) {
    Owner o{Kind::kOldRefTable, 0, {}};
    o.snapshot.assign(old_bytes.begin() + i * cs_, old_bytes.begin() + (i + 1) * cs_);
    Own(old_cluster + i, std::move(o));
  }
  NoteFileEnd(end_cluster * cs_);
  FreeClusters(old_cluster, old_clusters);
  return end_cluster;
}

absl::StatusOr<int64_t> Builder::EnsureL2(int64_t l1_index) {
  if (l2_cluster_[l1_index]) return l2_cluster_[l1_index];
  LB_ASSIGN_OR_RETURN(int64_t c, AllocClusters(1));
  l2_cluster_[l1_index] = c;
  l2_[l1_index].assign(static_cast<size_t>(cs_ / 8), 0);
  Own(c, Owner{Kind::kL2, l1_index, {}});
  NoteFileEnd((c + 1) * cs_);
  return c;
}

void Builder::SetL2(int64_t guest_cluster, int64_t host_offset) {
  const int64_t l1_index = guest_cluster / l2_entries_;
  const int64_t l2_index = guest_cluster % l2_entries_;
  // Standard entries: the host offset with COPIED (refcount 1). Extended entries add a
  // subcluster bitmap, which preallocation leaves 0 (nothing written yet), as QEMU does.
  l2_[l1_index][static_cast<size_t>(l2_index * (l2_entry_bytes_ / 8))] =
      static_cast<uint64_t>(host_offset) | kOflagCopied;
}

// preallocation=metadata (and falloc/full with a data file): QEMU's preallocate_co, one
// qcow2_alloc_host_offset after another, each a chain of L2-range runs that stays contiguous
// on the host.
absl::Status Builder::PreallocateMetadata() {
  const int64_t size = static_cast<int64_t>(p_.size);
  const int64_t max_chunk = AlignDown<int64_t>(INT_MAX, cs_);
  int64_t offset = 0;
  int64_t last_end = 0;
  while (offset < size) {
    int64_t bytes = std::min(size - offset, max_chunk);
    int64_t start = offset, remaining = bytes;
    std::optional<int64_t> host;  // the next host offset this call continues at
    while (remaining > 0) {
      const int64_t guest_cluster = start / cs_;
      const int64_t l1_index = guest_cluster / l2_entries_;
      LB_RETURN_IF_ERROR(EnsureL2(l1_index).status());
      int64_t n = std::min<int64_t>((remaining + cs_ - 1) / cs_, l2_entries_ - guest_cluster % l2_entries_);
      n = std::min<int64_t>(n, kMaxRequestBytes >> p_.cluster_bits);
      int64_t at = 0;
      if (p_.data_file) {
        // Data lives in the data file at its guest offset; nothing is refcounted.
        at = start;
      } else if (!host) {
        LB_ASSIGN_OR_RETURN(int64_t c, AllocClusters(n));
        at = c * cs_;
      } else {
        LB_ASSIGN_OR_RETURN(int64_t got, AllocClustersAt(*host / cs_, n));
        if (got == 0) break;
        n = got;
        at = *host;
      }
      for (int64_t i = 0; i < n; ++i) SetL2(guest_cluster + i, at + i * cs_);
      const int64_t cur = std::min(remaining, n * cs_);
      start += cur;
      remaining -= cur;
      host = at + cur;
      last_end = at + cur;
    }
    offset += bytes - remaining;
  }
  // The file is extended to the end of the last data cluster (QEMU: "it is expected that
  // the image file is large enough to contain all of the allocated clusters").
  if (!p_.data_file && last_end > file_end_) grow_to_ = last_end;
  return absl::OkStatus();
}

// falloc/full without a data file: QEMU's truncate builds refcount structures for
// everything first, allocates the data area in one run after them, grows the file over it
// with the preallocation mode, then links the L2 entries (allocating the L2 tables).
absl::Status Builder::PreallocateArea() {
  const int64_t data_clusters = (static_cast<int64_t>(p_.size) + cs_ - 1) / cs_;
  const int64_t l2_tables = (data_clusters + l2_entries_ - 1) / l2_entries_ + 1;
  const int64_t old_file_clusters = (file_end_ + cs_ - 1) / cs_;
  LB_ASSIGN_OR_RETURN(int64_t start, RefcountArea(old_file_clusters, data_clusters + l2_tables,
                                                  true, std::nullopt));
  LB_ASSIGN_OR_RETURN(int64_t got, AllocClustersAt(start, data_clusters));
  if (got != data_clusters) return ErrnoError(EIO, "qcow2: preallocated area is not free");
  grow_from_ = start * cs_;
  grow_to_ = (start + data_clusters) * cs_;
  NoteFileEnd(*grow_to_);
  int64_t guest_cluster = 0, host_cluster = start;
  int64_t left = data_clusters;
  while (left > 0) {
    const int64_t n = std::min(left, l2_entries_ - guest_cluster % l2_entries_);
    LB_RETURN_IF_ERROR(EnsureL2(guest_cluster / l2_entries_).status());
    for (int64_t i = 0; i < n; ++i) SetL2(guest_cluster + i, (host_cluster + i) * cs_);
    guest_cluster += n;
    host_cluster += n;
    left -= n;
  }
  return absl::OkStatus();
}

std::vector<uint8_t> Builder::RefblockBytes(int64_t table_index) const {
  std::vector<uint8_t> out(static_cast<size_t>(cs_), 0);
  const int64_t first = table_index << refblock_bits_;
  const int64_t last = first + RefblockEntries();
  auto it = used_.runs().upper_bound(first);
  if (it != used_.runs().begin()) --it;
  for (; it != used_.runs().end() && it->first < last; ++it) {
    for (int64_t c = std::max(it->first, first); c < std::min(it->second, last); ++c) {
      const int64_t j = c - first;
      switch (p_.refcount_order) {
        case 0: out[j / 8] |= static_cast<uint8_t>(1u << (j % 8)); break;
        case 1: out[j / 4] |= static_cast<uint8_t>(1u << (2 * (j % 4))); break;
        case 2: out[j / 2] |= static_cast<uint8_t>(1u << (4 * (j % 2))); break;
        case 3: out[j] = 1; break;
        case 4: StoreBe16(out.data() + 2 * j, 1); break;
        case 5: StoreBe32(out.data() + 4 * j, 1); break;
        default: StoreBe64(out.data() + 8 * j, 1); break;
      }
    }
  }
  return out;
}

std::vector<uint8_t> Builder::ReftableBytes() const {
  std::vector<uint8_t> out(static_cast<size_t>(reftable_clusters_ * cs_), 0);
  for (size_t i = 0; i < reftable_.size() && i * 8 < out.size(); ++i) StoreBe64(out.data() + 8 * i, reftable_[i]);
  return out;
}

absl::StatusOr<ImagePlan> Builder::Build() {
  ImagePlan plan;
  Header& h = plan.header;
  h.version = static_cast<uint32_t>(p_.version);
  h.cluster_bits = static_cast<uint32_t>(p_.cluster_bits);
  h.size = p_.size;
  h.refcount_order = static_cast<uint32_t>(p_.refcount_order);
  h.compression_type = p_.compression_type;
  if (p_.version >= 3) {
    if (p_.data_file) h.incompatible_features |= kIncompatDataFile;
    if (p_.compression_type != CompressionType::kZlib) h.incompatible_features |= kIncompatCompression;
    if (p_.extended_l2) h.incompatible_features |= kIncompatExtendedL2;
    if (p_.lazy_refcounts) h.compatible_features |= kCompatLazyRefcounts;
    if (p_.data_file_raw) h.autoclear_features |= kAutoclearDataFileRaw;
    h.header_length = 112;
  } else {
    h.header_length = kV2HeaderLength;
  }
  h.backing_file = p_.backing_file;
  h.backing_format = p_.backing_format;
  h.data_file = p_.data_file;

  // Clusters 0..2: header, refcount table, refcount block 0.
  reftable_.assign(static_cast<size_t>(cs_ / 8), 0);
  reftable_[0] = static_cast<uint64_t>(2 * cs_);
  used_.Add(0, 3);
  free_cluster_index_ = 0;
  Own(0, Owner{Kind::kHeader, 0, {}});
  Own(1, Owner{Kind::kRefTable, 0, {}});
  Own(2, Owner{Kind::kRefBlock, 0, {}});
  NoteFileEnd(3 * cs_);

  // The L1 table truncate allocates: one entry per L2 table's worth of guest space.
  const int l2_bits = p_.cluster_bits - (p_.extended_l2 ? 4 : 3);
  const int l1_shift = p_.cluster_bits + l2_bits;
  l1_size_ = (p_.size + (uint64_t{1} << l1_shift) - 1) >> l1_shift;
  if (l1_size_ > kMaxL1Entries) {
    return Invalid("The image size is too large for file format 'qcow2' (try using a larger "
                   "cluster size)");
  }
  if (l1_size_ > 0) {
    const int64_t l1_bytes = static_cast<int64_t>(l1_size_ * 8);
    LB_ASSIGN_OR_RETURN(l1_cluster_, AllocClusters((l1_bytes + cs_ - 1) / cs_));
    for (int64_t i = 0; i * cs_ < l1_bytes; ++i) Own(l1_cluster_ + i, Owner{Kind::kL1, i, {}});
    l1_written_ = l1_bytes;
    NoteFileEnd(l1_cluster_ * cs_ + l1_bytes);
    l2_cluster_.assign(l1_size_, 0);
  }

  if (l1_size_ > 0 && p_.preallocation != PreallocMode::kOff) {
    if (p_.preallocation == PreallocMode::kMetadata || p_.data_file) {
      LB_RETURN_IF_ERROR(PreallocateMetadata());
    } else {
      LB_RETURN_IF_ERROR(PreallocateArea());
    }
    // L1 entries are written a 512-byte sector at a time.
    l1_written_ = AlignUp<int64_t>(l1_written_, 512);
    NoteFileEnd(l1_cluster_ * cs_ + l1_written_);
  }

  h.l1_size = static_cast<uint32_t>(l1_size_);
  h.l1_table_offset = static_cast<uint64_t>(l1_cluster_ * cs_);
  h.refcount_table_offset = static_cast<uint64_t>(reftable_cluster_ * cs_);
  h.refcount_table_clusters = static_cast<uint32_t>(reftable_clusters_);
  LB_ASSIGN_OR_RETURN(std::vector<uint8_t> header_bytes, SerializeHeader(h));

  std::vector<uint8_t> l1(static_cast<size_t>(AlignUp<int64_t>(l1_written_, cs_)), 0);
  for (size_t i = 0; i < l2_cluster_.size(); ++i) {
    if (l2_cluster_[i]) StoreBe64(l1.data() + 8 * i, static_cast<uint64_t>(l2_cluster_[i] * cs_) | kOflagCopied);
  }
  const std::vector<uint8_t> reftable = ReftableBytes();

  // Each written cluster with its final bytes; falloc/full's data area comes between the
  // clusters below it and the L2 tables after it.
  for (const auto& [cluster, owner] : owners_) {
    PlannedWrite w;
    w.offset = cluster * cs_;
    switch (owner.kind) {
      case Kind::kHeader: w.data = header_bytes; break;
      case Kind::kRefTable:
        w.data.assign(reftable.begin() + owner.index * cs_, reftable.begin() + (owner.index + 1) * cs_);
        break;
      case Kind::kOldRefTable: w.data = owner.snapshot; break;
      case Kind::kRefBlock: w.data = RefblockBytes(owner.index); break;
      case Kind::kL1: {
        const int64_t from = owner.index * cs_;
        const int64_t len = std::min(cs_, l1_written_ - from);
        w.data.assign(l1.begin() + from, l1.begin() + from + len);
        break;
      }
      case Kind::kL2: {
        const std::vector<uint64_t>& e = l2_.at(owner.index);
        w.data.assign(static_cast<size_t>(cs_), 0);
        for (size_t i = 0; i < e.size(); ++i) StoreBe64(w.data.data() + 8 * i, e[i]);
        break;
      }
    }
    if (grow_to_ && p_.preallocation != PreallocMode::kMetadata && w.offset >= *grow_to_) {
      plan.late_writes.push_back(std::move(w));
    } else {
      plan.writes.push_back(std::move(w));
    }
  }
  if (grow_to_) {
    plan.grow_to = *grow_to_;
    plan.grow_mode = p_.preallocation == PreallocMode::kMetadata ? PreallocMode::kOff
                                                                 : p_.preallocation;
  }
  (void)grow_from_;
  return plan;
}

absl::StatusOr<CompressionType> ParseCompressionType(std::string_view text) {
  if (text == "zlib") return CompressionType::kZlib;
  if (text == "zstd") return CompressionType::kZstd;
  return Invalid(absl::StrFormat("Parameter 'compression-type' does not accept value '%s'", text));
}

}  // namespace

int64_t RefblocksNeeded(int64_t clusters, int64_t cs, int refcount_order, bool generous) {
  const int64_t per_table_cluster = cs / 8;
  const int64_t per_block = cs * 8 / (int64_t{1} << refcount_order);
  int64_t table = 0, blocks = 0, n = 0, last = 0;
  do {
    last = n;
    blocks = (clusters + table + blocks + per_block - 1) / per_block;
    table = (blocks + per_table_cluster - 1) / per_table_cluster;
    n = clusters + blocks + table;
    if (n == last && generous) {
      clusters += (table + 1) / 2;
      n = 0;
      generous = false;
    }
  } while (n != last);
  return blocks;
}

absl::StatusOr<CreateParams> ParseCreateParams(const OptionValues& v) {
  CreateParams p;
  // Encryption (LUKS, legacy AES) comes with the crypto work; until then it is refused.
  for (const OptionSpec& s : kCreateSpecs) {
    if (s.name.substr(0, 8) == "encrypt." && v.IsSet(s.name)) {
      return ErrnoError(ENOTSUP, absl::StrFormat("qcow2: encrypted images are not supported by "
                                                 "this build of libblock ('%s')", s.name));
    }
  }
  if (v.FindBool("encryption").value_or(false)) {
    return ErrnoError(ENOTSUP, "qcow2: encrypted images are not supported by this build of "
                               "libblock ('encryption')");
  }
  std::optional<uint64_t> size = v.FindSize("size");
  if (!size) return Invalid("Parameter 'size' is required");
  if (*size > static_cast<uint64_t>(kMaxLength)) {
    return ErrnoError(EFBIG, "The image size is too large for file format 'qcow2' (try using a "
                             "larger cluster size)");
  }
  p.size = AlignUp<uint64_t>(*size, kSectorSize);

  if (std::optional<std::string> compat = v.FindString("compat")) {
    if (*compat == "0.10" || *compat == "v2") {
      p.version = 2;
    } else if (*compat == "1.1" || *compat == "v3") {
      p.version = 3;
    } else {
      return Invalid(absl::StrFormat("Parameter 'version' does not accept value '%s'", *compat));
    }
  }
  p.backing_file = v.FindString("backing_file");
  p.backing_format = v.FindString("backing_fmt");
  if (p.backing_format && !p.backing_file) {
    return Invalid("Backing format cannot be used without backing file");
  }
  const uint64_t cluster_size = v.GetSize("cluster_size");
  if (!IsPowerOf2(cluster_size) || cluster_size < 512 || cluster_size > (2u << 20)) {
    return Invalid("Cluster size must be a power of two between 512 and 2048k");
  }
  p.cluster_bits = __builtin_ctzll(cluster_size);
  if (std::optional<std::string> prealloc = v.FindString("preallocation")) {
    absl::StatusOr<PreallocMode> mode = ParsePreallocMode(*prealloc);
    if (!mode.ok()) {
      return Invalid(absl::StrFormat("Parameter 'preallocation' does not accept value '%s'", *prealloc));
    }
    p.preallocation = *mode;
  }
  p.lazy_refcounts = v.GetBool("lazy_refcounts");
  if (p.version < 3 && p.lazy_refcounts) {
    return Invalid("Lazy refcounts only supported with compatibility level 1.1 and above (use "
                   "version=v3 or greater)");
  }
  const int64_t refcount_bits = v.GetInt("refcount_bits");
  if (refcount_bits <= 0 || refcount_bits > 64 || !IsPowerOf2(refcount_bits)) {
    return Invalid("Refcount width must be a power of two and may not exceed 64 bits");
  }
  p.refcount_order = __builtin_ctzll(static_cast<uint64_t>(refcount_bits));
  if (p.version < 3 && refcount_bits != 16) {
    return Invalid("Different refcount widths than 16 bits require compatibility level 1.1 or "
                   "above (use version=v3 or greater)");
  }
  p.data_file = v.FindString("data_file");
  if (p.version < 3 && p.data_file) {
    return Invalid("External data files are only supported with compatibility level 1.1 and "
                   "above (use version=v3 or greater)");
  }
  p.data_file_raw = v.FindBool("data_file_raw").value_or(false);
  if (p.data_file_raw && !p.data_file) return Invalid("data-file-raw requires data-file");
  if (p.data_file_raw && p.backing_file) {
    return Invalid("Backing file and data-file-raw cannot be used at the same time");
  }
  // A raw data file must stay readable as the disk: every cluster is mapped to its guest
  // offset from the start, as QEMU does by preallocating the metadata.
  if (p.data_file_raw && p.preallocation == PreallocMode::kOff) p.preallocation = PreallocMode::kMetadata;
  LB_ASSIGN_OR_RETURN(p.compression_type, ParseCompressionType(v.GetString("compression_type")));
  if (p.version < 3 && p.compression_type != CompressionType::kZlib) {
    return Invalid("Non-zlib compression type is only supported with compatibility level 1.1 "
                   "and above (use version=v3 or greater)");
  }
  p.extended_l2 = v.GetBool("extended_l2");
  if (p.extended_l2) {
    if (p.version < 3) {
      return Invalid("Extended L2 entries are only supported with compatibility level 1.1 and "
                     "above (use version=v3 or greater)");
    }
    if (cluster_size < 16384) {
      return Invalid("Extended L2 entries are only supported with cluster sizes of at least "
                     "16384 bytes");
    }
  }
  if (p.backing_file && p.preallocation != PreallocMode::kOff && !p.extended_l2) {
    return Invalid("Backing file and preallocation can only be used at the same time if "
                   "extended_l2 is on");
  }
  return p;
}

absl::StatusOr<ImagePlan> PlanImage(const CreateParams& params) {
  return Builder(params).Build();
}

namespace {

// The text of a creation option that was given, whatever its type.
std::optional<std::string> GivenText(const OptionValues& values, const OptionSpec& spec) {
  if (!values.IsSet(spec.name)) return std::nullopt;
  switch (spec.type) {
    case OptionType::kBool: return *values.FindBool(spec.name) ? "on" : "off";
    case OptionType::kInt: return std::to_string(*values.FindInt(spec.name));
    case OptionType::kSize: return std::to_string(*values.FindSize(spec.name));
    default: return values.FindString(spec.name);
  }
}

// Creates `filename` through its protocol with `size` bytes and `mode`. The protocol options
// given for the image (nocow, extent_size_hint: those of the image's protocol, which
// Graph::Create merged into ctx.values) are passed on.
Task<absl::Status> CreateProtocolFile(CreateContext& ctx, const std::string& filename,
                                      uint64_t size, PreallocMode mode) {
  absl::StatusOr<const Driver*> proto = ctx.graph.registry().ProtocolForFilename(filename);
  if (!proto.ok()) co_return proto.status();
  if (!(*proto)->create || !(*proto)->create_options) {
    co_return ErrnoError(ENOTSUP, absl::StrFormat("Protocol driver '%s' does not support image "
                                                  "creation", (*proto)->name));
  }
  absl::StatusOr<const Driver*> image_proto = ctx.graph.registry().ProtocolForFilename(ctx.filename);
  Options opts;
  opts.Set("size", size);
  opts.Set("preallocation", std::string(PreallocModeName(mode)));
  for (const OptionSpec& s : (*proto)->create_options->specs) {
    if (s.name == "size" || s.name == "preallocation") continue;
    if (!image_proto.ok() || !(*image_proto)->create_options ||
        !(*image_proto)->create_options->Find(s.name)) {
      continue;
    }
    if (std::optional<std::string> text = GivenText(ctx.values, s)) opts.Set(std::string(s.name), *text);
  }
  absl::StatusOr<OptionValues> values = ConsumeOptions(*(*proto)->create_options, opts);
  if (!values.ok()) co_return values.status();
  CreateContext fctx{ctx.graph, filename, std::move(*values), {}};
  co_return co_await (*proto)->create(fctx);
}

Task<absl::Status> WritePlan(CreateContext& ctx, const ImagePlan& plan) {
  Options opts;
  absl::StatusOr<const Driver*> proto = ctx.graph.registry().ProtocolForFilename(ctx.filename);
  if (!proto.ok()) co_return proto.status();
  opts.Set("driver", std::string((*proto)->name));
  OpenParams params;
  params.protocol_only = true;
  absl::StatusOr<Node*> node = co_await ctx.graph.OpenCo(ctx.filename, std::move(opts), params);
  if (!node.ok()) co_return node.status();
  BackendOptions bo;
  bo.resize = true;
  bo.allow_write_beyond_eof = true;
  absl::StatusOr<std::unique_ptr<Backend>> be = Backend::Attach(ctx.graph, **node, bo);
  ctx.graph.Unref(*node);
  if (!be.ok()) co_return be.status();
  Backend& file = **be;
  absl::Status st;
  for (const PlannedWrite& w : plan.writes) {
    IoVec qiov(const_cast<uint8_t*>(w.data.data()), w.data.size());
    st = co_await file.Write(w.offset, static_cast<int64_t>(w.data.size()), qiov);
    if (!st.ok()) co_return st;
  }
  if (plan.grow_to) {
    st = co_await file.Truncate(*plan.grow_to, false, plan.grow_mode);
    if (!st.ok()) co_return st;
  }
  for (const PlannedWrite& w : plan.late_writes) {
    IoVec qiov(const_cast<uint8_t*>(w.data.data()), w.data.size());
    st = co_await file.Write(w.offset, static_cast<int64_t>(w.data.size()), qiov);
    if (!st.ok()) co_return st;
  }
  st = co_await file.Flush();
  if (!st.ok()) co_return st;
  co_return file.Close();
}

}  // namespace

Task<absl::Status> Create(CreateContext& ctx) {
  absl::StatusOr<CreateParams> params = ParseCreateParams(ctx.values);
  if (!params.ok()) co_return params.status();
  absl::StatusOr<ImagePlan> plan = PlanImage(*params);
  if (!plan.ok()) co_return plan.status();
  // Everything is checked: from here on files are created. The data file first, as QEMU
  // does (a data file that cannot be created leaves no image behind).
  if (params->data_file) {
    PreallocMode mode = params->preallocation == PreallocMode::kFalloc ||
                                params->preallocation == PreallocMode::kFull
                            ? params->preallocation
                            : PreallocMode::kOff;
    absl::Status st = co_await CreateProtocolFile(ctx, *params->data_file, params->size, mode);
    if (!st.ok()) co_return st;
  }
  absl::Status st = co_await CreateProtocolFile(ctx, ctx.filename, 0, PreallocMode::kOff);
  if (!st.ok()) co_return st;
  co_return co_await WritePlan(ctx, *plan);
}

}  // namespace libblock::qcow2
