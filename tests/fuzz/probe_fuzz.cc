// Fuzz target: format probing over arbitrary first sectors (every format's probe, QEMU's
// scores), which also decides raw's sector-0 write guard. Must never read out of bounds.
#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

#include "core/registry.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const libblock::Registry& registry = libblock::Registry::Builtin();
  // Each probe on exactly the bytes given (an exact-size heap copy, so ASan sees overreads),
  // and the registry's zero-padded probe as the open path uses it.
  std::vector<uint8_t> copy(data, data + size);
  for (const libblock::Driver* d : registry.drivers()) {
    if (d->probe) {
      int score = d->probe(copy.data(), copy.size(), "image.dmg");
      if (score < 0 || score > 100) __builtin_trap();
    }
  }
  libblock::ProbeMatch m = registry.ProbeFormat(copy.data(), copy.size(), "");
  if (!m.driver || m.score < 1) __builtin_trap();
  return 0;
}
