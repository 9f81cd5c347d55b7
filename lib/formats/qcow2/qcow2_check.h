// qcow2 consistency check and repair (what `qemu-img check` does for qcow2, by behaviour).
//
// Check walks every structure that references clusters — the header cluster, the active L1
// table and its L2 tables (data, zero-allocated and compressed clusters), the snapshot table
// and every snapshot's L1/L2 tables, the refcount table and blocks, the encryption header and
// the persistent bitmaps (directory, tables, data) — and counts the references each host
// cluster gets. It then compares the counts with the on-disk refcounts: a cluster with a
// higher refcount than references is a leak, one with a lower refcount is an error (data may
// be overwritten by a later allocation). It also checks the COPIED flags of the active L1/L2
// entries (set exactly when the refcount is 1), alignments, reserved bits, extended L2
// bitmaps and regions past the end of the file.
//
// Repair (QEMU's -r leaks / -r all):
//   kFixLeaks   lowers refcounts of leaked clusters in place;
//   kFixErrors  also raises refcounts that are too low, fixes COPIED flags, turns unaligned
//               preallocated zero clusters into plain zero clusters, extends a file that ends
//               before a refcount block, and rebuilds the whole refcount structure (new
//               refcount blocks and table written past the end of the image, then the header
//               switched to them with one sync write) when the existing one cannot be fixed in
//               place (a referenced cluster without a refcount, a broken refcount table entry,
//               a refcount block referenced twice).
// A repair with nothing left broken also clears the dirty and corrupt bits, as QEMU does (so
// the driver can call Check with both fixes on a dirty lazy_refcounts image).
//
// Check works on the image's file child directly (no caches): a driver that repairs on open
// calls it before it caches refcount blocks and re-reads the header afterwards
// (CheckResult::header_changed). Messages are QEMU's, one per line, without the newline, in
// the order qemu-img prints them on stderr.
#ifndef LIBBLOCK_FORMATS_QCOW2_QCOW2_CHECK_H_
#define LIBBLOCK_FORMATS_QCOW2_QCOW2_CHECK_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/driver.h"
#include "core/node.h"
#include "core/task.h"
#include "formats/qcow2/qcow2_header.h"

namespace libblock::qcow2 {

// What to repair (QEMU's BdrvCheckMode bits).
using CheckFix = unsigned;
inline constexpr CheckFix kFixLeaks = 1u << 0;
inline constexpr CheckFix kFixErrors = 1u << 1;

// QEMU's BdrvCheckResult with its fragmentation info.
// The counters and messages are the driver-independent ImageCheckResult (what blkimg check
// and lb_check report); qcow2 adds what its own callers need.
struct CheckResult : ImageCheckResult {
  // The repair rewrote header fields (refcount table location, dirty/corrupt bits).
  bool header_changed = false;
};

// Checks the qcow2 image stored in `file` whose header is `header` (as ParseHeader returned
// it for this file), repairing what `fix` allows. Fails (with an errno) only when the check
// cannot proceed at all (an unreadable L1 or refcount table); problems found are counted in
// the result. Needs write (and, to extend a truncated file, resize) permission on `file` when
// `fix` is non-zero.
Task<absl::StatusOr<CheckResult>> Check(Child& file, const Header& header, CheckFix fix);

// The registry's check hook (Driver::check): reads and parses the header of the image in
// `file`, then Check. kCheckFixLeaks/kCheckFixErrors are kFixLeaks/kFixErrors.
Task<absl::StatusOr<ImageCheckResult>> CheckImage(Child& file, uint32_t fix,
                                                  std::string_view filename);

}  // namespace libblock::qcow2

#endif  // LIBBLOCK_FORMATS_QCOW2_QCOW2_CHECK_H_
