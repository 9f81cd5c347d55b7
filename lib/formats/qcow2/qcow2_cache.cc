// See qcow2_cache.h.
#include "formats/qcow2/qcow2_cache.h"

#include <cstring>

namespace libblock::qcow2 {

MetadataCache::MetadataCache(int64_t entry_size, int64_t slots)
    : entry_size_(entry_size),
      memory_(new uint8_t[static_cast<size_t>(entry_size * slots)]),
      slots_(static_cast<size_t>(slots)) {
  for (int64_t i = 0; i < slots; ++i) slots_[i].data = memory_.get() + i * entry_size;
  index_.reserve(static_cast<size_t>(slots));
}

MetadataCache::Slot* MetadataCache::Victim() {
  Slot* best = nullptr;
  for (Slot& s : slots_) {
    if (!s.offset) return &s;
    if (!s.valid) continue;  // loading
    if (!best || s.last_use < best->last_use) best = &s;
  }
  return best;
}

void MetadataCache::Bind(Slot* slot, uint64_t offset) {
  if (slot->offset) index_.erase(*slot->offset);
  slot->offset = offset;
  slot->valid = false;
  slot->dirty = false;
  index_[offset] = static_cast<size_t>(slot - slots_.data());
}

void MetadataCache::Unbind(Slot* slot) {
  if (slot->offset) index_.erase(*slot->offset);
  slot->offset.reset();
  slot->valid = false;
  slot->dirty = false;
}

void MetadataCache::Drop(uint64_t offset) {
  if (Slot* s = Find(offset)) Unbind(s);
}

bool MetadataCache::any_dirty() const {
  for (const Slot& s : slots_) {
    if (s.dirty) return true;
  }
  return false;
}

std::vector<MetadataCache::Slot*> MetadataCache::DirtySlots() {
  std::vector<Slot*> out;
  for (Slot& s : slots_) {
    if (s.dirty) out.push_back(&s);
  }
  return out;
}

}  // namespace libblock::qcow2
