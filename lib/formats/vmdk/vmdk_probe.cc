// VMDK probe, after VMware's "Virtual Disk Format 1.1" specification. A VMDK image is either
//
//   - a sparse extent: a binary header whose magic, read as a big-endian uint32, is 'KDMV'
//     (VMDK4, hosted sparse extents and stream-optimized images) or 'COWD' (VMDK3, ESX sparse),
//     i.e. the bytes "KDMV" or "COWD" at offset 0; or
//   - a text descriptor file: "# Disk DescriptorFile", then "version=1" (or 2, 3), CID,
//     parentCID, createType, the extent lines and the disk database.
//
// The descriptor check follows QEMU's observable rule, which is deliberately narrow so that
// arbitrary text does not look like VMDK: scanning lines from the start,
//   - a line starting with '#' is a comment and is skipped;
//   - a line starting with ' ' must be blank: spaces only, then an optional '\r', then '\n';
//   - the first other line decides: it must be exactly "version=N" with N in 1..3, ended by
//     "\n" or "\r\n". Anything else (an empty line, a tab, another key first) is not VMDK.
// Every step stays within the buffer, so a descriptor cut off by the end of the buffer is not
// recognised.
#include "formats/vmdk/vmdk_probe.h"

#include <cstring>

namespace libblock::vmdk {
namespace {

constexpr uint8_t kVmdk4Magic[4] = {'K', 'D', 'M', 'V'};
constexpr uint8_t kVmdk3Magic[4] = {'C', 'O', 'W', 'D'};
constexpr std::string_view kVersionKey = "version=";

// True when `line` (which runs to the end of the buffer) starts with a complete
// "version=N\n" or "version=N\r\n" line, N in 1..3.
bool IsVersionLine(std::string_view line) {
  if (!line.starts_with(kVersionKey)) return false;
  line.remove_prefix(kVersionKey.size());
  if (line.empty() || line[0] < '1' || line[0] > '3') return false;
  line.remove_prefix(1);
  return line.starts_with("\n") || line.starts_with("\r\n");
}

bool IsDescriptor(std::string_view text) {
  size_t pos = 0;
  while (pos < text.size()) {
    const char first = text[pos];
    if (first == '#') {
      const size_t eol = text.find('\n', pos);
      if (eol == std::string_view::npos) return false;
      pos = eol + 1;
      continue;
    }
    if (first == ' ') {
      while (pos < text.size() && text[pos] == ' ') ++pos;
      if (pos < text.size() && text[pos] == '\r') ++pos;
      if (pos == text.size() || text[pos] != '\n') return false;
      ++pos;
      continue;
    }
    return IsVersionLine(text.substr(pos));
  }
  return false;
}

}  // namespace

int Probe(const uint8_t* buf, size_t len, std::string_view /*filename*/) {
  if (len < 4) return 0;
  if (std::memcmp(buf, kVmdk4Magic, 4) == 0 || std::memcmp(buf, kVmdk3Magic, 4) == 0) return 100;
  return IsDescriptor(std::string_view(reinterpret_cast<const char*>(buf), len)) ? 100 : 0;
}

}  // namespace libblock::vmdk
