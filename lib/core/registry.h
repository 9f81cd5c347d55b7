// The driver registry: one explicit table of every driver libblock knows (no static
// constructors), with QEMU's protocol selection and format probing rules.
#ifndef LIBBLOCK_CORE_REGISTRY_H_
#define LIBBLOCK_CORE_REGISTRY_H_

#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "core/driver.h"

namespace libblock {

// How many bytes from offset 0 a format probe looks at (QEMU's BLOCK_PROBE_BUF_SIZE).
inline constexpr size_t kProbeBufferSize = 512;

struct ProbeMatch {
  const Driver* driver = nullptr;
  int score = 0;
};

class Registry {
 public:
  explicit Registry(std::vector<const Driver*> drivers) : drivers_(std::move(drivers)) {}

  // Every built-in driver: the table in lib/drivers.cc (the core names no driver).
  static const Registry& Builtin();

  const std::vector<const Driver*>& drivers() const { return drivers_; }
  const Driver* Find(std::string_view name) const;

  // The protocol a filename names (QEMU's bdrv_find_protocol): a "proto:" prefix (text before
  // the first ':' when no '/' comes first) selects that protocol, and an unknown one is an
  // error; otherwise the best probe_device score wins, else "file".
  absl::StatusOr<const Driver*> ProtocolForFilename(std::string_view filename) const;

  // The one format-probing entry point (Graph::ProbeFormat reads an image's first bytes and
  // asks this): the format whose probe scores highest, from 1 to 100 with QEMU's scores, for
  // the first `len` bytes of an image named `filename` (may be empty; only dmg looks at it),
  // as QEMU's bdrv_probe_all chooses. `len` is how many bytes could be read from offset 0:
  // bytes past kProbeBufferSize are ignored, and a shorter buffer is taken as the image's
  // start zero-padded to kProbeBufferSize, as QEMU probes it (reads past the end of a file
  // return zeroes); an empty image is raw, which QEMU opens without probing. Raw scores 1
  // for anything, so it wins only when no format claims the image. Ties go to the earlier
  // table entry: QEMU's order (qed, parallels > vdi > qcow2, qcow, vmdk, vpc, vhdx, luks;
  // dmg > cloop). `driver` is null only for a table without raw. Thread-safe; reads nothing
  // at or past buf[len].
  ProbeMatch ProbeFormat(const uint8_t* buf, size_t len, std::string_view filename) const;

 private:
  std::vector<const Driver*> drivers_;
};

}  // namespace libblock

#endif  // LIBBLOCK_CORE_REGISTRY_H_
