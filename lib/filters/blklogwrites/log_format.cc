// The dm-log-writes format (see log_format.h).
#include "filters/blklogwrites/log_format.h"

#include <cerrno>

#include "absl/strings/str_format.h"
#include "util/endian.h"
#include "util/status.h"

namespace libblock::blklogwrites {

bool ValidSectorSize(uint64_t size) {
  return size >= kEntryBytes && size < (uint64_t{1} << 24) && (size & (size - 1)) == 0;
}

void EncodeSuper(const LogSuper& s, uint8_t* out) {
  StoreLe64(out, s.magic);
  StoreLe64(out + 8, s.version);
  StoreLe64(out + 16, s.nr_entries);
  StoreLe32(out + 24, s.sector_size);
}

LogSuper DecodeSuper(const uint8_t* in) {
  return LogSuper{LoadLe64(in), LoadLe64(in + 8), LoadLe64(in + 16), LoadLe32(in + 24)};
}

void EncodeEntry(const LogEntry& e, uint8_t* out) {
  StoreLe64(out, e.sector);
  StoreLe64(out + 8, e.nr_sectors);
  StoreLe64(out + 16, e.flags);
  StoreLe64(out + 24, e.data_len);
}

LogEntry DecodeEntry(const uint8_t* in) {
  return LogEntry{LoadLe64(in), LoadLe64(in + 8), LoadLe64(in + 16), LoadLe64(in + 24)};
}

uint64_t DataSectors(const LogEntry& e) {
  return (e.flags & kFlagDiscard) ? 0 : e.nr_sectors;
}

absl::StatusOr<ParsedLog> ParseLog(std::span<const uint8_t> log, std::string_view name) {
  if (log.size() < kSuperBytes) {
    return ErrnoError(EINVAL, absl::StrFormat("log '%s': too short for a super block", name));
  }
  ParsedLog out;
  out.super = DecodeSuper(log.data());
  if (out.super.magic != kLogMagic) return ErrnoError(EINVAL, "Invalid log superblock magic");
  if (out.super.version != kLogVersion) {
    return ErrnoError(EINVAL, absl::StrFormat("Unsupported log version %d", out.super.version));
  }
  uint64_t ss = out.super.sector_size;
  if (!ValidSectorSize(ss)) {
    return ErrnoError(EINVAL, absl::StrFormat("Invalid log sector size %d", ss));
  }
  uint64_t sectors = log.size() / ss;
  uint64_t pos = 1;
  for (uint64_t i = 0; i < out.super.nr_entries; ++i) {
    if (pos >= sectors) {
      return ErrnoError(EINVAL, absl::StrFormat("log '%s': entry %d is past the end of the log",
                                                name, i));
    }
    LogEntry e = DecodeEntry(log.data() + pos * ss);
    if (e.flags & ~kFlagMask) {
      return ErrnoError(EINVAL, absl::StrFormat("Invalid flags 0x%x in log entry %d", e.flags, i));
    }
    uint64_t data = DataSectors(e);
    // Guest offsets must stay representable: sector and count below 2^62 / sector size.
    if (e.sector > (uint64_t{1} << 62) / ss || e.nr_sectors > (uint64_t{1} << 62) / ss ||
        data > sectors - pos - 1) {
      return ErrnoError(EINVAL, absl::StrFormat("log '%s': entry %d (sector %d, %d sectors) "
                                                "does not fit the log", name, i, e.sector,
                                                e.nr_sectors));
    }
    Record r;
    r.entry = e;
    r.offset = static_cast<int64_t>(e.sector * ss);
    r.bytes = static_cast<int64_t>(e.nr_sectors * ss);
    r.log_offset = static_cast<int64_t>((pos + 1) * ss);
    out.records.push_back(r);
    pos += 1 + data;
  }
  return out;
}

}  // namespace libblock::blklogwrites
