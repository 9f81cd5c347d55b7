// ProbeFormat over the built-in registry: the registry's table is the one list of formats
// and of the order that breaks probe ties.
#include "formats/probe.h"

#include "core/registry.h"

namespace libblock {

ProbeResult ProbeFormat(const uint8_t* buf, size_t len, std::string_view filename) {
  ProbeMatch m = Registry::Builtin().ProbeFormat(buf, len, filename);
  if (!m.driver) return {"raw", 1};
  return {m.driver->name, m.score};
}

}  // namespace libblock
