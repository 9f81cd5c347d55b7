// Drivers that exist only for tests, registered next to the built-in ones in an explicit
// test registry:
//   test-proto   a protocol over memory; `veto` (a permission mask) makes PreparePerm refuse
//                any cumulative permission containing one of those bits; `align`,
//                `max-transfer`, `fua`, `has-zeroes`, `has-discard`, `serialise-writes` declare limits and capabilities;
//                every request that reaches it is recorded (TestProtoStats).
//   test-fmt     a format with a "file" child of role `role` (image|data|metadata) and a
//                backing file (opened by the core) named by its "header": the file's first
//                bytes "LBTESTFMT\nbacking=NAME\nbacking-fmt=FMT\n", or the options
//                `backing-file`/`backing-fmt`; data passes through to "file". Its
//                PrepareReopen suspends: `reopen-mark` writes "clean" at offset 0 of the file
//                on a read-write -> read-only reopen (after a 1 ms sleep), `reopen-fail`
//                refuses the reopen after yielding.
//                With `alloc`, a copy-on-write format over 512-byte sectors: written sectors are allocated
//                (block status: data at the same offset of "file", plus recurse with
//                `recurse`, or compressed with `compressed`), the others read from "backing"
//                (zeroes without one, or past its end) and report as unallocated.
//                `zero-init` is the driver's has-zero-init answer.
//   test-proto   `compress` declares compressed-write support.
//   test-map     a format on the mapping engine (core/mapping.h): its cluster table lives in
//                memory (lost on close), data clusters are appended to its "file" child.
//                `size`, `cluster-size`, `subclusters` (per cluster: 1, or up to 32 as in
//                extended L2), `codec` (none|deflate|zlib|zstd: compressed writes),
//                `zero-clusters` (ZeroClusters works, else ENOTSUP), `max-alloc` (clusters per
//                allocation, 0: no limit), `metadata` (host bytes CheckDataWrite protects),
//                `bad-alloc` (allocations point at host offset 0), `encrypt` (512-byte XOR
//                sectors keyed by host offset), `backing-file`/`backing-fmt` (as test-fmt).
//                A new host cluster replacing one that holds data (shared, or compressed)
//                is allocated whole with subclusters, as qcow2 copies the other subclusters.
//   test-delay   a filter that delays every read/write by `ns` nanoseconds.
#ifndef LIBBLOCK_TESTS_TEST_DRIVERS_H_
#define LIBBLOCK_TESTS_TEST_DRIVERS_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "core/node.h"
#include "core/registry.h"

namespace libblock::testing {

// What reached a test-proto node's driver (after the core request path).
struct TestProtoStats {
  int reads = 0, writes = 0, zero_writes = 0, discards = 0, flushes = 0, truncates = 0;
  bool flushed_since_truncate = false;  // a flush reached the driver after the last truncate
  int misaligned = 0;          // requests not aligned to the declared `align`
  int overlapping_in_flight = 0;  // writes that entered while an overlapping one was inside
  int64_t largest = 0;         // largest read/write length seen
  std::vector<std::pair<int64_t, int64_t>> zero_ranges;
  std::vector<uint32_t> write_flags;
};
// Stats of a test-proto node; aborts for other drivers.
TestProtoStats& StatsOf(Node& node);
// The node's backing memory.
std::vector<uint8_t>& DataOf(Node& node);
// The next `count` writes reaching the test-proto node fail with EIO.
void FailNextWrites(Node& node, int count);
// The stats of the test-proto node destroyed last (closed nodes are gone).
const TestProtoStats& LastClosedStats();

// test-map's view of one guest cluster (see the header comment).
struct TestMapEntry {
  enum class Kind { kUnallocated, kZero, kData, kCompressed };
  Kind kind = Kind::kUnallocated;
  int64_t host = -1;        // kData: the host cluster; kCompressed: the blob's first byte
  bool copied = true;       // kData: written in place (else a write allocates)
  uint32_t alloc_mask = 0;  // subclusters of kData: which hold data
  uint32_t zero_mask = 0;   // subclusters of kData: which read as zeroes
  int64_t blob_bytes = 0;   // kCompressed: stored bytes, rounded up to 512 as qcow2 does
};
struct TestMapStats {
  int maps = 0, allocations = 0, commits = 0, aborts = 0, compressed_commits = 0;
  int zero_calls = 0, discard_calls = 0, corruptions = 0;
  std::vector<std::pair<int64_t, int64_t>> allocated;  // guest ranges Allocate handed out
};
TestMapEntry& MapEntryOf(Node& node, int64_t cluster_index);
TestMapStats& MapStatsOf(Node& node);
// As after an internal snapshot: every data cluster is shared, so the next write to it
// allocates a new one and copies the old content around the written part.
void ShareAllClusters(Node& node);

const Registry& TestRegistry();

// While set, every test-proto node refuses every PreparePerm (even relaxations).
void SetTestProtoRefuseAll(bool refuse);

// How many times a test-fmt node's PrepareReopen was called (in this process).
int TestFmtPrepareReopenCalls();
// ReopenState::changed of the last test-fmt PrepareReopen, as "key=value,...".
const std::string& TestFmtLastReopenChanges();

}  // namespace libblock::testing

#endif  // LIBBLOCK_TESTS_TEST_DRIVERS_H_
