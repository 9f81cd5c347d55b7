// Committing an overlay into its backing chain (QEMU's commit job, as qemu-img commit runs
// it): every range some image above the base allocates is read through the top and written
// into the base; then, unless asked to keep it, the top is emptied (QEMU's bdrv_make_empty)
// so that it reads through to the base again.
#ifndef LIBBLOCK_CORE_COMMIT_H_
#define LIBBLOCK_CORE_COMMIT_H_

#include <cstdint>
#include <functional>
#include <string_view>

#include "absl/status/status.h"
#include "core/backend.h"
#include "core/node.h"
#include "core/task.h"

namespace libblock {

struct CommitOptions {
  Node* base = nullptr;     // an image of the top's backing chain; null: the immediate backing
  uint64_t rate_limit = 0;  // bytes per second copied, 0: no limit
  bool keep_top = false;    // qemu-img commit -d (implied by an explicit base)
  // Called after each chunk with the bytes of the top's address space handled so far.
  std::function<void(uint64_t done, uint64_t total)> progress;
};

// The image of `top`'s backing chain (below `top`) that `name` names, QEMU's
// bdrv_find_backing_image: the backing file name as its overlay stores it, or the same file
// by its real path. Null when there is none.
Node* FindBackingImage(Node& top, std::string_view name);

// Commits `top` (opened read-write through this backend) into opts.base. The base is
// reopened read-write for the copy and returned to read-only afterwards; it grows to the
// top's size when it is smaller. Errors: "Image does not have a backing file" (ENOTSUP
// without one), and the I/O errors of the copy.
// Control plane: runs the loop (call it outside coroutines).
absl::Status Commit(Backend& top, const CommitOptions& opts);

}  // namespace libblock

#endif  // LIBBLOCK_CORE_COMMIT_H_
