#include "test_drivers.h"

#include <cerrno>
#include <cstring>
#include <list>
#include <optional>
#include <vector>

#include "absl/strings/str_format.h"
#include "core/event_loop.h"
#include "core/graph.h"
#include "core/node.h"
#include "util/status.h"

namespace libblock::testing {
namespace {

bool g_refuse_all = false;
int g_prepare_reopen_calls = 0;
std::string g_last_reopen_changes;
TestProtoStats g_last_closed;

constexpr OptionSpec kProtoSpecs[] = {
    {"filename", OptionType::kString, "", "ignored"},
    {"size", OptionType::kSize, "1M", "size"},
    {"veto", OptionType::kInt, "0", "permission bits to refuse"},
    {"align", OptionType::kInt, "1", "request alignment"},
    {"max-transfer", OptionType::kInt, "0", "max transfer"},
    {"fua", OptionType::kBool, "off", "declare FUA support"},
    {"has-zeroes", OptionType::kBool, "off", "implement write-zeroes"},
    {"has-discard", OptionType::kBool, "off", "implement discard"},
    {"serialise-writes", OptionType::kBool, "off", "declare that overlapping writes must not overlap in time"},
    {"write-latency-ns", OptionType::kInt, "0", "time each write takes"},
    {"compress", OptionType::kBool, "off", "declare compressed-write support"},
};
constexpr OptionSchema kProtoSchema{"test-proto", kProtoSpecs};

}  // namespace

class TestProto final : public NodeDriver {
 public:
  using NodeDriver::NodeDriver;
  ~TestProto() override { g_last_closed = stats_; }
  Task<absl::Status> Open(OpenContext& ctx) override {
    data_.assign(ctx.values.GetSize("size"), 0);
    veto_ = static_cast<Perm>(ctx.values.GetInt("veto"));
    align_ = static_cast<uint32_t>(ctx.values.GetInt("align"));
    max_transfer_ = ctx.values.GetInt("max-transfer");
    caps_.truncate = true;
    caps_.write_zeroes = ctx.values.GetBool("has-zeroes");
    caps_.discard = ctx.values.GetBool("has-discard");
    caps_.write_flags = ctx.values.GetBool("fua") ? kReqFua : 0;
    if (ctx.values.GetBool("compress")) caps_.write_flags |= kReqCompressed;
    caps_.serialise_writes = ctx.values.GetBool("serialise-writes");
    write_latency_ns_ = ctx.values.GetInt("write-latency-ns");
    caps_.zero_flags = kReqMayUnmap | kReqNoFallback;
    co_return absl::OkStatus();
  }
  void RefreshLimits(BlockLimits& limits) override {
    limits.request_alignment = align_;
    limits.max_transfer = max_transfer_;
  }
  void Note(int64_t offset, int64_t bytes) {
    if (offset % align_ || bytes % align_ || (max_transfer_ && bytes > max_transfer_)) ++stats_.misaligned;
    stats_.largest = std::max(stats_.largest, bytes);
  }
  Task<absl::Status> WriteZeroes(int64_t offset, int64_t bytes, ReqFlags) override {
    ++stats_.zero_writes;
    stats_.zero_ranges.emplace_back(offset, bytes);
    if (offset % align_ || bytes % align_) ++stats_.misaligned;
    if (offset + bytes > static_cast<int64_t>(data_.size())) data_.resize(offset + bytes);
    std::fill(data_.begin() + offset, data_.begin() + offset + bytes, 0);
    co_return absl::OkStatus();
  }
  Task<absl::Status> Discard(int64_t offset, int64_t bytes) override {
    ++stats_.discards;
    if (offset % align_ || bytes % align_) ++stats_.misaligned;
    co_return absl::OkStatus();
  }
  Task<absl::Status> Flush() override {
    ++stats_.flushes;
    stats_.flushed_since_truncate = true;
    co_return absl::OkStatus();
  }
  TestProtoStats stats_;
  std::vector<uint8_t> data_;
  absl::Status PreparePerm(Perm perm, Perm, Transaction&) override {
    if (g_refuse_all) return ErrnoError(EPERM, "test-proto refuses every permission change");
    if (perm & veto_) {
      return ErrnoError(EPERM, absl::StrFormat("test-proto vetoes '%s'", PermNames(perm & veto_)));
    }
    return absl::OkStatus();
  }
  absl::StatusOr<int64_t> GetLength() override { return static_cast<int64_t>(data_.size()); }
  Task<absl::Status> Read(int64_t offset, int64_t bytes, const IoVec& qiov, ReqFlags) override {
    ++stats_.reads;
    Note(offset, bytes);
    int64_t avail = std::max<int64_t>(0, std::min<int64_t>(bytes, data_.size() - offset));
    if (avail > 0) qiov.CopyFrom(0, data_.data() + offset, static_cast<size_t>(avail));
    if (avail < bytes) qiov.Memset(static_cast<size_t>(avail), 0, static_cast<size_t>(bytes - avail));
    co_return absl::OkStatus();
  }
  Task<absl::Status> Write(int64_t offset, int64_t bytes, const IoVec& qiov, ReqFlags flags) override {
    ++stats_.writes;
    stats_.write_flags.push_back(flags);
    Note(offset, bytes);
    // Record whether another write to an overlapping range is inside the driver right now.
    for (const auto& [o, b] : active_writes_) {
      if (o < offset + bytes && offset < o + b) ++stats_.overlapping_in_flight;
    }
    auto me = active_writes_.emplace(active_writes_.end(), offset, bytes);
    if (write_latency_ns_ > 0) co_await node().loop().Sleep(write_latency_ns_);
    active_writes_.erase(me);
    if (offset + bytes > static_cast<int64_t>(data_.size())) data_.resize(offset + bytes);
    qiov.CopyTo(0, data_.data() + offset, static_cast<size_t>(bytes));
    co_return absl::OkStatus();
  }
  Task<absl::Status> Truncate(int64_t size, bool, PreallocMode, ReqFlags) override {
    ++stats_.truncates;
    stats_.flushed_since_truncate = false;
    data_.resize(static_cast<size_t>(size));
    co_return absl::OkStatus();
  }

 private:
  Perm veto_ = 0;
  uint32_t align_ = 1;
  int64_t write_latency_ns_ = 0;
  std::list<std::pair<int64_t, int64_t>> active_writes_;
  int64_t max_transfer_ = 0;
};

TestProtoStats& StatsOf(Node& node) {
  auto* p = dynamic_cast<TestProto*>(node.impl());
  if (!p) std::abort();
  return p->stats_;
}

std::vector<uint8_t>& DataOf(Node& node) {
  auto* p = dynamic_cast<TestProto*>(node.impl());
  if (!p) std::abort();
  return p->data_;
}

namespace {

constexpr std::string_view kRoles[] = {"image", "data", "metadata"};
constexpr OptionSpec kFmtSpecs[] = {
    {"role", OptionType::kEnum, "image", "role of the file child", kRoles},
    {"alloc", OptionType::kBool, "off", "track allocation per 512-byte sector (see header)"},
    {"recurse", OptionType::kBool, "off", "alloc: report allocated sectors with kStatusRecurse"},
    {"compressed", OptionType::kBool, "off", "alloc: report allocated sectors as compressed"},
    {"zero-init", OptionType::kBool, "off", "the driver's has-zero-init answer"},
    {"backing-file", OptionType::kString, "", "backing file named by the 'header'"},
    {"backing-fmt", OptionType::kString, "", "backing format named by the 'header'"},
    {"reopen-mark", OptionType::kBool, "off",
     "a read-write -> read-only reopen writes \"clean\" at offset 0 of the file, after a sleep"},
    {"reopen-fail", OptionType::kBool, "off", "PrepareReopen fails, after suspending"},
};
constexpr OptionSchema kFmtSchema{"test-fmt", kFmtSpecs};

constexpr std::string_view kHeaderMagic = "LBTESTFMT\n";

class TestFmt final : public NodeDriver {
 public:
  using NodeDriver::NodeDriver;
  Task<absl::Status> Open(OpenContext& ctx) override {
    std::string r = ctx.values.GetString("role");
    ChildRole role = r == "data" ? kRoleData : r == "metadata" ? kRoleMetadata : kRoleImage;
    absl::StatusOr<Child*> file = co_await ctx.OpenChild("file", role | kRolePrimary, false);
    if (!file.ok()) co_return file.status();
    file_ = *file;
    // The "header": the file's first bytes when they start with the magic (lines
    // "backing=NAME", "backing-fmt=FMT"), or the backing-file/backing-fmt options.
    BackingHeader header;
    char buf[512] = {};
    int64_t n = std::min<int64_t>(sizeof(buf), file_->node()->size());
    if (n > 0) {
      absl::Status st = co_await file_->Pread(0, buf, n);
      if (!st.ok()) co_return st;
    }
    std::string_view text(buf, static_cast<size_t>(n));
    if (text.substr(0, kHeaderMagic.size()) == kHeaderMagic) {
      text.remove_prefix(kHeaderMagic.size());
      while (!text.empty()) {
        size_t eol = text.find('\n');
        if (eol == std::string_view::npos) break;
        std::string_view line = text.substr(0, eol);
        text.remove_prefix(eol + 1);
        if (line.substr(0, 8) == "backing=") header.filename = std::string(line.substr(8));
        if (line.substr(0, 12) == "backing-fmt=") header.format = std::string(line.substr(12));
      }
    }
    if (auto f = ctx.values.FindString("backing-file")) header.filename = *f;
    if (auto f = ctx.values.FindString("backing-fmt")) header.format = *f;
    reopen_mark_ = ctx.values.GetBool("reopen-mark");
    reopen_fail_ = ctx.values.GetBool("reopen-fail");
    ctx.SetBacking(std::move(header));
    zero_init_ = ctx.values.GetBool("zero-init");
    if (ctx.values.GetBool("alloc")) {
      alloc_.emplace((file_->node()->size() + kSector - 1) / kSector, false);
      recurse_ = ctx.values.GetBool("recurse");
      compressed_ = ctx.values.GetBool("compressed");
      caps_.block_status = true;
    }
    co_return absl::OkStatus();
  }
  bool CanReopenOption(std::string_view name) const override {
    return name == "reopen-mark" || name == "reopen-fail";
  }
  // Suspends (a sleep, then a write to the file while its edge still allows it), as qcow2's
  // cache flush and dirty-bit clearing will.
  Task<absl::Status> PrepareReopen(const ReopenState& state, Transaction& tran) override {
    bool mark = state.values.GetBool("reopen-mark");
    bool fail = state.values.GetBool("reopen-fail");
    ++g_prepare_reopen_calls;
    g_last_reopen_changes = state.changed.ToString();
    if (mark && !state.was_read_only && state.flags.read_only) {
      co_await node().loop().Sleep(1000000);
      absl::Status st = co_await file_->Pwrite(0, "clean", 5);
      if (!st.ok()) co_return st;
    }
    if (fail) {
      co_await node().loop().Yield();
      co_return ErrnoError(EIO, "test-fmt refuses the reopen");
    }
    tran.OnCommit([this, mark, fail] {
      reopen_mark_ = mark;
      reopen_fail_ = fail;
    });
    co_return absl::OkStatus();
  }
  void RefreshLimits(BlockLimits& limits) override {
    if (alloc_) limits.request_alignment = std::max<uint32_t>(limits.request_alignment, kSector);
  }
  bool HasZeroInit() override { return zero_init_; }
  absl::StatusOr<int64_t> GetLength() override { return file_->node()->size(); }
  Task<absl::Status> Read(int64_t o, int64_t b, const IoVec& q, ReqFlags f) override {
    if (!alloc_) co_return co_await file_->Read(o, b, q, f);
    for (int64_t done = 0; done < b;) {
      int64_t pos = o + done;
      bool allocated = false;
      int64_t len = Run(pos, b - done, &allocated);
      IoVec part = q.Slice(static_cast<size_t>(done), static_cast<size_t>(len));
      if (allocated) {
        LB_CO_RETURN_IF_ERROR(co_await file_->Read(pos, len, part, f));
      } else if (backing() && pos < backing()->node()->size()) {
        int64_t from_backing = std::min(len, backing()->node()->size() - pos);
        IoVec head = part.Slice(0, static_cast<size_t>(from_backing));
        LB_CO_RETURN_IF_ERROR(co_await backing()->Read(pos, from_backing, head, f));
        if (from_backing < len) {
          part.Memset(static_cast<size_t>(from_backing), 0, static_cast<size_t>(len - from_backing));
        }
      } else {
        part.Memset(0, 0, static_cast<size_t>(len));
      }
      done += len;
    }
    co_return absl::OkStatus();
  }
  Task<absl::Status> Write(int64_t o, int64_t b, const IoVec& q, ReqFlags f) override {
    LB_CO_RETURN_IF_ERROR(co_await file_->Write(o, b, q, f));
    if (alloc_) {
      for (int64_t s = o / kSector; s < (o + b + kSector - 1) / kSector; ++s) {
        if (s < static_cast<int64_t>(alloc_->size())) (*alloc_)[s] = true;
      }
    }
    co_return absl::OkStatus();
  }
  Task<absl::StatusOr<BlockStatus>> GetBlockStatus(int64_t o, int64_t b, bool) override {
    BlockStatus s;
    bool allocated = false;
    s.bytes = Run(o, b, &allocated);
    if (allocated && compressed_) {
      s.flags = kStatusData | kStatusCompressed;
    } else if (allocated) {
      s.flags = kStatusData | kStatusOffsetValid | (recurse_ ? kStatusRecurse : 0);
      s.map = o;
      s.file = file_;
    }
    co_return s;
  }

 private:
  static constexpr int64_t kSector = 512;
  // The backing child, opened by the core after Open (none with backing=null or no_backing).
  Child* backing() const { return node().FindChild("backing"); }
  // The length of the run of sectors from `pos` (at most `max`) that share one allocation
  // state, and that state.
  int64_t Run(int64_t pos, int64_t max, bool* allocated) const {
    auto at = [&](int64_t p) {
      size_t i = static_cast<size_t>(p / kSector);
      return i < alloc_->size() && (*alloc_)[i];
    };
    *allocated = at(pos);
    int64_t end = pos;
    while (end < pos + max && at(end) == *allocated) end = (end / kSector + 1) * kSector;
    return std::min(end, pos + max) - pos;
  }

  Child* file_ = nullptr;
  std::optional<std::vector<bool>> alloc_;  // set with alloc=on: one entry per sector
  bool recurse_ = false;
  bool compressed_ = false;
  bool zero_init_ = false;
  bool reopen_mark_ = false;
  bool reopen_fail_ = false;
};

constexpr OptionSpec kDelaySpecs[] = {
    {"ns", OptionType::kInt, "1000000", "delay per request"},
};
constexpr OptionSchema kDelaySchema{"test-delay", kDelaySpecs};

class TestDelay final : public FilterDriver {
 public:
  using FilterDriver::FilterDriver;
  Task<absl::Status> Open(OpenContext& ctx) override {
    ns_ = ctx.values.GetInt("ns");
    co_return co_await OpenFiltered(ctx);
  }
  Task<absl::Status> Read(int64_t o, int64_t b, const IoVec& q, ReqFlags f) override {
    co_await node().loop().Sleep(ns_);
    co_return co_await FilterDriver::Read(o, b, q, f);
  }
  Task<absl::Status> Write(int64_t o, int64_t b, const IoVec& q, ReqFlags f) override {
    co_await node().loop().Sleep(ns_);
    co_return co_await FilterDriver::Write(o, b, q, f);
  }

 private:
  int64_t ns_ = 0;
};

const Driver kTestProto = {
    .name = "test-proto",
    .kind = DriverKind::kProtocol,
    .protocol_prefix = "test-proto",
    .options = &kProtoSchema,
    .instantiate = [](Node& n) -> std::unique_ptr<NodeDriver> { return std::make_unique<TestProto>(n); },
};
const Driver kTestFmt = {
    .name = "test-fmt",
    .kind = DriverKind::kFormat,
    .options = &kFmtSchema,
    .instantiate = [](Node& n) -> std::unique_ptr<NodeDriver> { return std::make_unique<TestFmt>(n); },
};
const Driver kTestDelay = {
    .name = "test-delay",
    .kind = DriverKind::kFilter,
    .options = &kDelaySchema,
    .instantiate = [](Node& n) -> std::unique_ptr<NodeDriver> { return std::make_unique<TestDelay>(n); },
};

}  // namespace

void SetTestProtoRefuseAll(bool refuse) { g_refuse_all = refuse; }

int TestFmtPrepareReopenCalls() { return g_prepare_reopen_calls; }
const std::string& TestFmtLastReopenChanges() { return g_last_reopen_changes; }

const TestProtoStats& LastClosedStats() { return g_last_closed; }

const Registry& TestRegistry() {
  static const Registry registry = [] {
    std::vector<const Driver*> drivers = Registry::Builtin().drivers();
    drivers.push_back(&kTestProto);
    drivers.push_back(&kTestFmt);
    drivers.push_back(&kTestDelay);
    return Registry(drivers);
  }();
  return registry;
}

}  // namespace libblock::testing
