// qcow2 internal snapshots (qcow2.txt "Snapshots"): the snapshot table, taking, applying and
// deleting snapshots with their refcounts, and the VM-state area.
//
// A snapshot is a copy of the active L1 table plus one more reference on every L2 table it
// names and on every cluster those tables map (QEMU's qcow2_update_snapshot_refcount).
// References are counted per path: a data cluster of an L2 table shared by the active state
// and two snapshots has refcount 3, and copying that table for a write (CopyL2Table) leaves
// the cluster's count as it is. Entries whose cluster has refcount 1 carry COPIED (writable in
// place); every walk that changes refcounts also sets COPIED from the counts it leaves.
//
// Crash safety: at every point a power cut leaves a consistent image, with leaked clusters
// at most (tests/crash covers create and delete). The refcount walks change refcounts and
// COPIED flags in separate writes, so for a moment they disagree (QEMU has the same window,
// which its check then reports as OFLAG_COPIED errors); v3 images carry the dirty bit over
// each operation, so that a crash inside it is repaired when the image is next opened:
//   create: the L1 copy is written and the raised refcounts are durable before a new snapshot
//           table naming it is written and flushed; the header then switches to that table
//           (one 12-byte write) and the old table is freed;
//   delete: the header switches to a table without the snapshot first; its references are
//           dropped afterwards;
//   apply:  the snapshot's references are raised and durable before the active L1 table is
//           overwritten with its L1 (and flushed); the old state's references drop last.
// A failure midway leaves raised refcounts behind (leaks, as in QEMU), never a reference to a
// freed cluster.
#include <algorithm>
#include <cerrno>
#include <cstring>
#include <unordered_map>

#include "absl/strings/str_format.h"
#include "core/graph.h"
#include "core/node.h"
#include "formats/qcow2/qcow2_driver.h"
#include "util/checked_math.h"
#include "util/endian.h"
#include "util/status.h"

namespace libblock::qcow2 {

namespace {

// The known extra data: vm_state_size_large, disk_size, icount.
constexpr uint32_t kKnownExtraData = 24;

// Appends one table entry as qcow2.txt lays it out (QEMU writes the 32-bit VM-state size
// truncated and the full one in the extra data).
void SerializeEntry(const SnapshotInfo& info, uint64_t l1_offset, uint32_t l1_size,
                    uint64_t disk_size, const std::vector<uint8_t>& tail,
                    std::vector<uint8_t>& out) {
  const size_t start = out.size();
  const uint32_t extra = kKnownExtraData + static_cast<uint32_t>(tail.size());
  out.resize(start + 40 + extra + info.id.size() + info.name.size());
  uint8_t* p = out.data() + start;
  StoreBe64(p, l1_offset);
  StoreBe32(p + 8, l1_size);
  StoreBe16(p + 12, static_cast<uint16_t>(info.id.size()));
  StoreBe16(p + 14, static_cast<uint16_t>(info.name.size()));
  StoreBe32(p + 16, info.date_sec);
  StoreBe32(p + 20, info.date_nsec);
  StoreBe64(p + 24, info.vm_clock_nsec);
  StoreBe32(p + 32, static_cast<uint32_t>(info.vm_state_size));
  StoreBe32(p + 36, extra);
  StoreBe64(p + 40, info.vm_state_size);
  StoreBe64(p + 48, disk_size);
  StoreBe64(p + 56, info.icount);
  if (!tail.empty()) std::memcpy(p + 64, tail.data(), tail.size());
  std::memcpy(p + 40 + extra, info.id.data(), info.id.size());
  std::memcpy(p + 40 + extra + info.id.size(), info.name.data(), info.name.size());
  out.resize(AlignUp<size_t>(out.size(), 8), 0);
}

}  // namespace

// ---- the table -------------------------------------------------------------------------------

Task<void> Qcow2Node::LoadSnapshotTable() {
  // The header parser bounded the table's count and offset; an entry that does not fit the
  // file ends the list with a warning (check reports the table as corrupt).
  snapshots_.clear();
  snapshot_table_ok_ = true;
  snapshot_table_bytes_ = 0;
  if (header_.nb_snapshots == 0) co_return;
  const uint64_t file_size = static_cast<uint64_t>(file_->node()->size());
  uint64_t pos = header_.snapshots_offset;
  for (uint32_t i = 0; i < header_.nb_snapshots; ++i) {
    uint8_t fixed[40];
    bool fits = pos + sizeof fixed <= file_size &&
                pos + sizeof fixed - header_.snapshots_offset <= kMaxSnapshotTableBytes;
    absl::Status st = fits ? co_await file_->Pread(static_cast<int64_t>(pos), fixed, sizeof fixed)
                           : absl::OkStatus();
    uint32_t extra = fits ? LoadBe32(fixed + 36) : 0;
    uint16_t id_len = fits ? LoadBe16(fixed + 12) : 0;
    uint16_t name_len = fits ? LoadBe16(fixed + 14) : 0;
    uint64_t tail = uint64_t{extra} + id_len + name_len;
    if (!st.ok() || !fits || extra > kMaxSnapshotExtraData || pos + sizeof fixed + tail > file_size) {
      node().graph().Warn(absl::StrFormat("qcow2: image '%s': snapshot table entry %u at "
                                          "offset %#x is not readable; the snapshot list is "
                                          "incomplete", filename_, i, pos));
      snapshot_table_ok_ = false;
      break;
    }
    std::vector<uint8_t> rest(static_cast<size_t>(tail));
    if (tail) {
      st = co_await file_->Pread(static_cast<int64_t>(pos + sizeof fixed), rest.data(),
                                 static_cast<int64_t>(tail));
      if (!st.ok()) {
        snapshot_table_ok_ = false;
        break;
      }
    }
    SnapshotEntry sn;
    sn.l1_table_offset = LoadBe64(fixed);
    sn.l1_size = LoadBe32(fixed + 8);
    sn.info.date_sec = LoadBe32(fixed + 16);
    sn.info.date_nsec = LoadBe32(fixed + 20);
    sn.info.vm_clock_nsec = LoadBe64(fixed + 24);
    sn.info.vm_state_size = LoadBe32(fixed + 32);
    sn.disk_size = header_.size;
    if (extra >= 8) sn.info.vm_state_size = LoadBe64(rest.data());
    if (extra >= 16) sn.disk_size = LoadBe64(rest.data() + 8);
    if (extra >= 24) sn.info.icount = LoadBe64(rest.data() + 16);
    if (extra > kKnownExtraData) {
      sn.extra_tail.assign(rest.begin() + kKnownExtraData, rest.begin() + extra);
    }
    sn.info.id.assign(reinterpret_cast<const char*>(rest.data()) + extra, id_len);
    sn.info.name.assign(reinterpret_cast<const char*>(rest.data()) + extra + id_len, name_len);
    snapshots_.push_back(std::move(sn));
    pos += AlignUp<uint64_t>(sizeof fixed + tail, 8);
  }
  snapshot_table_bytes_ = pos - header_.snapshots_offset;
}

nlohmann::ordered_json Qcow2Node::SnapshotListJson() const {
  // QEMU's SnapshotInfo, in the order qemu-img info --output=json prints its members.
  if (snapshots_.empty()) return nlohmann::ordered_json();
  nlohmann::ordered_json list = nlohmann::ordered_json::array();
  for (const SnapshotEntry& e : snapshots_) {
    const SnapshotInfo& s = e.info;
    nlohmann::ordered_json sn;
    if (s.icount != ~uint64_t{0}) sn["icount"] = s.icount;
    sn["vm-clock-nsec"] = s.vm_clock_nsec % 1000000000ull;
    sn["name"] = s.name;
    sn["date-sec"] = s.date_sec;
    sn["date-nsec"] = s.date_nsec;
    sn["vm-clock-sec"] = s.vm_clock_nsec / 1000000000ull;
    sn["id"] = s.id;
    sn["vm-state-size"] = s.vm_state_size;
    list.push_back(std::move(sn));
  }
  return list;
}

Task<absl::Status> Qcow2Node::WriteSnapshotTable(std::vector<SnapshotEntry> list) {
  std::vector<uint8_t> table;
  for (const SnapshotEntry& e : list) {
    SerializeEntry(e.info, e.l1_table_offset, e.l1_size, e.disk_size, e.extra_tail, table);
  }
  if (table.size() > kMaxSnapshotTableBytes) {
    co_return ErrnoError(EFBIG, "qcow2: the snapshot table would be too large");
  }
  absl::Status dirty = co_await EnsureDirtyBit();
  if (!dirty.ok()) co_return dirty;
  uint64_t offset = 0;
  if (!table.empty()) {
    const int64_t clusters = static_cast<int64_t>(
        (table.size() + static_cast<size_t>(cluster_size_) - 1) / static_cast<size_t>(cluster_size_));
    absl::StatusOr<uint64_t> host = co_await AllocClusters(clusters);
    if (!host.ok()) co_return host.status();
    offset = *host;
    table.resize(static_cast<size_t>(clusters * cluster_size_), 0);
    // The table and the refcounts that allocated it are durable before the header names it.
    absl::Status st = co_await WriteNewMetadata(offset, table.data(),
                                                static_cast<int64_t>(table.size()));
    if (!st.ok()) co_return st;
  }
  uint8_t hdr[12];
  StoreBe32(hdr, static_cast<uint32_t>(list.size()));
  StoreBe64(hdr + 4, offset);
  absl::Status st = co_await file_->Pwrite(60, hdr, sizeof hdr);  // nb_snapshots, snapshots_offset
  if (!st.ok()) co_return st;
  files_need_flush_ = true;
  st = co_await FlushFiles();
  if (!st.ok()) co_return st;
  const uint64_t old_offset = header_.nb_snapshots ? header_.snapshots_offset : 0;
  const uint64_t old_bytes = snapshot_table_bytes_;
  header_.nb_snapshots = static_cast<uint32_t>(list.size());
  header_.snapshots_offset = offset;
  snapshot_table_bytes_ = table.size();
  snapshots_ = std::move(list);
  node().NoteMetadataChanged();
  if (old_offset && old_bytes) {
    st = co_await UpdateRefcounts(old_offset, static_cast<int64_t>(old_bytes), -1,
                                  FreeReason::kSnapshot);
    if (!st.ok()) co_return st;
  }
  co_return absl::OkStatus();
}

const Qcow2Node::SnapshotEntry* Qcow2Node::FindSnapshotEntry(const SnapshotKey& id,
                                                             const SnapshotKey& name) const {
  for (const SnapshotEntry& e : snapshots_) {
    if ((!id || e.info.id == *id) && (!name || e.info.name == *name)) return &e;
  }
  return nullptr;
}

uint64_t Qcow2Node::VmStateOffset() const {
  const uint64_t l2_span = static_cast<uint64_t>(cluster_size_) * static_cast<uint64_t>(l2_entries_);
  return (header_.size + l2_span - 1) / l2_span * l2_span;
}

// ---- refcounts -------------------------------------------------------------------------------

Task<absl::StatusOr<std::vector<uint64_t>>> Qcow2Node::ReadSnapshotL1(const SnapshotEntry& sn) {
  std::vector<uint64_t> l1(sn.l1_size);
  if (sn.l1_size == 0) co_return l1;
  const uint64_t bytes = uint64_t{sn.l1_size} * 8;
  const uint64_t file_size = static_cast<uint64_t>(file_->node()->size());
  if (bytes > 32ull * 1024 * 1024 || (sn.l1_table_offset & static_cast<uint64_t>(cluster_size_ - 1)) ||
      sn.l1_table_offset > file_size || bytes > file_size - sn.l1_table_offset) {
    co_return ErrnoError(EFBIG, absl::StrFormat(
        "qcow2: image '%s': snapshot '%s' has an invalid L1 table (offset %#x, %u entries)",
        filename_, sn.info.id, sn.l1_table_offset, sn.l1_size));
  }
  std::vector<uint8_t> raw(static_cast<size_t>(bytes));
  absl::Status st = co_await file_->Pread(static_cast<int64_t>(sn.l1_table_offset), raw.data(),
                                          static_cast<int64_t>(bytes));
  if (!st.ok()) co_return st;
  for (size_t i = 0; i < l1.size(); ++i) {
    l1[i] = LoadBe64(raw.data() + 8 * i);
    if ((l1[i] & kL1OffsetMask) & static_cast<uint64_t>(cluster_size_ - 1)) {
      co_return ErrnoError(EIO, absl::StrFormat(
          "qcow2: image '%s': snapshot '%s': L2 table offset %#x unaligned (L1 index: %#x)",
          filename_, sn.info.id, l1[i] & kL1OffsetMask, i));
    }
  }
  co_return l1;
}

Task<absl::Status> Qcow2Node::CheckRefcountHeadroom(const std::vector<uint64_t>& l1) {
  // Counts what a +1 walk over `l1` would add to each cluster (an L2 table, a data cluster, a
  // host cluster holding compressed blobs, once per blob) and compares with refcount_max_,
  // so that a walk that would overflow fails before it changes anything. QEMU fails midway
  // instead and leaves the raised counts behind.
  if (header_.refcount_order > 4) co_return absl::OkStatus();  // 2^32 - 1 references: out of reach
  const uint64_t cs = static_cast<uint64_t>(cluster_size_);
  const int64_t slice_bytes = l2_cache_->entry_size();
  const int64_t per_slice = slice_bytes / entry_bytes_;
  std::unordered_map<uint64_t, uint64_t> adds;
  for (uint64_t e1 : l1) {
    const uint64_t l2 = e1 & kL1OffsetMask;
    if (!l2) continue;
    ++adds[l2 / cs];
    for (int64_t s = 0; s < cluster_size_; s += slice_bytes) {
      absl::StatusOr<Slot*> slot = co_await GetSlot(*l2_cache_, l2 + static_cast<uint64_t>(s), true);
      if (!slot.ok()) co_return slot.status();
      for (int64_t k = 0; k < per_slice; ++k) {
        const uint64_t e = L2Entry((*slot)->data, k);
        if (e & kOflagCompressed) {
          uint64_t host = e & coffset_mask_;
          uint64_t sectors = ((e >> csize_shift_) & csize_mask_) + 1;
          uint64_t first = (host & ~uint64_t{511}) / cs;
          uint64_t last = ((host & ~uint64_t{511}) + sectors * 512 - 1) / cs;
          for (uint64_t c = first; c <= last; ++c) ++adds[c];
        } else if (e & kL2OffsetMask) {
          ++adds[(e & kL2OffsetMask) / cs];
        }
      }
    }
  }
  for (const auto& [cluster, n] : adds) {
    absl::StatusOr<uint64_t> rc = co_await GetRefcount(cluster);
    if (!rc.ok()) co_return rc.status();
    if (*rc > refcount_max_ || refcount_max_ - *rc < n) {
      co_return ErrnoError(EINVAL, absl::StrFormat(
          "qcow2: image '%s': the refcount of cluster %#x would exceed %u (refcount_bits=%d)",
          filename_, cluster * cs, refcount_max_, 1 << header_.refcount_order));
    }
  }
  co_return absl::OkStatus();
}

Task<absl::StatusOr<bool>> Qcow2Node::AdjustL1Refcounts(std::vector<uint64_t>& l1,
                                                        int64_t addend) {
  const uint64_t cs = static_cast<uint64_t>(cluster_size_);
  const int64_t slice_bytes = l2_cache_->entry_size();
  const int64_t per_slice = slice_bytes / entry_bytes_;
  const uint64_t file_size = static_cast<uint64_t>(file_->node()->size());
  std::vector<uint8_t> slice(static_cast<size_t>(slice_bytes));
  bool l1_changed = false;
  for (size_t i = 0; i < l1.size(); ++i) {
    const uint64_t l2 = l1[i] & kL1OffsetMask;
    if (!l2) continue;
    if ((l2 & (cs - 1)) || l2 > file_size || file_size - l2 < cs) {
      absl::Status bad = co_await SignalCorruption(absl::StrFormat(
          "L2 table offset %#x invalid (L1 index: %#x)", l2, i));
      co_return bad;
    }
    for (int64_t s = 0; s < cluster_size_; s += slice_bytes) {
      const uint64_t at = l2 + static_cast<uint64_t>(s);
      absl::StatusOr<Slot*> slot = co_await GetSlot(*l2_cache_, at, /*load=*/true);
      if (!slot.ok()) co_return slot.status();
      std::memcpy(slice.data(), (*slot)->data, slice.size());
      bool changed = false;
      for (int64_t k = 0; k < per_slice; ++k) {
        const uint64_t e = L2Entry(slice.data(), k);
        if (e & kOflagCompressed) {
          if (addend) {
            uint64_t host = e & coffset_mask_;
            uint64_t sectors = ((e >> csize_shift_) & csize_mask_) + 1;
            absl::Status st = co_await UpdateRefcounts(host & ~uint64_t{511},
                                                       static_cast<int64_t>(sectors * 512),
                                                       addend, FreeReason::kSnapshot);
            if (!st.ok()) co_return st;
          }
          continue;
        }
        const uint64_t host = e & kL2OffsetMask;
        if (!host) continue;
        if (addend) {
          absl::Status st = co_await UpdateRefcounts(host, cluster_size_, addend,
                                                     FreeReason::kSnapshot);
          if (!st.ok()) co_return st;
        }
        absl::StatusOr<uint64_t> rc = co_await GetRefcount(host / cs);
        if (!rc.ok()) co_return rc.status();
        const uint64_t ne = *rc == 1 ? (e | kOflagCopied) : (e & ~kOflagCopied);
        if (ne != e) {
          StoreBe64(slice.data() + k * entry_bytes_, ne);
          changed = true;
        }
      }
      if (changed) {
        // The slot may have moved while refcount blocks were loaded: look it up again.
        absl::StatusOr<Slot*> again = co_await GetSlot(*l2_cache_, at, /*load=*/true);
        if (!again.ok()) co_return again.status();
        std::memcpy((*again)->data, slice.data(), slice.size());
        (*again)->dirty = true;
      }
    }
    if (addend) {
      absl::Status st = co_await UpdateRefcounts(l2, cluster_size_, addend, FreeReason::kSnapshot);
      if (!st.ok()) co_return st;
    }
    absl::StatusOr<uint64_t> rc = co_await GetRefcount(l2 / cs);
    if (!rc.ok()) co_return rc.status();
    const uint64_t ne = *rc == 1 ? (l1[i] | kOflagCopied) : (l1[i] & ~kOflagCopied);
    if (ne != l1[i]) {
      l1[i] = ne;
      l1_changed = true;
    }
  }
  co_return l1_changed;
}

Task<absl::Status> Qcow2Node::WriteL1Table() {
  std::vector<uint8_t> raw(l1_.size() * 8);
  for (size_t i = 0; i < l1_.size(); ++i) StoreBe64(raw.data() + 8 * i, l1_[i]);
  absl::Status dirty = co_await EnsureDirtyBit();
  if (!dirty.ok()) co_return dirty;
  if (raw.empty()) co_return absl::OkStatus();
  absl::Status st = co_await file_->Pwrite(static_cast<int64_t>(header_.l1_table_offset),
                                           raw.data(), static_cast<int64_t>(raw.size()));
  if (!st.ok()) co_return st;
  files_need_flush_ = true;
  co_return absl::OkStatus();
}

Task<absl::Status> Qcow2Node::RefreshActiveCopiedFlags() {
  absl::StatusOr<bool> changed = co_await AdjustL1Refcounts(l1_, 0);
  if (!changed.ok()) co_return changed.status();
  if (!*changed) co_return absl::OkStatus();
  // The L2 tables the flags changed in go first, then the L1 table.
  absl::Status st = co_await FlushLocked();
  if (!st.ok()) co_return st;
  co_return co_await WriteL1Table();
}

Task<absl::Status> Qcow2Node::EndDirtyUpdate() {
  absl::Status st = co_await FlushLocked();
  if (!st.ok()) co_return st;
  st = co_await FlushFiles();
  if (!st.ok()) co_return st;
  if (lazy_refcounts_) co_return absl::OkStatus();
  co_return co_await ClearDirtyBit();
}

// ---- operations ------------------------------------------------------------------------------

Task<absl::StatusOr<std::vector<SnapshotInfo>>> Qcow2Node::ListSnapshots() {
  std::vector<SnapshotInfo> out;
  for (const SnapshotEntry& e : snapshots_) out.push_back(e.info);
  co_return out;
}

namespace {
absl::Status Unsupported(const std::string& what) { return ErrnoError(ENOTSUP, what); }
}  // namespace

Task<absl::Status> Qcow2Node::CreateSnapshot(SnapshotInfo& sn) {
  if (data_file_ != file_) {
    co_return Unsupported("qcow2: internal snapshots are not supported with an external data file");
  }
  if (sn.id.size() > UINT16_MAX || sn.name.size() > UINT16_MAX) {
    co_return ErrnoError(EINVAL, "qcow2: a snapshot's id and name are at most 65535 bytes");
  }
  CoMutex::Guard guard = co_await meta_.ScopedLock();
  if (corrupt_) co_return CorruptionStatus("the image is marked corrupt; writes are refused");
  if (!snapshot_table_ok_) {
    co_return ErrnoError(EIO, absl::StrFormat("qcow2: image '%s': the snapshot table cannot be "
                                              "read; repair it with check -r all", filename_));
  }
  if (snapshots_.size() >= kMaxSnapshots) co_return ErrnoError(EFBIG, "Too many snapshots");
  if (sn.id.empty()) {
    // QEMU's find_new_snapshot_id: one past the largest numeric id.
    unsigned long max_id = 0;
    for (const SnapshotEntry& e : snapshots_) max_id = std::max(max_id, std::strtoul(e.info.id.c_str(), nullptr, 10));
    sn.id = std::to_string(max_id + 1);
  } else if (FindSnapshotEntry(sn.id, std::nullopt)) {
    co_return ErrnoError(EEXIST, absl::StrFormat("Snapshot with ID '%s' already exists", sn.id));
  }
  absl::Status st = co_await FlushLocked();
  if (!st.ok()) co_return st;
  st = co_await CheckRefcountHeadroom(l1_);
  if (!st.ok()) co_return st;
  st = co_await SetDirtyBit();
  if (!st.ok()) co_return st;

  // The copy of the active L1 table (without COPIED flags: nothing in it is writable in place).
  SnapshotEntry entry;
  entry.info = sn;
  entry.l1_size = static_cast<uint32_t>(l1_.size());
  entry.disk_size = header_.size;
  if (!l1_.empty()) {
    const int64_t bytes = AlignUp<int64_t>(static_cast<int64_t>(l1_.size()) * 8, cluster_size_);
    absl::Status dirty = co_await EnsureDirtyBit();
    if (!dirty.ok()) co_return dirty;
    absl::StatusOr<uint64_t> host = co_await AllocClusters(bytes / cluster_size_);
    if (!host.ok()) co_return host.status();
    std::vector<uint8_t> raw(static_cast<size_t>(bytes), 0);
    for (size_t i = 0; i < l1_.size(); ++i) StoreBe64(raw.data() + 8 * i, l1_[i] & ~kOflagCopied);
    st = co_await WriteNewMetadata(*host, raw.data(), bytes);
    if (!st.ok()) co_return st;
    entry.l1_table_offset = *host;
  }
  // One more reference on everything the active state names, durable before the table does.
  absl::StatusOr<bool> changed = co_await AdjustL1Refcounts(l1_, +1);
  if (!changed.ok()) co_return changed.status();
  st = co_await FlushLocked();
  if (!st.ok()) co_return st;
  if (*changed) {
    st = co_await WriteL1Table();
    if (!st.ok()) co_return st;
  }
  st = co_await FlushFiles();
  if (!st.ok()) co_return st;
  std::vector<SnapshotEntry> list = snapshots_;
  list.push_back(std::move(entry));
  st = co_await WriteSnapshotTable(std::move(list));
  if (!st.ok()) co_return st;

  // The VM state now lives in the snapshot; the active state drops it (QEMU does, so that the
  // next snapshot does not copy it around).
  if (sn.vm_state_size) {
    const uint64_t cs = static_cast<uint64_t>(cluster_size_);
    const uint64_t start = VmStateOffset();
    const uint64_t end = start + AlignUp<uint64_t>(sn.vm_state_size, cs);
    for (uint64_t c = start; c < end; c += cs) {
      absl::StatusOr<Slot*> slot = co_await L2SliceFor(c, /*for_update=*/false);
      if (!slot.ok()) co_return slot.status();
      if (!*slot) continue;
      int64_t index = static_cast<int64_t>((c / cs) % static_cast<uint64_t>(slice_entries_));
      uint64_t old = L2Entry((*slot)->data, index);
      if (!old && !L2Bitmap((*slot)->data, index)) continue;
      slot = co_await L2SliceFor(c, /*for_update=*/true);
      if (!slot.ok()) co_return slot.status();
      if (EntryHasStorage(old)) QueueFree(old, FreeReason::kOther);
      SetL2((*slot)->data, index, 0, 0);
      (*slot)->dirty = true;
    }
  }
  st = co_await EndDirtyUpdate();
  if (!st.ok()) co_return st;
  InvalidateMappingCaches();
  co_return absl::OkStatus();
}

Task<absl::Status> Qcow2Node::ApplySnapshot(const SnapshotKey& id, const SnapshotKey& name) {
  CoMutex::Guard guard = co_await meta_.ScopedLock();
  if (corrupt_) co_return CorruptionStatus("the image is marked corrupt; writes are refused");
  const SnapshotEntry* found = FindSnapshotEntry(id, name);
  if (!found) co_return ErrnoError(ENOENT, "Failed to load snapshot: No such file or directory");
  const SnapshotEntry sn = *found;
  absl::StatusOr<std::vector<uint64_t>> sn_l1 = co_await ReadSnapshotL1(sn);
  if (!sn_l1.ok()) co_return sn_l1.status();
  const uint64_t l2_span = static_cast<uint64_t>(cluster_size_) * static_cast<uint64_t>(l2_entries_);
  if (uint64_t{sn.l1_size} * l2_span < sn.disk_size) {
    co_return ErrnoError(EIO, absl::StrFormat("qcow2: image '%s': snapshot '%s': its L1 table "
                                              "does not cover its disk size", filename_, sn.info.id));
  }
  absl::Status st = co_await FlushLocked();
  if (!st.ok()) co_return st;
  st = co_await CheckRefcountHeadroom(*sn_l1);
  if (!st.ok()) co_return st;
  st = co_await SetDirtyBit();
  if (!st.ok()) co_return st;
  if (sn.l1_size > l1_.size()) {
    st = co_await GrowL1Table(sn.l1_size, /*exact=*/true);
    if (!st.ok()) co_return st;
  }
  if (sn.disk_size != header_.size) {
    // The disk takes the snapshot's size (QEMU resizes it first).
    absl::Status dirty = co_await EnsureDirtyBit();
    if (!dirty.ok()) co_return dirty;
    uint8_t raw[8];
    StoreBe64(raw, sn.disk_size);
    st = co_await file_->Pwrite(24, raw, 8);
    if (!st.ok()) co_return st;
    files_need_flush_ = true;
    header_.size = sn.disk_size;
  }
  // The snapshot's references, raised and durable before the active table names them.
  std::vector<uint64_t> next = *sn_l1;
  absl::StatusOr<bool> changed = co_await AdjustL1Refcounts(next, +1);
  if (!changed.ok()) co_return changed.status();
  st = co_await FlushLocked();
  if (!st.ok()) co_return st;
  st = co_await FlushFiles();
  if (!st.ok()) co_return st;

  std::vector<uint64_t> old = l1_;
  std::fill(l1_.begin(), l1_.end(), 0);
  std::copy(next.begin(), next.end(), l1_.begin());
  st = co_await WriteL1Table();
  if (!st.ok()) co_return st;
  st = co_await FlushFiles();
  if (!st.ok()) co_return st;
  l2_tables_.clear();
  for (uint64_t e : l1_) {
    if (e & kL1OffsetMask) l2_tables_.insert(e & kL1OffsetMask);
  }
  InvalidateMappingCaches();
  // The old state's references go; then COPIED follows the counts left.
  absl::StatusOr<bool> dropped = co_await AdjustL1Refcounts(old, -1);
  if (!dropped.ok()) co_return dropped.status();
  st = co_await RefreshActiveCopiedFlags();
  if (!st.ok()) co_return st;
  st = co_await EndDirtyUpdate();
  if (!st.ok()) co_return st;
  free_byte_ = 0;
  node().NoteMetadataChanged();
  co_return node().RefreshSize();
}

Task<absl::Status> Qcow2Node::DeleteSnapshot(const SnapshotKey& id, const SnapshotKey& name) {
  CoMutex::Guard guard = co_await meta_.ScopedLock();
  if (corrupt_) co_return CorruptionStatus("the image is marked corrupt; writes are refused");
  if (!snapshot_table_ok_) {
    co_return ErrnoError(EIO, absl::StrFormat("qcow2: image '%s': the snapshot table cannot be "
                                              "read; repair it with check -r all", filename_));
  }
  const SnapshotEntry* found = FindSnapshotEntry(id, name);
  if (!found) co_return ErrnoError(ENOENT, "snapshot not found");
  const SnapshotEntry sn = *found;
  absl::StatusOr<std::vector<uint64_t>> sn_l1 = co_await ReadSnapshotL1(sn);
  if (!sn_l1.ok()) co_return sn_l1.status();
  absl::Status st = co_await FlushLocked();
  if (!st.ok()) co_return st;
  st = co_await SetDirtyBit();
  if (!st.ok()) co_return st;
  std::vector<SnapshotEntry> list;
  for (const SnapshotEntry& e : snapshots_) {
    if (&e != found) list.push_back(e);
  }
  st = co_await WriteSnapshotTable(std::move(list));
  if (!st.ok()) co_return st;
  // Nothing names the snapshot any more: its references go, then its L1 table.
  absl::StatusOr<bool> dropped = co_await AdjustL1Refcounts(*sn_l1, -1);
  if (!dropped.ok()) co_return dropped.status();
  if (sn.l1_size) {
    st = co_await UpdateRefcounts(sn.l1_table_offset, int64_t{sn.l1_size} * 8, -1,
                                  FreeReason::kSnapshot);
    if (!st.ok()) co_return st;
  }
  st = co_await RefreshActiveCopiedFlags();
  if (!st.ok()) co_return st;
  st = co_await EndDirtyUpdate();
  if (!st.ok()) co_return st;
  InvalidateMappingCaches();
  co_return absl::OkStatus();
}

Task<absl::Status> Qcow2Node::MakeEmpty() {
  // The active state drops every reference it holds, as applying an empty snapshot would:
  // the zeroed L1 table is durable first, then the refcounts drop (snapshots keep theirs).
  // A raw external data file must keep reading as the disk: SupportsMakeEmpty() says no.
  if (header_.autoclear_features & kAutoclearDataFileRaw) {
    co_return Unsupported("qcow2: an image with a raw external data file cannot be emptied");
  }
  CoMutex::Guard guard = co_await meta_.ScopedLock();
  if (corrupt_) co_return CorruptionStatus("the image is marked corrupt; writes are refused");
  absl::Status st = co_await FlushLocked();
  if (!st.ok()) co_return st;
  st = co_await SetDirtyBit();
  if (!st.ok()) co_return st;
  std::vector<uint64_t> old = l1_;
  std::fill(l1_.begin(), l1_.end(), 0);
  st = co_await WriteL1Table();
  if (!st.ok()) co_return st;
  st = co_await FlushFiles();
  if (!st.ok()) co_return st;
  l2_tables_.clear();
  InvalidateMappingCaches();
  if (data_file_ != file_) {
    // Data-file clusters are not refcounted (and there are no snapshots): only the L2
    // tables are freed.
    for (uint64_t e : old) {
      if (!(e & kL1OffsetMask)) continue;
      st = co_await UpdateRefcounts(e & kL1OffsetMask, cluster_size_, -1, FreeReason::kOther);
      if (!st.ok()) co_return st;
    }
  } else {
    absl::StatusOr<bool> dropped = co_await AdjustL1Refcounts(old, -1);
    if (!dropped.ok()) co_return dropped.status();
  }
  st = co_await EndDirtyUpdate();
  if (!st.ok()) co_return st;
  free_byte_ = 0;
  node().NoteMetadataChanged();
  co_return absl::OkStatus();
}

Task<absl::Status> Qcow2Node::LoadSnapshotTemporarily(const SnapshotKey& id, const SnapshotKey& name) {
  if (writable()) {
    co_return ErrnoError(EPERM, "qcow2: a snapshot can be loaded temporarily only into a "
                                "read-only node");
  }
  CoMutex::Guard guard = co_await meta_.ScopedLock();
  const SnapshotEntry* found = FindSnapshotEntry(id, name);
  if (!found) co_return ErrnoError(ENOENT, "Can't find snapshot");
  const SnapshotEntry sn = *found;
  absl::StatusOr<std::vector<uint64_t>> sn_l1 = co_await ReadSnapshotL1(sn);
  if (!sn_l1.ok()) co_return sn_l1.status();
  // Only memory changes: reads go through the snapshot's tables from now on.
  l1_ = std::move(*sn_l1);
  header_.size = sn.disk_size;
  l2_tables_.clear();
  for (uint64_t e : l1_) {
    if (e & kL1OffsetMask) l2_tables_.insert(e & kL1OffsetMask);
  }
  InvalidateMappingCaches();
  co_return node().RefreshSize();
}

Task<absl::Status> Qcow2Node::VmStateIo(int64_t pos, void* buf, int64_t bytes, bool write) {
  if (pos < 0 || bytes < 0) co_return ErrnoError(EINVAL, "qcow2: invalid VM-state range");
  if (data_file_ != file_) {
    co_return Unsupported("qcow2: internal snapshots are not supported with an external data file");
  }
  const uint64_t start = VmStateOffset() + static_cast<uint64_t>(pos);
  uint64_t end = 0;
  if (!CheckedAdd(start, static_cast<uint64_t>(bytes), &end) || end > static_cast<uint64_t>(kMaxLength)) {
    co_return ErrnoError(EFBIG, "qcow2: the VM state does not fit the image");
  }
  if (bytes == 0) co_return absl::OkStatus();
  IoVec v(buf, static_cast<size_t>(bytes));
  if (!write) co_return co_await Read(static_cast<int64_t>(start), bytes, v, 0);
  {
    // The L1 table covers the area before the engine writes to it.
    CoMutex::Guard guard = co_await meta_.ScopedLock();
    const uint64_t l2_span = static_cast<uint64_t>(cluster_size_) * static_cast<uint64_t>(l2_entries_);
    const uint64_t need = (end + l2_span - 1) / l2_span;
    if (need > l1_.size()) {
      absl::Status st = co_await GrowL1Table(need, /*exact=*/false);
      if (!st.ok()) co_return st;
    }
  }
  co_return co_await Write(static_cast<int64_t>(start), bytes, v, 0);
}

}  // namespace libblock::qcow2
