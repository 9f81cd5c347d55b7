// Fixed-width loads and stores of on-disk integers in a given byte order, from unaligned
// memory. Every format's encode/decode goes through these (qcow2/qed/vhdx... headers mix
// both orders), never through casts of buffer pointers.
#ifndef LIBBLOCK_UTIL_ENDIAN_H_
#define LIBBLOCK_UTIL_ENDIAN_H_

#include <cstdint>
#include <cstring>

namespace libblock {

namespace internal {
template <typename T>
T LoadRaw(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
template <typename T>
void StoreRaw(uint8_t* p, T v) {
  std::memcpy(p, &v, sizeof(v));
}
}  // namespace internal

inline uint16_t LoadBe16(const uint8_t* p) { return __builtin_bswap16(internal::LoadRaw<uint16_t>(p)); }
inline uint32_t LoadBe32(const uint8_t* p) { return __builtin_bswap32(internal::LoadRaw<uint32_t>(p)); }
inline uint64_t LoadBe64(const uint8_t* p) { return __builtin_bswap64(internal::LoadRaw<uint64_t>(p)); }
inline uint16_t LoadLe16(const uint8_t* p) { return internal::LoadRaw<uint16_t>(p); }
inline uint32_t LoadLe32(const uint8_t* p) { return internal::LoadRaw<uint32_t>(p); }
inline uint64_t LoadLe64(const uint8_t* p) { return internal::LoadRaw<uint64_t>(p); }

inline void StoreBe16(uint8_t* p, uint16_t v) { internal::StoreRaw(p, __builtin_bswap16(v)); }
inline void StoreBe32(uint8_t* p, uint32_t v) { internal::StoreRaw(p, __builtin_bswap32(v)); }
inline void StoreBe64(uint8_t* p, uint64_t v) { internal::StoreRaw(p, __builtin_bswap64(v)); }
inline void StoreLe16(uint8_t* p, uint16_t v) { internal::StoreRaw(p, v); }
inline void StoreLe32(uint8_t* p, uint32_t v) { internal::StoreRaw(p, v); }
inline void StoreLe64(uint8_t* p, uint64_t v) { internal::StoreRaw(p, v); }

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "libblock assumes a little-endian host");

}  // namespace libblock

#endif  // LIBBLOCK_UTIL_ENDIAN_H_
