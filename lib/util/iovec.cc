#include "util/iovec.h"

#include <cstdlib>
#include <cstring>
#include <new>

namespace libblock {

void IoVec::Append(void* base, size_t len) {
  if (len == 0) return;
  // Merge with the previous element when contiguous: keeps vectors short for the kernel.
  if (!iov_.empty()) {
    struct iovec& last = iov_.back();
    if (static_cast<uint8_t*>(last.iov_base) + last.iov_len == base) {
      last.iov_len += len;
      size_ += len;
      return;
    }
  }
  iov_.push_back({base, len});
  size_ += len;
}

namespace {

// Calls fn(segment_base, segment_length, position_in_range) for the pieces of `iov` that
// cover [offset, offset + len), in order; returns how many bytes were covered.
template <typename Fn>
size_t ForEachSegment(const absl::InlinedVector<struct iovec, 4>& iov, size_t offset, size_t len,
                      Fn&& fn) {
  size_t done = 0;
  for (const struct iovec& v : iov) {
    if (done == len) break;
    if (offset >= v.iov_len) {
      offset -= v.iov_len;
      continue;
    }
    size_t n = std::min(v.iov_len - offset, len - done);
    fn(static_cast<uint8_t*>(v.iov_base) + offset, n, done);
    done += n;
    offset = 0;
  }
  return done;
}

}  // namespace

void IoVec::AppendSlice(const IoVec& other, size_t offset, size_t len) {
  ForEachSegment(other.iov_, offset, len, [this](uint8_t* p, size_t n, size_t) { Append(p, n); });
}

IoVec IoVec::Slice(size_t offset, size_t len) const {
  IoVec out;
  out.AppendSlice(*this, offset, len);
  return out;
}

size_t IoVec::CopyFrom(size_t offset, const void* buf, size_t len) const {
  const uint8_t* src = static_cast<const uint8_t*>(buf);
  return ForEachSegment(iov_, offset, len,
                        [src](uint8_t* p, size_t n, size_t at) { std::memcpy(p, src + at, n); });
}

size_t IoVec::CopyTo(size_t offset, void* buf, size_t len) const {
  uint8_t* dst = static_cast<uint8_t*>(buf);
  return ForEachSegment(iov_, offset, len,
                        [dst](uint8_t* p, size_t n, size_t at) { std::memcpy(dst + at, p, n); });
}

void IoVec::Memset(size_t offset, int c, size_t len) const {
  ForEachSegment(iov_, offset, len, [c](uint8_t* p, size_t n, size_t) { std::memset(p, c, n); });
}

bool IoVec::IsZero() const {
  for (const struct iovec& v : iov_) {
    if (!BufferIsZero(v.iov_base, v.iov_len)) return false;
  }
  return true;
}

bool IoVec::IsAligned(size_t mem_align) const {
  if (mem_align <= 1) return true;
  for (const struct iovec& v : iov_) {
    if (reinterpret_cast<uintptr_t>(v.iov_base) % mem_align != 0 || v.iov_len % mem_align != 0) {
      return false;
    }
  }
  return true;
}

AlignedBuffer::AlignedBuffer(size_t size, size_t align, bool zero) : size_(size) {
  if (align < sizeof(void*)) align = sizeof(void*);
  void* p = nullptr;
  // Allocate at least one byte so that an empty buffer still has a valid aligned address.
  if (posix_memalign(&p, align, size ? size : 1) != 0) throw std::bad_alloc();
  if (zero) std::memset(p, 0, size);
  data_.reset(static_cast<uint8_t*>(p));
}

void AlignedBuffer::Free::operator()(uint8_t* p) const { std::free(p); }

bool BufferIsZero(const void* buf, size_t len) {
  const uint8_t* p = static_cast<const uint8_t*>(buf);
  // Word-at-a-time after an unaligned head; zero buffers are the common case in images.
  while (len > 0 && reinterpret_cast<uintptr_t>(p) % sizeof(uint64_t) != 0) {
    if (*p) return false;
    ++p;
    --len;
  }
  const uint64_t* w = reinterpret_cast<const uint64_t*>(p);
  while (len >= 4 * sizeof(uint64_t)) {
    if (w[0] | w[1] | w[2] | w[3]) return false;
    w += 4;
    len -= 4 * sizeof(uint64_t);
  }
  p = reinterpret_cast<const uint8_t*>(w);
  while (len > 0) {
    if (*p) return false;
    ++p;
    --len;
  }
  return true;
}

}  // namespace libblock
