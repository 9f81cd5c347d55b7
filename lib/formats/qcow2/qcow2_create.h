// qcow2 image creation: the creation options (QEMU's names, defaults and help texts), their
// validation, and the layout of a new image.
//
// The layout is computed in memory first (PlanImage), as QEMU would place every structure for
// the same options — header, refcount table and blocks, L1, and for preallocation the L2 tables,
// data clusters and (falloc/full) the refcount area QEMU's truncate builds — so that an image
// created here has the same bytes, the same file length and the same allocated extents as
// qemu-img's; then Create writes it. Nothing is created or truncated until every option passed.
#ifndef LIBBLOCK_FORMATS_QCOW2_QCOW2_CREATE_H_
#define LIBBLOCK_FORMATS_QCOW2_QCOW2_CREATE_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/driver.h"
#include "core/options.h"
#include "core/task.h"
#include "formats/qcow2/qcow2_header.h"

namespace libblock::qcow2 {

// qcow2's own creation options (the protocol's are merged in by Graph::Create).
extern const OptionSchema kCreateSchema;

// The validated creation parameters.
struct CreateParams {
  uint64_t size = 0;  // bytes, a multiple of 512
  int version = 3;
  int cluster_bits = 16;
  int refcount_order = 4;
  bool lazy_refcounts = false;
  bool extended_l2 = false;
  CompressionType compression_type = CompressionType::kZlib;
  PreallocMode preallocation = PreallocMode::kOff;
  std::optional<std::string> backing_file;
  std::optional<std::string> backing_format;
  std::optional<std::string> data_file;
  bool data_file_raw = false;
};

// Reads and checks the creation options, with QEMU's messages for what it refuses.
absl::StatusOr<CreateParams> ParseCreateParams(const OptionValues& values);

// One write of the new image: `data` at `offset` of the image file.
struct PlannedWrite {
  int64_t offset = 0;
  std::vector<uint8_t> data;
};

// Everything Create does to the (empty) image file, in order: the writes, then growing the
// file to `grow_to` bytes with `grow_mode` (falloc/full preallocation of the data area, or a
// plain extension to the last preallocated cluster), then the writes in `late_writes`.
struct ImagePlan {
  Header header;
  std::vector<PlannedWrite> writes;
  std::optional<int64_t> grow_to;
  PreallocMode grow_mode = PreallocMode::kOff;
  std::vector<PlannedWrite> late_writes;
};

// The image qemu-img would create for `params` (ENOSPC, EFBIG for what does not fit).
absl::StatusOr<ImagePlan> PlanImage(const CreateParams& params);

// QEMU's qcow2_refcount_metadata_size: the refcount blocks needed for `clusters` clusters
// plus the refcount structures themselves (`generous`: room to grow, as creation leaves).
int64_t RefblocksNeeded(int64_t clusters, int64_t cs, int refcount_order, bool generous);

// qemu-img measure for qcow2 targets (qcow2_measure.cc).
Task<absl::StatusOr<MeasureResult>> Measure(const OptionValues& opts, Backend* in);

// The driver's create entry point.
Task<absl::Status> Create(CreateContext& ctx);

}  // namespace libblock::qcow2

#endif  // LIBBLOCK_FORMATS_QCOW2_QCOW2_CREATE_H_
