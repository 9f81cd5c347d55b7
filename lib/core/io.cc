// The request path: every I/O enters a node through a Child and passes here before the
// driver sees it (QEMU's block/io.c, by behaviour).
//
//  * bounds: offsets and lengths stay within [0, kMaxLength);
//  * permissions: writes need the edge's write (or write-unchanged) permission, growing the
//    node needs resize, truncate needs resize;
//  * alignment: requests are padded out to request_alignment — reads with bounce head/tail
//    segments, writes by read-modify-write of the partial blocks under a serialising request;
//  * size: requests are split at max_transfer; reads past the end of the node return zeroes;
//  * tracking: every request is counted for drain and enters its range in the node's
//    RangeLock; a serialising request (an exclusive range) waits for earlier overlapping
//    requests and makes later ones wait;
//  * flags: mandatory flags the driver does not declare (compressed) fail with ENOTSUP before
//    anything is written; advisory ones are dropped or emulated;
//  * fallbacks: write-zeroes without driver support writes zero buffers, FUA without driver
//    support becomes a flush, discard is advisory, and flushes are skipped when nothing was
//    written since the last one;
//  * block status of one layer, with pass-through and recurse answers resolved (the chain walk
//    is block_status.cc).
#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_format.h"
#include "core/graph.h"
#include "core/info.h"
#include "core/node.h"
#include "util/checked_math.h"
#include "util/status.h"

namespace libblock {

// Counts a request against its node for drain and enters its range in the node's request
// range lock (serialising requests are exclusive ranges).
class RequestScope {
 public:
  explicit RequestScope(Node& node) : node_(node) { ++node_.in_flight_; }
  ~RequestScope() {
    range_.Release();
    if (--node_.in_flight_ == 0) node_.idle_waiters_.WakeAll();
  }
  RequestScope(const RequestScope&) = delete;
  RequestScope& operator=(const RequestScope&) = delete;

  void Track(int64_t offset, int64_t bytes, bool serialising) {
    node_.requests_.Add(range_, GuestOffset(offset), bytes, serialising);
  }

  // Waits until no earlier overlapping request conflicts with this one (a conflict needs
  // either side to be serialising). Use through the macro below, which awaits only when the
  // request really has to wait (no coroutine for the common case).
  bool TryWait() { return node_.requests_.TryWait(range_); }
  Task<absl::Status> WaitForConflicts(bool no_wait) {
    co_return co_await node_.requests_.Wait(range_, no_wait);
  }

 private:
  Node& node_;
  RangeLock<GuestOffset>::Range range_;
};

// Waits for conflicting requests (RequestScope::WaitForConflicts), without a coroutine frame
// when nothing conflicts; returns the error of a no-wait request that would have to wait.
#define LB_WAIT_FOR_CONFLICTS(scope, no_wait)                               \
  do {                                                                      \
    if (!(scope).TryWait()) {                                               \
      LB_CO_RETURN_IF_ERROR(co_await (scope).WaitForConflicts(no_wait));    \
    }                                                                       \
  } while (0)

namespace {

absl::Status RangeError(const Node& n, int64_t offset, int64_t bytes) {
  return ErrnoError(EIO, absl::StrFormat("node '%s': request [%d, +%d) is out of range",
                                         n.name(), offset, bytes));
}

int64_t MaxTransfer(const Node& n) {
  int64_t max = n.limits().max_transfer;
  if (max <= 0 || max > (int64_t{1} << 30)) max = int64_t{1} << 30;
  return std::max<int64_t>(AlignDown(max, n.limits().request_alignment),
                           n.limits().request_alignment);
}

// Whether an aligned read is one driver call: within the node (rounded up to the alignment,
// as the driver may return a partial last block) and within max_transfer.
bool IsOneDriverRead(const Node& n, int64_t offset, int64_t bytes) {
  int64_t align = n.limits().request_alignment;
  int64_t max_bytes = AlignUp(std::max<int64_t>(0, n.size() - offset), align);
  return bytes <= max_bytes && bytes <= MaxTransfer(n);
}

// Reads an aligned range from the driver: splits at max_transfer and zero-fills what lies
// beyond the end of the node.
Task<absl::Status> ReadAligned(Node& n, int64_t offset, int64_t bytes, const IoVec& qiov,
                               ReqFlags flags) {
  if (IsOneDriverRead(n, offset, bytes)) {
    co_return co_await n.impl()->Read(offset, bytes, qiov, flags);
  }
  int64_t align = n.limits().request_alignment;
  int64_t max_bytes = AlignUp(std::max<int64_t>(0, n.size() - offset), align);
  int64_t max_transfer = MaxTransfer(n);
  int64_t done = 0;
  while (done < bytes) {
    int64_t num = std::min(bytes - done, max_bytes - done);
    if (num <= 0) {
      qiov.Memset(static_cast<size_t>(done), 0, static_cast<size_t>(bytes - done));
      break;
    }
    num = std::min(num, max_transfer);
    IoVec part = qiov.Slice(static_cast<size_t>(done), static_cast<size_t>(num));
    LB_CO_RETURN_IF_ERROR(co_await n.impl()->Read(offset + done, num, part, flags));
    done += num;
  }
  co_return absl::OkStatus();
}

}  // namespace

// The request path's access to node internals (write generations, cached size).
struct NodeIo {
  static void NoteWrite(Node& n, int64_t end) {
    ++n.write_gen_;
    if (end > n.size_) n.size_ = AlignUp(end, kSectorSize);
  }
  static void NoteChange(Node& n) { ++n.write_gen_; }
  static Task<absl::Status> Flush(Node& n);
};

namespace {

Task<absl::Status> FlushNode(Node& n) { return NodeIo::Flush(n); }

Task<absl::Status> WriteAligned(Node& n, int64_t offset, int64_t bytes, const IoVec& qiov,
                                ReqFlags flags) {
  const Capabilities& caps = n.impl()->caps();
  // Mandatory flags were checked on entry (CheckWriteFlags); advisory ones the driver does not
  // honour are dropped here and emulated below where they matter (FUA).
  ReqFlags driver_flags = flags & caps.write_flags;
  int64_t max_transfer = MaxTransfer(n);
  for (int64_t done = 0; done < bytes;) {
    int64_t num = std::min(bytes - done, max_transfer);
    IoVec part = done == 0 && num == bytes
                     ? qiov
                     : qiov.Slice(static_cast<size_t>(done), static_cast<size_t>(num));
    LB_CO_RETURN_IF_ERROR(co_await n.impl()->Write(offset + done, num, part, driver_flags));
    done += num;
  }
  // Count the write before an emulated FUA flush, or the flush would find nothing to do.
  NodeIo::NoteChange(n);
  if ((flags & kReqFua) && !(caps.write_flags & kReqFua)) co_return co_await FlushNode(n);
  co_return absl::OkStatus();
}

// The padding of an unaligned request: bounce buffers for the partial head and tail blocks.
struct Padding {
  int64_t offset = 0;   // aligned start
  int64_t bytes = 0;    // aligned length
  int64_t head = 0;     // bytes of padding before the request
  int64_t tail = 0;     // bytes of padding after it
  AlignedBuffer head_buf, tail_buf;
  bool needed() const { return head != 0 || tail != 0; }
};

Padding ComputePadding(const Node& n, int64_t offset, int64_t bytes) {
  Padding p;
  int64_t align = n.limits().request_alignment;
  p.offset = AlignDown(offset, align);
  int64_t end = AlignUp(offset + bytes, align);
  p.bytes = end - p.offset;
  p.head = offset - p.offset;
  p.tail = end - (offset + bytes);
  size_t mem = std::max<size_t>(n.limits().opt_mem_alignment, 512);
  if (p.head) p.head_buf = AlignedBuffer(static_cast<size_t>(align), mem);
  if (p.tail) p.tail_buf = AlignedBuffer(static_cast<size_t>(align), mem);
  return p;
}

// head_buf + qiov + tail_buf, where the buffers hold whole blocks and only their padding
// parts are spliced in. When head and tail fall in one block, tail_buf aliases head_buf.
IoVec PaddedVector(const Padding& p, const IoVec& qiov, int64_t bytes, int64_t align,
                   bool same_block) {
  IoVec out;
  if (p.head) out.Append(p.head_buf.data(), static_cast<size_t>(p.head));
  out.AppendSlice(qiov, 0, static_cast<size_t>(bytes));
  if (p.tail) {
    uint8_t* tail_block = same_block ? p.head_buf.data() : p.tail_buf.data();
    out.Append(tail_block + (align - p.tail), static_cast<size_t>(p.tail));
  }
  return out;
}

// Writes `bytes` of `qiov` at `offset` (described by `pad`) by read-modify-write of the
// partial head and tail blocks. The caller holds a serialising request over the aligned range,
// so no other write can change those blocks between our read and our write.
Task<absl::Status> WritePadded(Node& n, int64_t offset, int64_t bytes, Padding& pad,
                               const IoVec& qiov, ReqFlags flags) {
  if (!pad.needed()) co_return co_await WriteAligned(n, offset, bytes, qiov, flags);
  int64_t align = n.limits().request_alignment;
  bool same_block = pad.bytes == align;
  if (pad.head) {
    IoVec h(pad.head_buf.data(), static_cast<size_t>(align));
    LB_CO_RETURN_IF_ERROR(co_await ReadAligned(n, pad.offset, align, h, 0));
  }
  if (pad.tail && !(same_block && pad.head)) {
    IoVec t(pad.tail_buf.data(), static_cast<size_t>(align));
    LB_CO_RETURN_IF_ERROR(co_await ReadAligned(n, pad.offset + pad.bytes - align, align, t, 0));
  }
  IoVec padded = PaddedVector(pad, qiov, bytes, align, same_block && pad.head);
  co_return co_await WriteAligned(n, pad.offset, pad.bytes, padded, flags);
}

// Mandatory request flags the driver cannot honour fail the request before anything happens.
absl::Status CheckWriteFlags(const Node& n, ReqFlags flags, ReqFlags supported) {
  static_assert(kReqMandatoryFlags == kReqCompressed,
                "a new mandatory flag needs its own refusal message here");
  if (!(flags & kReqMandatoryFlags & ~supported)) return absl::OkStatus();
  return ErrnoError(ENOTSUP, absl::StrFormat("node '%s': compressed writes are not supported",
                                             n.name()));
}

}  // namespace

Task<absl::Status> Node::FlushLayer() {
  // Nothing written since the last successful flush: nothing to make durable in this layer.
  if (write_gen_ == flushed_gen_) co_return absl::OkStatus();
  uint64_t gen = write_gen_;
  absl::Status st = co_await impl_->Flush();
  if (st.ok()) flushed_gen_ = std::max(flushed_gen_, gen);
  co_return st;
}

Task<absl::Status> NodeIo::Flush(Node& n) {
  // This layer, then every child written through it. Children are visited even when this
  // layer had nothing to do: they may have been written through other parents.
  absl::Status st = co_await n.FlushLayer();
  for (Child* c : n.children()) {
    if (!(c->perm() & (kPermWrite | kPermWriteUnchanged))) continue;
    absl::Status child_st = co_await c->Flush();
    if (st.ok()) st = child_st;
  }
  co_return st;
}

namespace {

absl::Status CheckWritable(const Child& c, const Node& n, int64_t offset, int64_t bytes,
                           ReqFlags flags) {
  if (!RangeIsValid(offset, bytes)) return RangeError(n, offset, bytes);
  Perm need = (flags & kReqWriteUnchanged) ? (kPermWrite | kPermWriteUnchanged) : kPermWrite;
  if (!(c.perm() & need)) {
    return ErrnoError(EPERM, absl::StrFormat("node '%s': write through '%s' child without the "
                                             "write permission", n.name(), c.name()));
  }
  if (n.flags().read_only) return ErrnoError(EPERM, "Block node is read-only");
  if (offset + bytes > n.size() && !(c.perm() & kPermResize)) {
    return ErrnoError(EPERM, absl::StrFormat("node '%s': writing past the end (%d bytes) needs "
                                             "the resize permission", n.name(), n.size()));
  }
  return absl::OkStatus();
}

}  // namespace

// ---- Child I/O ---------------------------------------------------------------------------------

Task<absl::Status> Child::Read(int64_t offset, int64_t bytes, const IoVec& qiov, ReqFlags flags) {
  Node& n = *node_;
  if (!RangeIsValid(offset, bytes)) co_return RangeError(n, offset, bytes);
  if (bytes == 0) co_return absl::OkStatus();
  RequestScope scope(n);
  int64_t align = n.limits().request_alignment;
  if (offset % align == 0 && bytes % align == 0) {
    // Aligned, the common case: no padding, and one piece goes straight to the driver (one
    // coroutine frame fewer per layer).
    scope.Track(offset, bytes, flags & kReqSerialising);
    LB_WAIT_FOR_CONFLICTS(scope, flags & kReqNoWait);
    flags &= ~(kReqSerialising | kReqNoWait);
    if (IsOneDriverRead(n, offset, bytes)) co_return co_await n.impl()->Read(offset, bytes, qiov, flags);
    co_return co_await ReadAligned(n, offset, bytes, qiov, flags);
  }
  Padding pad = ComputePadding(n, offset, bytes);
  scope.Track(pad.offset, pad.bytes, flags & kReqSerialising);
  LB_WAIT_FOR_CONFLICTS(scope, flags & kReqNoWait);
  flags &= ~(kReqSerialising | kReqNoWait);
  bool same_block = pad.bytes == align;
  IoVec padded = PaddedVector(pad, qiov, bytes, align, same_block && pad.head);
  co_return co_await ReadAligned(n, pad.offset, pad.bytes, padded, flags);
}

Task<absl::Status> Child::Write(int64_t offset, int64_t bytes, const IoVec& qiov, ReqFlags flags) {
  Node& n = *node_;
  LB_CO_RETURN_IF_ERROR(CheckWritable(*this, n, offset, bytes, flags));
  LB_CO_RETURN_IF_ERROR(CheckWriteFlags(n, flags, n.impl()->caps().write_flags));
  if (bytes == 0) co_return absl::OkStatus();
  if (n.flags().detect_zeroes != DetectZeroes::kOff &&
      !(flags & (kReqWriteUnchanged | kReqCompressed)) && qiov.IsZero()) {
    ReqFlags zf = flags & (kReqFua | kReqSerialising);
    if (n.flags().detect_zeroes == DetectZeroes::kUnmap) zf |= kReqMayUnmap;
    co_return co_await WriteZeroes(offset, bytes, zf);
  }
  RequestScope scope(n);
  Padding pad = ComputePadding(n, offset, bytes);
  bool serialising = pad.needed() || (flags & kReqSerialising) || n.impl()->caps().serialise_writes;
  scope.Track(pad.offset, pad.bytes, serialising);
  LB_WAIT_FOR_CONFLICTS(scope, flags & kReqNoWait);
  flags &= ~(kReqSerialising | kReqNoWait);
  absl::Status st = co_await WritePadded(n, offset, bytes, pad, qiov, flags);
  if (st.ok()) NodeIo::NoteWrite(n, offset + bytes);
  co_return st;
}

Task<absl::Status> Child::WriteZeroes(int64_t offset, int64_t bytes, ReqFlags flags) {
  Node& n = *node_;
  LB_CO_RETURN_IF_ERROR(CheckWritable(*this, n, offset, bytes, flags));
  // Zeroes are never written compressed: the flag is meaningless here.
  if (flags & kReqCompressed) co_return ErrnoError(EINVAL, "write-zeroes cannot be compressed");
  if (bytes == 0) co_return absl::OkStatus();
  if (!n.flags().unmap && !(flags & kReqKeepUnmap)) flags &= ~kReqMayUnmap;
  flags &= ~kReqKeepUnmap;
  const Capabilities& caps = n.impl()->caps();
  int64_t req_align = n.limits().request_alignment;
  // As in QEMU: a misaligned request cannot be efficient, so it is refused before any of it
  // is zeroed.
  if ((flags & kReqNoFallback) && (offset % req_align || bytes % req_align)) {
    co_return ErrnoError(ENOTSUP, "write-zeroes not supported for a misaligned request");
  }
  RequestScope scope(n);
  int64_t align = std::max<int64_t>(req_align, n.limits().pwrite_zeroes_alignment);
  // Partial blocks at the edges are zeroed by read-modify-write, which must exclude
  // overlapping requests exactly as a padded write does.
  bool partial = offset % req_align != 0 || (offset + bytes) % req_align != 0;
  scope.Track(AlignDown(offset, req_align), AlignUp(offset + bytes, req_align) - AlignDown(offset, req_align),
              (flags & kReqSerialising) || partial);
  LB_WAIT_FOR_CONFLICTS(scope, flags & kReqNoWait);
  flags &= ~(kReqSerialising | kReqNoWait);

  int64_t max_zero = n.limits().max_pwrite_zeroes > 0 ? AlignDown(n.limits().max_pwrite_zeroes, align)
                                                      : AlignDown(kMaxLength, align);
  if (max_zero <= 0) max_zero = align;
  AlignedBuffer zero_buf;
  int64_t pos = offset, end = offset + bytes;
  while (pos < end) {
    int64_t num = end - pos;
    bool aligned_piece = false;
    if (pos % align) {
      num = std::min(num, align - pos % align);  // up to the first aligned boundary
    } else if (num >= align) {
      num = std::min(AlignDown(num, align), max_zero);
      aligned_piece = true;
    }
    absl::Status st = ErrnoError(ENOTSUP, "write-zeroes not supported");
    if (caps.write_zeroes && aligned_piece) {
      st = co_await n.impl()->WriteZeroes(pos, num, flags & caps.zero_flags);
      if (st.ok()) NodeIo::NoteChange(n);
      if (st.ok() && (flags & kReqFua) && !(caps.zero_flags & kReqFua)) st = co_await FlushNode(n);
    }
    if (StatusErrno(st) == ENOTSUP && !aligned_piece && caps.write_zeroes &&
        num % req_align == 0 && pos % req_align == 0) {
      // Aligned to the request granularity but not to the zeroing granularity: the driver
      // may still zero it efficiently.
      st = co_await n.impl()->WriteZeroes(pos, num, flags & caps.zero_flags);
    }
    if (StatusErrno(st) == ENOTSUP) {
      if (flags & kReqNoFallback) co_return st;
      // Fall back to writing zeroes, through the padding-aware write path.
      int64_t chunk = std::min<int64_t>(num, std::min<int64_t>(MaxTransfer(n), 1 << 20));
      if (!zero_buf || static_cast<int64_t>(zero_buf.size()) < chunk) {
        zero_buf = AlignedBuffer(static_cast<size_t>(chunk),
                                 std::max<size_t>(n.limits().opt_mem_alignment, 512), true);
      }
      for (int64_t done = 0; done < num;) {
        int64_t len = std::min(num - done, chunk);
        IoVec z(zero_buf.data(), static_cast<size_t>(len));
        int64_t p = pos + done;
        Padding pad = ComputePadding(n, p, len);
        st = co_await WritePadded(n, p, len, pad, z, flags);
        if (!st.ok()) break;
        done += len;
      }
    }
    LB_CO_RETURN_IF_ERROR(st);
    pos += num;
  }
  NodeIo::NoteWrite(n, end);
  co_return absl::OkStatus();
}

Task<absl::Status> Child::Discard(int64_t offset, int64_t bytes) {
  Node& n = *node_;
  if (!RangeIsValid(offset, bytes)) co_return RangeError(n, offset, bytes);
  if (!(perm() & kPermWrite)) {
    co_return ErrnoError(EPERM, absl::StrFormat("node '%s': discard through '%s' child without "
                                                "the write permission", n.name(), name()));
  }
  if (n.flags().read_only) co_return ErrnoError(EPERM, "Block node is read-only");
  // discard=ignore (the default) turns discard into a no-op, as in QEMU.
  if (!n.flags().unmap || !n.impl()->caps().discard || bytes == 0) co_return absl::OkStatus();
  int64_t align = std::max<int64_t>(n.limits().request_alignment, n.limits().pdiscard_alignment);
  int64_t start = AlignUp(offset, align), end = AlignDown(offset + bytes, align);
  if (start >= end) co_return absl::OkStatus();
  RequestScope scope(n);
  scope.Track(start, end - start, false);
  LB_WAIT_FOR_CONFLICTS(scope, false);
  int64_t max = n.limits().max_pdiscard > 0 ? AlignDown(n.limits().max_pdiscard, align) : end - start;
  if (max <= 0) max = align;
  for (int64_t pos = start; pos < end;) {
    int64_t num = std::min(end - pos, max);
    absl::Status st = co_await n.impl()->Discard(pos, num);
    // Discard is advisory: a driver or file system that cannot do it is not an error.
    if (!st.ok() && StatusErrno(st) != ENOTSUP) co_return st;
    pos += num;
  }
  NodeIo::NoteChange(n);
  co_return absl::OkStatus();
}

Task<absl::Status> Child::Flush() {
  Node& n = *node_;
  RequestScope scope(n);
  co_return co_await FlushNode(n);
}

Task<absl::StatusOr<BlockStatus>> Child::GetBlockStatus(int64_t offset, int64_t bytes,
                                                         bool want_zero) {
  // One layer's answer (QEMU's bdrv_co_block_status): what this node's driver says, with
  // pass-through (kStatusRaw) and recurse (kStatusRecurse) answers resolved through the child
  // they name. Backing files are not consulted: BlockStatusAbove walks the chain.
  Node& n = *node_;
  if (!RangeIsValid(offset, bytes)) co_return RangeError(n, offset, bytes);
  BlockStatus out;
  int64_t total = n.size();
  if (offset >= total || bytes == 0) {
    out.flags = kStatusEof;
    out.bytes = 0;
    co_return out;
  }
  bytes = std::min(bytes, total - offset);
  RequestScope scope(n);
  if (!n.impl()->caps().block_status) {
    // No allocation information: everything is data. A protocol maps to itself.
    out.flags = kStatusData | kStatusAllocated;
    if (n.driver().kind == DriverKind::kProtocol) {
      out.flags |= kStatusOffsetValid;
      out.map = offset;
      out.file = this;
    }
    out.bytes = bytes;
  } else {
    absl::StatusOr<BlockStatus> r = co_await n.impl()->GetBlockStatus(offset, bytes, want_zero);
    if (!r.ok()) co_return r;
    out = *r;
    if (out.bytes <= 0 || out.bytes > bytes) {
      co_return ErrnoError(EIO, absl::StrFormat("node '%s': driver returned a bad block status "
                                                "length %d", n.name(), out.bytes));
    }
    if (out.file && out.file->parent()->AsNode() != &n) {
      co_return ErrnoError(EIO, absl::StrFormat("node '%s': block status names an edge that is "
                                                "not one of its children", n.name()));
    }
    if (out.flags & kStatusRaw) {
      // The layer passes the range through unchanged: ask the child it maps to.
      if (!out.file || !(out.flags & kStatusOffsetValid)) {
        co_return ErrnoError(EIO, absl::StrFormat("node '%s': pass-through block status without "
                                                  "a child", n.name()));
      }
      int64_t len = out.bytes;
      absl::StatusOr<BlockStatus> inner =
          co_await out.file->GetBlockStatus(out.map, len, want_zero);
      if (!inner.ok()) co_return inner;
      if (inner->bytes == 0) {  // past the end of the child: reads as zeroes
        out.flags = kStatusZero | kStatusAllocated;
        out.file = nullptr;
      } else {
        out = *inner;
        out.flags &= ~kStatusEof;
      }
    } else {
      if ((out.flags & kStatusOffsetValid) && !out.file) out.file = this;  // the node itself
      if (want_zero && (out.flags & kStatusRecurse) && out.file != this &&
          (out.flags & (kStatusData | kStatusOffsetValid)) == (kStatusData | kStatusOffsetValid) &&
          !(out.flags & kStatusZero)) {
        // Data the format cannot tell from zeroes (preallocated metadata): the file knows.
        int64_t len = out.bytes;
        absl::StatusOr<BlockStatus> below = co_await out.file->GetBlockStatus(out.map, len, true);
        if (!below.ok()) co_return below;
        if (below->bytes == 0) {
          out.flags |= kStatusZero;  // past the end of the file: reads as zeroes
        } else {
          out.bytes = below->bytes;
          out.flags |= below->flags & kStatusZero;
        }
      }
      out.flags &= ~(kStatusRecurse | kStatusEof);
      if (out.flags & (kStatusData | kStatusZero)) {
        out.flags |= kStatusAllocated;
      } else if (n.driver().kind == DriverKind::kFormat) {
        // Unallocated in the format's own answer: the backing file shows through, or zeroes
        // if there is none or it ends before the range (QEMU adds ZERO without ALLOCATED the
        // same way). Pass-through answers (raw) are the child's and keep what it said.
        Child* cow = BackingChild(n);
        if (!cow || (want_zero && offset >= cow->node()->size())) out.flags |= kStatusZero;
      }
    }
  }
  if (offset + out.bytes == total) out.flags |= kStatusEof;
  co_return out;
}

Task<absl::Status> Child::Truncate(int64_t size, bool exact, PreallocMode mode, ReqFlags flags) {
  Node& n = *node_;
  if (!(perm() & kPermResize)) {
    co_return ErrnoError(EPERM, absl::StrFormat("node '%s': resizing through '%s' child needs "
                                                "the resize permission", n.name(), name()));
  }
  if (size < 0) co_return ErrnoError(EINVAL, "Image size cannot be negative");
  if (size > kMaxLength) {
    co_return ErrnoError(EFBIG, absl::StrFormat("Required too big image size, it must be not "
                                                "greater than %d", kMaxLength));
  }
  if (n.flags().read_only) co_return ErrnoError(EACCES, "Image is read-only");
  if (!n.impl()->caps().truncate) {
    co_return ErrnoError(ENOTSUP, "Image format driver does not support resize");
  }
  RequestScope scope(n);
  int64_t from = std::min(size, n.size());
  scope.Track(from, kMaxLength - from, true);
  LB_WAIT_FOR_CONFLICTS(scope, false);
  absl::Status st = co_await n.impl()->Truncate(size, exact, mode, flags);
  absl::Status refreshed = n.RefreshSize();
  NodeIo::NoteChange(n);
  if (!st.ok()) co_return st;
  co_return refreshed;
}

Task<absl::Status> Child::Pread(int64_t offset, void* buf, int64_t bytes) {
  IoVec v(buf, static_cast<size_t>(bytes));
  co_return co_await Read(offset, bytes, v, 0);
}

Task<absl::Status> Child::Pwrite(int64_t offset, const void* buf, int64_t bytes, ReqFlags flags) {
  IoVec v(const_cast<void*>(buf), static_cast<size_t>(bytes));
  co_return co_await Write(offset, bytes, v, flags);
}

}  // namespace libblock
