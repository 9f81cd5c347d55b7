// The qcow2 format driver (QEMU's docs/interop/qcow2.txt, versions 2 and 3): open and close,
// the header's feature bits, the L1/L2 tables behind an L2 cache, refcounts behind a refcount
// cache, cluster allocation and the metadata write ordering. The data path itself is the
// mapping engine's (core/mapping.h): this driver answers Map/Allocate/Commit.
//
// Files: qcow2_driver.cc (options, open, close, flush, reopen, info, header updates,
// corruption), qcow2_mapping.cc (L2 entries: Map, Allocate, Commit, zeroing, discard,
// compressed clusters), qcow2_refcount.cc (refcounts, cluster allocation, refcount table
// growth), qcow2_cache.{h,cc} (the slot caches).
//
// Locking: every table update, cache load, eviction and writeback runs under `meta_` (a
// CoMutex). Map answers a cache hit without taking it (the loop is single-threaded and a hit
// does not suspend); a miss takes the lock and loads.
//
// Write ordering (what a crash may see, always consistent up to leaked clusters):
//   * a cluster's refcount reaches the disk before any L2/L1 entry that uses it (without
//     lazy_refcounts: the refcount cache is written and the file flushed before dirty L2
//     slices are written);
//   * guest data reaches the disk before the L2 entries pointing at it (a file flush — and a
//     data-file flush — precedes writing dirty L2 slices when data was written since);
//   * a new L2 table or refcount block is written (and flushed) before the L1 entry or
//     refcount-table entry pointing at it;
//   * clusters are freed (refcount decremented) only after the L2 entries that dropped them
//     are on disk (the frees wait for the next flush);
//   * with lazy_refcounts the dirty bit is set on disk before the first metadata write and
//     cleared at close and on a read-only reopen.
#ifndef LIBBLOCK_FORMATS_QCOW2_QCOW2_DRIVER_H_
#define LIBBLOCK_FORMATS_QCOW2_QCOW2_DRIVER_H_

#include <cstdint>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "core/co_sync.h"
#include "core/driver.h"
#include "core/mapping.h"
#include "core/options.h"
#include "formats/qcow2/qcow2_cache.h"
#include "formats/qcow2/qcow2_header.h"

namespace libblock::qcow2 {

// Runtime options (QEMU's names).
extern const OptionSchema kOptions;
std::unique_ptr<NodeDriver> Instantiate(Node& node);

// Overlap-check structures (QEMU's QCOW2_OL_* by meaning, same order).
enum OverlapBit : uint32_t {
  kOlMainHeader = 1u << 0,
  kOlActiveL1 = 1u << 1,
  kOlActiveL2 = 1u << 2,
  kOlRefcountTable = 1u << 3,
  kOlRefcountBlock = 1u << 4,
  kOlSnapshotTable = 1u << 5,
  kOlInactiveL1 = 1u << 6,
  kOlInactiveL2 = 1u << 7,
  kOlBitmapDirectory = 1u << 8,
};

class Qcow2Node final : public MappingDriver {
 public:
  using MappingDriver::MappingDriver;
  ~Qcow2Node() override;
  // Valid slots in the L2 and refcount caches (tests of cache-clean-interval).
  size_t CachedSlotsForTest();

  // ---- control plane ----
  Task<absl::Status> Open(OpenContext& ctx) override;
  Task<absl::Status> Close() override;
  Task<absl::Status> PrepareReopen(const ReopenState& state, Transaction& tran) override;
  absl::StatusOr<int64_t> GetLength() override { return static_cast<int64_t>(header_.size); }
  bool HasZeroInit() override;
  absl::Status GetImageInfo(ImageInfo& info) override;
  Task<absl::Status> Flush() override;
  Task<absl::Status> Truncate(int64_t size, bool exact, PreallocMode mode,
                              ReqFlags flags) override;

  // ---- mapping ----
  const MappingGeometry& geometry() const override { return geometry_; }
  Task<absl::StatusOr<Mapping>> Map(GuestOffset offset, int64_t bytes, bool for_write) override;
  Task<absl::StatusOr<Allocation>> Allocate(GuestOffset offset, int64_t bytes) override;
  Task<absl::Status> Commit(Allocation& alloc) override;
  Task<void> Abort(Allocation& alloc) override;
  Task<absl::StatusOr<Allocation>> AllocateCompressed(GuestOffset offset,
                                                      int64_t stored_bytes) override;
  Codec compression_codec() const override;
  Task<absl::Status> ZeroClusters(GuestOffset offset, int64_t bytes, bool may_unmap) override;
  Task<absl::Status> DiscardClusters(GuestOffset offset, int64_t bytes) override;
  absl::Status CheckDataWrite(const Child& child, HostOffset host, int64_t bytes) override;
  absl::Status ReportCorruption(absl::Status problem) override;

  Task<absl::Status> ChangeBackingFile(const std::optional<std::string>& name,
                                       const std::optional<std::string>& format) override;
  Task<absl::Status> MakeEmpty() override;  // qcow2_snapshot.cc
  bool SupportsMakeEmpty() const override {
    return !(header_.autoclear_features & kAutoclearDataFileRaw);
  }

  // ---- persistent dirty bitmaps (qcow2_bitmap.cc) ----
  bool SupportsPersistentBitmaps() const override { return header_.version >= 3; }
  std::vector<PersistentBitmap> PersistentBitmaps() const override { return bitmaps_; }

  // ---- internal snapshots (qcow2_snapshot.cc) ----
  bool SupportsSnapshots() const override { return true; }
  Task<absl::StatusOr<std::vector<SnapshotInfo>>> ListSnapshots() override;
  Task<absl::Status> CreateSnapshot(SnapshotInfo& sn) override;
  Task<absl::Status> ApplySnapshot(const SnapshotKey& id, const SnapshotKey& name) override;
  Task<absl::Status> DeleteSnapshot(const SnapshotKey& id, const SnapshotKey& name) override;
  Task<absl::Status> VmStateIo(int64_t pos, void* buf, int64_t bytes, bool write) override;
  Task<absl::Status> LoadSnapshotTemporarily(const SnapshotKey& id, const SnapshotKey& name) override;

  // For tests and check: the parsed header as the driver keeps it.
  const Header& header() const { return header_; }

 private:
  using Slot = MetadataCache::Slot;
  struct AllocCookie;

  // Why a cluster is freed (pass-discard-request/snapshot/other).
  enum class FreeReason { kRequest, kSnapshot, kOther };
  struct PendingFree {
    uint64_t host;
    int64_t bytes;
    FreeReason reason;
  };

  // One snapshot table entry (qcow2.txt "Snapshot table").
  struct SnapshotEntry {
    uint64_t l1_table_offset = 0;
    uint32_t l1_size = 0;
    SnapshotInfo info;
    uint64_t disk_size = 0;           // the extra data's, else the image size
    std::vector<uint8_t> extra_tail;  // extra data past the three known fields, kept
  };

  // ---- qcow2_driver.cc ----
  absl::Status ReadOptions(const OptionValues& values);
  Task<absl::StatusOr<Header>> ReadHeader();
  std::string DisplayName() const;
  // Writes incompatible_features as header_ holds it, then flushes.
  Task<absl::Status> WriteIncompatibleFeatures();
  // With lazy refcounts: the dirty bit is on disk before any metadata write.
  Task<absl::Status> EnsureDirtyBit();
  // Sets the dirty bit now (v3), whatever lazy_refcounts says: for updates that leave
  // refcounts and COPIED flags disagreeing for a while (snapshot refcount walks), so that a
  // crash meanwhile is repaired on the next open.
  Task<absl::Status> SetDirtyBit();
  // Ends such an update: everything written back, the bit cleared unless lazy_refcounts
  // keeps it until close.
  Task<absl::Status> EndDirtyUpdate();
  Task<absl::Status> ClearDirtyBit();
  // ---- qcow2_bitmap.cc ----
  // Reads the bitmap directory named by the bitmaps extension into bitmaps_ (an unreadable
  // one is warned about and left out).
  Task<void> LoadBitmapDirectory();

  // ---- qcow2_snapshot.cc ----
  // Reads the snapshot table into snapshots_ at open. An entry that cannot be read ends the
  // list with a warning and leaves snapshot_table_ok_ false (snapshot changes are refused).
  Task<void> LoadSnapshotTable();
  // Writes `list` as a new table, switches the header to it and frees the old one.
  Task<absl::Status> WriteSnapshotTable(std::vector<SnapshotEntry> list);
  // QEMU's qcow2_update_snapshot_refcount: adds `addend` to the refcount of every L2 table
  // `l1` names and of every cluster those map, then sets COPIED in the L2 entries and in
  // `l1` from the counts. Returns whether an entry of `l1` changed.
  Task<absl::StatusOr<bool>> AdjustL1Refcounts(std::vector<uint64_t>& l1, int64_t addend);
  // COPIED in the active L1/L2 tables from the refcounts as they are, written back.
  Task<absl::Status> RefreshActiveCopiedFlags();
  // EINVAL when AdjustL1Refcounts(l1, +1) would overflow a refcount (nothing changed).
  Task<absl::Status> CheckRefcountHeadroom(const std::vector<uint64_t>& l1);
  // The L1 table of a snapshot, validated (entries aligned).
  Task<absl::StatusOr<std::vector<uint64_t>>> ReadSnapshotL1(const SnapshotEntry& sn);
  // Writes the whole active L1 table (l1_) in place.
  Task<absl::Status> WriteL1Table();
  // The first snapshot `id` and `name` select, or null.
  const SnapshotEntry* FindSnapshotEntry(const SnapshotKey& id, const SnapshotKey& name) const;
  // Where the VM-state area starts in the guest address space (QEMU's qcow2_vm_state_offset).
  uint64_t VmStateOffset() const;
  nlohmann::ordered_json SnapshotListJson() const;
  // cache-clean-interval: a timer that drops clean slots unused for a whole interval.
  void ArmCacheCleanTimer();
  void DropIdleSlots();  // under meta_
  // Flush under meta_: caches in order, pending frees.
  Task<absl::Status> FlushLocked();
  // Marks the image corrupt (QEMU's qcow2_signal_corruption): the warning, the header bit on
  // a writable image; returns the EIO status requests fail with.
  Task<absl::Status> SignalCorruption(std::string message);
  absl::Status CorruptionStatus(const std::string& message);
  bool writable() const;

  // ---- caches ----
  // The slot of `cache` holding the slice at `offset` (loaded from `file_` when missing).
  // Under meta_.
  Task<absl::StatusOr<Slot*>> GetSlot(MetadataCache& cache, uint64_t offset, bool load);
  Task<absl::Status> WriteSlot(MetadataCache& cache, Slot* slot);
  // Writes every dirty refcount slot (no flush).
  Task<absl::Status> WriteBackRefcounts();
  // Writes dirty L2 slots (all, or only `only`) after what they depend on.
  Task<absl::Status> WriteBackL2(Slot* only);
  // Flushes the file and the data file when data or metadata was written since the last one.
  Task<absl::Status> FlushFiles();

  // ---- qcow2_refcount.cc ----
  uint64_t RefcountFromBlock(const uint8_t* block, int64_t index) const;
  void SetRefcountInBlock(uint8_t* block, int64_t index, uint64_t value) const;
  Task<absl::StatusOr<uint64_t>> GetRefcount(uint64_t cluster_index);
  // Adds `delta` to the refcount of every cluster touching [host, host + bytes).
  Task<absl::Status> UpdateRefcounts(uint64_t host, int64_t bytes, int64_t delta,
                                     FreeReason reason);
  // The refcount block covering table index `ti`, created when missing.
  Task<absl::StatusOr<uint64_t>> EnsureRefcountBlock(uint64_t ti);
  Task<absl::Status> GrowRefcountTable(uint64_t min_entries);
  // `n` contiguous clusters with refcount 0 from the hint on (not referenced yet).
  // `lowest_free`: the first free cluster the scan saw (the run's start when none before it).
  Task<absl::StatusOr<uint64_t>> FindFreeClusters(int64_t n, uint64_t* lowest_free = nullptr);
  // Allocates `n` contiguous clusters (refcount 1). Returns the host offset.
  Task<absl::StatusOr<uint64_t>> AllocClusters(int64_t n);
  // Frees that were waiting for their L2 tables to reach the disk.
  Task<absl::Status> ApplyPendingFrees();
  void QueueFree(uint64_t l2_entry, FreeReason reason);

  // ---- qcow2_mapping.cc ----
  // The L2 slice of the cluster at guest `offset`; null when its L1 entry is empty. With
  // `for_update` the L2 table is made writable (allocated, never shared) first.
  Task<absl::StatusOr<Slot*>> L2SliceFor(uint64_t offset, bool for_update);
  // Writes a freshly allocated metadata structure and makes it durable, with the refcounts
  // that allocated it, before anything points at it.
  Task<absl::Status> WriteNewMetadata(uint64_t host, const void* data, int64_t bytes);
  Task<absl::StatusOr<uint64_t>> AllocL2Table(uint64_t l1_index);
  // A private copy of the L2 table shared with a snapshot, linked in place of it.
  Task<absl::StatusOr<uint64_t>> CopyL2Table(uint64_t l1_index);
  Task<absl::Status> WriteL1Entry(uint64_t l1_index);
  // A larger L1 table (at least `entries`), written and flushed before the header points at
  // it; the old one is freed afterwards.
  Task<absl::Status> GrowL1Table(uint64_t entries, bool exact);
  // Growth with preallocation (metadata, falloc, full) of [old, target); under meta_.
  Task<absl::Status> PreallocateLocked(uint64_t old, uint64_t target, PreallocMode mode);
  // Classifies the entries starting at `index` of a slice for [offset, offset + bytes).
  absl::StatusOr<Mapping> Classify(const uint8_t* slice, int64_t index, uint64_t offset,
                                   int64_t bytes);
  uint64_t L2Entry(const uint8_t* slice, int64_t index) const;
  uint64_t L2Bitmap(const uint8_t* slice, int64_t index) const;
  void SetL2(uint8_t* slice, int64_t index, uint64_t entry, uint64_t bitmap);
  // QEMU's qcow2_detect_metadata_preallocation: more clusters in use than the file stores.
  Task<void> DetectMetadataPreallocation();
  // Frees whatever host storage `entry` holds (later: QueueFree).
  bool EntryHasStorage(uint64_t entry) const;

  // ---- state ----
  Header header_;
  std::string filename_;
  Child* file_ = nullptr;
  Child* data_file_ = nullptr;  // == file_ without an external data file
  MappingGeometry geometry_;
  int cluster_bits_ = 16;
  int64_t cluster_size_ = 65536;
  int entry_bytes_ = 8;      // 16 with extended L2 entries
  int64_t l2_entries_ = 0;   // entries per L2 table
  int64_t slice_entries_ = 0;  // entries per L2 cache slot
  int rb_bits_ = 0;            // log2(refcount entries per block)
  uint64_t refcount_max_ = 0;
  int csize_shift_ = 0;        // compressed descriptor: where the sector count starts
  uint64_t csize_mask_ = 0;
  uint64_t coffset_mask_ = 0;

  std::vector<uint64_t> l1_;
  std::vector<uint64_t> reftable_;
  std::set<uint64_t> l2_tables_;        // host offsets of active L2 tables (overlap checks)
  std::set<uint64_t> refcount_blocks_;  // host offsets of refcount blocks
  std::unique_ptr<MetadataCache> l2_cache_;
  std::unique_ptr<MetadataCache> rc_cache_;
  CoMutex meta_;

  uint64_t next_free_ = 0;   // cluster index hint: no free cluster below it
  uint64_t alloc_end_ = 0;   // cluster index past every cluster in use (file end included)
  uint64_t free_byte_ = 0;   // compressed packing: next free byte (0: none)
  std::vector<PendingFree> pending_frees_;
  bool files_need_flush_ = false;  // something was written to the file(s) since their flush
  bool data_written_ = false;      // guest data was written since the last L2 writeback

  bool lazy_refcounts_ = false;
  bool dirty_on_disk_ = false;
  bool corrupt_ = false;
  bool corrupt_on_disk_ = false;
  bool discard_request_ = false;
  bool discard_snapshot_ = true;
  bool discard_other_ = false;
  uint32_t overlap_checks_ = 0;
  int64_t cache_clean_interval_s_ = 0;
  uint64_t clean_timer_ = 0;  // the loop's timer id (0: none)
  std::vector<PersistentBitmap> bitmaps_;
  std::vector<SnapshotEntry> snapshots_;
  bool snapshot_table_ok_ = true;
  uint64_t snapshot_table_bytes_ = 0;  // of the table the header points at
  bool opened_ = false;
  bool prealloc_checked_ = false;
  bool metadata_prealloc_ = false;  // kData mappings ask the file whether they read as zeroes
};

}  // namespace libblock::qcow2

#endif  // LIBBLOCK_FORMATS_QCOW2_QCOW2_DRIVER_H_
