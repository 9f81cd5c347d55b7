// The power-cut replay harness: any writable format's crash safety, proven on the states a
// power cut can leave.
//
//   1. An initial image is made and copied; a workload of random guest requests (writes of
//      random sizes at random, overlapping offsets, write-zeroes, discards, flushes) runs on
//      the copy with the blklogwrites filter between the format and its file, so every
//      request that reached the file is logged in order (lib/filters/blklogwrites).
//   2. The log is cut: after every flush entry, at random points between flushes, and with
//      the write at the cut torn (a random subset of its 512-byte sectors applied). For each
//      cut the image is rebuilt from the initial copy and the log prefix.
//   3. Each rebuilt image is checked by the format's check (ours and qemu-img's: consistent,
//      leaks allowed) and read back: every byte that a write completed before the last
//      flush in the prefix wrote (and that no later request touched) must read as written,
//      and every byte no request touched keeps its initial content.
//
// Workloads run through libblock (RunWorkload: the guarantees follow from what completed
// before each flush was issued) or through qemu-io processes (RunQemuIoWorkload: each
// process is one epoch ending in a close, whose full flush makes the epoch's requests
// durable), so the harness checks qemu's drivers and ours the same way.
#ifndef LIBBLOCK_TESTS_CRASH_CRASH_HARNESS_H_
#define LIBBLOCK_TESTS_CRASH_CRASH_HARNESS_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "filters/blklogwrites/log_format.h"
#include "test_support.h"

namespace libblock::crash {

// One guest request of a workload.
struct GuestOp {
  // kSnapshot: an internal snapshot is taken (odd pattern, or none exists yet) or the oldest
  // one deleted (RunWorkload only; the guest content does not change).
  enum Kind { kWrite, kZero, kDiscard, kFlush, kSnapshot } kind = kWrite;
  int64_t offset = 0;
  int64_t bytes = 0;
  uint8_t pattern = 0;  // kWrite: the data is MakeData(pattern, offset, bytes, constant)
  bool constant = false;  // every byte is `pattern` (qemu-io's write -P)
  // Filled by the runner: log entries recorded once the request completed (kFlush: the
  // flush's own entry included).
  uint64_t log_entries_done = 0;
};

// The data a kWrite writes: varies with every byte so misplaced sectors are caught.
std::string MakeData(uint8_t pattern, int64_t offset, int64_t bytes, bool constant = false);

struct WorkloadConfig {
  uint32_t seed = 1;
  int ops = 200;
  int64_t disk_size = 8 << 20;
  int64_t max_write = 256 << 10;
  // Unaligned writes (any byte offset and length) besides sector-aligned ones.
  bool unaligned = true;
  int flush_every = 12;  // on average
  bool constant_data = false;  // constant-pattern writes (what qemu-io can write)
  int snapshot_every = 0;  // on average, an internal snapshot op (0: none)
};

// A random workload (sequential requests; the last one is a flush).
std::vector<GuestOp> MakeWorkload(const WorkloadConfig& cfg);

// What the harness needs to know about the format under test.
struct FormatUnderTest {
  std::string name;  // driver name ("raw", "qcow2")
  // Makes the initial image at `path`.
  std::function<void(const std::string& path)> create;
  // Options of the format node, besides driver and file ("lazy-refcounts=..." etc.).
  std::string open_options;
  // Checks a rebuilt image (read-only): "" when it is consistent (leaks allowed), else what
  // is wrong. May be empty (raw).
  std::function<std::string(const std::string& path)> check;
  // The guest content of a rebuilt image (disk_size bytes).
  std::function<absl::StatusOr<std::string>(const std::string& path)> read;
};

// Runs `ops` through libblock: `fmt` over blklogwrites over `image`, logging into `log`.
// Fills each op's log_entries_done. REQUIREs every request to succeed.
void RunWorkload(testing::GraphEnv& env, const FormatUnderTest& fmt, const std::string& image,
                 const std::string& log, std::vector<GuestOp>& ops);

// Runs `ops` through qemu-io, one process per flush-delimited epoch (log-append after the
// first), a flush op standing for the close that ends its epoch.
void RunQemuIoWorkload(const testing::GraphEnv& env, const FormatUnderTest& fmt,
                       const std::string& image, const std::string& log,
                       std::vector<GuestOp>& ops);

struct ReplayConfig {
  uint32_t seed = 1;
  int random_cuts = 20;
  int torn_cuts = 20;
  // Test hook: changes the parsed log before the replay (to prove that the checks fail).
  std::function<void(blklogwrites::ParsedLog&)> tamper;
};

struct ReplayReport {
  int flush_cuts = 0, random_cuts = 0, torn_cuts = 0;
  std::vector<std::string> failures;  // one line per failed cut
  int cuts() const { return flush_cuts + random_cuts + torn_cuts; }
};

// Rebuilds and checks the images of every cut of `log` over a copy of `initial` (the image
// before the workload ran).
ReplayReport Replay(testing::GraphEnv& env, const FormatUnderTest& fmt, const std::string& initial,
                    const std::string& log, const std::vector<GuestOp>& ops,
                    const WorkloadConfig& wcfg, const ReplayConfig& rcfg);

// Seeds from the environment (LB_CRASH_SEED, LB_CRASH_OPS: scripts/crash-campaign.sh),
// or the defaults given.
uint32_t SeedFromEnv(uint32_t fallback);
int OpsFromEnv(int fallback);

}  // namespace libblock::crash

#endif  // LIBBLOCK_TESTS_CRASH_CRASH_HARNESS_H_
