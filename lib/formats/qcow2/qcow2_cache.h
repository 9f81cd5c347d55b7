// qcow2's metadata caches (QEMU's Qcow2Cache by role): fixed-size slots holding slices of L2
// tables or refcount blocks, looked up by host offset, evicted least recently used, written
// back when dirty.
//
// The cache does no I/O itself: the driver loads and writes slots, because what must reach
// the disk before a dirty slot may be written (refcount blocks before the L2 entries that use
// their clusters, data before the L2 entries pointing at it) is the driver's write ordering.
// Lookups allocate nothing (a hash map from offset to slot, reserved up front), so a 4k
// read that hits the cache costs a hash probe.
//
// Slot states: free (offset unset), loading (offset set, !valid: a coroutine is reading it;
// others wait on the driver's metadata lock), valid clean, valid dirty. A slot is only
// evicted, loaded or written under the driver's metadata lock; unlocked readers only look at
// valid slots and never keep a pointer across a suspension.
#ifndef LIBBLOCK_FORMATS_QCOW2_QCOW2_CACHE_H_
#define LIBBLOCK_FORMATS_QCOW2_QCOW2_CACHE_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include <unordered_map>

namespace libblock::qcow2 {

class MetadataCache {
 public:
  struct Slot {
    std::optional<uint64_t> offset;  // host offset of the slice held (set while loading too)
    bool valid = false;
    bool dirty = false;
    uint64_t last_use = 0;           // LRU clock
    uint64_t last_use_ns = 0;        // for cache-clean-interval
    uint8_t* data = nullptr;         // entry_size bytes
  };

  MetadataCache(int64_t entry_size, int64_t slots);
  MetadataCache(const MetadataCache&) = delete;
  MetadataCache& operator=(const MetadataCache&) = delete;

  int64_t entry_size() const { return entry_size_; }
  size_t size() const { return slots_.size(); }

  // The valid slot holding `offset`, or null (marks it used).
  Slot* Lookup(uint64_t offset) {
    auto it = index_.find(offset);
    if (it == index_.end()) return nullptr;
    Slot* s = &slots_[it->second];
    if (!s->valid) return nullptr;
    s->last_use = ++clock_;
    return s;
  }
  // The slot holding or loading `offset`, or null.
  Slot* Find(uint64_t offset) {
    auto it = index_.find(offset);
    return it == index_.end() ? nullptr : &slots_[it->second];
  }
  // The least recently used slot (free ones first), or null when every slot is loading.
  Slot* Victim();
  // Binds `slot` (free or clean) to `offset`, not yet valid.
  void Bind(Slot* slot, uint64_t offset);
  // Forgets `slot`'s contents (clean or discarded).
  void Unbind(Slot* slot);
  // Forgets the slot for `offset` if there is one (the cluster was freed).
  void Drop(uint64_t offset);
  void MarkValid(Slot* slot, uint64_t now_ns) {
    slot->valid = true;
    slot->last_use = ++clock_;
    slot->last_use_ns = now_ns;
  }

  bool any_dirty() const;
  std::vector<Slot*> DirtySlots();
  std::vector<Slot>& slots() { return slots_; }

 private:
  int64_t entry_size_;
  std::unique_ptr<uint8_t[]> memory_;
  std::vector<Slot> slots_;
  std::unordered_map<uint64_t, size_t> index_;  // reserved: lookups never allocate (binds do)
  uint64_t clock_ = 0;
};

}  // namespace libblock::qcow2

#endif  // LIBBLOCK_FORMATS_QCOW2_QCOW2_CACHE_H_
