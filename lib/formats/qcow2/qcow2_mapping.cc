// qcow2 L1/L2 tables: what guest ranges map to (Map), allocating and linking clusters
// (Allocate/Commit/Abort, compressed ones), zero clusters and discard.
//
// L2 entries (qcow2.txt, "Cluster mapping"): bit 63 COPIED (refcount exactly 1: writable in
// place), bit 62 compressed; standard descriptors hold the cluster's host offset in bits 9-55
// and (v3, without extended L2) the zero flag in bit 0; compressed descriptors hold a byte
// offset in bits 0..x-1 and the count of additional 512-byte sectors in bits x..61, with
// x = 62 - (cluster_bits - 8). Extended L2 entries add a 64-bit bitmap: bit n (n < 32)
// subcluster n allocated, bit 32 + n subcluster n reads as zeroes.
//
// With an external data file, host offsets point into the "data-file" child and are not
// refcounted; this driver allocates them at the guest offset (which keeps data_file_raw
// images raw).
#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_format.h"
#include "core/node.h"
#include "formats/qcow2/qcow2_driver.h"
#include "util/checked_math.h"
#include "util/endian.h"
#include "util/status.h"

namespace libblock::qcow2 {

namespace {
constexpr uint64_t kBitmapAllZeroes = 0xffffffff00000000ull;
}  // namespace

struct Qcow2Node::AllocCookie {
  uint64_t cluster_guest = 0;  // first guest cluster
  int64_t clusters = 0;
  uint64_t host = 0;           // host offset of the first cluster (compressed: the blob)
  bool reuse = false;          // the cluster's own host cluster (zero-with-offset, subclusters)
  bool fresh_refcounted = false;  // clusters were allocated from the refcounts (Abort frees)
  bool compressed = false;
  int64_t stored = 0;
};

uint64_t Qcow2Node::L2Entry(const uint8_t* slice, int64_t index) const {
  return LoadBe64(slice + index * entry_bytes_);
}
uint64_t Qcow2Node::L2Bitmap(const uint8_t* slice, int64_t index) const {
  return entry_bytes_ == 16 ? LoadBe64(slice + index * 16 + 8) : 0;
}
void Qcow2Node::SetL2(uint8_t* slice, int64_t index, uint64_t entry, uint64_t bitmap) {
  StoreBe64(slice + index * entry_bytes_, entry);
  if (entry_bytes_ == 16) StoreBe64(slice + index * 16 + 8, bitmap);
}

bool Qcow2Node::EntryHasStorage(uint64_t entry) const {
  if (entry & kOflagCompressed) return true;
  return (entry & kL2OffsetMask) != 0 || (data_file_ != file_ && (entry & kOflagCopied));
}

Task<absl::Status> Qcow2Node::WriteL1Entry(uint64_t l1_index) {
  uint8_t raw[8];
  StoreBe64(raw, l1_[l1_index]);
  absl::Status dirty = co_await EnsureDirtyBit();
  if (!dirty.ok()) co_return dirty;
  absl::Status st = co_await file_->Pwrite(
      static_cast<int64_t>(header_.l1_table_offset + 8 * l1_index), raw, 8);
  if (!st.ok()) co_return st;
  files_need_flush_ = true;
  co_return absl::OkStatus();
}

Task<absl::Status> Qcow2Node::WriteNewMetadata(uint64_t host, const void* data, int64_t bytes) {
  absl::Status st = co_await file_->Pwrite(static_cast<int64_t>(host), data, bytes);
  if (!st.ok()) co_return st;
  files_need_flush_ = true;
  if (!lazy_refcounts_) {
    st = co_await WriteBackRefcounts();
    if (!st.ok()) co_return st;
  }
  co_return co_await FlushFiles();
}

Task<absl::StatusOr<uint64_t>> Qcow2Node::AllocL2Table(uint64_t l1_index) {
  absl::Status dirty = co_await EnsureDirtyBit();
  if (!dirty.ok()) co_return dirty;
  absl::StatusOr<uint64_t> host = co_await AllocClusters(1);
  if (!host.ok()) co_return host.status();
  // The table is zero on disk (and its refcount durable) before the L1 entry points at it.
  std::vector<uint8_t> zeros(static_cast<size_t>(cluster_size_), 0);
  absl::Status st = co_await WriteNewMetadata(*host, zeros.data(), cluster_size_);
  if (!st.ok()) co_return st;
  l1_[l1_index] = *host | kOflagCopied;
  l2_tables_.insert(*host);
  absl::Status l1 = co_await WriteL1Entry(l1_index);
  if (!l1.ok()) co_return l1;
  co_return *host;
}

Task<absl::StatusOr<uint64_t>> Qcow2Node::CopyL2Table(uint64_t l1_index) {
  // The table is shared with an internal snapshot (no COPIED flag): the active L1 gets a copy
  // of its own, as QEMU does. The data clusters it names stay shared (their refcounts already
  // count the snapshot's reference; their entries keep COPIED clear, so writes to them
  // allocate), and the old table loses the active reference.
  const uint64_t old = l1_[l1_index] & kL1OffsetMask;
  const int64_t slice_bytes = l2_cache_->entry_size();
  std::vector<uint8_t> table(static_cast<size_t>(cluster_size_));
  for (int64_t s = 0; s < cluster_size_; s += slice_bytes) {
    absl::StatusOr<Slot*> slot = co_await GetSlot(*l2_cache_, old + static_cast<uint64_t>(s),
                                                  /*load=*/true);
    if (!slot.ok()) co_return slot.status();
    std::memcpy(table.data() + s, (*slot)->data, static_cast<size_t>(slice_bytes));
  }
  absl::Status dirty = co_await EnsureDirtyBit();
  if (!dirty.ok()) co_return dirty;
  absl::StatusOr<uint64_t> host = co_await AllocClusters(1);
  if (!host.ok()) co_return host.status();
  // The copy and its refcount are on disk before the L1 entry points at it.
  absl::Status st = co_await WriteNewMetadata(*host, table.data(), cluster_size_);
  if (!st.ok()) co_return st;
  l1_[l1_index] = *host | kOflagCopied;
  l2_tables_.erase(old);
  l2_tables_.insert(*host);
  st = co_await WriteL1Entry(l1_index);
  if (!st.ok()) co_return st;
  // The snapshot keeps the old table; its refcount drops once the new L1 entry is durable.
  st = co_await FlushFiles();
  if (!st.ok()) co_return st;
  st = co_await UpdateRefcounts(old, cluster_size_, -1, FreeReason::kOther);
  if (!st.ok()) co_return st;
  co_return *host;
}

Task<absl::StatusOr<Qcow2Node::Slot*>> Qcow2Node::L2SliceFor(uint64_t offset, bool for_update) {
  const uint64_t l2_span = static_cast<uint64_t>(cluster_size_) * static_cast<uint64_t>(l2_entries_);
  uint64_t l1_index = offset / l2_span;
  if (l1_index >= l1_.size()) {
    if (!for_update) co_return nullptr;
    co_return ErrnoError(EIO, absl::StrFormat("qcow2: image '%s': guest offset %#x is beyond "
                                              "the L1 table", filename_, offset));
  }
  uint64_t l2 = l1_[l1_index] & kL1OffsetMask;
  if (!l2) {
    if (!for_update) co_return nullptr;
    absl::StatusOr<uint64_t> table = co_await AllocL2Table(l1_index);
    if (!table.ok()) co_return table.status();
    l2 = *table;
  } else if (for_update && !(l1_[l1_index] & kOflagCopied)) {
    if (l2 & static_cast<uint64_t>(cluster_size_ - 1)) {
      absl::Status bad = co_await SignalCorruption(absl::StrFormat(
          "L2 table offset %#x unaligned (L1 index: %#x)", l2, l1_index));
      co_return bad;
    }
    absl::StatusOr<uint64_t> table = co_await CopyL2Table(l1_index);
    if (!table.ok()) co_return table.status();
    l2 = *table;
  }
  if (l2 & static_cast<uint64_t>(cluster_size_ - 1)) {
    absl::Status bad = co_await SignalCorruption(absl::StrFormat(
        "L2 table offset %#x unaligned (L1 index: %#x)", l2, l1_index));
    co_return bad;
  }
  if (l2 > static_cast<uint64_t>(file_->node()->size()) - static_cast<uint64_t>(cluster_size_) ||
      static_cast<uint64_t>(file_->node()->size()) < static_cast<uint64_t>(cluster_size_)) {
    absl::Status bad = co_await SignalCorruption(absl::StrFormat(
        "L2 table offset %#x is past the end of the file (L1 index: %#x)", l2, l1_index));
    co_return bad;
  }
  uint64_t l2_index = (offset >> cluster_bits_) % static_cast<uint64_t>(l2_entries_);
  uint64_t slice = l2 + (l2_index / static_cast<uint64_t>(slice_entries_)) *
                            static_cast<uint64_t>(l2_cache_->entry_size());
  co_return co_await GetSlot(*l2_cache_, slice, /*load=*/true);
}

absl::StatusOr<Mapping> Qcow2Node::Classify(const uint8_t* slice, int64_t index, uint64_t offset,
                                            int64_t bytes) {
  const uint64_t cs = static_cast<uint64_t>(cluster_size_);
  const uint64_t first_cluster = offset / cs;
  uint64_t e0 = L2Entry(slice, index);
  Mapping m;
  if (e0 & kOflagCompressed) {
    if (data_file_ != file_) {
      return absl::DataLossError(absl::StrFormat(
          "Compressed cluster entry found in image with external data file (L2 index: %#x)",
          index));
    }
    uint64_t host = e0 & coffset_mask_;
    uint64_t sectors = ((e0 >> csize_shift_) & csize_mask_) + 1;
    m.kind = MapKind::kCompressed;
    m.child = file_;
    m.host = HostOffset(static_cast<int64_t>(host));
    m.codec = compression_codec();
    m.blob_bytes = static_cast<int64_t>(sectors * 512 - (host & 511));
    m.blob_guest = GuestOffset(static_cast<int64_t>(first_cluster * cs));
    m.blob_guest_bytes = cluster_size_;
    m.bytes = std::min<int64_t>(bytes, static_cast<int64_t>((first_cluster + 1) * cs - offset));
    return m;
  }

  const bool ext = entry_bytes_ == 16;
  const uint64_t unit = static_cast<uint64_t>(geometry_.subcluster_size);
  const uint64_t end = offset + static_cast<uint64_t>(bytes);
  struct Unit {
    MapKind kind;
    uint64_t host;  // kData (and `reserved`): host offset of the unit's first byte
    bool writable;
    bool compressed;
    bool reserved;  // kZero/kUnallocated with host storage (QEMU's ZERO_ALLOC/UNALLOCATED_ALLOC)
  };
  auto classify = [&](uint64_t pos, Unit* u) -> absl::Status {
    int64_t i = index + static_cast<int64_t>(pos / cs - first_cluster);
    uint64_t e = L2Entry(slice, i);
    u->compressed = e & kOflagCompressed;
    if (u->compressed) return absl::OkStatus();
    uint64_t host = e & kL2OffsetMask;
    bool copied = e & kOflagCopied;
    if (host & (cs - 1)) {
      return absl::DataLossError(absl::StrFormat(
          "Cluster allocation offset %#x unaligned (L2 index: %#x)", host, i));
    }
    bool has_host = host != 0 || (data_file_ != file_ && copied);
    u->writable = false;
    u->host = 0;
    u->reserved = false;
    auto reserve = [&] {
      if (!has_host) return;
      u->reserved = true;
      u->host = host + pos % cs;
    };
    if (!ext) {
      if (header_.version >= 3 && (e & kOflagZero)) {
        u->kind = MapKind::kZero;
        reserve();
      } else if (!has_host) {
        u->kind = MapKind::kUnallocated;
      } else {
        u->kind = MapKind::kData;
        u->host = host + pos % cs;
        u->writable = copied;
      }
      return absl::OkStatus();
    }
    uint64_t bitmap = L2Bitmap(slice, i);
    int sc = static_cast<int>((pos % cs) / unit);
    bool alloc = (bitmap >> sc) & 1;
    bool zero = (bitmap >> (32 + sc)) & 1;
    if (alloc && zero) {
      return absl::DataLossError(absl::StrFormat(
          "Invalid cluster entry found  (L2 index: %#x, L2 entry: %#x, L2 bitmap: %#x)", i, e,
          bitmap));
    }
    if (zero) {
      u->kind = MapKind::kZero;
      reserve();
    } else if (alloc) {
      if (!has_host) {
        return absl::DataLossError(absl::StrFormat(
            "Invalid cluster entry found  (L2 index: %#x, L2 entry: %#x, L2 bitmap: %#x)", i, e,
            bitmap));
      }
      u->kind = MapKind::kData;
      u->host = host + pos % cs;
      u->writable = copied;
    } else {
      u->kind = MapKind::kUnallocated;
      reserve();
    }
    return absl::OkStatus();
  };

  Unit first;
  absl::Status st = classify(offset, &first);
  if (!st.ok()) return st;
  m.kind = first.kind;
  m.child = data_file_;
  m.host = HostOffset(static_cast<int64_t>(first.host));
  m.writable = first.writable;
  m.reserved = first.reserved;
  uint64_t pos = (offset / unit + 1) * unit;
  while (pos < end) {
    Unit next;
    st = classify(pos, &next);
    if (!st.ok()) return st;
    if (next.compressed || next.kind != first.kind || next.writable != first.writable ||
        next.reserved != first.reserved) {
      break;
    }
    if ((first.kind == MapKind::kData || first.reserved) &&
        next.host != first.host + (pos - offset)) {
      break;
    }
    pos += unit;
  }
  m.bytes = static_cast<int64_t>(std::min(pos, end) - offset);
  return m;
}

Task<absl::StatusOr<Mapping>> Qcow2Node::Map(GuestOffset goffset, int64_t bytes, bool for_write) {
  (void)for_write;
  const uint64_t offset = static_cast<uint64_t>(goffset.value());
  // One answer per L2 cache slice.
  const uint64_t slice_span = static_cast<uint64_t>(slice_entries_) << cluster_bits_;
  uint64_t slice_end = (offset / slice_span + 1) * slice_span;
  bytes = static_cast<int64_t>(std::min<uint64_t>(static_cast<uint64_t>(bytes), slice_end - offset));

  const uint64_t l2_span = static_cast<uint64_t>(cluster_size_) * static_cast<uint64_t>(l2_entries_);
  uint64_t l1_index = offset / l2_span;
  uint64_t l2 = l1_index < l1_.size() ? (l1_[l1_index] & kL1OffsetMask) : 0;
  if (!l2) {
    Mapping m;
    m.kind = MapKind::kUnallocated;
    m.bytes = bytes;
    co_return m;
  }
  const int64_t index = static_cast<int64_t>((offset >> cluster_bits_) %
                                             static_cast<uint64_t>(slice_entries_));
  uint64_t slice = l2 + (((offset >> cluster_bits_) % static_cast<uint64_t>(l2_entries_)) /
                         static_cast<uint64_t>(slice_entries_)) *
                            static_cast<uint64_t>(l2_cache_->entry_size());
  absl::StatusOr<Mapping> m;
  if (Slot* s = (l2 & static_cast<uint64_t>(cluster_size_ - 1)) ? nullptr
                                                                 : l2_cache_->Lookup(slice)) {
    m = Classify(s->data, index, offset, bytes);  // the fast path: no suspension, no lock
  } else {
    CoMutex::Guard guard = co_await meta_.ScopedLock();
    absl::StatusOr<Slot*> loaded = co_await L2SliceFor(offset, /*for_update=*/false);
    if (!loaded.ok()) co_return loaded.status();
    if (!*loaded) {
      Mapping u;
      u.kind = MapKind::kUnallocated;
      u.bytes = bytes;
      co_return u;
    }
    m = Classify((*loaded)->data, index, offset, bytes);
  }
  if (!m.ok() && absl::IsDataLoss(m.status())) {
    std::string message(m.status().message());
    co_return co_await SignalCorruption(std::move(message));
  }
  if (m.ok() && m->kind == MapKind::kData && data_file_ == file_) {
    if (!prealloc_checked_) co_await DetectMetadataPreallocation();
    m->recurse = metadata_prealloc_;
  }
  co_return m;
}

Task<void> Qcow2Node::DetectMetadataPreallocation() {
  CoMutex::Guard guard = co_await meta_.ScopedLock();
  if (prealloc_checked_) co_return;
  prealloc_checked_ = true;
  absl::StatusOr<int64_t> real = file_->node()->impl()->GetAllocatedSize();
  if (!real.ok()) co_return;
  uint64_t real_clusters = static_cast<uint64_t>(*real) / static_cast<uint64_t>(cluster_size_);
  uint64_t threshold = std::max(real_clusters * 10 / 9, real_clusters + 2);
  uint64_t clusters = static_cast<uint64_t>(file_->node()->size() + cluster_size_ - 1) /
                      static_cast<uint64_t>(cluster_size_);
  uint64_t count = 0;
  for (uint64_t c = 0; c < clusters; ++c) {
    absl::StatusOr<uint64_t> rc = co_await GetRefcount(c);
    if (!rc.ok()) co_return;
    if (*rc && ++count > threshold) {
      metadata_prealloc_ = true;
      co_return;
    }
  }
}

Task<absl::StatusOr<Allocation>> Qcow2Node::Allocate(GuestOffset goffset, int64_t bytes) {
  CoMutex::Guard guard = co_await meta_.ScopedLock();
  if (corrupt_) co_return CorruptionStatus("the image is marked corrupt; writes are refused");
  const uint64_t cs = static_cast<uint64_t>(cluster_size_);
  const uint64_t offset = static_cast<uint64_t>(goffset.value());
  const uint64_t end = offset + static_cast<uint64_t>(bytes);
  const uint64_t cluster = offset / cs * cs;
  const bool ext = entry_bytes_ == 16;

  absl::StatusOr<Slot*> slot = co_await L2SliceFor(offset, /*for_update=*/false);
  if (!slot.ok()) co_return slot.status();
  int64_t index = static_cast<int64_t>((offset / cs) % static_cast<uint64_t>(slice_entries_));
  auto entry_at = [&](int64_t k, uint64_t* e, uint64_t* b) {
    *e = *slot ? L2Entry((*slot)->data, index + k) : 0;
    *b = *slot ? L2Bitmap((*slot)->data, index + k) : 0;
  };
  // Whether the cluster keeps its own host cluster (only its zero flag or bitmap changes).
  auto reusable = [&](uint64_t e) {
    if (e & kOflagCompressed) return false;
    if (!(e & kOflagCopied)) return false;
    bool has_host = (e & kL2OffsetMask) != 0 || data_file_ != file_;
    return has_host && (ext || (header_.version >= 3 && (e & kOflagZero)));
  };

  auto cookie = std::make_shared<AllocCookie>();
  Allocation alloc;
  alloc.offset = goffset;
  uint64_t e = 0, b = 0;
  entry_at(0, &e, &b);
  if (reusable(e)) {
    cookie->cluster_guest = cluster;
    cookie->clusters = 1;
    cookie->host = e & kL2OffsetMask;
    cookie->reuse = true;
    alloc.child = data_file_;
    alloc.host = HostOffset(static_cast<int64_t>(cookie->host + (offset - cluster)));
    alloc.bytes = static_cast<int64_t>(std::min(end, cluster + cs) - offset);
    alloc.cookie = cookie;
    co_return alloc;
  }

  // Fresh clusters: as many as the request covers within this slice that need them.
  int64_t n = 0;
  bool widened = false;
  const int64_t slice_left = slice_entries_ - index;
  for (int64_t k = 0; k < slice_left; ++k) {
    uint64_t c = cluster + static_cast<uint64_t>(k) * cs;
    if (c >= end) break;
    uint64_t ek = 0, bk = 0;
    entry_at(k, &ek, &bk);
    if (k > 0 && reusable(ek)) break;
    // With subclusters, a cluster whose storage is replaced must be rewritten whole: the
    // engine copies only the subclusters around the request.
    bool replaces = EntryHasStorage(ek);
    bool whole = std::max(offset, c) == c && std::min(end, c + cs) == c + cs;
    if (ext && replaces && !whole) {
      if (k == 0) {
        // A compressed or shared cluster replaced by a partial write: the new cluster is
        // written whole (the engine copies the rest from what reads see now), since the
        // subclusters around the request are stored in the cluster being replaced.
        widened = true;
        n = 1;
      }
      break;
    }
    ++n;
  }
  uint64_t host;
  if (data_file_ != file_) {
    host = cluster;  // the data file stays raw: guest offset = host offset
  } else {
    uint64_t file_end = static_cast<uint64_t>(file_->node()->size());
    absl::StatusOr<uint64_t> got = co_await AllocClusters(n);
    if (!got.ok()) co_return got.status();
    host = *got;
    cookie->fresh_refcounted = true;
    alloc.host_reads_zero = host >= AlignUp<uint64_t>(file_end, cs) &&
                            libblock::HasZeroInit(*file_->node());
  }
  cookie->cluster_guest = cluster;
  cookie->clusters = n;
  cookie->host = host;
  alloc.child = data_file_;
  if (widened) {
    alloc.offset = GuestOffset(static_cast<int64_t>(cluster));
    alloc.host = HostOffset(static_cast<int64_t>(host));
    alloc.bytes = static_cast<int64_t>(cs);
    alloc.cookie = cookie;
    co_return alloc;
  }
  alloc.host = HostOffset(static_cast<int64_t>(host + (offset - cluster)));
  alloc.bytes = static_cast<int64_t>(std::min(end, cluster + static_cast<uint64_t>(n) * cs) - offset);
  alloc.cookie = cookie;
  co_return alloc;
}

Task<absl::Status> Qcow2Node::Commit(Allocation& alloc) {
  CoMutex::Guard guard = co_await meta_.ScopedLock();
  auto* cookie = static_cast<AllocCookie*>(alloc.cookie.get());
  const uint64_t cs = static_cast<uint64_t>(cluster_size_);
  const bool ext = entry_bytes_ == 16;
  const uint64_t start = static_cast<uint64_t>(alloc.offset.value());
  const uint64_t end = start + static_cast<uint64_t>(alloc.bytes);
  const uint64_t unit = static_cast<uint64_t>(geometry_.subcluster_size);
  data_written_ = true;
  for (int64_t k = 0; k < cookie->clusters; ++k) {
    uint64_t c = cookie->cluster_guest + static_cast<uint64_t>(k) * cs;
    absl::StatusOr<Slot*> slot = co_await L2SliceFor(c, /*for_update=*/true);
    if (!slot.ok()) co_return slot.status();
    int64_t index = static_cast<int64_t>((c / cs) % static_cast<uint64_t>(slice_entries_));
    uint8_t* data = (*slot)->data;
    uint64_t old = L2Entry(data, index);
    uint64_t old_bitmap = L2Bitmap(data, index);
    uint64_t entry, bitmap = 0;
    uint64_t new_host = cookie->host + static_cast<uint64_t>(k) * cs;
    if (cookie->compressed) {
      uint64_t extra = ((cookie->host + static_cast<uint64_t>(cookie->stored) - 1) >> 9) -
                       (cookie->host >> 9);
      entry = kOflagCompressed | (extra << csize_shift_) | cookie->host;
    } else {
      entry = new_host | kOflagCopied;
      if (ext) {
        bool same_storage = cookie->reuse || !EntryHasStorage(old);
        bitmap = same_storage ? old_bitmap : 0;
        uint64_t lo = std::max(start, c), hi = std::min(end, c + cs);
        for (uint64_t p = lo; p < hi; p += unit) {
          int sc = static_cast<int>((p - c) / unit);
          bitmap |= uint64_t{1} << sc;
          bitmap &= ~(uint64_t{1} << (32 + sc));
        }
      }
    }
    if (!cookie->reuse && EntryHasStorage(old)) {
      bool same = !(old & kOflagCompressed) && (old & kL2OffsetMask) == new_host &&
                  data_file_ == file_;
      if (!same) QueueFree(old, FreeReason::kOther);
    }
    SetL2(data, index, entry, bitmap);
    (*slot)->dirty = true;
  }
  co_return absl::OkStatus();
}

Task<void> Qcow2Node::Abort(Allocation& alloc) {
  CoMutex::Guard guard = co_await meta_.ScopedLock();
  auto* cookie = static_cast<AllocCookie*>(alloc.cookie.get());
  if (!cookie || !cookie->fresh_refcounted) co_return;
  // Never linked: the clusters can go back at once (a crash before this leaks them).
  int64_t bytes = cookie->compressed ? cookie->stored : cookie->clusters * cluster_size_;
  absl::Status st = co_await UpdateRefcounts(cookie->host, bytes, -1, FreeReason::kOther);
  (void)st;  // leaking is acceptable
}

Task<absl::StatusOr<Allocation>> Qcow2Node::AllocateCompressed(GuestOffset goffset,
                                                               int64_t stored_bytes) {
  CoMutex::Guard guard = co_await meta_.ScopedLock();
  if (corrupt_) co_return CorruptionStatus("the image is marked corrupt; writes are refused");
  if (data_file_ != file_) {
    co_return ErrnoError(ENOTSUP, "Compression is not supported with an external data file");
  }
  const uint64_t cs = static_cast<uint64_t>(cluster_size_);
  if (stored_bytes <= 0 || static_cast<uint64_t>(stored_bytes) > cs) {
    co_return ErrnoError(EINVAL, absl::StrFormat("qcow2: a compressed cluster of %d bytes does "
                                                 "not fit the %d-byte cluster", stored_bytes,
                                                 cluster_size_));
  }
  const uint64_t stored = static_cast<uint64_t>(stored_bytes);
  std::optional<uint64_t> host;
  // Byte-granular packing: the blob goes right after the previous one when it fits in the
  // rest of that cluster, or continues into free clusters right after it.
  if (free_byte_ && free_byte_ % cs) {
    // A cluster whose refcount is already at its maximum (refcount_bits=1 holds one
    // reference) takes no further blob: the next one starts a new cluster, as in QEMU.
    absl::StatusOr<uint64_t> current = co_await GetRefcount(free_byte_ / cs);
    if (!current.ok()) co_return current.status();
    if (*current >= refcount_max_) free_byte_ = 0;
  }
  if (free_byte_ && free_byte_ % cs) {
    uint64_t room = cs - free_byte_ % cs;
    bool fits = stored <= room;
    if (!fits) {
      uint64_t next = (free_byte_ / cs + 1);
      uint64_t extra = (stored - room + cs - 1) / cs;
      fits = true;
      for (uint64_t c = next; c < next + extra; ++c) {
        absl::StatusOr<uint64_t> rc = co_await GetRefcount(c);
        if (!rc.ok()) co_return rc.status();
        if (*rc) fits = false;
      }
      if (fits) {
        next_free_ = std::max(next_free_, next + extra);
        alloc_end_ = std::max(alloc_end_, next + extra);
      }
    }
    if (fits) {
      absl::Status st = co_await UpdateRefcounts(free_byte_, stored_bytes, +1, FreeReason::kOther);
      if (!st.ok()) co_return st;
      host = free_byte_;
    }
  }
  if (!host) {
    int64_t n = static_cast<int64_t>((stored + cs - 1) / cs);
    absl::StatusOr<uint64_t> got = co_await AllocClusters(n);
    if (!got.ok()) co_return got.status();
    host = *got;
  }
  free_byte_ = *host + stored;
  auto cookie = std::make_shared<AllocCookie>();
  cookie->cluster_guest = static_cast<uint64_t>(goffset.value()) / cs * cs;
  cookie->clusters = 1;
  cookie->host = *host;
  cookie->compressed = true;
  cookie->fresh_refcounted = true;
  cookie->stored = stored_bytes;
  Allocation alloc;
  alloc.offset = goffset;
  alloc.bytes = cluster_size_;
  alloc.child = file_;
  alloc.host = HostOffset(static_cast<int64_t>(*host));
  alloc.stored_bytes = stored_bytes;
  alloc.cookie = cookie;
  co_return alloc;
}

Task<absl::Status> Qcow2Node::ZeroClusters(GuestOffset goffset, int64_t bytes, bool may_unmap) {
  const bool raw_data_file = header_.autoclear_features & kAutoclearDataFileRaw;
  if (raw_data_file && data_file_ != file_) {
    // The data file must read as the guest does: let the engine write zeroes into it.
    co_return ErrnoError(ENOTSUP, "qcow2: zeroing a raw external data file is done by writes");
  }
  if (header_.version < 3 && (backing() || !may_unmap)) {
    co_return ErrnoError(ENOTSUP, "qcow2: version 2 images have no zero clusters");
  }
  CoMutex::Guard guard = co_await meta_.ScopedLock();
  if (corrupt_) co_return CorruptionStatus("the image is marked corrupt; writes are refused");
  const uint64_t cs = static_cast<uint64_t>(cluster_size_);
  const bool ext = entry_bytes_ == 16;
  uint64_t offset = static_cast<uint64_t>(goffset.value());
  const uint64_t end = offset + static_cast<uint64_t>(bytes);
  for (uint64_t c = offset; c < end; c += cs) {
    absl::StatusOr<Slot*> slot = co_await L2SliceFor(c, /*for_update=*/true);
    if (!slot.ok()) co_return slot.status();
    int64_t index = static_cast<int64_t>((c / cs) % static_cast<uint64_t>(slice_entries_));
    uint8_t* data = (*slot)->data;
    uint64_t old = L2Entry(data, index);
    bool keep = !may_unmap && !(old & kOflagCompressed) && (old & kOflagCopied) &&
                EntryHasStorage(old);
    uint64_t entry, bitmap = 0;
    if (header_.version < 3) {
      entry = 0;  // no backing file: unallocated reads as zeroes
      keep = false;
    } else if (ext) {
      entry = keep ? (old & (kL2OffsetMask | kOflagCopied)) : 0;
      bitmap = kBitmapAllZeroes;
    } else {
      entry = (keep ? (old & (kL2OffsetMask | kOflagCopied)) : 0) | kOflagZero;
    }
    if (!keep && EntryHasStorage(old)) QueueFree(old, FreeReason::kRequest);
    SetL2(data, index, entry, bitmap);
    (*slot)->dirty = true;
  }
  co_return absl::OkStatus();
}

Task<absl::Status> Qcow2Node::DiscardClusters(GuestOffset goffset, int64_t bytes) {
  if (!node().flags().unmap) co_return absl::OkStatus();  // discard=ignore
  const bool raw_data_file = header_.autoclear_features & kAutoclearDataFileRaw;
  if (raw_data_file && data_file_ != file_) co_return absl::OkStatus();  // must stay raw
  CoMutex::Guard guard = co_await meta_.ScopedLock();
  if (corrupt_) co_return CorruptionStatus("the image is marked corrupt; writes are refused");
  const uint64_t cs = static_cast<uint64_t>(cluster_size_);
  const bool ext = entry_bytes_ == 16;
  const bool has_backing = backing() != nullptr;
  uint64_t offset = static_cast<uint64_t>(goffset.value());
  const uint64_t end = offset + static_cast<uint64_t>(bytes);
  for (uint64_t c = offset; c < end; c += cs) {
    // QEMU's rule: a discarded cluster reads as zeroes (v3) when it was allocated or a backing
    // file would show through; v2 leaves it unallocated.
    absl::StatusOr<Slot*> slot = co_await L2SliceFor(c, /*for_update=*/has_backing);
    if (!slot.ok()) co_return slot.status();
    if (!*slot) continue;
    int64_t index = static_cast<int64_t>((c / cs) % static_cast<uint64_t>(slice_entries_));
    uint64_t old = L2Entry((*slot)->data, index);
    bool allocated = EntryHasStorage(old);
    if (!has_backing && !allocated) continue;
    if (!has_backing) {
      // A change ahead: a table shared with a snapshot gets its own copy first.
      slot = co_await L2SliceFor(c, /*for_update=*/true);
      if (!slot.ok()) co_return slot.status();
    }
    uint8_t* data = (*slot)->data;
    uint64_t entry = 0, bitmap = 0;
    if (ext) {
      bitmap = kBitmapAllZeroes;
    } else if (header_.version >= 3) {
      entry = kOflagZero;
    }
    if (allocated) QueueFree(old, FreeReason::kRequest);
    SetL2(data, index, entry, bitmap);
    (*slot)->dirty = true;
  }
  co_return absl::OkStatus();
}

Task<absl::Status> Qcow2Node::GrowL1Table(uint64_t entries, bool exact) {
  uint64_t size = l1_.size();
  if (!exact) {
    // QEMU's growth: by half again until it is enough.
    while (size < entries) size = size ? (size * 3 + 1) / 2 : entries;
  }
  size = std::max(size, entries);
  const uint64_t cs = static_cast<uint64_t>(cluster_size_);
  uint64_t bytes = AlignUp<uint64_t>(size * 8, cs);
  if (size * 8 > 32ull * 1024 * 1024) {
    co_return ErrnoError(EFBIG, "L1 table is too large");  // QEMU's QCOW_MAX_L1_SIZE (32 MiB)
  }
  absl::StatusOr<uint64_t> table = co_await AllocClusters(static_cast<int64_t>(bytes / cs));
  if (!table.ok()) co_return table.status();
  std::vector<uint8_t> raw(static_cast<size_t>(bytes), 0);
  for (size_t i = 0; i < l1_.size(); ++i) StoreBe64(raw.data() + 8 * i, l1_[i]);
  absl::Status dirty = co_await EnsureDirtyBit();
  if (!dirty.ok()) co_return dirty;
  absl::Status st = co_await WriteNewMetadata(*table, raw.data(), static_cast<int64_t>(bytes));
  if (!st.ok()) co_return st;
  uint8_t hdr[12];
  StoreBe32(hdr, static_cast<uint32_t>(size));
  StoreBe64(hdr + 4, *table);
  st = co_await file_->Pwrite(36, hdr, 12);
  if (!st.ok()) co_return st;
  files_need_flush_ = true;
  st = co_await FlushFiles();
  if (!st.ok()) co_return st;
  uint64_t old_offset = header_.l1_table_offset;
  uint64_t old_bytes = AlignUp<uint64_t>(uint64_t{header_.l1_size} * 8, cs);
  header_.l1_table_offset = *table;
  header_.l1_size = static_cast<uint32_t>(size);
  l1_.resize(static_cast<size_t>(size), 0);
  if (old_bytes) {
    st = co_await UpdateRefcounts(old_offset, static_cast<int64_t>(old_bytes), -1,
                                  FreeReason::kOther);
    if (!st.ok()) co_return st;
  }
  co_return absl::OkStatus();
}

Task<absl::Status> Qcow2Node::PreallocateLocked(uint64_t old, uint64_t target,
                                                PreallocMode mode) {
  // QEMU's preallocated growth: every new whole cluster gets an L2 entry and host storage
  // (a partial last cluster of the old size keeps its mapping). metadata leaves the host
  // clusters as the file has them past its end (reading zeroes); falloc and full allocate
  // them in the file. A raw external data file is grown by the caller with `mode`.
  const uint64_t cs = static_cast<uint64_t>(cluster_size_);
  const bool external = data_file_ != file_;
  const bool raw_data_file = external && (header_.autoclear_features & kAutoclearDataFileRaw);
  uint64_t c = AlignUp<uint64_t>(old, cs);
  const uint64_t last = AlignUp<uint64_t>(target, cs);
  while (c < last) {
    int64_t index = static_cast<int64_t>((c / cs) % static_cast<uint64_t>(slice_entries_));
    int64_t n = std::min<int64_t>(slice_entries_ - index, static_cast<int64_t>((last - c) / cs));
    absl::StatusOr<Slot*> slot = co_await L2SliceFor(c, /*for_update=*/true);
    if (!slot.ok()) co_return slot.status();
    uint64_t host = c;  // an external data file maps guest offsets to the same host offsets
    if (!external) {
      absl::StatusOr<uint64_t> got = co_await AllocClusters(n);
      if (!got.ok()) co_return got.status();
      host = *got;
    }
    if (!raw_data_file) {
      // The run exists in the file before anything else is placed after it: reused free
      // clusters below the file's end are zeroed (they may hold stale data), the rest is
      // added by growing the file with the mode.
      Child* f = external ? data_file_ : file_;
      const uint64_t run_end = host + static_cast<uint64_t>(n) * cs;
      const uint64_t f_end = static_cast<uint64_t>(f->node()->size());
      if (host < f_end) {
        absl::Status z = co_await f->WriteZeroes(
            static_cast<int64_t>(host), static_cast<int64_t>(std::min(f_end, run_end) - host), 0);
        if (!z.ok()) co_return z;
      }
      if (run_end > f_end) {
        absl::Status t = co_await f->Truncate(
            static_cast<int64_t>(run_end), /*exact=*/false,
            mode == PreallocMode::kMetadata ? PreallocMode::kOff : mode);
        if (!t.ok()) co_return t;
      }
      if (mode == PreallocMode::kMetadata && c + static_cast<uint64_t>(n) * cs > target) {
        // A partial last cluster is stored as zeroes, as QEMU leaves it (qemu-img map then
        // shows its guest tail as data).
        std::vector<uint8_t> zeros(static_cast<size_t>(cs), 0);
        absl::Status w = co_await f->Pwrite(static_cast<int64_t>(run_end - cs), zeros.data(),
                                            cluster_size_);
        if (!w.ok()) co_return w;
      }
    }
    // The slot may have moved while clusters were allocated.
    slot = co_await L2SliceFor(c, /*for_update=*/true);
    if (!slot.ok()) co_return slot.status();
    for (int64_t k = 0; k < n; ++k) {
      uint64_t e = L2Entry((*slot)->data, index + k);
      if (EntryHasStorage(e)) QueueFree(e, FreeReason::kOther);  // left by a corrupt tail
      SetL2((*slot)->data, index + k, (host + static_cast<uint64_t>(k) * cs) | kOflagCopied,
            0);
    }
    (*slot)->dirty = true;
    data_written_ = true;
    c += static_cast<uint64_t>(n) * cs;
  }
  files_need_flush_ = true;
  co_return co_await FlushLocked();
}

Task<absl::Status> Qcow2Node::Truncate(int64_t size, bool exact, PreallocMode mode,
                                       ReqFlags flags) {
  (void)flags;
  if (size % 512) co_return ErrnoError(EINVAL, "The new size must be a multiple of 512");
  if (header_.nb_snapshots) {
    co_return ErrnoError(ENOTSUP, "Can't resize an image which has snapshots");
  }
  const uint64_t old = header_.size;
  const uint64_t target = static_cast<uint64_t>(size);
  if (target < old && mode != PreallocMode::kOff) {
    co_return ErrnoError(ENOTSUP, "Preallocation can't be used for shrinking an image");
  }
  CoMutex::Guard guard = co_await meta_.ScopedLock();
  if (corrupt_) co_return CorruptionStatus("the image is marked corrupt; writes are refused");
  const uint64_t cs = static_cast<uint64_t>(cluster_size_);
  const uint64_t l2_span = cs * static_cast<uint64_t>(l2_entries_);
  if (target < old) {
    // The tail's clusters are dropped (QEMU's full discard): entries emptied, storage freed,
    // then L2 tables wholly past the end unlinked and freed.
    for (uint64_t c = AlignUp<uint64_t>(target, cs); c < AlignUp<uint64_t>(old, cs); c += cs) {
      absl::StatusOr<Slot*> slot = co_await L2SliceFor(c, /*for_update=*/false);
      if (!slot.ok()) co_return slot.status();
      if (!*slot) {
        c = (c / l2_span + 1) * l2_span - cs;  // no table: skip to the next one
        continue;
      }
      int64_t index = static_cast<int64_t>((c / cs) % static_cast<uint64_t>(slice_entries_));
      uint64_t e = L2Entry((*slot)->data, index);
      uint64_t b = L2Bitmap((*slot)->data, index);
      if (!e && !b) continue;
      if (!(l1_[c / l2_span] & kOflagCopied)) {
        slot = co_await L2SliceFor(c, /*for_update=*/true);  // the snapshot keeps the original
        if (!slot.ok()) co_return slot.status();
      }
      if (EntryHasStorage(e)) QueueFree(e, FreeReason::kOther);
      SetL2((*slot)->data, index, 0, 0);
      (*slot)->dirty = true;
    }
    absl::Status st = co_await FlushLocked();
    if (!st.ok()) co_return st;
    for (uint64_t i = (target + l2_span - 1) / l2_span; i < l1_.size(); ++i) {
      uint64_t l2 = l1_[i] & kL1OffsetMask;
      if (!l2) continue;
      bool shared = !(l1_[i] & kOflagCopied);
      l1_[i] = 0;
      st = co_await WriteL1Entry(i);
      if (!st.ok()) co_return st;
      st = co_await FlushFiles();
      if (!st.ok()) co_return st;
      for (uint64_t s = 0; s < static_cast<uint64_t>(cluster_size_); s += static_cast<uint64_t>(l2_cache_->entry_size())) {
        l2_cache_->Drop(l2 + s);
      }
      l2_tables_.erase(l2);
      if (!shared) {
        st = co_await UpdateRefcounts(l2, cluster_size_, -1, FreeReason::kOther);
        if (!st.ok()) co_return st;
      }
    }
  } else if (target > old) {
    uint64_t needed = (target + l2_span - 1) / l2_span;
    if (needed > l1_.size()) {
      absl::Status st = co_await GrowL1Table(needed, exact);
      if (!st.ok()) co_return st;
    }
    if (mode != PreallocMode::kOff) {
      absl::Status st = co_await PreallocateLocked(old, target, mode);
      if (!st.ok()) co_return st;
    }
  }
  if (data_file_ != file_ && (header_.autoclear_features & kAutoclearDataFileRaw)) {
    absl::Status st = co_await data_file_->Truncate(
        size, exact, mode == PreallocMode::kMetadata ? PreallocMode::kOff : mode);
    if (!st.ok()) co_return st;
  }
  uint8_t raw[8];
  StoreBe64(raw, target);
  absl::Status dirty = co_await EnsureDirtyBit();
  if (!dirty.ok()) co_return dirty;
  absl::Status st = co_await file_->Pwrite(24, raw, 8);
  if (!st.ok()) co_return st;
  files_need_flush_ = true;
  st = co_await FlushFiles();
  if (!st.ok()) co_return st;
  header_.size = target;
  guard.Unlock();
  // The new area must not show what lies below it: the backing file (QEMU zeroes the grown
  // area of an image with a backing file), nor what a shrink left in the last cluster's tail.
  if (target > old) {
    // Preallocated clusters read as zeroes already (with extended L2 their subclusters are
    // unallocated, so they are zeroed too), as in QEMU.
    bool covers_new = backing() && (mode == PreallocMode::kOff || entry_bytes_ == 16);
    uint64_t zero_end = covers_new ? target : std::min(target, AlignUp<uint64_t>(old, cs));
    if (zero_end > old) {
      absl::Status z = co_await MappingDriver::WriteZeroes(
          static_cast<int64_t>(old), static_cast<int64_t>(zero_end - old), 0);
      if (!z.ok()) co_return z;
    }
  }
  co_return absl::OkStatus();
}

absl::Status Qcow2Node::CheckDataWrite(const Child& child, HostOffset host, int64_t bytes) {
  if (corrupt_) return CorruptionStatus("the image is marked corrupt; writes are refused");
  if (&child != file_ || !overlap_checks_ || bytes <= 0) return absl::OkStatus();
  const uint64_t start = static_cast<uint64_t>(host.value());
  const uint64_t end = start + static_cast<uint64_t>(bytes);
  const uint64_t cs = static_cast<uint64_t>(cluster_size_);
  auto overlaps = [&](uint64_t a, uint64_t len) { return len && a < end && start < a + len; };
  auto in_set = [&](const std::set<uint64_t>& set) {
    auto it = set.lower_bound(start >= cs ? start - cs + 1 : 0);
    return it != set.end() && *it < end;
  };
  const char* hit = nullptr;
  if ((overlap_checks_ & kOlMainHeader) && overlaps(0, cs)) {
    hit = "qcow2_header";
  } else if ((overlap_checks_ & kOlActiveL1) &&
             overlaps(header_.l1_table_offset, uint64_t{header_.l1_size} * 8)) {
    hit = "active L1 table";
  } else if ((overlap_checks_ & kOlRefcountTable) &&
             overlaps(header_.refcount_table_offset,
                      uint64_t{header_.refcount_table_clusters} * cs)) {
    hit = "refcount table";
  } else if ((overlap_checks_ & kOlActiveL2) && in_set(l2_tables_)) {
    hit = "active L2 table";
  } else if ((overlap_checks_ & kOlRefcountBlock) && in_set(refcount_blocks_)) {
    hit = "refcount block";
  } else if ((overlap_checks_ & kOlSnapshotTable) && header_.nb_snapshots &&
             overlaps(header_.snapshots_offset, snapshot_table_bytes_)) {
    hit = "snapshot table";
  } else if (overlap_checks_ & kOlInactiveL1) {
    for (const SnapshotEntry& sn : snapshots_) {
      if (overlaps(sn.l1_table_offset, uint64_t{sn.l1_size} * 8)) {
        hit = "inactive L1 table";
        break;
      }
    }
  }
  if (!hit) return absl::OkStatus();
  return ReportCorruption(ErrnoError(
      EIO, absl::StrFormat("Preventing invalid write on metadata (overlaps with %s)", hit)));
}

}  // namespace libblock::qcow2
