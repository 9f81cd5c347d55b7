// The dm-log-writes log format (Linux Documentation/admin-guide/device-mapper/log-writes.rst),
// as QEMU's blklogwrites filter writes it: all fields little-endian.
//
//   sector 0          the super block: magic, version (1), nr_entries, sectorsize
//   sector 1, ...     one entry per logged request: a sector holding {sector, nr_sectors,
//                     flags, data_len}, followed by nr_sectors sectors of the written data
//                     (none for discards and flushes)
// Sectors are `sectorsize` bytes (the log-sector-size option), and `sector`/`nr_sectors`
// count them. Flags: FLUSH (the device was flushed: every earlier entry is durable), FUA (this
// write was durable on completion), DISCARD (no data follows), MARK (a user mark; data_len
// bytes of mark text follow, never written by libblock). Write-zeroes are logged as writes of
// zero data, as QEMU logs them.
//
// The parser here is shared by the filter (log-append) and the power-cut replay harness.
#ifndef LIBBLOCK_FILTERS_BLKLOGWRITES_LOG_FORMAT_H_
#define LIBBLOCK_FILTERS_BLKLOGWRITES_LOG_FORMAT_H_

#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace libblock::blklogwrites {

inline constexpr uint64_t kLogMagic = 0x6a736677736872ull;
inline constexpr uint64_t kLogVersion = 1;
inline constexpr uint64_t kFlagFlush = 1u << 0;
inline constexpr uint64_t kFlagFua = 1u << 1;
inline constexpr uint64_t kFlagDiscard = 1u << 2;
inline constexpr uint64_t kFlagMark = 1u << 3;
inline constexpr uint64_t kFlagMask = kFlagFlush | kFlagFua | kFlagDiscard | kFlagMark;
inline constexpr size_t kSuperBytes = 28;
inline constexpr size_t kEntryBytes = 32;

struct LogSuper {
  uint64_t magic = kLogMagic;
  uint64_t version = kLogVersion;
  uint64_t nr_entries = 0;
  uint32_t sector_size = 512;
};

struct LogEntry {
  uint64_t sector = 0;
  uint64_t nr_sectors = 0;
  uint64_t flags = 0;
  uint64_t data_len = 0;
};

// A sector size the format accepts: a power of two below 16 MiB (QEMU's rule); at least the
// 32 bytes of an entry.
bool ValidSectorSize(uint64_t size);

void EncodeSuper(const LogSuper& super, uint8_t* out);  // kSuperBytes
LogSuper DecodeSuper(const uint8_t* in);
void EncodeEntry(const LogEntry& entry, uint8_t* out);  // kEntryBytes
LogEntry DecodeEntry(const uint8_t* in);

// Log sectors the entry occupies after its own sector (its data).
uint64_t DataSectors(const LogEntry& entry);

// One entry of a parsed log, in guest bytes.
struct Record {
  LogEntry entry;
  int64_t offset = 0;       // sector * sector_size
  int64_t bytes = 0;        // nr_sectors * sector_size
  int64_t log_offset = 0;   // where the entry's data starts in the log (writes)
};

// Parses a whole log held in memory (`name` for messages): the super block and its
// nr_entries entries, each checked to lie inside the log with valid flags.
struct ParsedLog {
  LogSuper super;
  std::vector<Record> records;
};
absl::StatusOr<ParsedLog> ParseLog(std::span<const uint8_t> log, std::string_view name);

}  // namespace libblock::blklogwrites

#endif  // LIBBLOCK_FILTERS_BLKLOGWRITES_LOG_FORMAT_H_
