// qemu-img measure (QEMU's bdrv_measure): how much storage an image of a format needs, for a
// given size or to hold a copy of an existing image.
#ifndef LIBBLOCK_CORE_MEASURE_H_
#define LIBBLOCK_CORE_MEASURE_H_

#include <cstdint>
#include <optional>
#include <string_view>

#include "absl/status/statusor.h"
#include "core/backend.h"
#include "core/driver.h"
#include "core/options.h"
#include "core/registry.h"
#include "core/task.h"

namespace libblock {

// `options`: the format's creation options (and the file protocol's, as qemu-img accepts
// them); unknown ones fail with EINVAL "Invalid parameter 'NAME'". `in` (may be null) is the
// image to copy; without it `size` is the virtual size.
Task<absl::StatusOr<MeasureResult>> Measure(const Registry& registry, std::string_view format,
                                            Options options, Backend* in,
                                            std::optional<uint64_t> size);

// The bytes of `in` that a copy must store, counted as QEMU's qcow2_measure counts them: each
// run of data (DATA and ALLOCATED, the whole chain) extended to the end of its cluster, plus
// the part of its first cluster before it; ranges that read as zeroes are skipped.
Task<absl::StatusOr<uint64_t>> MeasureDataBytes(Backend& in, uint64_t cluster_size);

}  // namespace libblock

#endif  // LIBBLOCK_CORE_MEASURE_H_
