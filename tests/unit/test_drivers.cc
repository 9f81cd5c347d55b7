#include "test_drivers.h"

#include <cerrno>
#include <cstring>
#include <list>
#include <optional>
#include <vector>

#include "absl/strings/str_format.h"
#include "core/event_loop.h"
#include "core/graph.h"
#include "core/mapping.h"
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
  int fail_writes_ = 0;  // the next this many writes fail with EIO
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
    if (fail_writes_ > 0) {
      --fail_writes_;
      co_return ErrnoError(EIO, "test-proto: injected write error");
    }
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

void FailNextWrites(Node& node, int count) {
  auto* p = dynamic_cast<TestProto*>(node.impl());
  if (!p) std::abort();
  p->fail_writes_ = count;
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


constexpr std::string_view kCodecs[] = {"none", "deflate", "zlib", "zstd"};
constexpr OptionSpec kMapSpecs[] = {
    {"size", OptionType::kSize, "1M", "guest size"},
    {"cluster-size", OptionType::kSize, "64k", "cluster size"},
    {"subclusters", OptionType::kInt, "1", "subclusters per cluster (1..32)"},
    {"codec", OptionType::kEnum, "none", "codec of compressed writes", kCodecs},
    {"zero-clusters", OptionType::kBool, "on", "ZeroClusters works (else ENOTSUP)"},
    {"max-alloc", OptionType::kInt, "0", "clusters per allocation (0: no limit)"},
    {"metadata", OptionType::kSize, "0", "host bytes that CheckDataWrite protects"},
    {"bad-alloc", OptionType::kBool, "off", "allocations point at host offset 0"},
    {"encrypt", OptionType::kBool, "off", "512-byte XOR sectors keyed by host offset"},
    {"backing-file", OptionType::kString, "", "backing file"},
    {"backing-fmt", OptionType::kString, "", "backing format"},
};
constexpr OptionSchema kMapSchema{"test-map", kMapSpecs};

class TestMap final : public MappingDriver {
 public:
  using MappingDriver::MappingDriver;
  using Kind = TestMapEntry::Kind;

  Task<absl::Status> Open(OpenContext& ctx) override {
    absl::StatusOr<Child*> file = co_await ctx.OpenChild("file", kRoleImage | kRolePrimary, false);
    if (!file.ok()) co_return file.status();
    file_ = *file;
    size_ = ctx.values.GetSize("size");
    geometry_.cluster_size = ctx.values.GetSize("cluster-size");
    int64_t subs = ctx.values.GetInt("subclusters");
    if (subs < 1 || subs > 32 || geometry_.cluster_size % subs) {
      co_return ErrnoError(EINVAL, "test-map: bad subclusters");
    }
    subclusters_ = static_cast<int>(subs);
    geometry_.subcluster_size = geometry_.cluster_size / subs;
    std::string codec = ctx.values.GetString("codec");
    codec_ = codec == "deflate" ? Codec::kDeflate
             : codec == "zlib"  ? Codec::kZlib
             : codec == "zstd"  ? Codec::kZstd
                                : Codec::kNone;
    zero_clusters_ = ctx.values.GetBool("zero-clusters");
    max_alloc_ = ctx.values.GetInt("max-alloc");
    metadata_ = ctx.values.GetSize("metadata");
    bad_alloc_ = ctx.values.GetBool("bad-alloc");
    encrypt_ = ctx.values.GetBool("encrypt");
    geometry_.crypt_sector = encrypt_ ? 512 : 0;
    table_.assign(static_cast<size_t>((size_ + geometry_.cluster_size - 1) / geometry_.cluster_size),
                  TestMapEntry{});
    tail_ = AlignUpTo(std::max(metadata_, file_->node()->size()), geometry_.cluster_size);
    BackingHeader header;
    if (auto f = ctx.values.FindString("backing-file")) header.filename = *f;
    if (auto f = ctx.values.FindString("backing-fmt")) header.format = *f;
    ctx.SetBacking(std::move(header));
    InitMapping(codec_ != Codec::kNone);
    co_return absl::OkStatus();
  }
  void RefreshLimits(BlockLimits& limits) override {
    if (encrypt_) limits.request_alignment = std::max<uint32_t>(limits.request_alignment, 512);
  }
  absl::StatusOr<int64_t> GetLength() override { return size_; }
  const MappingGeometry& geometry() const override { return geometry_; }
  Codec compression_codec() const override { return codec_; }

  Task<absl::StatusOr<Mapping>> Map(GuestOffset offset, int64_t bytes, bool for_write) override {
    ++stats_.maps;
    const int64_t cs = geometry_.cluster_size, unit = geometry_.subcluster_size;
    int64_t pos = offset.value(), end = pos + bytes;
    const TestMapEntry& first_entry = table_[static_cast<size_t>(pos / cs)];
    Mapping m;
    if (first_entry.kind == Kind::kCompressed) {
      int64_t c0 = pos / cs * cs;
      m.kind = MapKind::kCompressed;
      m.bytes = std::min(end, c0 + cs) - pos;
      m.child = file_;
      m.host = HostOffset(first_entry.host);
      m.codec = codec_;
      m.blob_bytes = first_entry.blob_bytes;
      m.blob_guest = GuestOffset(c0);
      m.blob_guest_bytes = cs;
      co_return m;
    }
    Unit first = UnitAt(pos / unit);
    int64_t unit_start = pos / unit * unit;
    int64_t run_end = unit_start + unit;
    while (run_end < end) {
      Unit u = UnitAt(run_end / unit);
      if (u.kind != first.kind || u.writable != first.writable) break;
      if (u.kind == MapKind::kData && u.host != first.host + (run_end - unit_start)) break;
      run_end += unit;
    }
    m.kind = first.kind;
    m.bytes = std::min(run_end, end) - pos;
    if (m.kind == MapKind::kData) {
      m.child = file_;
      m.host = HostOffset(first.host + (pos - unit_start));
      m.writable = first.writable;
      m.encrypted = encrypt_;
    }
    co_return m;
  }

  Task<absl::StatusOr<Allocation>> Allocate(GuestOffset offset, int64_t bytes) override {
    ++stats_.allocations;
    const int64_t cs = geometry_.cluster_size;
    int64_t c0 = offset.value() / cs;
    int64_t end = offset.value() + bytes;
    TestMapEntry& e = table_[static_cast<size_t>(c0)];
    auto cookie = std::make_shared<Cookie>();
    cookie->first_cluster = c0;
    Allocation a;
    a.child = file_;
    a.encrypted = encrypt_;
    if (subclusters_ > 1 && e.kind == Kind::kData && e.copied) {
      // More subclusters of a cluster we own: in place in its host cluster.
      a.offset = offset;
      a.bytes = std::min(end, (c0 + 1) * cs) - offset.value();
      a.host = HostOffset(e.host + offset.value() % cs);
    } else {
      // A new host cluster; one that replaces data must carry all of it over.
      bool widen = subclusters_ > 1 && (e.kind == Kind::kData || e.kind == Kind::kCompressed);
      int64_t start = widen ? c0 * cs : offset.value();
      int64_t n = 1;
      while ((c0 + n) * cs < end && (max_alloc_ == 0 || n < max_alloc_) && !widen) {
        const TestMapEntry& x = table_[static_cast<size_t>(c0 + n)];
        if (x.kind == Kind::kData && x.copied) break;
        if (subclusters_ > 1 && (x.kind == Kind::kData || x.kind == Kind::kCompressed)) break;
        ++n;
      }
      int64_t alloc_end = widen ? (c0 + 1) * cs : std::min(end, (c0 + n) * cs);
      int64_t host = AlignUpTo(tail_, cs);
      tail_ = host + n * cs;
      if (bad_alloc_) host = 0;
      cookie->new_host = host;
      a.offset = GuestOffset(start);
      a.bytes = alloc_end - start;
      a.host = HostOffset(host + start % cs);
      a.host_reads_zero = host >= file_->node()->size();
    }
    a.cookie = cookie;
    stats_.allocated.emplace_back(a.offset.value(), a.bytes);
    co_return a;
  }

  Task<absl::Status> Commit(Allocation& alloc) override {
    auto* cookie = static_cast<Cookie*>(alloc.cookie.get());
    const int64_t cs = geometry_.cluster_size, unit = geometry_.subcluster_size;
    if (cookie->compressed) {
      ++stats_.compressed_commits;
      TestMapEntry& e = table_[static_cast<size_t>(cookie->first_cluster)];
      e = TestMapEntry{};
      e.kind = Kind::kCompressed;
      e.host = alloc.host.value();
      e.blob_bytes = AlignUpTo(alloc.host.value() + alloc.stored_bytes, 512) - alloc.host.value();
      co_return absl::OkStatus();
    }
    ++stats_.commits;
    int64_t start = alloc.offset.value(), end = start + alloc.bytes;
    for (int64_t c = start / cs; c * cs < end; ++c) {
      TestMapEntry& e = table_[static_cast<size_t>(c)];
      int64_t from = std::max(start, c * cs) - c * cs, to = std::min(end, (c + 1) * cs) - c * cs;
      uint32_t covered = 0;
      for (int64_t u = from / unit; u * unit < to; ++u) covered |= 1u << u;
      if (cookie->new_host >= 0) {
        uint32_t keep_zero = e.kind == Kind::kZero ? AllUnits() : 0;
        if (e.kind == Kind::kData) keep_zero = e.zero_mask;
        uint32_t keep_alloc = 0;  // a replaced cluster was copied whole
        e.kind = Kind::kData;
        e.host = cookie->new_host + (c - cookie->first_cluster) * cs;
        e.copied = true;
        e.alloc_mask = keep_alloc | covered;
        e.zero_mask = keep_zero & ~covered;
      } else {
        e.alloc_mask |= covered;
        e.zero_mask &= ~covered;
      }
    }
    co_return absl::OkStatus();
  }

  Task<void> Abort(Allocation& alloc) override {
    ++stats_.aborts;
    co_return;
  }

  Task<absl::StatusOr<Allocation>> AllocateCompressed(GuestOffset offset,
                                                      int64_t stored_bytes) override {
    auto cookie = std::make_shared<Cookie>();
    cookie->compressed = true;
    cookie->first_cluster = offset.value() / geometry_.cluster_size;
    Allocation a;
    a.offset = offset;
    a.bytes = geometry_.cluster_size;
    a.child = file_;
    // Packed after whatever came last, as qcow2 packs compressed clusters.
    a.host = HostOffset(bad_alloc_ ? 0 : tail_);
    if (!bad_alloc_) tail_ += stored_bytes;
    a.stored_bytes = stored_bytes;
    a.cookie = cookie;
    co_return a;
  }

  Task<absl::Status> ZeroClusters(GuestOffset offset, int64_t bytes, bool may_unmap) override {
    ++stats_.zero_calls;
    if (!zero_clusters_) co_return ErrnoError(ENOTSUP, "test-map: no zero clusters");
    const int64_t cs = geometry_.cluster_size;
    for (int64_t c = offset.value() / cs; c * cs < offset.value() + bytes; ++c) {
      TestMapEntry& e = table_[static_cast<size_t>(c)];
      e = TestMapEntry{};
      e.kind = Kind::kZero;
    }
    co_return absl::OkStatus();
  }

  Task<absl::Status> DiscardClusters(GuestOffset offset, int64_t bytes) override {
    ++stats_.discard_calls;
    const int64_t cs = geometry_.cluster_size;
    for (int64_t c = offset.value() / cs; c * cs < offset.value() + bytes; ++c) {
      table_[static_cast<size_t>(c)] = TestMapEntry{};
    }
    co_return absl::OkStatus();
  }

  absl::Status Encrypt(GuestOffset, HostOffset host, std::span<uint8_t> buf) override {
    return Xor(host, buf);
  }
  absl::Status Decrypt(GuestOffset, HostOffset host, std::span<uint8_t> buf) override {
    return Xor(host, buf);
  }

  absl::Status CheckDataWrite(const Child& child, HostOffset host, int64_t bytes) override {
    if (host.value() < metadata_) {
      return ErrnoError(EIO, absl::StrFormat("test-map: data write at host offset %d would "
                                             "overwrite metadata", host.value()));
    }
    return absl::OkStatus();
  }
  absl::Status ReportCorruption(absl::Status problem) override {
    ++stats_.corruptions;
    return problem;
  }

  TestMapStats stats_;
  std::vector<TestMapEntry> table_;

 private:
  struct Unit {
    MapKind kind = MapKind::kUnallocated;
    int64_t host = -1;
    bool writable = false;
  };
  struct Cookie {
    int64_t first_cluster = 0;
    int64_t new_host = -1;  // a new host cluster run, or -1: in place
    bool compressed = false;
  };
  static int64_t AlignUpTo(int64_t v, int64_t a) { return (v + a - 1) / a * a; }
  uint32_t AllUnits() const {
    return subclusters_ == 32 ? 0xffffffffu : (1u << subclusters_) - 1;
  }
  // The state of one subcluster (one cluster without subclusters); not for compressed ones.
  Unit UnitAt(int64_t index) const {
    const TestMapEntry& e = table_[static_cast<size_t>(index / subclusters_)];
    int sub = static_cast<int>(index % subclusters_);
    Unit u;
    switch (e.kind) {
      case Kind::kUnallocated: break;
      case Kind::kZero: u.kind = MapKind::kZero; break;
      case Kind::kCompressed: u.kind = MapKind::kCompressed; break;
      case Kind::kData:
        if (subclusters_ == 1 || (e.alloc_mask >> sub) & 1) {
          u.kind = MapKind::kData;
          u.host = e.host + sub * geometry_.subcluster_size;
          u.writable = e.copied;
        } else if ((e.zero_mask >> sub) & 1) {
          u.kind = MapKind::kZero;
        }
        break;
    }
    return u;
  }
  absl::Status Xor(HostOffset host, std::span<uint8_t> buf) const {
    if (host.value() % 512 || buf.size() % 512) return ErrnoError(EIO, "test-map: unaligned crypt");
    for (size_t i = 0; i < buf.size(); ++i) {
      int64_t sector = (host.value() + static_cast<int64_t>(i)) / 512;
      buf[i] ^= static_cast<uint8_t>(sector * 131 + (i % 512) * 7 + 0x5a);
    }
    return absl::OkStatus();
  }

  Child* file_ = nullptr;
  MappingGeometry geometry_;
  int64_t size_ = 0;
  int subclusters_ = 1;
  Codec codec_ = Codec::kNone;
  bool zero_clusters_ = true;
  int64_t max_alloc_ = 0;
  int64_t metadata_ = 0;
  bool bad_alloc_ = false;
  bool encrypt_ = false;
  int64_t tail_ = 0;  // the end of what was allocated in the file
};

TestMap& TestMapOf(Node& node) {
  auto* m = dynamic_cast<TestMap*>(node.impl());
  if (!m) std::abort();
  return *m;
}

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
const Driver kTestMap = {
    .name = "test-map",
    .kind = DriverKind::kFormat,
    .options = &kMapSchema,
    .instantiate = [](Node& n) -> std::unique_ptr<NodeDriver> { return std::make_unique<TestMap>(n); },
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

TestMapEntry& MapEntryOf(Node& node, int64_t cluster_index) {
  return TestMapOf(node).table_.at(static_cast<size_t>(cluster_index));
}
TestMapStats& MapStatsOf(Node& node) { return TestMapOf(node).stats_; }
void ShareAllClusters(Node& node) {
  for (TestMapEntry& e : TestMapOf(node).table_) {
    if (e.kind == TestMapEntry::Kind::kData) e.copied = false;
  }
}

const Registry& TestRegistry() {
  static const Registry registry = [] {
    std::vector<const Driver*> drivers = Registry::Builtin().drivers();
    drivers.push_back(&kTestProto);
    drivers.push_back(&kTestFmt);
    drivers.push_back(&kTestDelay);
    drivers.push_back(&kTestMap);
    return Registry(drivers);
  }();
  return registry;
}

}  // namespace libblock::testing
