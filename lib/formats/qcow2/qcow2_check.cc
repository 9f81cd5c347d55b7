// qcow2 check and repair (see qcow2_check.h). The spec is QEMU's docs/interop/qcow2.txt; the
// messages, counters and repair decisions follow qemu-img 7.2's behaviour on the same images.
//
// One pass counts references into an in-memory table (`refs_`, one counter per host
// cluster); the on-disk refcounts are read block by block and compared with it. Repairs
// write through `file_` directly: refcount entries in place (leaks, too-low refcounts),
// COPIED flags in L1/L2 entries, or a whole new refcount structure placed in clusters that
// neither the image nor the old structure uses, switched to by one header write, so a crash
// during the repair leaves the old structure in force.
#include "formats/qcow2/qcow2_check.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <map>
#include <set>

#include "absl/strings/str_format.h"
#include "util/checked_math.h"
#include "util/endian.h"
#include "util/status.h"

namespace libblock::qcow2 {
namespace {

constexpr uint64_t kL1ReservedMask = 0x7f000000000001ffull;
constexpr uint64_t kL2StdReservedMask = 0x3f000000000001feull;
constexpr uint64_t kReftableReservedMask = 0x1ffull;
constexpr uint64_t kBitmapAllAlloc = 0x00000000ffffffffull;
constexpr uint64_t kBitmapAllZeroes = 0xffffffff00000000ull;
constexpr uint64_t kBitmapTableOffsetMask = 0x00fffffffffffe00ull;
constexpr int64_t kMaxL1Bytes = 32 * 1024 * 1024;        // QEMU's QCOW_MAX_L1_SIZE
constexpr int64_t kMaxBitmaps = 65535;
constexpr int64_t kMaxBitmapDirectoryBytes = 64 * 1024 * 1024;
constexpr int64_t kMaxBitmapTableEntries = 1 << 24;      // far more than any 64 KiB-granular disk
constexpr int kFlagFragInfo = 1;                         // the active L1: count fragmentation
constexpr size_t kHeaderIncompatOffset = 72;
constexpr size_t kHeaderReftableOffset = 48;

enum class ClusterType { kUnallocated, kZeroPlain, kZeroAlloc, kNormal, kCompressed };

class Checker {
 public:
  Checker(Child& file, const Header& header, CheckFix fix)
      : file_(file), h_(header), fix_(fix), cs_(header.cluster_size()),
        cbits_(static_cast<int>(header.cluster_bits)), order_(static_cast<int>(header.refcount_order)) {
    refblock_bits_ = cbits_ + 3 - order_;
    refcount_max_ = order_ >= 6 ? UINT64_MAX : (uint64_t{1} << (1 << order_)) - 1;
    counter_max_ = std::min<uint64_t>(refcount_max_, UINT32_MAX);
    l2_entry_bytes_ = h_.extended_l2() ? 16 : 8;
    l2_entries_ = cs_ / l2_entry_bytes_;
    csize_shift_ = 62 - (cbits_ - 8);
    csize_mask_ = (uint64_t{1} << (cbits_ - 8)) - 1;
    coffset_mask_ = (uint64_t{1} << csize_shift_) - 1;
  }

  Task<absl::StatusOr<CheckResult>> Run() {
    file_len_ = file_.node()->size();
    nb_clusters_ = (file_len_ + cs_ - 1) >> cbits_;
    if (nb_clusters_ > INT32_MAX) {
      res_.check_errors++;
      co_return ErrnoError(EFBIG, "qcow2 check: the image file has too many clusters");
    }
    res_.total_clusters = static_cast<int64_t>((h_.size + cs_ - 1) >> cbits_);
    LB_CO_RETURN_IF_ERROR(co_await LoadReftable());
    LB_CO_RETURN_IF_ERROR(co_await ReadSnapshotTable());

    LB_CO_RETURN_IF_ERROR(co_await Calculate(fix_));
    CheckResult pre_compare = res_;
    LB_CO_RETURN_IF_ERROR(co_await Compare(0));

    if (rebuild_ && (fix_ & kFixErrors)) {
      CheckResult old = res_;
      Note("Rebuilding refcount structure");
      LB_CO_RETURN_IF_ERROR(co_await RebuildRefcounts());
      res_.corruptions = 0;
      res_.leaks = 0;
      rebuild_ = false;
      LB_CO_RETURN_IF_ERROR(co_await Calculate(0));
      // The old structure's clusters are leaks of the new one: repaired now when leaks may
      // be (QEMU's order and messages); what remains broken is counted, not fixed.
      int64_t fresh_leaks = 0;
      if (fix_ & kFixLeaks) {
        CheckResult saved = res_;
        res_ = CheckResult{};
        LB_CO_RETURN_IF_ERROR(co_await Compare(kFixLeaks));
        if (rebuild_) Note("ERROR rebuilt refcount structure is still broken");
        fresh_leaks = res_.leaks;
        std::vector<std::string> fresh_messages = std::move(res_.messages);
        res_ = std::move(saved);
        for (auto& m : fresh_messages) res_.messages.push_back(std::move(m));
      }
      if (res_.corruptions < old.corruptions) {
        res_.corruptions_fixed += old.corruptions - res_.corruptions;
      }
      if (res_.leaks < old.leaks) res_.leaks_fixed += old.leaks - res_.leaks;
      res_.leaks += fresh_leaks;
    } else if (fix_) {
      if (rebuild_) {
        Note("ERROR need to rebuild refcount structures");
        res_.check_errors++;
        res_.failed_errno = EIO;
        co_return std::move(res_);
      }
      if (res_.leaks || res_.corruptions) {
        std::vector<std::string> messages = std::move(res_.messages);
        res_ = pre_compare;
        res_.messages = std::move(messages);
        LB_CO_RETURN_IF_ERROR(co_await Compare(fix_));
      }
    }

    LB_CO_RETURN_IF_ERROR(co_await CheckCopiedFlags());
    res_.image_end_offset = (highest_cluster_ + 1) * cs_;

    if (fix_ && res_.check_errors == 0 && res_.corruptions == 0) {
      LB_CO_RETURN_IF_ERROR(co_await MarkClean());
    }
    co_return std::move(res_);
  }

 private:
  struct Snapshot {
    uint64_t l1_offset;
    uint32_t l1_size;
  };

  void Note(std::string line) { res_.messages.push_back(std::move(line)); }

  // ---- reading ----------------------------------------------------------------------------
  Task<absl::Status> LoadReftable() {
    int64_t bytes = int64_t{h_.refcount_table_clusters} * cs_;
    std::vector<uint8_t> buf(static_cast<size_t>(bytes));
    absl::Status st = co_await file_.Pread(static_cast<int64_t>(h_.refcount_table_offset),
                                           buf.data(), bytes);
    if (!st.ok()) {
      res_.check_errors++;
      co_return Prepend(st, "qcow2 check: cannot read the refcount table: ");
    }
    reftable_.resize(static_cast<size_t>(bytes / 8));
    for (size_t i = 0; i < reftable_.size(); ++i) reftable_[i] = LoadBe64(&buf[i * 8]);
    co_return absl::OkStatus();
  }

  // The snapshot table (QEMU's QCowSnapshotHeader entries, 8-byte aligned). A table that does
  // not fit the file is a corruption: its L1 tables are not walked.
  Task<absl::Status> ReadSnapshotTable() {
    snapshots_.clear();
    snapshot_table_bytes_ = 0;
    if (h_.nb_snapshots == 0) co_return absl::OkStatus();
    if (h_.nb_snapshots > kMaxSnapshots) {
      Note(absl::StrFormat("ERROR snapshot table: %u snapshots are more than %d",
                           h_.nb_snapshots, kMaxSnapshots));
      res_.corruptions++;
      co_return absl::OkStatus();
    }
    uint64_t pos = h_.snapshots_offset;
    if (pos % cs_ || pos >= static_cast<uint64_t>(file_len_)) {
      Note(absl::StrFormat("ERROR snapshot table offset 0x%x is invalid", pos));
      res_.corruptions++;
      co_return absl::OkStatus();
    }
    for (uint32_t i = 0; i < h_.nb_snapshots; ++i) {
      uint8_t fixed[40];
      if (pos + sizeof fixed > static_cast<uint64_t>(file_len_) ||
          pos + sizeof fixed - h_.snapshots_offset > kMaxSnapshotTableBytes) {
        Note(absl::StrFormat("ERROR snapshot table: entry %u is outside the image", i));
        res_.corruptions++;
        snapshots_.clear();
        co_return absl::OkStatus();
      }
      absl::Status st = co_await file_.Pread(static_cast<int64_t>(pos), fixed, sizeof fixed);
      if (!st.ok()) {
        res_.check_errors++;
        co_return Prepend(st, "qcow2 check: cannot read the snapshot table: ");
      }
      Snapshot sn{LoadBe64(fixed), LoadBe32(fixed + 8)};
      uint64_t entry = sizeof fixed + LoadBe32(fixed + 36) + LoadBe16(fixed + 12) +
                       LoadBe16(fixed + 14);
      pos += AlignUp<uint64_t>(entry, 8);
      snapshots_.push_back(sn);
    }
    snapshot_table_bytes_ = static_cast<int64_t>(pos - h_.snapshots_offset);
    co_return absl::OkStatus();
  }

  // ---- counting references ----------------------------------------------------------------
  void Grow(int64_t clusters) {
    if (static_cast<int64_t>(refs_.size()) < clusters) refs_.resize(static_cast<size_t>(clusters));
  }

  // Counts one reference to every cluster of [offset, offset + size).
  void Inc(uint64_t offset, int64_t size) {
    if (size <= 0) return;
    uint64_t end = 0;
    if (__builtin_add_overflow(offset, static_cast<uint64_t>(size), &end) || end > INT64_MAX ||
        static_cast<int64_t>(end) - file_len_ >= cs_) {
      Note(absl::StrFormat("ERROR: counting reference for region exceeding the end of the "
                           "file by one cluster or more: offset 0x%x size 0x%x",
                           offset, size));
      res_.corruptions++;
      return;
    }
    int64_t first = static_cast<int64_t>(offset >> cbits_);
    int64_t last = static_cast<int64_t>((end - 1) >> cbits_);
    Grow(last + 1);
    for (int64_t k = first; k <= last; ++k) {
      if (refs_[k] >= counter_max_) {
        Note(absl::StrFormat("ERROR: overflow cluster offset=0x%x",
                             static_cast<uint64_t>(k) << cbits_));
        Note("Increase the refcount entry width or create a clean copy if the image cannot be "
             "opened for writing");
        res_.corruptions++;
        continue;
      }
      refs_[k]++;
    }
  }

  ClusterType TypeOf(uint64_t entry) const {
    if (entry & kOflagCompressed) return ClusterType::kCompressed;
    if ((entry & kOflagZero) && !h_.extended_l2()) {
      return (entry & kL2OffsetMask) ? ClusterType::kZeroAlloc : ClusterType::kZeroPlain;
    }
    if (!(entry & kL2OffsetMask)) {
      bool raw = h_.has_data_file() && (h_.autoclear_features & kAutoclearDataFileRaw);
      return raw ? ClusterType::kNormal : ClusterType::kUnallocated;
    }
    return ClusterType::kNormal;
  }

  Task<absl::Status> Calculate(CheckFix fix) {
    refs_.assign(static_cast<size_t>(nb_clusters_), 0);
    Inc(0, cs_);
    LB_CO_RETURN_IF_ERROR(co_await CheckL1(h_.l1_table_offset, h_.l1_size, kFlagFragInfo, fix,
                                           /*active=*/true));
    for (const Snapshot& sn : snapshots_) {
      if (int64_t{sn.l1_size} * 8 > kMaxL1Bytes) {
        Note(absl::StrFormat("ERROR snapshot L1 table at 0x%x: %u entries are too many",
                             sn.l1_offset, sn.l1_size));
        res_.corruptions++;
        continue;
      }
      if (sn.l1_offset % cs_) {
        Note(absl::StrFormat("ERROR snapshot L1 table at 0x%x is not cluster aligned",
                             sn.l1_offset));
        res_.corruptions++;
        continue;
      }
      LB_CO_RETURN_IF_ERROR(co_await CheckL1(sn.l1_offset, sn.l1_size, 0, fix, false));
    }
    Inc(h_.snapshots_offset, snapshot_table_bytes_);
    if (h_.crypto_header) Inc(h_.crypto_header->first, static_cast<int64_t>(h_.crypto_header->second));
    LB_CO_RETURN_IF_ERROR(co_await CountBitmaps());
    Inc(h_.refcount_table_offset, static_cast<int64_t>(reftable_.size()) * 8);
    co_return co_await CheckRefblocks(fix);
  }

  Task<absl::Status> CheckL1(uint64_t l1_offset, uint32_t l1_size, int flags, CheckFix fix,
                             bool active) {
    if (l1_size == 0) co_return absl::OkStatus();
    int64_t bytes = int64_t{l1_size} * 8;
    int64_t before = res_.corruptions;
    Inc(l1_offset, bytes);
    if (res_.corruptions != before) co_return absl::OkStatus();  // past EOF: nothing to read
    std::vector<uint8_t> buf(static_cast<size_t>(bytes));
    absl::Status st = co_await file_.Pread(static_cast<int64_t>(l1_offset), buf.data(), bytes);
    if (!st.ok()) {
      Note("ERROR: I/O error in check_refcounts_l1");
      res_.check_errors++;
      co_return Prepend(st, "qcow2 check: cannot read an L1 table: ");
    }
    if (active) active_l1_.assign(l1_size, 0);
    for (uint32_t i = 0; i < l1_size; ++i) {
      uint64_t e = LoadBe64(&buf[i * 8]);
      if (active) active_l1_[i] = e;
      if (!e) continue;
      if (e & kL1ReservedMask) {
        Note(absl::StrFormat("ERROR found L1 entry with reserved bits set: %x", e));
        res_.corruptions++;
      }
      uint64_t l2 = e & kL1OffsetMask;
      Inc(l2, cs_);
      if (l2 % cs_) {
        Note(absl::StrFormat("ERROR l2_offset=%x: Table is not cluster aligned; L1 entry "
                             "corrupted", l2));
        res_.corruptions++;
      }
      LB_CO_RETURN_IF_ERROR(co_await CheckL2(l2, flags, fix, active));
    }
    co_return absl::OkStatus();
  }

  Task<absl::Status> CheckL2(uint64_t l2_offset, int flags, CheckFix fix, bool active) {
    std::vector<uint8_t> table(static_cast<size_t>(cs_));
    if (l2_offset + cs_ > static_cast<uint64_t>(file_len_) + cs_ - 1) {
      // Already reported by Inc; a read past the end would only see zeroes.
      co_return absl::OkStatus();
    }
    absl::Status st = co_await file_.Pread(static_cast<int64_t>(l2_offset), table.data(), cs_);
    if (!st.ok()) {
      Note("ERROR: I/O error in check_refcounts_l2");
      res_.check_errors++;
      co_return Prepend(st, "qcow2 check: cannot read an L2 table: ");
    }
    uint64_t next_contiguous = 0;
    for (int64_t i = 0; i < l2_entries_; ++i) {
      uint8_t* p = &table[i * l2_entry_bytes_];
      uint64_t entry = LoadBe64(p);
      uint64_t bitmap = h_.extended_l2() ? LoadBe64(p + 8) : 0;
      ClusterType type = TypeOf(entry);
      if (type != ClusterType::kCompressed && (entry & kL2StdReservedMask)) {
        Note(absl::StrFormat("ERROR found l2 entry with reserved bits set: %x", entry));
        res_.corruptions++;
      }
      switch (type) {
        case ClusterType::kCompressed: {
          if (entry & kOflagCopied) {
            Note(absl::StrFormat("ERROR: coffset=0x%x: copied flag must never be set for "
                                 "compressed clusters", entry & coffset_mask_));
            entry &= ~kOflagCopied;
            res_.corruptions++;
          }
          if (h_.has_data_file()) {
            Note(absl::StrFormat("ERROR compressed cluster %d with data file, entry=0x%x", i,
                                 entry));
            res_.corruptions++;
            break;
          }
          if (bitmap) {
            Note(absl::StrFormat("ERROR compressed cluster %d with non-zero subcluster "
                                 "allocation bitmap, entry=0x%x", i, entry));
            res_.corruptions++;
            break;
          }
          uint64_t coffset = entry & coffset_mask_;
          int64_t sectors = static_cast<int64_t>((entry >> csize_shift_) & csize_mask_) + 1;
          int64_t csize = sectors * 512 - static_cast<int64_t>(coffset & 511);
          Inc(coffset, csize);
          if (flags & kFlagFragInfo) {
            res_.allocated_clusters++;
            res_.compressed_clusters++;
            res_.fragmented_clusters++;
          }
          break;
        }
        case ClusterType::kZeroAlloc:
        case ClusterType::kNormal: {
          uint64_t offset = entry & kL2OffsetMask;
          if ((bitmap >> 32) & bitmap) {
            res_.corruptions++;
            Note(absl::StrFormat("ERROR offset=%x: Allocated cluster has corrupted subcluster "
                                 "allocation bitmap", offset));
          }
          if (offset % cs_) {
            res_.corruptions++;
            bool has_data = h_.extended_l2() ? (bitmap & kBitmapAllAlloc) != 0
                                             : !(entry & kOflagZero);
            if (!has_data) {
              bool repair = fix & kFixErrors;
              Note(absl::StrFormat("%s offset=%x: Preallocated cluster is not properly "
                                   "aligned; L2 entry corrupted.",
                                   repair ? "Repairing" : "ERROR", offset));
              if (repair) {
                absl::Status fixed = co_await ZeroL2Entry(l2_offset, table, i);
                if (fixed.ok()) continue;
              }
            } else {
              Note(absl::StrFormat("ERROR offset=%x: Data cluster is not properly aligned; L2 "
                                   "entry corrupted.", offset));
            }
          }
          if (flags & kFlagFragInfo) {
            res_.allocated_clusters++;
            if (next_contiguous && offset != next_contiguous) res_.fragmented_clusters++;
            next_contiguous = offset + cs_;
          }
          if (!h_.has_data_file()) Inc(offset, cs_);
          break;
        }
        case ClusterType::kZeroPlain:
          break;
        case ClusterType::kUnallocated:
          if (bitmap & kBitmapAllAlloc) {
            res_.corruptions++;
            Note("ERROR: Unallocated cluster has non-zero subcluster allocation map");
          }
          break;
      }
    }
    (void)active;
    co_return absl::OkStatus();
  }

  // An unaligned preallocated zero cluster becomes a plain zero cluster (its host cluster is
  // lost: a leak at most).
  Task<absl::Status> ZeroL2Entry(uint64_t l2_offset, std::vector<uint8_t>& table, int64_t i) {
    uint8_t* p = &table[i * l2_entry_bytes_];
    if (h_.extended_l2()) {
      uint64_t bitmap = LoadBe64(p + 8);
      bitmap = (bitmap | (bitmap << 32)) & kBitmapAllZeroes;
      StoreBe64(p, 0);
      StoreBe64(p + 8, bitmap);
    } else {
      StoreBe64(p, kOflagZero);
    }
    absl::Status st = co_await file_.Pwrite(static_cast<int64_t>(l2_offset + i * l2_entry_bytes_),
                                            p, l2_entry_bytes_);
    if (st.ok()) st = co_await file_.Flush();
    if (!st.ok()) {
      Note(absl::StrFormat("ERROR: Failed to overwrite L2 table entry: %s",
                           std::strerror(StatusErrno(st))));
      res_.check_errors++;
      co_return st;
    }
    res_.corruptions--;
    res_.corruptions_fixed++;
    co_return absl::OkStatus();
  }

  // Persistent dirty bitmaps (only while the autoclear bit says the extension is valid): the
  // directory, each bitmap's table and the data clusters the tables point at.
  Task<absl::Status> CountBitmaps() {
    if (!(h_.autoclear_features & kAutoclearBitmaps)) co_return absl::OkStatus();
    const RawExtension* ext = nullptr;
    for (const RawExtension& e : h_.other_extensions) {
      if (e.type == kExtBitmaps) ext = &e;
    }
    if (!ext || ext->data.size() < 24) co_return absl::OkStatus();
    uint32_t nb = LoadBe32(ext->data.data());
    uint64_t dir_size = LoadBe64(ext->data.data() + 8);
    uint64_t dir_offset = LoadBe64(ext->data.data() + 16);
    if (nb == 0 || nb > kMaxBitmaps || dir_size > kMaxBitmapDirectoryBytes ||
        dir_offset % cs_ || dir_offset + dir_size > static_cast<uint64_t>(file_len_)) {
      Note("ERROR bitmaps extension is invalid");
      res_.corruptions++;
      co_return absl::OkStatus();
    }
    Inc(dir_offset, static_cast<int64_t>(dir_size));
    std::vector<uint8_t> dir(dir_size);
    absl::Status st = co_await file_.Pread(static_cast<int64_t>(dir_offset), dir.data(),
                                           static_cast<int64_t>(dir_size));
    if (!st.ok()) {
      res_.check_errors++;
      co_return Prepend(st, "qcow2 check: cannot read the bitmap directory: ");
    }
    size_t pos = 0;
    for (uint32_t i = 0; i < nb; ++i) {
      if (pos + 24 > dir.size()) {
        Note("ERROR bitmap directory is truncated");
        res_.corruptions++;
        break;
      }
      const uint8_t* e = &dir[pos];
      uint64_t table_offset = LoadBe64(e);
      uint32_t table_size = LoadBe32(e + 8);
      uint64_t entry = 24 + uint64_t{LoadBe16(e + 18)} + LoadBe32(e + 20);
      pos += AlignUp<uint64_t>(entry, 8);
      if (table_size > kMaxBitmapTableEntries || table_offset % cs_) {
        Note(absl::StrFormat("ERROR bitmap %u: table at 0x%x is invalid", i, table_offset));
        res_.corruptions++;
        continue;
      }
      int64_t before = res_.corruptions;
      Inc(table_offset, int64_t{table_size} * 8);
      if (res_.corruptions != before || table_size == 0) continue;
      std::vector<uint8_t> table(size_t{table_size} * 8);
      st = co_await file_.Pread(static_cast<int64_t>(table_offset), table.data(),
                                static_cast<int64_t>(table.size()));
      if (!st.ok()) {
        res_.check_errors++;
        co_return Prepend(st, "qcow2 check: cannot read a bitmap table: ");
      }
      for (uint32_t j = 0; j < table_size; ++j) {
        uint64_t off = LoadBe64(&table[j * 8]) & kBitmapTableOffsetMask;
        if (off) Inc(off, cs_);
      }
    }
    co_return absl::OkStatus();
  }

  Task<absl::Status> CheckRefblocks(CheckFix fix) {
    for (size_t i = 0; i < reftable_.size(); ++i) {
      uint64_t offset = reftable_[i] & kRefcountTableOffsetMask;
      int64_t cluster = static_cast<int64_t>(offset >> cbits_);
      if (reftable_[i] & kReftableReservedMask) {
        Note(absl::StrFormat("ERROR refcount table entry %d has reserved bits set", i));
        res_.corruptions++;
        rebuild_ = true;
        continue;
      }
      if (offset == 0) continue;
      if (cluster >= nb_clusters_) {
        res_.corruptions++;
        bool repair = fix & kFixErrors;
        Note(absl::StrFormat("%s refcount block %d is outside image",
                             repair ? "Repairing" : "ERROR", i));
        if (repair) {
          absl::Status st = co_await file_.Truncate(static_cast<int64_t>(offset) + cs_, false,
                                                    PreallocMode::kOff);
          if (st.ok()) {
            file_len_ = file_.node()->size();
            nb_clusters_ = (file_len_ + cs_ - 1) >> cbits_;
            Grow(nb_clusters_);
          }
          if (st.ok() && cluster < nb_clusters_) {
            res_.corruptions--;
            res_.corruptions_fixed++;
            Inc(offset, cs_);
            continue;
          }
          rebuild_ = true;
          Note(absl::StrFormat("ERROR could not resize image: %s",
                               std::strerror(st.ok() ? EINVAL : StatusErrno(st))));
        }
        continue;
      }
      Inc(offset, cs_);
      if (refs_[cluster] != 1) {
        Note(absl::StrFormat("ERROR refcount block %d refcount=%d", i, refs_[cluster]));
        res_.corruptions++;
        rebuild_ = true;
      }
    }
    co_return absl::OkStatus();
  }

  // ---- on-disk refcounts ------------------------------------------------------------------
  uint64_t GetEntry(const std::vector<uint8_t>& block, int64_t index) const {
    switch (order_) {
      case 0: return (block[index / 8] >> (index % 8)) & 0x1;
      case 1: return (block[index / 4] >> (2 * (index % 4))) & 0x3;
      case 2: return (block[index / 2] >> (4 * (index % 2))) & 0xf;
      case 3: return block[index];
      case 4: return LoadBe16(&block[index * 2]);
      case 5: return LoadBe32(&block[index * 4]);
      default: return LoadBe64(&block[index * 8]);
    }
  }
  void SetEntry(std::vector<uint8_t>& block, int64_t index, uint64_t value) const {
    auto set_bits = [&](int per_byte, int bits) {
      int shift = bits * static_cast<int>(index % per_byte);
      uint8_t mask = static_cast<uint8_t>(((1u << bits) - 1) << shift);
      uint8_t& b = block[index / per_byte];
      b = static_cast<uint8_t>((b & ~mask) | ((value << shift) & mask));
    };
    switch (order_) {
      case 0: set_bits(8, 1); break;
      case 1: set_bits(4, 2); break;
      case 2: set_bits(2, 4); break;
      case 3: block[index] = static_cast<uint8_t>(value); break;
      case 4: StoreBe16(&block[index * 2], static_cast<uint16_t>(value)); break;
      case 5: StoreBe32(&block[index * 4], static_cast<uint32_t>(value)); break;
      default: StoreBe64(&block[index * 8], value); break;
    }
  }

  // The refcount block covering `cluster` (null: none, reads as refcount 0).
  Task<absl::StatusOr<std::vector<uint8_t>*>> Refblock(int64_t cluster) {
    uint64_t index = static_cast<uint64_t>(cluster) >> refblock_bits_;
    if (index >= reftable_.size()) co_return nullptr;
    uint64_t offset = reftable_[index] & kRefcountTableOffsetMask;
    if (!offset) co_return nullptr;
    auto it = refblocks_.find(index);
    if (it != refblocks_.end()) co_return &it->second;
    if (offset % cs_ || (reftable_[index] & kReftableReservedMask) ||
        offset >= static_cast<uint64_t>(file_len_)) {
      co_return ErrnoError(EIO, "Input/output error");
    }
    std::vector<uint8_t> block(static_cast<size_t>(cs_));
    absl::Status st = co_await file_.Pread(static_cast<int64_t>(offset), block.data(), cs_);
    if (!st.ok()) co_return st;
    auto [pos, inserted] = refblocks_.emplace(index, std::move(block));
    co_return &pos->second;
  }

  Task<absl::StatusOr<uint64_t>> GetRefcount(int64_t cluster) {
    absl::StatusOr<std::vector<uint8_t>*> block = co_await Refblock(cluster);
    if (!block.ok()) co_return block.status();
    if (!*block) co_return uint64_t{0};
    co_return GetEntry(**block, cluster & ((int64_t{1} << refblock_bits_) - 1));
  }

  Task<absl::Status> SetRefcount(int64_t cluster, uint64_t value) {
    absl::StatusOr<std::vector<uint8_t>*> block = co_await Refblock(cluster);
    if (!block.ok()) co_return block.status();
    if (!*block) co_return ErrnoError(EIO, "no refcount block");
    SetEntry(**block, cluster & ((int64_t{1} << refblock_bits_) - 1), value);
    uint64_t index = static_cast<uint64_t>(cluster) >> refblock_bits_;
    uint64_t offset = reftable_[index] & kRefcountTableOffsetMask;
    absl::Status st = co_await file_.Pwrite(static_cast<int64_t>(offset), (*block)->data(), cs_);
    co_return st;
  }

  Task<absl::Status> Compare(CheckFix fix) {
    highest_cluster_ = 0;
    bool wrote = false;
    int64_t clusters = std::max<int64_t>(nb_clusters_, static_cast<int64_t>(refs_.size()));
    for (int64_t i = 0; i < clusters; ++i) {
      absl::StatusOr<uint64_t> on_disk = co_await GetRefcount(i);
      if (!on_disk.ok()) {
        Note(absl::StrFormat("Can't get refcount for cluster %d: %s", i,
                             std::strerror(StatusErrno(on_disk.status()))));
        res_.check_errors++;
        continue;
      }
      uint64_t refcount1 = *on_disk;
      uint64_t refcount2 = i < static_cast<int64_t>(refs_.size()) ? refs_[i] : 0;
      if (refcount1 > 0 || refcount2 > 0) highest_cluster_ = i;
      if (refcount1 == refcount2) continue;
      int64_t* fixed = nullptr;
      if (refcount1 == 0) {
        rebuild_ = true;
      } else if (refcount1 > refcount2 && (fix & kFixLeaks)) {
        fixed = &res_.leaks_fixed;
      } else if (refcount1 < refcount2 && (fix & kFixErrors)) {
        fixed = &res_.corruptions_fixed;
      }
      Note(absl::StrFormat("%s cluster %d refcount=%d reference=%d",
                           fixed ? "Repairing" : refcount1 < refcount2 ? "ERROR" : "Leaked", i,
                           refcount1, refcount2));
      if (fixed) {
        absl::Status st = co_await SetRefcount(i, refcount2);
        if (st.ok()) {
          (*fixed)++;
          wrote = true;
          continue;
        }
      }
      if (refcount1 < refcount2) {
        res_.corruptions++;
      } else {
        res_.leaks++;
      }
    }
    if (wrote) {
      absl::Status st = co_await file_.Flush();
      if (!st.ok()) {
        res_.check_errors++;
        co_return st;
      }
    }
    co_return absl::OkStatus();
  }

  // ---- COPIED flags -----------------------------------------------------------------------
  Task<absl::Status> CheckCopiedFlags() {
    bool repair = (fix_ & kFixErrors) ||
                  ((fix_ & kFixLeaks) && !res_.check_errors && !res_.corruptions && !res_.leaks);
    std::vector<uint8_t> table(static_cast<size_t>(cs_));
    for (size_t i = 0; i < active_l1_.size(); ++i) {
      uint64_t l1e = active_l1_[i];
      uint64_t l2 = l1e & kL1OffsetMask;
      if (!l2) continue;
      absl::StatusOr<uint64_t> refcount = co_await GetRefcount(static_cast<int64_t>(l2 >> cbits_));
      if (!refcount.ok()) continue;
      if ((*refcount == 1) != ((l1e & kOflagCopied) != 0)) {
        res_.corruptions++;
        Note(absl::StrFormat("%s OFLAG_COPIED L2 cluster: l1_index=%d l1_entry=%x refcount=%d",
                             repair ? "Repairing" : "ERROR", i, l1e, *refcount));
        if (repair) {
          uint64_t fixed = *refcount == 1 ? (l1e | kOflagCopied) : (l1e & ~kOflagCopied);
          uint8_t be[8];
          StoreBe64(be, fixed);
          absl::Status st = co_await file_.Pwrite(static_cast<int64_t>(h_.l1_table_offset + i * 8),
                                                  be, 8);
          if (st.ok()) st = co_await file_.Flush();
          if (!st.ok()) {
            res_.check_errors++;
            co_return absl::OkStatus();
          }
          active_l1_[i] = fixed;
          res_.corruptions--;
          res_.corruptions_fixed++;
        }
      }
      if (l2 % cs_ || l2 + cs_ > static_cast<uint64_t>(file_len_)) continue;
      absl::Status st = co_await file_.Pread(static_cast<int64_t>(l2), table.data(), cs_);
      if (!st.ok()) {
        Note(absl::StrFormat("ERROR: Could not read L2 table: %s",
                             std::strerror(StatusErrno(st))));
        res_.check_errors++;
        co_return absl::OkStatus();
      }
      int dirty = 0;
      for (int64_t j = 0; j < l2_entries_; ++j) {
        uint8_t* p = &table[j * l2_entry_bytes_];
        uint64_t e = LoadBe64(p);
        ClusterType type = TypeOf(e);
        if (type != ClusterType::kNormal && type != ClusterType::kZeroAlloc) continue;
        uint64_t rc = 1;
        if (!h_.has_data_file()) {
          absl::StatusOr<uint64_t> r =
              co_await GetRefcount(static_cast<int64_t>((e & kL2OffsetMask) >> cbits_));
          if (!r.ok()) continue;
          rc = *r;
        }
        if ((rc == 1) != ((e & kOflagCopied) != 0)) {
          res_.corruptions++;
          Note(absl::StrFormat("%s OFLAG_COPIED data cluster: l2_entry=%x refcount=%d",
                               repair ? "Repairing" : "ERROR", e, rc));
          if (repair) {
            StoreBe64(p, rc == 1 ? (e | kOflagCopied) : (e & ~kOflagCopied));
            dirty++;
          }
        }
      }
      if (dirty) {
        st = co_await file_.Pwrite(static_cast<int64_t>(l2), table.data(), cs_);
        if (!st.ok()) {
          Note(absl::StrFormat("ERROR: Could not write L2 table: %s",
                               std::strerror(StatusErrno(st))));
          res_.check_errors++;
          co_return absl::OkStatus();
        }
        res_.corruptions -= dirty;
        res_.corruptions_fixed += dirty;
      }
    }
    absl::Status st = co_await file_.Flush();
    if (!st.ok()) res_.check_errors++;
    co_return absl::OkStatus();
  }

  // ---- rebuilding -------------------------------------------------------------------------
  // A new refcount structure for refs_ (every reference, the old structure's included, as
  // QEMU counts it: those clusters become leaks of the new structure, repaired next), in
  // clusters free in both, so the old structure stays valid until the header points at the
  // new one.
  Task<absl::Status> RebuildRefcounts() {
    std::vector<uint64_t> now(refs_.begin(), refs_.end());
    auto busy = [&](int64_t c) {
      return (c < static_cast<int64_t>(refs_.size()) && refs_[c]) ||
             (c < static_cast<int64_t>(now.size()) && now[c]);
    };
    int64_t next_free = 0;
    auto alloc_run = [&](int64_t n) {
      int64_t c = next_free;
      for (;;) {
        int64_t run = 0;
        while (run < n && !busy(c + run)) run++;
        if (run == n) break;
        c += run + 1;
      }
      if (static_cast<int64_t>(now.size()) < c + n) now.resize(static_cast<size_t>(c + n));
      for (int64_t k = 0; k < n; ++k) now[c + k] = 1;
      if (n == 1) next_free = c + 1;
      return c;
    };
    const int64_t per_block = int64_t{1} << refblock_bits_;
    std::map<int64_t, int64_t> blocks;  // refblock index -> cluster
    int64_t table_cluster = -1, table_clusters = 0;
    for (;;) {
      bool changed = false;
      for (int64_t b = 0; b * per_block < static_cast<int64_t>(now.size()); ++b) {
        if (blocks.count(b)) continue;
        int64_t end = std::min<int64_t>((b + 1) * per_block, static_cast<int64_t>(now.size()));
        bool used = false;
        for (int64_t c = b * per_block; c < end && !used; ++c) used = now[c] != 0;
        if (!used) continue;
        blocks[b] = alloc_run(1);
        changed = true;
      }
      int64_t entries = blocks.empty() ? 1 : blocks.rbegin()->first + 1;
      int64_t need = std::max<int64_t>(1, (entries * 8 + cs_ - 1) / cs_);
      if (table_clusters < need) {
        for (int64_t k = 0; k < table_clusters; ++k) now[table_cluster + k] = 0;
        table_clusters = need;
        table_cluster = alloc_run(need);
        changed = true;
      }
      if (!changed) break;
    }
    // Refcount blocks first, then the table, then the header: each step is durable before
    // the next makes it reachable.
    for (const auto& [b, cluster] : blocks) {
      std::vector<uint8_t> block(static_cast<size_t>(cs_), 0);
      for (int64_t k = 0; k < per_block && b * per_block + k < static_cast<int64_t>(now.size()); ++k) {
        uint64_t v = now[b * per_block + k];
        if (v > refcount_max_) v = refcount_max_;
        SetEntry(block, k, v);
      }
      absl::Status st = co_await file_.Pwrite(cluster << cbits_, block.data(), cs_);
      if (!st.ok()) {
        res_.check_errors++;
        co_return Prepend(st, "ERROR writing refblock: ");
      }
    }
    std::vector<uint8_t> table(static_cast<size_t>(table_clusters * cs_), 0);
    for (const auto& [b, cluster] : blocks) StoreBe64(&table[b * 8], static_cast<uint64_t>(cluster) << cbits_);
    absl::Status st = co_await file_.Pwrite(table_cluster << cbits_, table.data(),
                                            static_cast<int64_t>(table.size()));
    if (st.ok()) st = co_await file_.Flush();
    if (!st.ok()) {
      res_.check_errors++;
      co_return Prepend(st, "ERROR writing reftable: ");
    }
    uint8_t hdr[12];
    StoreBe64(hdr, static_cast<uint64_t>(table_cluster) << cbits_);
    StoreBe32(hdr + 8, static_cast<uint32_t>(table_clusters));
    st = co_await file_.Pwrite(kHeaderReftableOffset, hdr, sizeof hdr);
    if (st.ok()) st = co_await file_.Flush();
    if (!st.ok()) {
      res_.check_errors++;
      co_return Prepend(st, "ERROR setting reftable: ");
    }
    h_.refcount_table_offset = static_cast<uint64_t>(table_cluster) << cbits_;
    h_.refcount_table_clusters = static_cast<uint32_t>(table_clusters);
    res_.header_changed = true;
    reftable_.assign(static_cast<size_t>(table_clusters * cs_ / 8), 0);
    for (const auto& [b, cluster] : blocks) reftable_[b] = static_cast<uint64_t>(cluster) << cbits_;
    refblocks_.clear();
    file_len_ = file_.node()->size();
    nb_clusters_ = (file_len_ + cs_ - 1) >> cbits_;
    co_return absl::OkStatus();
  }

  // Clears the dirty and corrupt bits after a successful repair (v3 headers only have them).
  Task<absl::Status> MarkClean() {
    uint64_t bits = kIncompatDirty | kIncompatCorrupt;
    if (h_.version < 3 || !(h_.incompatible_features & bits)) co_return absl::OkStatus();
    absl::Status st = co_await file_.Flush();
    if (!st.ok()) co_return st;
    uint8_t be[8];
    StoreBe64(be, h_.incompatible_features & ~bits);
    st = co_await file_.Pwrite(kHeaderIncompatOffset, be, 8);
    if (st.ok()) st = co_await file_.Flush();
    if (!st.ok()) co_return Prepend(st, "qcow2 check: cannot clear the dirty bit: ");
    h_.incompatible_features &= ~bits;
    res_.header_changed = true;
    co_return absl::OkStatus();
  }

  Child& file_;
  Header h_;
  CheckFix fix_;
  int64_t cs_;
  int cbits_, order_, refblock_bits_ = 0;
  uint64_t refcount_max_ = 0, counter_max_ = 0;
  int64_t l2_entry_bytes_ = 8, l2_entries_ = 0;
  int csize_shift_ = 0;
  uint64_t csize_mask_ = 0, coffset_mask_ = 0;

  int64_t file_len_ = 0, nb_clusters_ = 0, highest_cluster_ = 0;
  std::vector<uint64_t> reftable_;
  std::map<uint64_t, std::vector<uint8_t>> refblocks_;
  std::vector<uint32_t> refs_;
  std::vector<uint64_t> active_l1_;
  std::vector<Snapshot> snapshots_;
  int64_t snapshot_table_bytes_ = 0;
  bool rebuild_ = false;
  CheckResult res_;
};

}  // namespace

Task<absl::StatusOr<CheckResult>> Check(Child& file, const Header& header, CheckFix fix) {
  Checker checker(file, header, fix);
  co_return co_await checker.Run();
}

static_assert(kFixLeaks == kCheckFixLeaks && kFixErrors == kCheckFixErrors);

Task<absl::StatusOr<ImageCheckResult>> CheckImage(Child& file, uint32_t fix,
                                                  std::string_view filename) {
  int64_t size = file.node()->size();
  std::vector<uint8_t> buf(static_cast<size_t>(std::min<int64_t>(size, int64_t{1} << kMaxClusterBits)));
  if (!buf.empty()) {
    absl::Status st = co_await file.Pread(0, buf.data(), static_cast<int64_t>(buf.size()));
    if (!st.ok()) co_return st;
  }
  if (buf.size() >= 24) {
    uint32_t bits = LoadBe32(buf.data() + 20);
    if (bits >= kMinClusterBits && bits <= kMaxClusterBits && buf.size() > (size_t{1} << bits)) {
      buf.resize(size_t{1} << bits);
    }
  }
  absl::StatusOr<Header> header = ParseHeader(buf, size, filename);
  if (!header.ok()) co_return header.status();
  absl::StatusOr<CheckResult> r = co_await Check(file, *header, fix);
  if (!r.ok()) co_return r.status();
  ImageCheckResult out = std::move(*r);  // the driver-independent part
  co_return out;
}

}  // namespace libblock::qcow2
