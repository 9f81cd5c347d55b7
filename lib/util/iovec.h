// IoVec: a scatter/gather list over caller-owned memory (QEMU's QEMUIOVector).
//
// An IoVec never owns the bytes it points to; slices share the same memory. The request path
// builds padded vectors (bounce head + caller's vector + bounce tail) instead of copying.
#ifndef LIBBLOCK_UTIL_IOVEC_H_
#define LIBBLOCK_UTIL_IOVEC_H_

#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <memory>

#include "absl/container/inlined_vector.h"

namespace libblock {

class IoVec {
 public:
  IoVec() = default;
  IoVec(void* base, size_t len) { Append(base, len); }

  void Append(void* base, size_t len);
  // Appends the bytes [offset, offset + len) of `other`.
  void AppendSlice(const IoVec& other, size_t offset, size_t len);

  // A vector viewing [offset, offset + len) of this one.
  IoVec Slice(size_t offset, size_t len) const;

  size_t size() const { return size_; }
  const struct iovec* iov() const { return iov_.data(); }
  int niov() const { return static_cast<int>(iov_.size()); }

  // Copies between this vector (starting at `offset`) and a flat buffer; return bytes copied.
  // Const: an IoVec is a view; these change the memory it points at, not the view.
  size_t CopyFrom(size_t offset, const void* buf, size_t len) const;
  size_t CopyTo(size_t offset, void* buf, size_t len) const;
  void Memset(size_t offset, int c, size_t len) const;

  // True when every byte is zero (detect-zeroes, probed-raw checks).
  bool IsZero() const;

  // True when every element's address and length are multiples of `mem_align`.
  bool IsAligned(size_t mem_align) const;

 private:
  absl::InlinedVector<struct iovec, 4> iov_;
  size_t size_ = 0;
};

// A heap buffer with a guaranteed address alignment (O_DIRECT bounce buffers).
class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  AlignedBuffer(size_t size, size_t align, bool zero = false);
  AlignedBuffer(AlignedBuffer&&) = default;
  AlignedBuffer& operator=(AlignedBuffer&&) = default;

  uint8_t* data() const { return data_.get(); }
  size_t size() const { return size_; }
  explicit operator bool() const { return data_ != nullptr; }

 private:
  struct Free { void operator()(uint8_t* p) const; };
  std::unique_ptr<uint8_t, Free> data_;
  size_t size_ = 0;
};

// True when `len` bytes at `buf` are all zero.
bool BufferIsZero(const void* buf, size_t len);

}  // namespace libblock

#endif  // LIBBLOCK_UTIL_IOVEC_H_
