// Strong offset types: a guest offset (a position in a node's own address space, what its
// parents ask for) and a host offset (a position in the node a mapping points into, e.g. a
// qcow2 cluster in its file) are different quantities, and mixing them up is the classic
// mapping bug. Each is a wrapped int64_t with explicit construction and explicit value():
// offsets can be compared, moved by a length (int64_t bytes) and subtracted into a length, but
// a GuestOffset never converts to a HostOffset or to a plain integer by accident.
//
// Introduced for the range lock and the mapping-facing APIs; the older request-path code still
// uses int64_t and is converted as it is touched, not in one sweep.
#ifndef LIBBLOCK_CORE_OFFSET_H_
#define LIBBLOCK_CORE_OFFSET_H_

#include <compare>
#include <cstdint>

namespace libblock {

template <typename Tag>
class StrongOffset {
 public:
  constexpr StrongOffset() = default;
  constexpr explicit StrongOffset(int64_t value) : value_(value) {}

  constexpr int64_t value() const { return value_; }

  constexpr auto operator<=>(const StrongOffset&) const = default;

  // Moving by a length keeps the kind of offset; the distance of two offsets is a length.
  constexpr StrongOffset operator+(int64_t bytes) const { return StrongOffset(value_ + bytes); }
  constexpr StrongOffset operator-(int64_t bytes) const { return StrongOffset(value_ - bytes); }
  constexpr int64_t operator-(StrongOffset other) const { return value_ - other.value_; }
  constexpr StrongOffset& operator+=(int64_t bytes) {
    value_ += bytes;
    return *this;
  }

  // Alignment to a power-of-two or any positive granularity.
  constexpr StrongOffset AlignDown(int64_t granularity) const {
    return StrongOffset(value_ - value_ % granularity);
  }
  constexpr StrongOffset AlignUp(int64_t granularity) const {
    int64_t rem = value_ % granularity;
    return rem ? StrongOffset(value_ + (granularity - rem)) : *this;
  }
  constexpr int64_t OffsetInto(int64_t granularity) const { return value_ % granularity; }

 private:
  int64_t value_ = 0;
};

struct GuestOffsetTag;
struct HostOffsetTag;
// A position in a node's own (virtual) address space.
using GuestOffset = StrongOffset<GuestOffsetTag>;
// A position in the node that a mapping points into (a format's file, data file, ...).
using HostOffset = StrongOffset<HostOffsetTag>;

}  // namespace libblock

#endif  // LIBBLOCK_CORE_OFFSET_H_
