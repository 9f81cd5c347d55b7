// null-co completes every request in the calling coroutine; null-aio completes it from the
// event loop, after a trip through the ready queue, like an asynchronous device would.
// Writes are dropped; reads leave the buffer untouched unless read-zeroes=on; latency-ns
// delays every request by a timer.
#include "protocols/null/null_driver.h"

#include <cerrno>

#include "absl/strings/str_format.h"
#include "core/event_loop.h"
#include "core/graph.h"
#include "core/node.h"
#include "util/status.h"

namespace libblock::null {
namespace {

constexpr OptionSpec kSpecs[] = {
    {"filename", OptionType::kString, "", "must be the driver's own URI (null-co:// or null-aio://)"},
    {"size", OptionType::kSize, "1G", "size of the null block device"},
    {"latency-ns", OptionType::kInt, "0", "nanoseconds of delay before each request completes"},
    {"read-zeroes", OptionType::kBool, "off", "zero the read buffer"},
};
constexpr OptionSchema kNullCoSchema{"null-co", kSpecs};
constexpr OptionSchema kNullAioSchema{"null-aio", kSpecs};

class NullNode final : public NodeDriver {
 public:
  NullNode(Node& node, bool aio) : NodeDriver(node), aio_(aio) {}

  Task<absl::Status> Open(OpenContext& ctx) override {
    std::string uri = aio_ ? "null-aio://" : "null-co://";
    if (std::optional<std::string> f = ctx.values.FindString("filename"); f && *f != uri) {
      co_return ErrnoError(EINVAL, absl::StrFormat("The only allowed filename for this driver is "
                                                   "'%s'", uri));
    }
    node().set_filename(uri);
    size_ = static_cast<int64_t>(ctx.values.GetSize("size"));
    if (size_ > kMaxNullSize) co_return ErrnoError(EINVAL, "null: size is too large");
    latency_ns_ = ctx.values.GetInt("latency-ns");
    if (latency_ns_ < 0) co_return ErrnoError(EINVAL, "latency-ns is invalid");
    read_zeroes_ = ctx.values.GetBool("read-zeroes");
    caps_.write_zeroes = true;
    caps_.block_status = true;
    caps_.zero_flags = kReqMayUnmap | kReqNoFallback | kReqFua;
    caps_.write_flags = kReqFua;
    co_return absl::OkStatus();
  }

  absl::StatusOr<int64_t> GetLength() override { return size_; }
  absl::StatusOr<int64_t> GetAllocatedSize() override { return 0; }

  Task<absl::Status> Read(int64_t, int64_t bytes, const IoVec& qiov, ReqFlags) override {
    co_await Complete();
    if (read_zeroes_) qiov.Memset(0, 0, static_cast<size_t>(bytes));
    co_return absl::OkStatus();
  }
  Task<absl::Status> Write(int64_t, int64_t, const IoVec&, ReqFlags) override {
    co_await Complete();
    co_return absl::OkStatus();
  }
  Task<absl::Status> WriteZeroes(int64_t, int64_t, ReqFlags) override {
    co_await Complete();
    co_return absl::OkStatus();
  }
  Task<absl::Status> Flush() override {
    co_await Complete();
    co_return absl::OkStatus();
  }
  Task<absl::StatusOr<BlockStatus>> GetBlockStatus(int64_t offset, int64_t bytes, bool) override {
    BlockStatus s;
    s.flags = kStatusOffsetValid | (read_zeroes_ ? kStatusZero : 0);
    s.bytes = bytes;
    s.map = offset;
    s.file = nullptr;  // this node: the core names the queried edge
    co_return s;
  }
  void FillInfo(nlohmann::json& info) override { info["read-zeroes"] = read_zeroes_; }

 private:
  static constexpr int64_t kMaxNullSize = int64_t{1} << 62;

  Task<void> Complete() {
    if (latency_ns_ > 0) {
      co_await node().loop().Sleep(latency_ns_);
    } else if (aio_) {
      co_await node().loop().Yield();
    }
  }

  bool aio_;
  int64_t size_ = 0;
  int64_t latency_ns_ = 0;
  bool read_zeroes_ = false;
};

std::unique_ptr<NodeDriver> InstantiateCo(Node& node) { return std::make_unique<NullNode>(node, false); }
std::unique_ptr<NodeDriver> InstantiateAio(Node& node) { return std::make_unique<NullNode>(node, true); }

absl::Status ParseFilename(std::string_view filename, Options& options) {
  options.Set("filename", std::string(filename));
  return absl::OkStatus();
}

}  // namespace

// Options that change the data, as qemu-img's json: names show them (see Driver).
constexpr std::string_view kStrongOptions[] = {"filename", "size", "read-zeroes"};

const Driver kNullCoDriver = {
    .name = "null-co",
    .kind = DriverKind::kProtocol,
    .protocol_prefix = "null-co",
    .options = &kNullCoSchema,
    .instantiate = InstantiateCo,
    .parse_filename = ParseFilename,
    .strong_options = kStrongOptions,
};

const Driver kNullAioDriver = {
    .name = "null-aio",
    .kind = DriverKind::kProtocol,
    .protocol_prefix = "null-aio",
    .options = &kNullAioSchema,
    .instantiate = InstantiateAio,
    .parse_filename = ParseFilename,
    .strong_options = kStrongOptions,
};

}  // namespace libblock::null
