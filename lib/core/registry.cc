// Driver lookup, protocol selection and format probing over a table of drivers (the
// built-in table is lib/drivers.cc).
#include "core/registry.h"

#include <cerrno>
#include <cstring>

#include "absl/strings/str_format.h"
#include "util/status.h"

namespace libblock {

const Driver* Registry::Find(std::string_view name) const {
  for (const Driver* d : drivers_) {
    if (d->name == name) return d;
  }
  return nullptr;
}

absl::StatusOr<const Driver*> Registry::ProtocolForFilename(std::string_view filename) const {
  // A "proto:" prefix: a ':' before any '/'.
  size_t stop = filename.find_first_of(":/");
  if (stop != std::string_view::npos && filename[stop] == ':') {
    std::string_view proto = filename.substr(0, stop);
    for (const Driver* d : drivers_) {
      if (d->kind == DriverKind::kProtocol && d->protocol_prefix == proto) return d;
    }
    return ErrnoError(ENOENT, absl::StrFormat("Unknown protocol '%s'", proto));
  }
  const Driver* best = nullptr;
  int best_score = 0;
  for (const Driver* d : drivers_) {
    if (d->kind != DriverKind::kProtocol || !d->probe_device) continue;
    int score = d->probe_device(filename);
    if (score > best_score) {
      best = d;
      best_score = score;
    }
  }
  if (best) return best;
  if (const Driver* file = Find("file")) return file;
  return ErrnoError(ENOTSUP, absl::StrFormat("no protocol driver for '%s'", filename));
}

ProbeMatch Registry::ProbeFormat(const uint8_t* buf, size_t len, std::string_view filename) const {
  ProbeMatch best;
  if (len == 0) {
    best.driver = Find("raw");
    best.score = 1;
    return best;
  }
  uint8_t window[kProbeBufferSize] = {};
  std::memcpy(window, buf, std::min(len, kProbeBufferSize));
  for (const Driver* d : drivers_) {
    if (d->kind != DriverKind::kFormat || !d->probe) continue;
    int score = d->probe(window, kProbeBufferSize, filename);
    if (score > best.score) {
      best.driver = d;
      best.score = score;
    }
  }
  return best;
}

}  // namespace libblock
