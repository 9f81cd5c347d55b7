// Overflow-checked offset arithmetic and alignment helpers. Every offset computed from
// untrusted input (option values, on-disk fields, request ranges) goes through these.
#ifndef LIBBLOCK_UTIL_CHECKED_MATH_H_
#define LIBBLOCK_UTIL_CHECKED_MATH_H_

#include <cstdint>
#include <type_traits>

namespace libblock {

// The largest byte length libblock accepts for a node or a request: QEMU's BDRV_MAX_LENGTH
// keeps offsets representable as int64 after alignment to any supported block size.
inline constexpr int64_t kMaxLength = INT64_MAX / 2;

// QEMU's BDRV_SECTOR_SIZE: node lengths are whole multiples of it.
inline constexpr int64_t kSectorSize = 512;

template <typename T>
[[nodiscard]] inline bool CheckedAdd(T a, T b, T* out) { return !__builtin_add_overflow(a, b, out); }

template <typename T>
[[nodiscard]] inline bool CheckedMul(T a, T b, T* out) { return !__builtin_mul_overflow(a, b, out); }

template <typename T>
constexpr bool IsPowerOf2(T v) { return v > 0 && (v & (v - 1)) == 0; }

// Alignment helpers for any positive alignment (not only powers of two).
template <typename T, typename A>
constexpr T AlignDown(T v, A align) { return v - v % static_cast<T>(align); }

template <typename T, typename A>
constexpr T AlignUp(T v, A align) { return AlignDown<T>(v + static_cast<T>(align) - 1, align); }

template <typename T, typename A>
constexpr bool IsAligned(T v, A align) { return v % static_cast<T>(align) == 0; }

// True when [offset, offset + bytes) is a valid non-negative range within kMaxLength.
inline bool RangeIsValid(int64_t offset, int64_t bytes) {
  return offset >= 0 && bytes >= 0 && offset <= kMaxLength && bytes <= kMaxLength - offset;
}

}  // namespace libblock

#endif  // LIBBLOCK_UTIL_CHECKED_MATH_H_
