// qcow2 refcounts: reading and updating refcount blocks through the refcount cache, finding
// and allocating clusters, creating refcount blocks and growing the refcount table.
//
// Refcount entries are refcount_bits wide (1..64); entries narrower than a byte are packed
// least significant bits first, wider ones are big-endian (qcow2.txt, "Host cluster
// management"). Everything here runs under meta_.
//
// Crash safety: a new refcount block is written (with its own refcount when it covers
// itself) and flushed before the refcount-table entry points at it; a grown table is written
// with its new blocks and flushed before the header points at it, and the old table is freed
// only after the header update is flushed. A crash in between leaks clusters, nothing else.
#include <algorithm>
#include <cerrno>
#include <cstring>
#include <optional>

#include "absl/strings/str_format.h"
#include "core/node.h"
#include "formats/qcow2/qcow2_driver.h"
#include "util/checked_math.h"
#include "util/endian.h"
#include "util/status.h"

namespace libblock::qcow2 {

uint64_t Qcow2Node::RefcountFromBlock(const uint8_t* block, int64_t index) const {
  switch (header_.refcount_order) {
    case 0: return (block[index / 8] >> (index % 8)) & 0x1;
    case 1: return (block[index / 4] >> (2 * (index % 4))) & 0x3;
    case 2: return (block[index / 2] >> (4 * (index % 2))) & 0xf;
    case 3: return block[index];
    case 4: return LoadBe16(block + 2 * index);
    case 5: return LoadBe32(block + 4 * index);
    default: return LoadBe64(block + 8 * index);
  }
}

void Qcow2Node::SetRefcountInBlock(uint8_t* block, int64_t index, uint64_t value) const {
  switch (header_.refcount_order) {
    case 0:
    case 1:
    case 2: {
      int bits = 1 << header_.refcount_order;
      int per_byte = 8 / bits;
      int shift = bits * static_cast<int>(index % per_byte);
      uint8_t mask = static_cast<uint8_t>(((1u << bits) - 1) << shift);
      uint8_t& b = block[index / per_byte];
      b = static_cast<uint8_t>((b & ~mask) | ((value << shift) & mask));
      break;
    }
    case 3: block[index] = static_cast<uint8_t>(value); break;
    case 4: StoreBe16(block + 2 * index, static_cast<uint16_t>(value)); break;
    case 5: StoreBe32(block + 4 * index, static_cast<uint32_t>(value)); break;
    default: StoreBe64(block + 8 * index, value); break;
  }
}

Task<absl::StatusOr<uint64_t>> Qcow2Node::GetRefcount(uint64_t cluster_index) {
  uint64_t ti = cluster_index >> rb_bits_;
  if (ti >= reftable_.size() || reftable_[ti] == 0) co_return uint64_t{0};
  uint64_t block = reftable_[ti];
  if (block & static_cast<uint64_t>(cluster_size_ - 1)) {
    absl::Status bad = co_await SignalCorruption(absl::StrFormat(
        "Refblock offset %#x unaligned (reftable index: %#x)", block, ti));
    co_return bad;
  }
  absl::StatusOr<Slot*> slot = co_await GetSlot(*rc_cache_, block, /*load=*/true);
  if (!slot.ok()) co_return slot.status();
  int64_t index = static_cast<int64_t>(cluster_index & ((uint64_t{1} << rb_bits_) - 1));
  co_return RefcountFromBlock((*slot)->data, index);
}

Task<absl::StatusOr<uint64_t>> Qcow2Node::EnsureRefcountBlock(uint64_t ti) {
  if (ti < reftable_.size() && reftable_[ti]) co_return reftable_[ti];
  if (ti >= reftable_.size()) {
    absl::Status st = co_await GrowRefcountTable(ti + 1);
    if (!st.ok()) co_return st;
    if (reftable_[ti]) co_return reftable_[ti];  // the growth placed one there
  }
  // Any free cluster; the missing block's own range reads as free, so the block may land
  // inside what it describes (then it counts itself).
  absl::StatusOr<uint64_t> found = co_await FindFreeClusters(1);
  if (!found.ok()) co_return found.status();
  uint64_t cluster = *found / static_cast<uint64_t>(cluster_size_);
  // EnsureRefcountBlock may have been entered for a table index that the search just made
  // necessary again (the found cluster beyond the table): grow first.
  uint64_t cti = cluster >> rb_bits_;
  if (cti >= reftable_.size()) {
    absl::Status st = co_await GrowRefcountTable(cti + 1);
    if (!st.ok()) co_return st;
    if (reftable_[ti]) co_return reftable_[ti];
    co_return co_await EnsureRefcountBlock(ti);
  }
  next_free_ = std::max(next_free_, cluster + 1);
  alloc_end_ = std::max(alloc_end_, cluster + 1);
  uint64_t block_offset = *found;

  absl::StatusOr<Slot*> slot = co_await GetSlot(*rc_cache_, block_offset, /*load=*/false);
  if (!slot.ok()) co_return slot.status();
  Slot* s = *slot;
  if (cti == ti) {
    SetRefcountInBlock(s->data, static_cast<int64_t>(cluster & ((uint64_t{1} << rb_bits_) - 1)),
                       1);
  } else {
    absl::Status st = co_await UpdateRefcounts(block_offset, cluster_size_, +1,
                                               FreeReason::kOther);
    if (!st.ok()) co_return st;
    absl::Status wr = co_await WriteBackRefcounts();
    if (!wr.ok()) co_return wr;
    // The slot may have been reused while writing back: look it up again.
    absl::StatusOr<Slot*> again = co_await GetSlot(*rc_cache_, block_offset, /*load=*/false);
    if (!again.ok()) co_return again.status();
    s = *again;
  }
  absl::Status dirty = co_await EnsureDirtyBit();
  if (!dirty.ok()) co_return dirty;
  s->dirty = true;
  absl::Status wr = co_await WriteSlot(*rc_cache_, s);
  if (!wr.ok()) co_return wr;
  absl::Status fl = co_await FlushFiles();
  if (!fl.ok()) co_return fl;

  uint8_t raw[8];
  StoreBe64(raw, block_offset);
  absl::Status te = co_await file_->Pwrite(
      static_cast<int64_t>(header_.refcount_table_offset + 8 * ti), raw, 8);
  if (!te.ok()) co_return te;
  files_need_flush_ = true;
  reftable_[ti] = block_offset;
  refcount_blocks_.insert(block_offset);
  co_return block_offset;
}

Task<absl::Status> Qcow2Node::GrowRefcountTable(uint64_t min_entries) {
  const uint64_t cs = static_cast<uint64_t>(cluster_size_);
  const uint64_t per_block = uint64_t{1} << rb_bits_;
  uint64_t start = std::max(alloc_end_, next_free_);
  start = std::max<uint64_t>(start, (static_cast<uint64_t>(file_->node()->size()) + cs - 1) / cs);
  // New blocks at [start, start + nb), the table after them; iterate to a fixed point.
  uint64_t nb = 0, tn = 0;
  std::vector<uint64_t> missing;
  for (int round = 0; round < 64; ++round) {
    uint64_t end = start + nb + tn;
    missing.clear();
    if (end > start) {
      for (uint64_t ti = start / per_block; ti <= (end - 1) / per_block; ++ti) {
        if (ti >= reftable_.size() || reftable_[ti] == 0) missing.push_back(ti);
      }
    }
    uint64_t entries = std::max<uint64_t>(min_entries, reftable_.size() + reftable_.size() / 2);
    if (end > start) entries = std::max<uint64_t>(entries, (end - 1) / per_block + 1);
    uint64_t ntn = (entries * 8 + cs - 1) / cs;
    if (missing.size() == nb && ntn == tn) break;
    nb = missing.size();
    tn = ntn;
  }
  if (tn > UINT32_MAX) co_return ErrnoError(EFBIG, "qcow2: refcount table too large");

  std::vector<uint64_t> table(static_cast<size_t>(tn * cs / 8), 0);
  std::copy(reftable_.begin(), reftable_.end(), table.begin());
  for (size_t k = 0; k < missing.size(); ++k) table[missing[k]] = (start + k) * cs;
  const uint64_t end = start + nb + tn;

  // The new blocks: zero, with the refcounts of the new clusters they cover.
  std::vector<uint8_t> block(static_cast<size_t>(cs));
  for (size_t k = 0; k < missing.size(); ++k) {
    std::fill(block.begin(), block.end(), 0);
    uint64_t first = missing[k] * per_block, last = first + per_block;
    for (uint64_t c = std::max(first, start); c < std::min(last, end); ++c) {
      SetRefcountInBlock(block.data(), static_cast<int64_t>(c - first), 1);
    }
    absl::Status dirty = co_await EnsureDirtyBit();
    if (!dirty.ok()) co_return dirty;
    absl::Status st = co_await file_->Pwrite(static_cast<int64_t>((start + k) * cs), block.data(),
                                             cluster_size_);
    if (!st.ok()) co_return st;
  }
  // New clusters that fall into existing blocks.
  for (uint64_t c = start; c < end; ++c) {
    uint64_t ti = c / per_block;
    if (std::find(missing.begin(), missing.end(), ti) != missing.end()) continue;
    absl::StatusOr<Slot*> slot = co_await GetSlot(*rc_cache_, reftable_[ti], true);
    if (!slot.ok()) co_return slot.status();
    SetRefcountInBlock((*slot)->data, static_cast<int64_t>(c % per_block), 1);
    (*slot)->dirty = true;
  }
  absl::Status wr = co_await WriteBackRefcounts();
  if (!wr.ok()) co_return wr;
  std::vector<uint8_t> raw(static_cast<size_t>(tn * cs));
  for (size_t i = 0; i < table.size(); ++i) StoreBe64(raw.data() + 8 * i, table[i]);
  uint64_t table_offset = (start + nb) * cs;
  absl::Status st = co_await file_->Pwrite(static_cast<int64_t>(table_offset), raw.data(),
                                           static_cast<int64_t>(raw.size()));
  if (!st.ok()) co_return st;
  files_need_flush_ = true;
  absl::Status fl = co_await FlushFiles();
  if (!fl.ok()) co_return fl;

  // Switch the header.
  uint8_t hdr[12];
  StoreBe64(hdr, table_offset);
  StoreBe32(hdr + 8, static_cast<uint32_t>(tn));
  st = co_await file_->Pwrite(48, hdr, 12);
  if (!st.ok()) co_return st;
  files_need_flush_ = true;
  fl = co_await FlushFiles();
  if (!fl.ok()) co_return fl;

  uint64_t old_offset = header_.refcount_table_offset;
  uint64_t old_clusters = header_.refcount_table_clusters;
  header_.refcount_table_offset = table_offset;
  header_.refcount_table_clusters = static_cast<uint32_t>(tn);
  reftable_ = std::move(table);
  for (size_t k = 0; k < missing.size(); ++k) refcount_blocks_.insert((start + k) * cs);
  alloc_end_ = std::max(alloc_end_, end);
  if (next_free_ >= start && next_free_ < end) next_free_ = end;
  if (old_clusters) {
    absl::Status fr = co_await UpdateRefcounts(old_offset, static_cast<int64_t>(old_clusters * cs),
                                               -1, FreeReason::kOther);
    if (!fr.ok()) co_return fr;
  }
  co_return absl::OkStatus();
}

Task<absl::Status> Qcow2Node::UpdateRefcounts(uint64_t host, int64_t bytes, int64_t delta,
                                              FreeReason reason) {
  if (bytes <= 0) co_return absl::OkStatus();
  const uint64_t cs = static_cast<uint64_t>(cluster_size_);
  uint64_t first = host / cs, last = (host + static_cast<uint64_t>(bytes) - 1) / cs;
  for (uint64_t c = first; c <= last; ++c) {
    uint64_t ti = c >> rb_bits_;
    absl::StatusOr<uint64_t> block = co_await EnsureRefcountBlock(ti);
    if (!block.ok()) co_return block.status();
    absl::StatusOr<Slot*> slot = co_await GetSlot(*rc_cache_, *block, /*load=*/true);
    if (!slot.ok()) co_return slot.status();
    int64_t index = static_cast<int64_t>(c & ((uint64_t{1} << rb_bits_) - 1));
    uint64_t old = RefcountFromBlock((*slot)->data, index);
    uint64_t value;
    if (delta > 0) {
      if (refcount_max_ - old < static_cast<uint64_t>(delta)) {
        co_return ErrnoError(ERANGE, absl::StrFormat("qcow2: image '%s': refcount of cluster "
                                                     "%#x would overflow", filename_, c * cs));
      }
      value = old + static_cast<uint64_t>(delta);
    } else {
      if (old < static_cast<uint64_t>(-delta)) {
        absl::Status bad = co_await SignalCorruption(absl::StrFormat(
            "refcount of cluster %#x would drop below zero", c * cs));
        co_return bad;
      }
      value = old - static_cast<uint64_t>(-delta);
    }
    SetRefcountInBlock((*slot)->data, index, value);
    (*slot)->dirty = true;
    if (value == 0) {
      next_free_ = std::min(next_free_, c);
      l2_cache_->Drop(c * cs);
      rc_cache_->Drop(c * cs);
      l2_tables_.erase(c * cs);
      if (free_byte_ && free_byte_ / cs == c) free_byte_ = 0;
      bool pass = reason == FreeReason::kRequest   ? discard_request_
                  : reason == FreeReason::kSnapshot ? discard_snapshot_
                                                    : discard_other_;
      if (pass) {
        absl::Status st = co_await file_->Discard(static_cast<int64_t>(c * cs), cluster_size_);
        (void)st;  // discarding is advisory
      }
    }
  }
  co_return absl::OkStatus();
}

Task<absl::StatusOr<uint64_t>> Qcow2Node::FindFreeClusters(int64_t n, uint64_t* lowest_free) {
  const uint64_t per_block = uint64_t{1} << rb_bits_;
  uint64_t c = next_free_;
  uint64_t run_start = c;
  int64_t run = 0;
  std::optional<uint64_t> lowest;
  while (run < n) {
    if (run > 0 && !lowest) lowest = run_start;
    uint64_t ti = c >> rb_bits_;
    if (ti >= reftable_.size() || reftable_[ti] == 0) {
      // A whole missing block: free.
      uint64_t block_end = (ti + 1) * per_block;
      int64_t take = static_cast<int64_t>(std::min<uint64_t>(block_end - c, n - run));
      if (run == 0) run_start = c;
      run += take;
      c += static_cast<uint64_t>(take);
      continue;
    }
    absl::StatusOr<uint64_t> rc = co_await GetRefcount(c);
    if (!rc.ok()) co_return rc.status();
    if (*rc == 0) {
      if (run == 0) run_start = c;
      ++run;
    } else {
      run = 0;
    }
    ++c;
  }
  if (lowest_free) *lowest_free = lowest.value_or(run_start);
  uint64_t offset = run_start * static_cast<uint64_t>(cluster_size_);
  if (offset > static_cast<uint64_t>(kMaxLength) ||
      (offset & ~kL2OffsetMask) != 0) {  // beyond what an L2 entry can hold
    co_return ErrnoError(EFBIG, "qcow2: image file would grow beyond the largest host offset");
  }
  co_return offset;
}

Task<absl::StatusOr<uint64_t>> Qcow2Node::AllocClusters(int64_t n) {
  uint64_t lowest = 0;
  absl::StatusOr<uint64_t> found = co_await FindFreeClusters(n, &lowest);
  if (!found.ok()) co_return found.status();
  uint64_t first = *found / static_cast<uint64_t>(cluster_size_);
  // Past the run: so refcount blocks created by the update below land elsewhere. The scan
  // found every cluster below `lowest` in use, so the hint moves up at least to it (without
  // that, each allocation rescanned every cluster in use: quadratic).
  uint64_t saved_hint = std::max(next_free_, lowest);
  next_free_ = first + static_cast<uint64_t>(n);
  absl::Status st = co_await UpdateRefcounts(*found, n * cluster_size_, +1, FreeReason::kOther);
  if (!st.ok()) {
    next_free_ = std::min(saved_hint, first);
    co_return st;
  }
  // The first free cluster below the run (if any) stays findable.
  if (saved_hint < first) next_free_ = saved_hint;
  alloc_end_ = std::max(alloc_end_, first + static_cast<uint64_t>(n));
  co_return *found;
}

void Qcow2Node::QueueFree(uint64_t entry, FreeReason reason) {
  if (data_file_ != file_) return;  // data-file clusters are not refcounted
  if (entry & kOflagCompressed) {
    uint64_t host = entry & coffset_mask_;
    uint64_t sectors = ((entry >> csize_shift_) & csize_mask_) + 1;
    uint64_t start = host & ~uint64_t{511};
    pending_frees_.push_back({start, static_cast<int64_t>(sectors * 512), reason});
    return;
  }
  uint64_t host = entry & kL2OffsetMask;
  if (host) pending_frees_.push_back({host, cluster_size_, reason});
}

Task<absl::Status> Qcow2Node::ApplyPendingFrees() {
  std::vector<PendingFree> frees;
  frees.swap(pending_frees_);
  for (const PendingFree& f : frees) {
    absl::Status st = co_await UpdateRefcounts(f.host, f.bytes, -1, f.reason);
    if (!st.ok()) co_return st;
  }
  co_return absl::OkStatus();
}

}  // namespace libblock::qcow2
