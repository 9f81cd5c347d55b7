// The driver registry: one explicit table of every driver libblock knows (no static
// constructors), with QEMU's protocol selection and format probing rules.
#ifndef LIBBLOCK_CORE_REGISTRY_H_
#define LIBBLOCK_CORE_REGISTRY_H_

#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "core/driver.h"
#include "formats/probe.h"

namespace libblock {

struct ProbeMatch {
  const Driver* driver = nullptr;
  int score = 0;
};

class Registry {
 public:
  explicit Registry(std::vector<const Driver*> drivers) : drivers_(std::move(drivers)) {}

  // Every built-in driver.
  static const Registry& Builtin();

  const std::vector<const Driver*>& drivers() const { return drivers_; }
  const Driver* Find(std::string_view name) const;

  // The protocol a filename names (QEMU's bdrv_find_protocol): a "proto:" prefix (text before
  // the first ':' when no '/' comes first) selects that protocol, and an unknown one is an
  // error; otherwise the best probe_device score wins, else "file".
  absl::StatusOr<const Driver*> ProtocolForFilename(std::string_view filename) const;

  // The format whose probe scores highest for the first `len` bytes of an image (QEMU's
  // bdrv_probe_all): the bytes are zero-padded to kProbeBufferSize, as QEMU's probe buffer
  // is; ties go to the earlier table entry; an empty image is raw.
  ProbeMatch ProbeFormat(const uint8_t* buf, size_t len, std::string_view filename) const;

 private:
  std::vector<const Driver*> drivers_;
};

}  // namespace libblock

#endif  // LIBBLOCK_CORE_REGISTRY_H_
