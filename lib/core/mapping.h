// The shared mapping engine (DESIGN.md §3): the data path of every table-mapped format.
//
// A format (qcow2, qed, qcow, vdi, vmdk, vpc, vhdx, parallels, bochs, cloop, dmg) derives from
// MappingDriver and answers two questions:
//   Map       what backs guest range [o, o+n): data at host offset H in child C, zeroes,
//             unallocated (the backing file shows through), a compressed blob, or encrypted data;
//   Allocate  where new data for a guest range goes (then Commit links it into the tables).
// The engine owns everything else of the I/O plane: reads (pieces from the children, the
// backing file, zeroes, decompressed blobs), writes in place or through allocation with
// copy-on-write of the partial (sub)clusters around them from the range's current content,
// write-zeroes and discard of whole clusters through the driver (partial ones as data), the
// compressed-write path, decompression and compression on the loop's CPU pool, the
// encryption hooks, serialisation of overlapping allocations at cluster granularity, and
// block status. Requests to different clusters run concurrently.
//
// Metadata stays the driver's: its tables, caches, refcounts and write ordering, under its own
// locks. The engine calls Map/Allocate/Commit concurrently from many requests; a driver
// serialises its table updates itself (a CoMutex), and never sees two overlapping allocations
// at once (the engine holds the guest clusters exclusively from Map-for-write through Commit).
//
// Ordering the engine guarantees: Commit is called only after the allocation's data (with its
// copy-on-write head and tail) was written to the child and the write completed; Abort is
// called instead when it failed. Whether the driver must flush before its table update becomes
// durable (QEMU's cache dependencies) is the driver's decision.
#ifndef LIBBLOCK_CORE_MAPPING_H_
#define LIBBLOCK_CORE_MAPPING_H_

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/driver.h"
#include "core/node.h"
#include "core/offset.h"
#include "core/range_lock.h"
#include "core/task.h"
#include "util/iovec.h"

namespace libblock {

// Compression codecs of stored blobs (lib/core/codec.h does the work).
enum class Codec : uint8_t {
  kNone,
  kDeflate,  // raw deflate (no zlib header), 4 KiB window: qcow2's compression_type=zlib, qcow
  kZlib,     // zlib-wrapped deflate (vmdk streamOptimized, dmg)
  kZstd,     // zstd frames (qcow2's compression_type=zstd)
  kBzip2,    // dmg (optional)
  kLzfse,    // dmg (optional)
};

enum class MapKind : uint8_t {
  kData,         // [offset, offset + bytes) is stored at `host` in `child`
  kZero,         // reads as zeroes (this layer decides: the backing file does not show)
  kUnallocated,  // this layer leaves it to the backing file (zeroes without one / past its end)
  kCompressed,   // inside a compressed blob (see blob_*)
};

// One answer of MappingDriver::Map for the guest range starting at the asked offset.
struct Mapping {
  MapKind kind = MapKind::kUnallocated;
  // How far from the asked offset the answer holds (> 0, at most what was asked). Drivers
  // should answer for as much as one table lookup covers (contiguous host clusters merge).
  int64_t bytes = 0;

  // kData: the edge the data is read through and the host offset of the asked guest offset.
  // kCompressed: the edge and the blob's first host byte.
  Child* child = nullptr;
  HostOffset host;

  // kData: written in place by a write (else a write allocates: qcow2 clusters without the
  // COPIED flag, zero clusters with a preallocated offset, subclusters of extended L2, ...).
  // kZero/kUnallocated are never written in place.
  bool writable = false;
  // kData: only the child knows whether it reads as zeroes (qcow2 preallocation=metadata):
  // block status asks it (kStatusRecurse).
  bool recurse = false;
  // kData: stored encrypted; reads call Decrypt, in-place writes Encrypt.
  bool encrypted = false;
  // kZero/kUnallocated: the range keeps host storage at `host` in `child` that it does not
  // read from (qcow2 zero clusters with an offset, unallocated subclusters of allocated
  // clusters): block status reports the offset, as QEMU does. Never read or written.
  bool reserved = false;

  // kCompressed: the blob at `host` holds at most `blob_bytes` stored bytes (the engine reads
  // no further, nor past the end of `child`), and decompresses to exactly `blob_guest_bytes`
  // bytes that are the guest range starting at `blob_guest`. A blob that fails to decompress
  // to exactly that is corruption (ReportCorruption), never a crash or a short read.
  Codec codec = Codec::kNone;
  int64_t blob_bytes = 0;
  GuestOffset blob_guest;
  int64_t blob_guest_bytes = 0;
};

// The geometry the engine works in; constant while the node is open.
struct MappingGeometry {
  // Allocation unit (a power of two): guest ranges are allocated, zeroed and discarded by the
  // driver in whole clusters, and overlapping allocations serialise at this granularity.
  int64_t cluster_size = 65536;
  // Unit of copy-on-write within a cluster (extended L2's subclusters; else cluster_size): an
  // allocating write stores [AlignDown(start, sub), AlignUp(end, sub)), the parts around the
  // request copied from the range's current content.
  int64_t subcluster_size = 65536;
  // Sector size of the encryption transform (kData + encrypted); 0 when nothing is encrypted.
  int64_t crypt_sector = 0;
};

// What Allocate hands back: where the guest range [offset, offset + bytes) — whole
// subclusters — is to be written. Usually the asked range or a prefix of it; a driver may
// also widen it inside the clusters asked for: start earlier in the first cluster and end
// later in the last one (a new host cluster replacing one whose other subclusters hold data,
// or a compressed cluster, which has no subclusters, must be copied whole). The engine writes
// all of it: the asked data, and the current content of the range around it. The driver
// keeps whatever it needs for Commit/Abort in `cookie`.
struct Allocation {
  GuestOffset offset;        // at or before the asked offset, in the same cluster
  int64_t bytes = 0;         // may be shorter than asked (then the engine allocates the rest next)
  Child* child = nullptr;
  HostOffset host;           // host offset of `offset`
  bool encrypted = false;    // the engine encrypts what it writes there
  // The host range reads as zeroes already (space past the old end of a zero-initialised
  // file): copy-on-write parts that are zeroes need not be written.
  bool host_reads_zero = false;
  // AllocateCompressed: the stored (compressed) length the host range holds.
  int64_t stored_bytes = 0;
  std::shared_ptr<void> cookie;
};

class MappingDriver : public NodeDriver {
 public:
  using NodeDriver::NodeDriver;

  // ---- what formats implement ---------------------------------------------------------------
  virtual const MappingGeometry& geometry() const = 0;

  // What backs [offset, offset + bytes) (inside the node, bytes > 0). `for_write`: the engine
  // is about to write there (a driver may answer more cheaply for reads).
  virtual Task<absl::StatusOr<Mapping>> Map(GuestOffset offset, int64_t bytes,
                                            bool for_write) = 0;

  // Finds host space for the guest range [offset, offset + bytes) (whole subclusters, not
  // crossing what one Allocation can describe: the driver may return less). Nothing is linked
  // yet: reads still see the old mapping until Commit. Read-only formats never get here
  // (caps().write false in the request path); the default refuses with ENOTSUP.
  virtual Task<absl::StatusOr<Allocation>> Allocate(GuestOffset offset, int64_t bytes);
  // Links a completed allocation into the tables (the data is written).
  virtual Task<absl::Status> Commit(Allocation& alloc);
  // Gives up an allocation whose data write failed (leaking the space is acceptable).
  virtual Task<void> Abort(Allocation& alloc);

  // Compressed writes (kReqCompressed: one whole cluster at a time, aligned): host space for
  // `stored_bytes` compressed bytes of the cluster at `offset`; Commit/Abort as above. The
  // codec is compression_codec(). Default: ENOTSUP (the request path refuses the flag unless
  // caps().write_flags has kReqCompressed).
  virtual Task<absl::StatusOr<Allocation>> AllocateCompressed(GuestOffset offset,
                                                              int64_t stored_bytes);
  virtual Codec compression_codec() const { return Codec::kNone; }

  // Whole clusters [offset, offset + bytes) read as zeroes from now on; `may_unmap` lets the
  // driver free their storage. ENOTSUP: the engine writes zero buffers instead (or fails with
  // kReqNoFallback).
  virtual Task<absl::Status> ZeroClusters(GuestOffset offset, int64_t bytes, bool may_unmap);
  // Discards whole clusters (the node's discard policy decides whether storage is freed; what
  // they read as afterwards is the format's rule: qcow2 shows the backing file). Default: a
  // no-op.
  virtual Task<absl::Status> DiscardClusters(GuestOffset offset, int64_t bytes);

  // Encryption (sector transforms of `crypt_sector` bytes, in place). `guest` is the guest
  // offset of buf[0], `host` its host offset (formats pick which one feeds the IV).
  virtual absl::Status Encrypt(GuestOffset guest, HostOffset host, std::span<uint8_t> buf);
  virtual absl::Status Decrypt(GuestOffset guest, HostOffset host, std::span<uint8_t> buf);

  // A data write about to land on [host, host + bytes) of `child` (in place or allocated):
  // formats refuse writes that would hit their metadata (qcow2's overlap checks).
  virtual absl::Status CheckDataWrite(const Child& child, HostOffset host, int64_t bytes) {
    return absl::OkStatus();
  }
  // The engine found the image inconsistent (a blob that does not decompress, a mapping past
  // the end of its child): the format may mark the image corrupt. Returns the status the
  // request fails with (default: `problem` unchanged).
  virtual absl::Status ReportCorruption(absl::Status problem) { return problem; }

  // The copy-on-write source: the node's backing (cow) child, or null.
  Child* backing() const;

  // ---- the engine (final for formats: they implement the hooks above) -----------------------
  Task<absl::Status> Read(int64_t offset, int64_t bytes, const IoVec& qiov,
                          ReqFlags flags) override;
  Task<absl::Status> Write(int64_t offset, int64_t bytes, const IoVec& qiov,
                           ReqFlags flags) override;
  Task<absl::Status> WriteZeroes(int64_t offset, int64_t bytes, ReqFlags flags) override;
  Task<absl::Status> Discard(int64_t offset, int64_t bytes) override;
  Task<absl::StatusOr<BlockStatus>> GetBlockStatus(int64_t offset, int64_t bytes,
                                                   bool want_zero) override;

 protected:
  // Formats call this at the end of Open, once geometry() is final: sizes the cluster locks and
  // declares the engine's capabilities (write_zeroes, discard, block_status; compressed writes
  // when `compressed_writes`).
  void InitMapping(bool compressed_writes);

  // Forgets what the engine caches about mappings (the last decompressed cluster). Formats
  // call it when they change mappings outside Commit/ZeroClusters/DiscardClusters (applying
  // a snapshot, shrinking, repairing).
  void InvalidateMappingCaches();

 private:
  friend struct MappingEngine;  // mapping.cc
  struct DecompressedCluster;

  // Guest clusters held by allocating writes, zeroing and discards (exclusive) and by reads
  // and in-place writes (shared).
  std::unique_ptr<RangeLock<GuestOffset>> clusters_;
  // The last cluster decompressed, and a count of the invalidations that overlapped the
  // cached or a being-decompressed cluster (a decompression that saw one is not cached).
  std::shared_ptr<const DecompressedCluster> decompressed_;
  uint64_t decompress_gen_ = 0;
};

}  // namespace libblock

#endif  // LIBBLOCK_CORE_MAPPING_H_
