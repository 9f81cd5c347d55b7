// The driver interface (QEMU's BlockDriver), split as QEMU's block_int-common.h splits it:
//
//   Driver      a static descriptor listed in the registry table: name, kind, option schemas,
//               probe functions, and the factory that makes a NodeDriver for a node.
//   NodeDriver  one driver instance bound to one node. Control plane: Open, Close, limits,
//               permissions, reopen. I/O plane: read, write, write-zeroes, discard, flush,
//               block status, truncate — each a coroutine.
//
// The core request path (core/io.cc) calls the I/O plane only with requests that are already
// validated: inside [0, kMaxLength), aligned to the node's request_alignment, no larger than
// max_transfer, with the flags the driver declared it supports. Capabilities are declared in
// NodeDriver::caps() during Open, never discovered by trial calls.
#ifndef LIBBLOCK_CORE_DRIVER_H_
#define LIBBLOCK_CORE_DRIVER_H_

#include <climits>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/options.h"
#include "core/perm.h"
#include "core/task.h"
#include "nlohmann/json.hpp"
#include "util/iovec.h"

namespace libblock {

class Child;
class Graph;
class Node;
class NodeDriver;
struct NodeFlags;
class Transaction;
struct OpenContext;
struct CreateContext;
class Backend;

enum class DriverKind { kProtocol, kFormat, kFilter };

// Request flags (QEMU's BdrvRequestFlags, by meaning; the values are ours).
using ReqFlags = uint32_t;
inline constexpr ReqFlags kReqFua = 1u << 0;             // durable when the request completes
inline constexpr ReqFlags kReqMayUnmap = 1u << 1;        // write-zeroes may deallocate
inline constexpr ReqFlags kReqNoFallback = 1u << 2;      // write-zeroes: ENOTSUP, not a slow path
inline constexpr ReqFlags kReqSerialising = 1u << 3;     // exclusive against overlapping requests
inline constexpr ReqFlags kReqWriteUnchanged = 1u << 4;  // the data does not change (copy-on-read)
inline constexpr ReqFlags kReqNoWait = 1u << 5;          // serialising: fail with EBUSY, don't wait
// Internal to the request path: a backend's write-zeroes keeps kReqMayUnmap whatever the root
// node's discard policy (QEMU's blk layer does not filter it; `discard` governs discards and
// what drivers forward to their children).
inline constexpr ReqFlags kReqKeepUnmap = 1u << 6;
inline constexpr ReqFlags kReqCompressed = 1u << 7;      // write: store compressed (qemu-img -c)

// How the request path treats a flag the driver did not declare in Capabilities:
//  * advisory flags are dropped or emulated: FUA becomes a flush after the request, may-unmap
//    and write-unchanged are hints the driver may ignore;
//  * mandatory flags change what the request means, so a driver that cannot honour one makes
//    the request fail with ENOTSUP before anything is written (compressed writes; no-fallback
//    is enforced by the core itself).
inline constexpr ReqFlags kReqAdvisoryFlags = kReqFua | kReqMayUnmap | kReqWriteUnchanged;
inline constexpr ReqFlags kReqMandatoryFlags = kReqCompressed;

// Truncate/create preallocation (QEMU's PreallocMode).
enum class PreallocMode { kOff, kMetadata, kFalloc, kFull };
std::string_view PreallocModeName(PreallocMode mode);
absl::StatusOr<PreallocMode> ParsePreallocMode(std::string_view text);

// Block status flags; values match QEMU's BDRV_BLOCK_* so `qemu-img map`-style output and
// NBD base:allocation mapping read naturally.
inline constexpr uint32_t kStatusData = 0x01;         // reads return data from `file` at `map`
inline constexpr uint32_t kStatusZero = 0x02;         // reads return zeroes
inline constexpr uint32_t kStatusOffsetValid = 0x04;  // `map` and `file` are meaningful
inline constexpr uint32_t kStatusRaw = 0x08;          // ask `file` at `map` (filters, raw)
inline constexpr uint32_t kStatusAllocated = 0x10;    // this layer provides the content
inline constexpr uint32_t kStatusEof = 0x20;          // the range reaches the end of the node
// Drivers only, never in a result: the range is data at `map` in `file`, but only the file
// layer knows whether it reads as zeroes (qcow2 preallocation=metadata clusters); the core asks
// `file` and adds kStatusZero from its answer (QEMU's BDRV_BLOCK_RECURSE).
inline constexpr uint32_t kStatusRecurse = 0x40;
inline constexpr uint32_t kStatusCompressed = 0x80;   // data stored compressed (no valid `map`)

struct BlockStatus {
  uint32_t flags = 0;
  int64_t bytes = 0;         // length of the extent the flags describe (> 0)
  int64_t map = 0;           // host offset in `file`, valid with kStatusOffsetValid
  // The edge through which the data at `map` is read. Drivers name one of their own children,
  // or leave it null for "this node itself" (protocols); the core then sets the edge it queried.
  Child* file = nullptr;
  // Set by BlockStatusAbove: how many backing (cow) steps below the top the layer that decided
  // the range is (filters are not counted, as in qemu-img map), and the edge to that layer.
  int depth = 0;
  Child* layer = nullptr;

  // The node holding the data (file's child node), or null.
  Node* file_node() const;
};

// Request limits of a node (QEMU's BlockLimits). Zero means "no limit" for max_* fields.
struct BlockLimits {
  uint32_t request_alignment = 1;
  int64_t max_transfer = 0;
  int64_t opt_transfer = 0;
  uint32_t min_mem_alignment = 1;
  uint32_t opt_mem_alignment = 1;
  uint32_t pdiscard_alignment = 0;
  int64_t max_pdiscard = 0;
  uint32_t pwrite_zeroes_alignment = 0;
  int64_t max_pwrite_zeroes = 0;
  int max_iov = IOV_MAX;
};

// What a node's driver can do, declared during Open.
struct Capabilities {
  bool write_zeroes = false;   // WriteZeroes is implemented (else: the core writes zero buffers)
  bool discard = false;        // Discard is implemented (else: discard is a no-op)
  bool truncate = false;       // Truncate is implemented
  bool block_status = false;   // GetBlockStatus is implemented (else: all data)
  ReqFlags write_flags = 0;    // flags Write honours (kReqFua, kReqCompressed)
  ReqFlags zero_flags = 0;     // flags WriteZeroes honours (kReqFua, kReqMayUnmap, kReqNoFallback)
  bool serialise_writes = false;  // every write is serialising against overlapping requests
};

// What a format reports about itself for `info` (QEMU's BlockDriverInfo + ImageInfoSpecific).
struct ImageInfo {
  std::optional<uint32_t> cluster_size;
  bool dirty = false;     // the image's dirty/corrupt flag
  bool encrypted = false;
  std::optional<std::string> backing_filename;  // as stored in the image
  std::optional<std::string> backing_format;
  nlohmann::ordered_json format_specific;       // {"type": ..., "data": {...}}, or null
  // Internal snapshots as qemu-img info lists them (QEMU's SnapshotInfo objects), or null.
  nlohmann::ordered_json snapshots;
};

// Selects snapshots by id or name: nullopt is not compared (an empty string is: it matches
// only an empty id or name).
using SnapshotKey = std::optional<std::string>;

// An internal snapshot (QEMU's QEMUSnapshotInfo): what a format keeps per snapshot.
struct SnapshotInfo {
  std::string id;    // unique in the image ("1", "2", ...)
  std::string name;  // the tag; need not be unique
  uint64_t vm_state_size = 0;  // bytes of VM state saved with it (0: a disk-only snapshot)
  uint32_t date_sec = 0;       // wall clock when taken
  uint32_t date_nsec = 0;
  uint64_t vm_clock_nsec = 0;  // guest clock when taken
  uint64_t icount = ~uint64_t{0};  // instruction count (record/replay); ~0: none
};

// A persistent dirty bitmap stored in an image (qcow2's bitmap directory).
struct PersistentBitmap {
  std::string name;
  uint32_t granularity = 0;  // bytes per bit
  bool in_use = false;       // not saved cleanly (inconsistent)
  bool auto_enabled = false; // tracks writes once the image is open read-write
};

// The storage an image needs (QEMU's BlockMeasureInfo, qemu-img measure).
struct MeasureResult {
  uint64_t required = 0;         // bytes the image file needs for the data given
  uint64_t fully_allocated = 0;  // bytes it needs with every cluster allocated
  std::optional<uint64_t> bitmaps;  // bytes for the persistent bitmaps copied (convert --bitmaps)
};

// Logical and physical block sizes of a host device (QEMU's BlockSizes).
struct BlockSizes {
  uint32_t logical = 512;
  uint32_t physical = 512;
};

// A node's settings as a reopen will leave them (see NodeDriver::PrepareReopen).
struct ReopenState {
  // Generic settings: mode, cache, discard, ... A driver may only turn read_only on, for
  // auto-read-only (as Open may).
  NodeFlags& flags;
  const OptionValues& values;  // the driver's options, validated against its schema
  // The driver options whose values change (only ones CanReopenOption accepted), as given.
  const Options& changed;
  // The current mode: read_only here and !flags.read_only is a read-only -> read-write
  // reopen, the reverse one to read-only (qcow2 flushes its caches and clears its dirty bit).
  bool was_read_only = false;
};

class NodeDriver {
 public:
  explicit NodeDriver(Node& node) : node_(node) {}
  virtual ~NodeDriver() = default;
  NodeDriver(const NodeDriver&) = delete;
  NodeDriver& operator=(const NodeDriver&) = delete;

  Node& node() const { return node_; }
  const Capabilities& caps() const { return caps_; }

  // ---- control plane --------------------------------------------------------------------
  // Reads the driver's options (already validated into ctx.values), opens children through
  // ctx.OpenChild, and declares capabilities. On failure the node is torn down.
  virtual Task<absl::Status> Open(OpenContext& ctx) = 0;
  // Called while every child is still attached and permissions still held: write back
  // cached metadata, drop preallocation, etc. In-flight requests have completed.
  virtual Task<absl::Status> Close() { co_return absl::OkStatus(); }

  // Adjusts limits after the defaults merged from children were filled in.
  virtual void RefreshLimits(BlockLimits& limits) {}

  // Permissions this node asks of `child`, given the node's own cumulative perm/shared.
  virtual void ChildPerm(const Child& child, Perm perm, Perm shared, Perm* nperm, Perm* nshared);

  // Checks that the node can take `perm` while others may do `shared`, and prepares it
  // (e.g. image lock bytes). Register commit/abort actions in `tran`. A relaxation (perm
  // shrinking, shared growing) must not fail.
  virtual absl::Status PreparePerm(Perm perm, Perm shared, Transaction& tran) {
    return absl::OkStatus();
  }

  // Reopen (QEMU's bdrv_reopen_prepare/commit/abort). `state` holds the node's generic settings
  // and driver options as they will be after the reopen; flags() still shows the current ones
  // (and I/O still runs with them) until the transaction commits. Prepare and check what the
  // new state needs (a new descriptor, validated sizes, cached metadata written back), undo it
  // on abort, switch to it on commit. A coroutine: it runs inside a drained section (no request
  // from the node's parents is in flight or starts before the transaction ends) and may do I/O
  // to its children, whose edges still have their current permissions. Only options
  // CanReopenOption accepts can differ from the current ones; the core refuses changes to the
  // others ("Cannot change the option 'NAME'").
  virtual Task<absl::Status> PrepareReopen(const ReopenState& state, Transaction& tran) {
    co_return absl::OkStatus();
  }
  // Whether the driver option `name` (of the driver's schema) may change in a reopen.
  virtual bool CanReopenOption(std::string_view name) const { return false; }

  // Current length in bytes (sync: drivers answer from cached metadata or a cheap syscall).
  virtual absl::StatusOr<int64_t> GetLength() = 0;
  // Bytes the node occupies on its storage; the default sums the storage children.
  virtual absl::StatusOr<int64_t> GetAllocatedSize();
  virtual absl::StatusOr<BlockSizes> ProbeBlockSizes();
  // The driver's answer to "does a newly created image read as zeroes everywhere" (QEMU's
  // bdrv_has_zero_init). Callers use libblock::HasZeroInit(node), which first says no for a
  // node with a backing (cow) child. The default: a filter asks its filtered child, anything
  // else says no; drivers that know better (file, raw) override.
  virtual bool HasZeroInit();
  // Driver-specific fields for `info`.
  virtual void FillInfo(nlohmann::json& info) {}
  // What `info` shows about the image (QEMU's bdrv_get_info + get_specific_info). Drivers
  // that have nothing to say return ENOTSUP, and `info` then omits "dirty-flag" as QEMU does;
  // the default asks the primary child (filters and raw describe their file).
  virtual absl::Status GetImageInfo(ImageInfo& info);

  // ---- I/O plane --------------------------------------------------------------------------
  virtual Task<absl::Status> Read(int64_t offset, int64_t bytes, const IoVec& qiov,
                                  ReqFlags flags) = 0;
  virtual Task<absl::Status> Write(int64_t offset, int64_t bytes, const IoVec& qiov,
                                   ReqFlags flags) = 0;
  virtual Task<absl::Status> WriteZeroes(int64_t offset, int64_t bytes, ReqFlags flags);
  virtual Task<absl::Status> Discard(int64_t offset, int64_t bytes);
  // Make completed writes of this node durable in its own layer (children are flushed by
  // the core afterwards).
  virtual Task<absl::Status> Flush() { co_return absl::OkStatus(); }
  virtual Task<absl::StatusOr<BlockStatus>> GetBlockStatus(int64_t offset, int64_t bytes,
                                                           bool want_zero);
  virtual Task<absl::Status> Truncate(int64_t size, bool exact, PreallocMode mode,
                                      ReqFlags flags);

  // Records another backing file (name as stored, nullopt: none) and format in the image
  // header (QEMU's bdrv_change_backing_file); the graph is not changed. Default: ENOTSUP.
  virtual Task<absl::Status> ChangeBackingFile(const std::optional<std::string>& name,
                                               const std::optional<std::string>& format);
  // Makes every cluster unallocated, so the image reads as its backing file again (QEMU's
  // bdrv_make_empty, after qemu-img commit). Called with the node drained. Default: ENOTSUP.
  virtual Task<absl::Status> MakeEmpty();
  virtual bool SupportsMakeEmpty() const { return false; }

  // ---- persistent dirty bitmaps ----------------------------------------------------------
  // Whether the image can store them (QEMU's bdrv_supports_persistent_dirty_bitmap), and the
  // ones it stores.
  virtual bool SupportsPersistentBitmaps() const { return false; }
  virtual std::vector<PersistentBitmap> PersistentBitmaps() const { return {}; }

  // ---- internal snapshots (QEMU's bdrv_snapshot_*, bdrv_{save,load}_vmstate) -------------
  // Callers go through core/snapshot.h, which drains the node and checks its mode first.
  // Drivers without snapshots keep these defaults (ENOTSUP).
  virtual bool SupportsSnapshots() const { return false; }
  virtual Task<absl::StatusOr<std::vector<SnapshotInfo>>> ListSnapshots();
  // Takes a snapshot of the current disk state. An empty sn.id gets the next free one (set
  // in `sn`); a given id that exists already fails with EEXIST.
  virtual Task<absl::Status> CreateSnapshot(SnapshotInfo& sn);
  // Reverts the disk to the snapshot whose id is `id` and whose name is `name`.
  virtual Task<absl::Status> ApplySnapshot(const SnapshotKey& id, const SnapshotKey& name);
  virtual Task<absl::Status> DeleteSnapshot(const SnapshotKey& id, const SnapshotKey& name);
  // Reads or writes the VM-state area of the current state (what the next CreateSnapshot
  // saves along), `pos` bytes into it.
  virtual Task<absl::Status> VmStateIo(int64_t pos, void* buf, int64_t bytes, bool write);
  // Makes a read-only node show the snapshot with this id and name in place of the current state, until it is closed (QEMU's
  // bdrv_snapshot_load_tmp, for convert -l).
  virtual Task<absl::Status> LoadSnapshotTemporarily(const SnapshotKey& id, const SnapshotKey& name);

 protected:
  Capabilities caps_;

 private:
  Node& node_;
};

// A filter's instance: every operation it does not override goes unchanged to its filtered
// child. Only filters that are data-neutral for an operation may inherit it; a filter that
// changes data must override.
class FilterDriver : public NodeDriver {
 public:
  using NodeDriver::NodeDriver;

  Child* filtered() const { return filtered_; }

  absl::StatusOr<int64_t> GetLength() override;
  Task<absl::Status> Read(int64_t offset, int64_t bytes, const IoVec& qiov,
                          ReqFlags flags) override;
  Task<absl::Status> Write(int64_t offset, int64_t bytes, const IoVec& qiov,
                           ReqFlags flags) override;
  Task<absl::Status> WriteZeroes(int64_t offset, int64_t bytes, ReqFlags flags) override;
  Task<absl::Status> Discard(int64_t offset, int64_t bytes) override;
  Task<absl::StatusOr<BlockStatus>> GetBlockStatus(int64_t offset, int64_t bytes,
                                                   bool want_zero) override;
  Task<absl::Status> Truncate(int64_t size, bool exact, PreallocMode mode,
                              ReqFlags flags) override;

 protected:
  // Opens the "file" child as the filtered child and mirrors its capabilities.
  Task<absl::Status> OpenFiltered(OpenContext& ctx);

  Child* filtered_ = nullptr;
};

// Whether `node` reads as zeroes everywhere right after creation (QEMU's bdrv_has_zero_init):
// no for a node with a backing (cow) child, whose unallocated ranges show the backing file,
// else the driver's answer. What a copy may rely on to skip writing zero ranges.
bool HasZeroInit(Node& node);

// What a format's consistency check found (QEMU's BdrvCheckResult): counters as `qemu-img
// check` reports them, and the lines the check printed while it ran ("Leaked cluster ...").
struct ImageCheckResult {
  int64_t corruptions = 0;
  int64_t leaks = 0;
  int64_t check_errors = 0;
  int64_t corruptions_fixed = 0;
  int64_t leaks_fixed = 0;
  int64_t image_end_offset = 0;
  int64_t total_clusters = 0;
  int64_t allocated_clusters = 0;
  int64_t fragmented_clusters = 0;
  int64_t compressed_clusters = 0;
  // Non-zero: the check stopped early with this errno (QEMU's negative return).
  int failed_errno = 0;
  std::vector<std::string> messages;
};
// What a check may repair (QEMU's BdrvCheckMode).
inline constexpr uint32_t kCheckFixLeaks = 1u << 0;
inline constexpr uint32_t kCheckFixErrors = 1u << 1;

// The static descriptor of a driver: one entry of the registry table.
struct Driver {
  std::string_view name;
  DriverKind kind;
  // Filename prefix that selects this protocol ("file" for "file:a.img", "null-co" for
  // "null-co://"); empty when none.
  std::string_view protocol_prefix;
  const OptionSchema* options = nullptr;         // runtime options
  const OptionSchema* create_options = nullptr;  // nullptr: the driver cannot create images
  // Formats: score 0..100 of how much the first bytes look like this format.
  int (*probe)(const uint8_t* buf, size_t len, std::string_view filename) = nullptr;
  // Protocols: score 0..100 of how much a plain filename names this protocol's kind of file.
  int (*probe_device)(std::string_view filename) = nullptr;
  // Makes an instance for a node; nullptr for a format that is recognized but not built.
  std::unique_ptr<NodeDriver> (*instantiate)(Node& node) = nullptr;
  // Creates an image (create_options validated into ctx.values).
  Task<absl::Status> (*create)(CreateContext& ctx) = nullptr;
  // Protocols: rewrites a filename into options (strips "proto:"); nullptr: filename as is.
  absl::Status (*parse_filename)(std::string_view filename, Options& options) = nullptr;
  // The runtime options that change what the node's data is (QEMU's strong runtime options,
  // as qemu-img's names show them): only they appear in json: names, and a node with none
  // of them set can be named by its file's name. A protocol's "filename" is always strong.
  // Filters are always named by their option tree, as in QEMU.
  absl::Span<const std::string_view> strong_options = {};
  // Formats: checks (and with `fix`, repairs) the image stored in `file` without opening the
  // format (qemu-img check; the driver also calls it on dirty images). `filename` names the
  // image in messages. nullptr: the format has no check ("This image format does not support
  // checks").
  Task<absl::StatusOr<ImageCheckResult>> (*check)(Child& file, uint32_t fix,
                                                  std::string_view filename) = nullptr;
  // Formats: the storage an image created with `opts` (create options, validated, with
  // "size" set) needs, holding a copy of what `in` reads when it is given (QEMU's
  // bdrv_measure). nullptr: the format "does not support size measurement".
  Task<absl::StatusOr<MeasureResult>> (*measure)(const OptionValues& opts, Backend* in) = nullptr;
  // Formats: images can store compressed clusters (kReqCompressed writes; QEMU's
  // block_driver_can_compress, which qemu-img convert -c asks before creating the target).
  bool compresses = false;
};

// What drivers see while they create an image.
struct CreateContext {
  Graph& graph;
  std::string filename;
  OptionValues values;   // create_options, validated
  Options extra;         // options not in the schema (e.g. "file.*" for the protocol layer)
};

}  // namespace libblock

#endif  // LIBBLOCK_CORE_DRIVER_H_
