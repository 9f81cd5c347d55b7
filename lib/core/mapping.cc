// The mapping engine (mapping.h): the I/O plane of table-mapped formats on top of their
// Map/Allocate/Commit hooks.
//
// Locking: `clusters_` is a RangeLock at cluster granularity over guest offsets. Reads and
// in-place writes hold their clusters shared; an allocating write starts shared and widens to
// exclusive when Map says a piece is not writable in place, then maps again (the answer may
// have changed while it waited); compressed writes, write-zeroes and discards hold theirs
// exclusively. So Map → Allocate → data write → Commit of one guest cluster never overlaps
// another request on that cluster that could change or free its mapping, and a read never
// sees a host cluster freed and reused under it.
//
// Data: a piece that is data is read straight into the caller's vector; copy-on-write parts
// (head and tail of an allocating write, whole subclusters) are read through the engine's own
// read path, so they come from whatever the range currently is (backing file, zeroes, a
// compressed blob, the old data cluster) and are written with the new data as one child
// write. Compression, decompression and the encryption hooks run on the loop's CPU pool.
#include "core/mapping.h"

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_format.h"
#include "core/block_status.h"
#include "core/codec.h"
#include "core/event_loop.h"
#include "core/info.h"
#include "core/task_group.h"
#include "util/checked_math.h"
#include "util/status.h"

namespace libblock {

// A blob or a decompressed cluster larger than this is not something a format describes:
// refused as corruption before anything is allocated for it.
constexpr int64_t kMaxBlobBytes = int64_t{64} << 20;
// Pieces of one read (and clusters of one compressed write) in flight at once.
constexpr int kMaxPiecesInFlight = 8;

struct MappingDriver::DecompressedCluster {
  Child* child = nullptr;
  HostOffset host;
  int64_t blob_bytes = 0;
  GuestOffset guest;
  int64_t guest_bytes = 0;
  Codec codec = Codec::kNone;
  std::unique_ptr<uint8_t[]> data;

  bool Matches(const Mapping& m) const {
    return child == m.child && host == m.host && blob_bytes == m.blob_bytes &&
           guest == m.blob_guest && guest_bytes == m.blob_guest_bytes && codec == m.codec;
  }
};

struct MappingEngine {
  using Range = RangeLock<GuestOffset>::Range;

  static std::string Where(const MappingDriver& d, GuestOffset pos) {
    return absl::StrFormat("node '%s': guest offset %d: ", d.node().name(), pos.value());
  }

  static absl::Status Corruption(MappingDriver& d, GuestOffset pos, std::string_view what) {
    return d.ReportCorruption(ErrnoError(EIO, Where(d, pos) + std::string(what)));
  }

  // A mapping the engine can act on, or corruption (reported to the driver).
  static absl::Status CheckMapping(MappingDriver& d, GuestOffset pos, int64_t asked,
                                   const Mapping& m) {
    if (m.bytes <= 0 || m.bytes > asked) {
      return Corruption(d, pos, absl::StrFormat("mapping of %d bytes for a %d-byte range",
                                                m.bytes, asked));
    }
    switch (m.kind) {
      case MapKind::kData:
        if (!m.child || m.host.value() < 0 || m.host.value() > kMaxLength - m.bytes) {
          return Corruption(d, pos, absl::StrFormat("data mapped at an impossible host offset "
                                                    "%d", m.host.value()));
        }
        if (m.encrypted) {
          int64_t sector = d.geometry().crypt_sector;
          if (sector <= 0 || pos.value() % sector || m.bytes % sector) {
            return ErrnoError(EIO, Where(d, pos) + "encrypted data accessed off its sectors");
          }
        }
        return absl::OkStatus();
      case MapKind::kZero:
      case MapKind::kUnallocated:
        return absl::OkStatus();
      case MapKind::kCompressed:
        if (!m.child || m.host.value() < 0 || m.blob_bytes <= 0 || m.blob_bytes > kMaxBlobBytes ||
            m.blob_guest_bytes <= 0 || m.blob_guest_bytes > kMaxBlobBytes ||
            pos < m.blob_guest || pos + m.bytes > m.blob_guest + m.blob_guest_bytes) {
          return Corruption(d, pos, absl::StrFormat(
                                        "impossible compressed cluster (host offset %d, %d "
                                        "stored bytes, guest [%d, +%d))",
                                        m.host.value(), m.blob_bytes, m.blob_guest.value(),
                                        m.blob_guest_bytes));
        }
        return absl::OkStatus();
    }
    return Corruption(d, pos, "unknown mapping kind");
  }

  static absl::Status NotInitialised(const MappingDriver& d) {
    return ErrnoError(EIO, absl::StrFormat("node '%s': the format did not initialise the "
                                           "mapping engine", d.node().name()));
  }

  // ---- reads ------------------------------------------------------------------------------

  // Reads [offset, offset + bytes) of the guest range into `qiov`; the caller holds its
  // clusters. The pieces of a request that maps to several run concurrently (a few at a
  // time): discontiguous clusters are read in parallel, blobs decompressed in parallel.
  static Task<absl::Status> ReadRange(MappingDriver& d, GuestOffset offset, int64_t bytes,
                                      const IoVec& qiov) {
    TaskGroup group(kMaxPiecesInFlight);
    absl::Status st;
    for (int64_t done = 0; done < bytes;) {
      GuestOffset pos = offset + done;
      int64_t want = bytes - done;
      absl::StatusOr<Mapping> m = co_await d.Map(pos, want, false);
      if (!m.ok()) {
        st = m.status();
        break;
      }
      st = CheckMapping(d, pos, want, *m);
      if (!st.ok()) break;
      if (done == 0 && m->bytes == bytes) co_return co_await ReadPiece(d, pos, *m, qiov);
      IoVec part = qiov.Slice(static_cast<size_t>(done), static_cast<size_t>(m->bytes));
      Task<absl::Status> task = ReadPieceOwned(d, pos, *m, std::move(part));
      co_await group.StartWhenFree(std::move(task));
      if (group.failed()) break;
      done += m->bytes;
    }
    absl::Status joined = co_await group.Join();
    if (!st.ok()) co_return st;
    co_return joined;
  }

  // ReadPiece with its own copies of the mapping and the vector (a task outlives the loop
  // iteration that started it).
  static Task<absl::Status> ReadPieceOwned(MappingDriver& d, GuestOffset pos, Mapping m,
                                           IoVec part) {
    co_return co_await ReadPiece(d, pos, m, part);
  }

  static Task<absl::Status> ReadPiece(MappingDriver& d, GuestOffset pos, const Mapping& m,
                                      const IoVec& part) {
    int64_t len = m.bytes;
    switch (m.kind) {
      case MapKind::kData: {
        if (!m.encrypted) co_return co_await m.child->Read(m.host.value(), len, part);
        AlignedBuffer buf(static_cast<size_t>(len), 512);
        IoVec v(buf.data(), static_cast<size_t>(len));
        LB_CO_RETURN_IF_ERROR(co_await m.child->Read(m.host.value(), len, v));
        std::span<uint8_t> span(buf.data(), static_cast<size_t>(len));
        HostOffset host = m.host;
        auto job = [&d, pos, host, span] { return d.Decrypt(pos, host, span); };
        absl::Status st = co_await d.node().loop().RunCpu(std::move(job));
        if (!st.ok()) co_return Prepend(st, Where(d, pos));
        part.CopyFrom(0, buf.data(), static_cast<size_t>(len));
        co_return absl::OkStatus();
      }
      case MapKind::kZero:
        part.Memset(0, 0, static_cast<size_t>(len));
        co_return absl::OkStatus();
      case MapKind::kUnallocated:
        co_return co_await ReadBacking(d, pos, len, part);
      case MapKind::kCompressed:
        co_return co_await ReadCompressed(d, pos, m, part);
    }
    co_return Corruption(d, pos, "unknown mapping kind");
  }

  // The backing file's content of the range, clipped to its size; zeroes past it or without one.
  static Task<absl::Status> ReadBacking(MappingDriver& d, GuestOffset pos, int64_t len,
                                        const IoVec& part) {
    Child* backing = d.backing();
    int64_t from_backing = 0;
    if (backing) {
      from_backing = std::clamp<int64_t>(backing->node()->size() - pos.value(), 0, len);
    }
    if (from_backing > 0) {
      IoVec head = from_backing == len ? part : part.Slice(0, static_cast<size_t>(from_backing));
      LB_CO_RETURN_IF_ERROR(co_await backing->Read(pos.value(), from_backing, head));
    }
    if (from_backing < len) {
      part.Memset(static_cast<size_t>(from_backing), 0, static_cast<size_t>(len - from_backing));
    }
    co_return absl::OkStatus();
  }

  static Task<absl::Status> ReadCompressed(MappingDriver& d, GuestOffset pos, const Mapping& m,
                                           const IoVec& part) {
    std::shared_ptr<const MappingDriver::DecompressedCluster> cluster = d.decompressed_;
    if (!cluster || !cluster->Matches(m)) {
      uint64_t gen = d.decompress_gen_;
      absl::StatusOr<std::shared_ptr<const MappingDriver::DecompressedCluster>> fresh =
          co_await DecompressBlob(d, pos, m);
      if (!fresh.ok()) co_return fresh.status();
      cluster = *std::move(fresh);
      // Not cached when the cluster was rewritten meanwhile (it cannot be while we hold it,
      // but InvalidateMappingCaches may be called from anywhere).
      if (gen == d.decompress_gen_) d.decompressed_ = cluster;
    }
    part.CopyFrom(0, cluster->data.get() + (pos - m.blob_guest), static_cast<size_t>(m.bytes));
    co_return absl::OkStatus();
  }

  static Task<absl::StatusOr<std::shared_ptr<const MappingDriver::DecompressedCluster>>>
  DecompressBlob(MappingDriver& d, GuestOffset pos, const Mapping& m) {
    int64_t child_size = m.child->node()->size();
    if (m.host.value() >= child_size) {
      co_return Corruption(d, pos, absl::StrFormat("compressed cluster at host offset %d starts "
                                                   "past the end of its file (%d bytes)",
                                                   m.host.value(), child_size));
    }
    int64_t stored = std::min(m.blob_bytes, child_size - m.host.value());
    auto blob = std::make_unique_for_overwrite<uint8_t[]>(static_cast<size_t>(stored));
    IoVec v(blob.get(), static_cast<size_t>(stored));
    LB_CO_RETURN_IF_ERROR(co_await m.child->Read(m.host.value(), stored, v));
    auto cluster = std::make_shared<MappingDriver::DecompressedCluster>();
    cluster->child = m.child;
    cluster->host = m.host;
    cluster->blob_bytes = m.blob_bytes;
    cluster->guest = m.blob_guest;
    cluster->guest_bytes = m.blob_guest_bytes;
    cluster->codec = m.codec;
    // Written whole by a successful decompression (a short one is corruption).
    cluster->data =
        std::make_unique_for_overwrite<uint8_t[]>(static_cast<size_t>(m.blob_guest_bytes));
    std::span<const uint8_t> in(blob.get(), static_cast<size_t>(stored));
    std::span<uint8_t> out(cluster->data.get(), static_cast<size_t>(m.blob_guest_bytes));
    Codec codec = m.codec;
    auto job = [codec, in, out] { return Decompress(codec, in, out); };
    absl::Status st = co_await d.node().loop().RunCpu(std::move(job));
    if (!st.ok()) {
      co_return d.ReportCorruption(Prepend(
          st, absl::StrFormat("%scompressed cluster at host offset %d: ", Where(d, m.blob_guest),
                              m.host.value())));
    }
    co_return std::shared_ptr<const MappingDriver::DecompressedCluster>(std::move(cluster));
  }

  // ---- writes -----------------------------------------------------------------------------

  // Writes `part` to a data mapping in place.
  static Task<absl::Status> WriteInPlace(MappingDriver& d, GuestOffset pos, const Mapping& m,
                                         const IoVec& part) {
    LB_CO_RETURN_IF_ERROR(d.CheckDataWrite(*m.child, m.host, m.bytes));
    if (!m.encrypted) co_return co_await m.child->Write(m.host.value(), m.bytes, part);
    AlignedBuffer buf(static_cast<size_t>(m.bytes), 512);
    part.CopyTo(0, buf.data(), static_cast<size_t>(m.bytes));
    LB_CO_RETURN_IF_ERROR(co_await EncryptBuffer(d, pos, m.host, buf.data(), m.bytes));
    IoVec v(buf.data(), static_cast<size_t>(m.bytes));
    co_return co_await m.child->Write(m.host.value(), m.bytes, v);
  }

  static Task<absl::Status> EncryptBuffer(MappingDriver& d, GuestOffset guest, HostOffset host,
                                          uint8_t* buf, int64_t len) {
    std::span<uint8_t> span(buf, static_cast<size_t>(len));
    auto job = [&d, guest, host, span] { return d.Encrypt(guest, host, span); };
    absl::Status st = co_await d.node().loop().RunCpu(std::move(job));
    if (!st.ok()) co_return Prepend(st, Where(d, guest));
    co_return absl::OkStatus();
  }

  // Writes [offset, offset + bytes) from `qiov`. `range` holds the clusters (shared, or
  // exclusive when `exclusive`); it is widened to exclusive the first time a piece needs an
  // allocation.
  static Task<absl::Status> WriteRange(MappingDriver& d, Range& range, bool exclusive,
                                       GuestOffset offset, int64_t bytes, const IoVec& qiov) {
    for (int64_t done = 0; done < bytes;) {
      GuestOffset pos = offset + done;
      int64_t want = bytes - done;
      absl::StatusOr<Mapping> m = co_await d.Map(pos, want, true);
      if (!m.ok()) co_return m.status();
      LB_CO_RETURN_IF_ERROR(CheckMapping(d, pos, want, *m));
      if (m->kind == MapKind::kData && m->writable) {
        IoVec part = done == 0 && m->bytes == bytes
                         ? qiov
                         : qiov.Slice(static_cast<size_t>(done), static_cast<size_t>(m->bytes));
        LB_CO_RETURN_IF_ERROR(co_await WriteInPlace(d, pos, *m, part));
        done += m->bytes;
        continue;
      }
      if (!exclusive) {
        // Allocation ahead: hold the clusters alone, then look again (whoever held them
        // before us may have allocated them).
        d.clusters_->Widen(range, d.geometry().cluster_size);
        LB_CO_RETURN_IF_ERROR(co_await d.clusters_->Wait(range));
        exclusive = true;
        continue;
      }
      IoVec part = qiov.Slice(static_cast<size_t>(done), static_cast<size_t>(m->bytes));
      absl::StatusOr<int64_t> written = co_await AllocatingWrite(d, pos, m->bytes, part);
      if (!written.ok()) co_return written.status();
      done += *written;
    }
    co_return absl::OkStatus();
  }

  // One allocation for the guest run [start, start + run) that Map said is not writable in
  // place: whole subclusters around it, the parts outside the run copied from the range's
  // current content, written as one child write, then committed. Returns how much of the
  // run it covered (the driver may allocate less than asked). The caller holds the clusters
  // exclusively.
  static Task<absl::StatusOr<int64_t>> AllocatingWrite(MappingDriver& d, GuestOffset start,
                                                       int64_t run, const IoVec& data) {
    const MappingGeometry& g = d.geometry();
    GuestOffset end = start + run;
    GuestOffset a0 = start.AlignDown(g.subcluster_size);
    GuestOffset a1 = end.AlignUp(g.subcluster_size);
    absl::StatusOr<Allocation> got = co_await d.Allocate(a0, a1 - a0);
    if (!got.ok()) co_return got.status();
    Allocation alloc = *std::move(got);
    // The driver may widen the allocation within the clusters we hold (a new host cluster
    // whose other subclusters must be copied too) or shorten it (we allocate the rest next).
    GuestOffset lowest = start.AlignDown(g.cluster_size);
    GuestOffset highest = end.AlignUp(g.cluster_size);
    if (alloc.offset < lowest || alloc.offset > a0 ||
        alloc.offset.OffsetInto(g.subcluster_size) != 0 || alloc.bytes <= 0 ||
        alloc.bytes % g.subcluster_size != 0 || alloc.offset + alloc.bytes > highest ||
        alloc.offset + alloc.bytes <= start || !alloc.child || alloc.host.value() < 0 ||
        alloc.host.value() > kMaxLength - alloc.bytes) {
      co_await d.Abort(alloc);
      co_return Corruption(d, start, absl::StrFormat("impossible allocation of [%d, +%d) at host "
                                                     "offset %d for [%d, +%d)",
                                                     alloc.offset.value(), alloc.bytes,
                                                     alloc.host.value(), a0.value(), a1 - a0));
    }
    a0 = alloc.offset;
    GuestOffset alloc_end = a0 + alloc.bytes;
    GuestOffset data_end = std::min(end, alloc_end);
    int64_t head = start - a0;
    int64_t data_len = data_end - start;
    int64_t tail = data_end == end ? alloc_end - end : 0;

    // Copy-on-write parts from the current content (what a read sees now).
    AlignedBuffer head_buf, tail_buf;
    absl::Status st;
    if (head > 0) {
      head_buf = AlignedBuffer(static_cast<size_t>(head), 512);
      IoVec hv(head_buf.data(), static_cast<size_t>(head));
      st = co_await ReadRange(d, a0, head, hv);
    }
    if (st.ok() && tail > 0) {
      tail_buf = AlignedBuffer(static_cast<size_t>(tail), 512);
      // Past the end of the node there is nothing to copy: the rest of the last cluster.
      int64_t inside = std::clamp<int64_t>(d.node().size() - end.value(), 0, tail);
      if (inside > 0) {
        IoVec tv(tail_buf.data(), static_cast<size_t>(inside));
        st = co_await ReadRange(d, end, inside, tv);
      }
      if (inside < tail) {
        std::memset(tail_buf.data() + inside, 0, static_cast<size_t>(tail - inside));
      }
    }
    // Zero parts need not be written where the host already reads as zeroes (never when
    // encrypted: zeroes encrypt to something else).
    bool skip_head = false, skip_tail = false;
    if (st.ok() && alloc.host_reads_zero && !alloc.encrypted) {
      skip_head = head > 0 && BufferIsZero(head_buf.data(), static_cast<size_t>(head));
      skip_tail = tail > 0 && BufferIsZero(tail_buf.data(), static_cast<size_t>(tail));
    }
    HostOffset wstart = alloc.host + (skip_head ? head : 0);
    GuestOffset gstart = a0 + (skip_head ? head : 0);
    IoVec v;
    if (head > 0 && !skip_head) v.Append(head_buf.data(), static_cast<size_t>(head));
    v.AppendSlice(data, 0, static_cast<size_t>(data_len));
    if (tail > 0 && !skip_tail) v.Append(tail_buf.data(), static_cast<size_t>(tail));
    int64_t wlen = static_cast<int64_t>(v.size());
    if (st.ok()) st = d.CheckDataWrite(*alloc.child, wstart, wlen);
    AlignedBuffer crypt_buf;
    if (st.ok() && alloc.encrypted) {
      crypt_buf = AlignedBuffer(static_cast<size_t>(wlen), 512);
      v.CopyTo(0, crypt_buf.data(), static_cast<size_t>(wlen));
      st = co_await EncryptBuffer(d, gstart, wstart, crypt_buf.data(), wlen);
      v = IoVec(crypt_buf.data(), static_cast<size_t>(wlen));
    }
    if (st.ok()) st = co_await alloc.child->Write(wstart.value(), wlen, v);
    if (!st.ok()) {
      co_await d.Abort(alloc);
      co_return st;
    }
    st = co_await d.Commit(alloc);
    Invalidate(d, a0, alloc.bytes);
    if (!st.ok()) co_return st;
    co_return data_len;
  }

  // kReqCompressed: whole clusters (the last one may end at the node's end), each compressed
  // and written on its own; several at once, so the CPU pool works on them in parallel.
  static Task<absl::Status> WriteCompressed(MappingDriver& d, GuestOffset offset, int64_t bytes,
                                            const IoVec& qiov) {
    int64_t cluster = d.geometry().cluster_size;
    int64_t node_end = d.node().size();
    if (offset.OffsetInto(cluster) != 0 ||
        (bytes % cluster != 0 && offset.value() + bytes < node_end)) {
      co_return ErrnoError(EINVAL, absl::StrFormat("node '%s': compressed writes must cover "
                                                   "whole clusters of %d bytes",
                                                   d.node().name(), cluster));
    }
    if (bytes <= cluster) co_return co_await WriteCompressedCluster(d, offset, bytes, qiov);
    TaskGroup group(kMaxPiecesInFlight);
    for (int64_t done = 0; done < bytes && !group.failed(); done += cluster) {
      int64_t len = std::min(cluster, bytes - done);
      IoVec part = qiov.Slice(static_cast<size_t>(done), static_cast<size_t>(len));
      Task<absl::Status> task = WriteCompressedCluster(d, offset + done, len, part);
      co_await group.StartWhenFree(std::move(task));
    }
    co_return co_await group.Join();
  }

  static Task<absl::Status> WriteCompressedCluster(MappingDriver& d, GuestOffset offset,
                                                   int64_t bytes, IoVec data) {
    int64_t cluster = d.geometry().cluster_size;
    Range range;
    LB_CO_RETURN_IF_ERROR(co_await d.clusters_->Lock(range, offset, bytes, true));
    // The last cluster of a node whose size is not a multiple of the cluster size is
    // compressed padded with zeroes, as QEMU stores it.
    auto in = std::make_unique_for_overwrite<uint8_t[]>(static_cast<size_t>(cluster));
    data.CopyTo(0, in.get(), static_cast<size_t>(bytes));
    if (bytes < cluster) std::memset(in.get() + bytes, 0, static_cast<size_t>(cluster - bytes));
    // A blob must be smaller than the cluster to be worth storing (QEMU's bound).
    auto out = std::make_unique<uint8_t[]>(static_cast<size_t>(cluster - 1));
    std::span<const uint8_t> in_span(in.get(), static_cast<size_t>(cluster));
    std::span<uint8_t> out_span(out.get(), static_cast<size_t>(cluster - 1));
    Codec codec = d.compression_codec();
    auto job = [codec, in_span, out_span] { return Compress(codec, in_span, out_span); };
    absl::StatusOr<std::optional<size_t>> packed = co_await d.node().loop().RunCpu(std::move(job));
    if (!packed.ok()) co_return Prepend(packed.status(), Where(d, offset));
    if (!packed->has_value()) {
      // Did not shrink: stored as an ordinary cluster.
      co_return co_await WriteRange(d, range, true, offset, bytes, data);
    }
    int64_t stored = static_cast<int64_t>(**packed);
    absl::StatusOr<Allocation> got = co_await d.AllocateCompressed(offset, stored);
    if (!got.ok()) co_return got.status();
    Allocation alloc = *std::move(got);
    if (!alloc.child || alloc.host.value() < 0 || alloc.host.value() > kMaxLength - stored ||
        (alloc.stored_bytes != 0 && alloc.stored_bytes < stored)) {
      co_await d.Abort(alloc);
      co_return Corruption(d, offset, absl::StrFormat("impossible compressed allocation at host "
                                                      "offset %d for %d bytes",
                                                      alloc.host.value(), stored));
    }
    absl::Status st = d.CheckDataWrite(*alloc.child, alloc.host, stored);
    if (st.ok()) {
      IoVec v(out.get(), static_cast<size_t>(stored));
      st = co_await alloc.child->Write(alloc.host.value(), stored, v);
    }
    if (!st.ok()) {
      co_await d.Abort(alloc);
      co_return st;
    }
    st = co_await d.Commit(alloc);
    Invalidate(d, offset, cluster);
    co_return st;
  }

  // ---- zeroes and discards ------------------------------------------------------------------

  // Writes zero buffers over [offset, offset + bytes) through the write path; the caller holds
  // the clusters exclusively in `range`.
  static Task<absl::Status> WriteZeroBuffers(MappingDriver& d, Range& range, GuestOffset offset,
                                             int64_t bytes) {
    int64_t chunk = std::min<int64_t>(bytes, int64_t{1} << 20);
    AlignedBuffer zeroes(static_cast<size_t>(chunk), 512, true);
    for (int64_t done = 0; done < bytes;) {
      int64_t len = std::min(chunk, bytes - done);
      IoVec v(zeroes.data(), static_cast<size_t>(len));
      LB_CO_RETURN_IF_ERROR(co_await WriteRange(d, range, true, offset + done, len, v));
      done += len;
    }
    co_return absl::OkStatus();
  }

  // Whether [offset, offset + bytes) reads as zeroes now (zero mappings, unallocated ranges
  // whose backing chain reads as zeroes, or nothing to read).
  static Task<absl::StatusOr<bool>> ReadsAsZero(MappingDriver& d, GuestOffset offset,
                                                int64_t bytes) {
    for (int64_t done = 0; done < bytes;) {
      GuestOffset pos = offset + done;
      int64_t want = bytes - done;
      absl::StatusOr<Mapping> m = co_await d.Map(pos, want, false);
      if (!m.ok()) co_return m.status();
      LB_CO_RETURN_IF_ERROR(CheckMapping(d, pos, want, *m));
      if (m->kind == MapKind::kUnallocated) {
        Child* backing = d.backing();
        for (int64_t sub = 0; backing && sub < m->bytes;) {
          int64_t p = pos.value() + sub;
          if (p >= backing->node()->size()) break;
          int64_t n = std::min(m->bytes - sub, backing->node()->size() - p);
          absl::StatusOr<BlockStatus> s =
              co_await BlockStatusAbove(*backing, nullptr, GuestOffset(p), n, true);
          if (!s.ok()) co_return s.status();
          if (!(s->flags & kStatusZero) || s->bytes <= 0) co_return false;
          sub += s->bytes;
        }
      } else if (m->kind != MapKind::kZero) {
        co_return false;
      }
      done += m->bytes;
    }
    co_return true;
  }

  // Zeroes the cluster-aligned range [offset, offset + bytes) (its end may be the node's end)
  // through ZeroClusters, or with zero buffers when the driver cannot; `range` holds it
  // exclusively.
  static Task<absl::Status> ZeroWhole(MappingDriver& d, Range& range, GuestOffset offset,
                                      int64_t bytes, ReqFlags flags) {
    absl::Status st = co_await d.ZeroClusters(offset, bytes, (flags & kReqMayUnmap) != 0);
    Invalidate(d, offset, bytes);
    if (StatusErrno(st) != ENOTSUP || (flags & kReqNoFallback)) co_return st;
    co_return co_await WriteZeroBuffers(d, range, offset, bytes);
  }

  // A part of one cluster: the whole cluster becomes a zero cluster when the rest of it reads
  // as zeroes already (as QEMU does), else zero data is written.
  static Task<absl::Status> ZeroPartial(MappingDriver& d, GuestOffset offset, int64_t bytes,
                                        ReqFlags flags) {
    int64_t cluster = d.geometry().cluster_size;
    GuestOffset c0 = offset.AlignDown(cluster);
    GuestOffset c1 = std::min(c0 + cluster, GuestOffset(std::max(d.node().size(),
                                                                 (offset + bytes).value())));
    Range range;
    LB_CO_RETURN_IF_ERROR(co_await d.clusters_->Lock(range, offset, bytes, true));
    absl::StatusOr<bool> before = co_await ReadsAsZero(d, c0, offset - c0);
    if (!before.ok()) co_return before.status();
    bool rest_zero = *before;
    if (rest_zero) {
      GuestOffset end = offset + bytes;
      absl::StatusOr<bool> after = co_await ReadsAsZero(d, end, c1 - end);
      if (!after.ok()) co_return after.status();
      rest_zero = *after;
    }
    if (rest_zero) {
      absl::Status st = co_await d.ZeroClusters(c0, c1 - c0, (flags & kReqMayUnmap) != 0);
      Invalidate(d, c0, c1 - c0);
      if (StatusErrno(st) != ENOTSUP) co_return st;
    }
    if (flags & kReqNoFallback) {
      co_return ErrnoError(ENOTSUP, absl::StrFormat("node '%s': cannot zero part of a cluster "
                                                    "efficiently", d.node().name()));
    }
    co_return co_await WriteZeroBuffers(d, range, offset, bytes);
  }

  static void Invalidate(MappingDriver& d, GuestOffset offset, int64_t bytes) {
    ++d.decompress_gen_;
    const auto& c = d.decompressed_;
    if (c && c->guest < offset + bytes && offset < c->guest + c->guest_bytes) d.decompressed_.reset();
  }
};

// ---- the engine's entry points ------------------------------------------------------------------

void MappingDriver::InitMapping(bool compressed_writes) {
  const MappingGeometry& g = geometry();
  clusters_ = std::make_unique<RangeLock<GuestOffset>>(g.cluster_size);
  caps_.write_zeroes = true;
  caps_.discard = true;
  caps_.block_status = true;
  caps_.zero_flags |= kReqMayUnmap | kReqNoFallback;
  if (compressed_writes) caps_.write_flags |= kReqCompressed;
}

void MappingDriver::InvalidateMappingCaches() {
  ++decompress_gen_;
  decompressed_.reset();
}

Child* MappingDriver::backing() const { return BackingChild(node()); }

Task<absl::Status> MappingDriver::Read(int64_t offset, int64_t bytes, const IoVec& qiov,
                                       ReqFlags flags) {
  if (!clusters_) co_return MappingEngine::NotInitialised(*this);
  RangeLock<GuestOffset>::Range range;
  clusters_->Add(range, GuestOffset(offset), bytes, false);
  if (!clusters_->TryWait(range)) LB_CO_RETURN_IF_ERROR(co_await clusters_->Wait(range));
  // The common case (benchmarked against plain pread) costs no frame but Map's: one plain data
  // mapping for the whole request, read straight into the caller's vector.
  GuestOffset pos(offset);
  absl::StatusOr<Mapping> m = co_await Map(pos, bytes, false);
  if (!m.ok()) co_return m.status();
  if (m->kind == MapKind::kData && !m->encrypted && m->bytes == bytes) {
    LB_CO_RETURN_IF_ERROR(MappingEngine::CheckMapping(*this, pos, bytes, *m));
    co_return co_await m->child->Read(m->host.value(), bytes, qiov);
  }
  co_return co_await MappingEngine::ReadRange(*this, pos, bytes, qiov);
}

Task<absl::Status> MappingDriver::Write(int64_t offset, int64_t bytes, const IoVec& qiov,
                                        ReqFlags flags) {
  if (!clusters_) co_return MappingEngine::NotInitialised(*this);
  if (flags & kReqCompressed) {
    co_return co_await MappingEngine::WriteCompressed(*this, GuestOffset(offset), bytes, qiov);
  }
  RangeLock<GuestOffset>::Range range;
  clusters_->Add(range, GuestOffset(offset), bytes, false);
  if (!clusters_->TryWait(range)) LB_CO_RETURN_IF_ERROR(co_await clusters_->Wait(range));
  co_return co_await MappingEngine::WriteRange(*this, range, false, GuestOffset(offset), bytes,
                                               qiov);
}

Task<absl::Status> MappingDriver::WriteZeroes(int64_t offset, int64_t bytes, ReqFlags flags) {
  if (!clusters_) co_return MappingEngine::NotInitialised(*this);
  int64_t cluster = geometry().cluster_size;
  int64_t end = offset + bytes;
  int64_t node_end = node().size();
  // Whole clusters [first, last); a last partial cluster of the node counts as whole when the
  // request reaches the node's end.
  int64_t first = AlignUp(offset, cluster);
  int64_t last = end >= node_end ? end : AlignDown(end, cluster);
  if (first >= last) {
    // Inside one cluster, or across one boundary without a whole cluster.
    int64_t boundary = std::min(first, end);
    LB_CO_RETURN_IF_ERROR(co_await MappingEngine::ZeroPartial(*this, GuestOffset(offset),
                                                              boundary - offset, flags));
    if (boundary < end) {
      co_return co_await MappingEngine::ZeroPartial(*this, GuestOffset(boundary), end - boundary,
                                                    flags);
    }
    co_return absl::OkStatus();
  }
  if (offset < first) {
    LB_CO_RETURN_IF_ERROR(co_await MappingEngine::ZeroPartial(*this, GuestOffset(offset),
                                                              first - offset, flags));
  }
  {
    RangeLock<GuestOffset>::Range range;
    LB_CO_RETURN_IF_ERROR(co_await clusters_->Lock(range, GuestOffset(first), last - first, true));
    LB_CO_RETURN_IF_ERROR(co_await MappingEngine::ZeroWhole(*this, range, GuestOffset(first),
                                                            last - first, flags));
  }
  if (last < end) {
    co_return co_await MappingEngine::ZeroPartial(*this, GuestOffset(last), end - last, flags);
  }
  co_return absl::OkStatus();
}

Task<absl::Status> MappingDriver::Discard(int64_t offset, int64_t bytes) {
  if (!clusters_) co_return MappingEngine::NotInitialised(*this);
  int64_t cluster = geometry().cluster_size;
  int64_t end = offset + bytes;
  // Whole clusters only (partial ones are left as they are, as qcow2 does); the last partial
  // cluster of the node counts as whole when the request reaches the node's end.
  int64_t first = AlignUp(offset, cluster);
  int64_t last = end >= node().size() ? end : AlignDown(end, cluster);
  if (first >= last) co_return absl::OkStatus();
  RangeLock<GuestOffset>::Range range;
  LB_CO_RETURN_IF_ERROR(co_await clusters_->Lock(range, GuestOffset(first), last - first, true));
  absl::Status st = co_await DiscardClusters(GuestOffset(first), last - first);
  MappingEngine::Invalidate(*this, GuestOffset(first), last - first);
  co_return st;
}

Task<absl::StatusOr<BlockStatus>> MappingDriver::GetBlockStatus(int64_t offset, int64_t bytes,
                                                                bool want_zero) {
  GuestOffset pos(offset);
  absl::StatusOr<Mapping> m = co_await Map(pos, bytes, false);
  if (!m.ok()) co_return m.status();
  LB_CO_RETURN_IF_ERROR(MappingEngine::CheckMapping(*this, pos, bytes, *m));
  BlockStatus s;
  s.bytes = m->bytes;
  switch (m->kind) {
    case MapKind::kData:
      s.flags = kStatusData | kStatusAllocated;
      // Encrypted data has no host offset a reader could use as is (as in QEMU).
      if (!m->encrypted) {
        s.flags |= kStatusOffsetValid;
        s.map = m->host.value();
        s.file = m->child;
        if (m->recurse) s.flags |= kStatusRecurse;
      }
      break;
    case MapKind::kZero:
      s.flags = kStatusZero | kStatusAllocated;
      break;
    case MapKind::kUnallocated:
      s.flags = 0;  // the core walks the backing chain
      break;
    case MapKind::kCompressed:
      s.flags = kStatusData | kStatusAllocated | kStatusCompressed;
      break;
  }
  if ((m->kind == MapKind::kZero || m->kind == MapKind::kUnallocated) && m->reserved &&
      m->child && m->host.value() >= 0) {
    s.flags |= kStatusOffsetValid;
    s.map = m->host.value();
    s.file = m->child;
  }
  if (offset + s.bytes >= node().size()) s.flags |= kStatusEof;
  co_return s;
}

// ---- the hooks' defaults --------------------------------------------------------------------

Task<absl::StatusOr<Allocation>> MappingDriver::Allocate(GuestOffset offset, int64_t bytes) {
  co_return ErrnoError(ENOTSUP, absl::StrFormat("node '%s': the format cannot allocate",
                                                node().name()));
}

Task<absl::Status> MappingDriver::Commit(Allocation& alloc) {
  co_return ErrnoError(ENOTSUP, absl::StrFormat("node '%s': the format cannot allocate",
                                                node().name()));
}

Task<void> MappingDriver::Abort(Allocation& alloc) { co_return; }

Task<absl::StatusOr<Allocation>> MappingDriver::AllocateCompressed(GuestOffset offset,
                                                                   int64_t stored_bytes) {
  co_return ErrnoError(ENOTSUP, absl::StrFormat("node '%s': compressed writes are not supported",
                                                node().name()));
}

Task<absl::Status> MappingDriver::ZeroClusters(GuestOffset offset, int64_t bytes,
                                               bool may_unmap) {
  co_return ErrnoError(ENOTSUP, "the format has no zero clusters");
}

Task<absl::Status> MappingDriver::DiscardClusters(GuestOffset offset, int64_t bytes) {
  co_return absl::OkStatus();
}

absl::Status MappingDriver::Encrypt(GuestOffset guest, HostOffset host, std::span<uint8_t> buf) {
  return ErrnoError(ENOTSUP, "the format does not encrypt");
}

absl::Status MappingDriver::Decrypt(GuestOffset guest, HostOffset host, std::span<uint8_t> buf) {
  return ErrnoError(ENOTSUP, "the format does not decrypt");
}

}  // namespace libblock
