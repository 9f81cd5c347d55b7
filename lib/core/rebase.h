// Changing an image's backing file (qemu-img rebase). Safe mode keeps what the image reads:
// wherever the image itself allocates nothing and the new backing file reads differently
// from the old one, the old content is written into the image first. Unsafe mode only
// changes the name and format in the header.
#ifndef LIBBLOCK_CORE_REBASE_H_
#define LIBBLOCK_CORE_REBASE_H_

#include <cstdint>
#include <functional>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "core/backend.h"
#include "core/options.h"

namespace libblock {

struct RebaseOptions {
  std::string backing;                // the new backing file as the header stores it; "": none
  std::optional<std::string> format;  // its format (required unless `backing` is empty)
  bool unsafe = false;
  Options backing_options;            // more options for opening the new backing file (cache)
  // Called after each chunk with the bytes of the image handled so far.
  std::function<void(uint64_t done, uint64_t total)> progress;
};

// Rebases the image `be` (read-write) writes to. In safe mode the node's backing child then
// is the new backing file (or none). Control plane: runs the loop.
absl::Status Rebase(Backend& be, const RebaseOptions& opts);

}  // namespace libblock

#endif  // LIBBLOCK_CORE_REBASE_H_
