#include "core/measure.h"

#include <cerrno>
#include <vector>

#include "absl/strings/str_format.h"
#include "util/checked_math.h"
#include "util/status.h"

namespace libblock {

Task<absl::StatusOr<MeasureResult>> Measure(const Registry& registry, std::string_view format,
                                            Options options, Backend* in,
                                            std::optional<uint64_t> size) {
  const Driver* drv = registry.Find(format);
  if (!drv || drv->kind != DriverKind::kFormat || (!drv->instantiate && !drv->create)) {
    co_return ErrnoError(EINVAL, absl::StrFormat("Unknown file format '%s'", format));
  }
  if (!drv->create_options) {
    co_return ErrnoError(ENOTSUP, absl::StrFormat("Format driver '%s' does not support image "
                                                  "creation", drv->name));
  }
  // The format's options, then the file protocol's (qemu-img measure appends both).
  std::vector<OptionSpec> specs(drv->create_options->specs.begin(), drv->create_options->specs.end());
  if (const Driver* file = registry.Find("file"); file && file->create_options) {
    for (const OptionSpec& s : file->create_options->specs) {
      bool dup = false;
      for (const OptionSpec& have : specs) dup = dup || have.name == s.name;
      if (!dup) specs.push_back(s);
    }
  }
  if (in) {
    options.Set("size", std::to_string(in->size()));
  } else if (size) {
    options.Set("size", std::to_string(*size));
  }
  OptionSchema schema{drv->name, specs};
  absl::StatusOr<OptionValues> values = ConsumeOptions(schema, options);
  if (!values.ok()) co_return values.status();
  if (!options.empty()) {
    co_return ErrnoError(EINVAL, absl::StrFormat("Invalid parameter '%s'", options.begin()->first));
  }
  if (!drv->measure) {
    co_return ErrnoError(ENOTSUP, absl::StrFormat("Block driver '%s' does not support size "
                                                  "measurement", drv->name));
  }
  co_return co_await drv->measure(*values, in);
}

Task<absl::StatusOr<uint64_t>> MeasureDataBytes(Backend& in, uint64_t cluster_size) {
  const int64_t size = in.size();
  uint64_t required = 0;
  for (int64_t offset = 0; offset < size;) {
    absl::StatusOr<BlockStatus> st = co_await in.GetBlockStatus(offset, size - offset);
    if (!st.ok()) co_return st.status();
    int64_t pnum = st->bytes;
    if (pnum <= 0) co_return ErrnoError(EIO, "block status made no progress");
    if (!(st->flags & kStatusZero) &&
        (st->flags & (kStatusData | kStatusAllocated)) == (kStatusData | kStatusAllocated)) {
      // To the end of the cluster, and what of the cluster lies before the run.
      const uint64_t end = AlignUp<uint64_t>(static_cast<uint64_t>(offset + pnum), cluster_size);
      pnum = static_cast<int64_t>(end) - offset;
      required += static_cast<uint64_t>(offset) % cluster_size + static_cast<uint64_t>(pnum);
    }
    offset += pnum;
  }
  co_return required;
}

}  // namespace libblock
