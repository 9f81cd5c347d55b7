// blkimg convert: qemu-img convert [--object OBJ] [--image-opts] [--target-image-opts]
//     [--target-is-zero] [-U] [-C] [-c] [-p] [-q] [-n] [-f FMT] [-t CACHE] [-T SRC_CACHE]
//     [-O OUTPUT_FMT] [-B BACKING [-F BACKING_FMT]] [-o OPTIONS] [-l SNAPSHOT] [-S SPARSE_SIZE]
//     [-m NUM] [-W] [--salvage] FILENAME [FILENAME2 ...] OUTPUT_FILENAME
//
// The sources are concatenated (each padded to a whole 512-byte sector, as qemu-img does) into
// the target. The copy walks the sources' block status: ranges that read as zeroes are skipped
// when the target is known to read as zeroes, else written as zeroes (may-unmap); data is read
// in chunks of at most 2 MiB and, unless -S 0, scanned for runs of zero sectors that are
// treated like zero ranges. Up to -m chunks are in flight through the async API; without -W
// their writes are issued in target order, one chunk at a time.

#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <deque>
#include <ctime>
#include <memory>
#include <optional>

#include "common.h"

namespace blkimg {
namespace {

constexpr uint64_t kSector = 512;
constexpr uint64_t kChunkBytes = 2 * 1024 * 1024;  // qemu-img's IO_BUF_SIZE
// Zero runs inside data are only cut at 4 KiB boundaries (in sectors), so that the writes
// that remain stay aligned for the target.
constexpr uint64_t kZeroAlignSectors = 8;
constexpr int64_t kMaxSparse = 16 * 1024 * 1024;

struct ConvertArgs {
  bool image_opts = false, target_image_opts = false, target_is_zero = false;
  bool force_share = false, copy_offload = false, compress = false, progress = false;
  bool quiet = false, no_create = false, out_of_order = false, salvage = false;
  bool bitmaps = false, skip_broken_bitmaps = false;
  std::string cache, src_cache = "writeback", format, out_format, backing, backing_format;
  std::vector<std::string> options;
  SnapshotParam snapshot;  // -l
  std::vector<std::string> files;
};

// The effective numeric settings, validated.
struct Settings {
  uint64_t min_sparse_sectors = 8;  // 0: no sparse detection, write everything
  unsigned coroutines = 8;
  uint64_t rate_limit = 0;  // -r: bytes per second, 0 for no limit
};

// ---- zero-run detection ---------------------------------------------------------------------

bool SectorIsZero(const uint8_t* p, size_t len) {
  for (size_t i = 0; i < len; ++i) {
    if (p[i]) return false;
  }
  return true;
}

struct ScanResult {
  bool data;
  uint64_t sectors;
};

// The run of sectors at the start of `buf` (`n` sectors, the last possibly short, target
// sector `first`) that are all zero or all not, with the run's end moved to a 4 KiB boundary:
// data runs grow up to it, zero runs shrink down to it (and zero runs that would vanish count
// as data).
ScanResult ScanRun(const uint8_t* buf, uint64_t n, uint64_t bytes, uint64_t first) {
  auto sector_zero = [&](uint64_t i) {
    uint64_t off = i * kSector;
    return SectorIsZero(buf + off, std::min(kSector, bytes - off));
  };
  bool zero = sector_zero(0);
  uint64_t i = 1;
  while (i < n && sector_zero(i) == zero) ++i;
  if (i == n) return {!zero, n};
  uint64_t tail = (first + i) % kZeroAlignSectors;
  if (tail) {
    if (zero && i <= tail) zero = false;
    if (!zero) {
      i = std::min(i + kZeroAlignSectors - tail, n);
    } else {
      i -= tail;
    }
  }
  return {!zero, i};
}

// Like ScanRun, but zero runs shorter than `min` sectors that follow data are absorbed into
// the data run, so that small holes do not split writes.
ScanResult ScanRunMin(const uint8_t* buf, uint64_t n, uint64_t bytes, uint64_t first, uint64_t min) {
  min = std::min(min, n);
  ScanResult run = ScanRun(buf, n, bytes, first);
  if (!run.data) return run;
  uint64_t used = run.sectors, checked = run.sectors;
  while (checked < n) {
    uint64_t off = checked * kSector;
    ScanResult next = ScanRun(buf + off, n - checked, bytes - off, first + checked);
    checked += next.sectors;
    if (next.data) {
      used = checked;
    } else if (next.sectors >= min) {
      break;
    }
  }
  return {true, used};
}

// ---- the copy -------------------------------------------------------------------------------

struct Source {
  lb_backend* be = nullptr;
  uint64_t size = 0;    // bytes
  uint64_t padded = 0;  // size rounded up to a sector: its share of the target
};

// kBacking: the target's backing file provides it (convert -B / -o backing_file): not written.
enum class ChunkKind { kData, kZero, kBacking };

// One piece of the target to produce.
struct Chunk {
  ChunkKind kind;
  uint64_t target_offset;
  uint64_t length;
  size_t source;
  uint64_t source_offset;
  // -c: a target cluster that continues into the next sources (read piece by piece).
  bool spans = false;
};

// Whether the format stores compressed clusters (qemu-img's block_driver_can_compress), asked
// before the target is created so that -c with another format creates nothing.
bool FormatCompresses(lb_context* ctx, const std::string& format) {
  char* names = lb_driver_list(ctx, LB_DRIVER_FORMATS | LB_DRIVER_COMPRESSED);
  if (!names) return false;
  std::string list = std::string(" ") + names + " ";
  lb_free(names);
  return list.find(" " + format + " ") != std::string::npos;
}

// Walks the sources' block status and cuts the target into chunks.
class Planner {
 public:
  // `cluster` (compressed conversion, -c): chunks are the target's clusters, each data when
  // any part of it is, since a compressed cluster is written whole.
  // `backed`: the target has a backing file, so only what the sources' top images provide is
  // copied and the rest left to it (qemu-img asks the top layer alone then).
  Planner(std::vector<Source>& sources, bool sparse, uint64_t cluster = 0, bool backed = false)
      : sources_(sources), sparse_(sparse), cluster_(cluster), backed_(backed) {}

  // The next chunk, or false at the end (or on error, with `error` set).
  bool Next(Chunk* chunk, std::string* error) {
    while (index_ < sources_.size() && offset_ >= sources_[index_].padded) {
      ++index_;
      offset_ = 0;
      status_end_ = 0;
    }
    if (index_ >= sources_.size()) return false;
    const Source& src = sources_[index_];
    ChunkKind kind;
    uint64_t end;
    if (cluster_ && offset_ < src.size && index_ + 1 < sources_.size() &&
        offset_ + (cluster_ - target_offset_ % cluster_) > src.padded) {
      // The cluster continues into the next sources: a compressed cluster is written whole,
      // so it is one data chunk read from each of them in turn (as qemu-img does).
      uint64_t length = cluster_ - target_offset_ % cluster_;
      *chunk = {ChunkKind::kData, target_offset_, 0, index_, offset_, true};
      while (length > 0 && index_ < sources_.size()) {
        uint64_t take = std::min(length, sources_[index_].padded - offset_);
        chunk->length += take;
        length -= take;
        offset_ += take;
        target_offset_ += take;
        if (offset_ >= sources_[index_].padded) {
          ++index_;
          offset_ = 0;
        }
      }
      status_end_ = 0;
      return true;
    }
    if (cluster_ && offset_ < src.size) {
      // Whole target clusters of one kind, up to a buffer's worth: the target compresses
      // the clusters of one write in parallel.
      end = std::min(src.padded, offset_ + (cluster_ - target_offset_ % cluster_));
      std::optional<ChunkKind> first = ClusterKind(src, offset_, end, error);
      if (!first) return false;
      kind = *first;
      while (end < src.padded && end - offset_ < kChunkBytes) {
        uint64_t next = std::min(src.padded, end + cluster_);
        // A last cluster that continues into the next source is a chunk of its own.
        if (next == src.padded && index_ + 1 < sources_.size() &&
            (target_offset_ + (next - offset_)) % cluster_ != 0) {
          break;
        }
        std::optional<ChunkKind> k = ClusterKind(src, end, next, error);
        if (!k) return false;
        if (*k != kind) break;
        end = next;
      }
    } else if (offset_ >= src.size) {
      kind = ChunkKind::kZero;  // the padding to a whole sector
      end = src.padded;
    } else {
      if (offset_ >= status_end_ && !QueryStatus(src, offset_, error)) return false;
      kind = status_data_      ? ChunkKind::kData
             : status_backing_ ? ChunkKind::kBacking
                               : ChunkKind::kZero;
      end = status_end_;
    }
    uint64_t length = end - offset_;
    // Data goes through a buffer; without sparse detection so do zeroes.
    if (kind == ChunkKind::kData || !sparse_) length = std::min(length, kChunkBytes);
    *chunk = {kind, target_offset_, length, index_, offset_};
    offset_ += length;
    target_offset_ += length;
    return true;
  }

 private:
  // -c: what the cluster [pos, end) of `src` is: data when any part of it is (it is written
  // whole), backing when all of it is the backing file's, else zero. nullopt on error.
  std::optional<ChunkKind> ClusterKind(const Source& src, uint64_t pos, uint64_t end,
                                       std::string* error) {
    bool data = false, all_backing = true;
    while (pos < end && pos < src.size && !data) {
      if (pos >= status_end_ && !QueryStatus(src, pos, error)) return std::nullopt;
      data = status_data_;
      all_backing &= status_backing_;
      pos = status_end_;
    }
    return data ? ChunkKind::kData : all_backing ? ChunkKind::kBacking : ChunkKind::kZero;
  }

  // Block status of `src` at `pos` into status_data_/status_end_.
  bool QueryStatus(const Source& src, uint64_t pos, std::string* error) {
    lb_extent ext = LB_EXTENT_INIT;
    int r = lb_block_status(src.be, pos, src.size - pos, 0, &ext);
    if (r < 0) {
      *error = "error while reading block status at offset " + std::to_string(pos) + ": " +
               LibError();
      return false;
    }
    // Above a backing file, what the top image does not decide (a lower layer does, or none)
    // is the backing file's.
    status_backing_ = backed_ && (ext.depth > 0 || !(ext.flags & LB_STATUS_ALLOCATED));
    status_data_ =
        !status_backing_ && (ext.flags & LB_STATUS_DATA) && !(ext.flags & LB_STATUS_ZERO);
    status_end_ = pos + ext.length;
    // A status ending inside the source's last sector covers the padding too.
    if (status_end_ >= src.size) status_end_ = src.padded;
    return true;
  }

  std::vector<Source>& sources_;
  bool sparse_;
  uint64_t cluster_;
  bool backed_;
  size_t index_ = 0;
  uint64_t offset_ = 0, target_offset_ = 0;
  uint64_t status_end_ = 0;
  bool status_data_ = false;
  bool status_backing_ = false;
};

// The bytes the copy reads and writes: what -p counts (qemu-img's "allocated sectors").
uint64_t CountCopiedBytes(std::vector<Source>& sources, bool sparse, bool backed) {
  Planner planner(sources, sparse, 0, backed);
  Chunk c;
  std::string error;
  uint64_t total = 0;
  while (planner.Next(&c, &error)) {
    if (c.kind == ChunkKind::kData || (!sparse && c.kind == ChunkKind::kZero)) total += c.length;
  }
  return total;
}

enum class Stage { kFree, kReading, kReadDone, kWriting };

// A chunk in flight with its buffer.
struct Slot {
  Stage stage = Stage::kFree;
  Chunk chunk{};
  uint64_t seq = 0;  // the chunk's position in target order
  std::vector<uint8_t> buf;
  int pending = 0;   // writes not yet completed
  bool is_data = false;
};

class Copier {
 public:
  Copier(Context& ctx, std::vector<Source>& sources, lb_backend* target, const Settings& s,
         bool target_zero, const ConvertArgs& a, uint64_t compress_cluster, bool backed)
      : ctx_(ctx),
        sources_(sources),
        target_(target),
        settings_(s),
        target_zero_(target_zero),
        args_(a),
        compress_cluster_(compress_cluster),
        backed_(backed),
        planner_(sources, s.min_sparse_sectors != 0, compress_cluster, backed),
        progress_(a.progress && !a.quiet, 1.0f),
        slots_(s.coroutines) {}

  int Run() {
    bool sparse = settings_.min_sparse_sectors != 0;
    // Progress is counted even without -p: SIGUSR1 asks for it.
    total_ = CountCopiedBytes(sources_, sparse, backed_);
    progress_.Set(0);
    lb_context_set_max_inflight(ctx_.get(), 1024);
    bool more = true;
    for (;;) {
      while (more && !failed_ && FreeSlot()) {
        Slot* slot = FreeSlot();
        std::string error;
        if (!planner_.Next(&slot->chunk, &error)) {
          more = false;
          if (!error.empty()) Fail(error);
          break;
        }
        slot->seq = next_seq_++;
        Start(slot);
      }
      IssueWrites();
      if (inflight_ == 0) {
        if (!more || failed_) break;
        continue;
      }
      Reap();
    }
    if (failed_) return 1;
    progress_.Set(100);
    progress_.End();
    return 0;
  }

 private:
  Slot* FreeSlot() {
    for (Slot& s : slots_) {
      if (s.stage == Stage::kFree) return &s;
    }
    return nullptr;
  }

  void Fail(const std::string& message) {
    if (!failed_) Error(message);
    failed_ = true;
  }

  void Start(Slot* slot) {
    const Chunk& c = slot->chunk;
    bool sparse = settings_.min_sparse_sectors != 0;
    slot->is_data = c.kind == ChunkKind::kData || (!sparse && c.kind == ChunkKind::kZero);
    if (c.kind == ChunkKind::kBacking) {
      slot->stage = Stage::kReadDone;
      return;
    }
    if (c.kind == ChunkKind::kZero) {
      if (!sparse) slot->buf.assign(c.length, 0);
      slot->stage = Stage::kReadDone;
      return;
    }
    if (c.spans) {
      // Rare (a cluster across a source boundary with -c): read synchronously, source by
      // source, each one's sector padding zeroed.
      slot->buf.assign(c.length, 0);
      size_t index = c.source;
      uint64_t offset = c.source_offset;
      for (uint64_t done = 0; done < c.length && index < sources_.size();) {
        const Source& piece = sources_[index];
        uint64_t take = std::min(c.length - done, piece.padded - offset);
        uint64_t readable = std::min(take, piece.size - std::min(piece.size, offset));
        if (readable > 0) {
          int r = lb_pread(piece.be, slot->buf.data() + done, readable, offset, 0);
          if (r < 0 && !args_.salvage) {
            ReadFailed(slot, r);
            return;
          }
          if (r < 0) {  // --salvage: the piece is copied as zeroes
            Error("warning: error while reading offset " + std::to_string(offset) + ": " +
                  strerror(-r));
          }
        }
        done += take;
        offset += take;
        if (offset >= piece.padded) {
          ++index;
          offset = 0;
        }
      }
      slot->stage = Stage::kReadDone;
      return;
    }
    const Source& src = sources_[c.source];
    uint64_t readable = std::min(c.length, src.size - std::min(src.size, c.source_offset));
    // The read fills the buffer; only the padding past the source's end is zeroed here.
    slot->buf.resize(c.length);
    std::fill(slot->buf.begin() + static_cast<ptrdiff_t>(readable), slot->buf.end(), 0);
    if (readable == 0) {
      slot->stage = Stage::kReadDone;
      return;
    }
    slot->stage = Stage::kReading;
    int r = lb_aio_pread(src.be, slot->buf.data(), readable, c.source_offset, 0, slot);
    if (r < 0) {
      ReadFailed(slot, r);
      return;
    }
    ++inflight_;
  }

  void ReadFailed(Slot* slot, int err) {
    std::string msg = "error while reading at byte " + std::to_string(slot->chunk.target_offset) +
                      ": " + strerror(-err);
    if (args_.salvage) {
      // Salvage, as qemu-img: the chunk is read again sector by sector, and only the sectors
      // that cannot be read are copied as zeroes, each with a warning.
      const Chunk& c = slot->chunk;
      const Source& src = sources_[c.source];
      uint64_t readable = std::min(c.length, src.size - std::min(src.size, c.source_offset));
      for (uint64_t off = 0; off < readable; off += kSector) {
        uint64_t n = std::min(kSector, readable - off);
        int r = lb_pread(src.be, slot->buf.data() + off, n, c.source_offset + off, 0);
        if (r < 0) {
          Error("warning: error while reading offset " + std::to_string(c.source_offset + off) +
                ": " + strerror(-r));
          std::fill_n(slot->buf.begin() + static_cast<ptrdiff_t>(off), n, 0);
        }
      }
      slot->stage = Stage::kReadDone;
      return;
    }
    Fail(msg);
    slot->stage = Stage::kFree;
  }

  // Submits the writes of chunks whose data is ready: in target order one chunk at a time,
  // or as they come with -W.
  void IssueWrites() {
    if (failed_) return;
    for (;;) {
      bool issued = false;
      for (Slot& s : slots_) {
        if (s.stage != Stage::kReadDone) continue;
        if (!args_.out_of_order && (s.seq != next_write_seq_ || writing_)) continue;
        SubmitWrites(&s);
        issued = true;
      }
      if (!issued || args_.out_of_order) return;
    }
  }

  // -r: holds the next chunk back until the bytes copied so far fit the rate, measured from
  // the start of the copy.
  void Throttle(uint64_t bytes) {
    if (settings_.rate_limit == 0) return;
    timespec now{};
    clock_gettime(CLOCK_MONOTONIC, &now);
    if (!throttle_started_) {
      throttle_start_ = now;
      throttle_started_ = true;
    }
    long double due = static_cast<long double>(throttled_bytes_) /
                      static_cast<long double>(settings_.rate_limit);
    long double elapsed = static_cast<long double>(now.tv_sec - throttle_start_.tv_sec) +
                          static_cast<long double>(now.tv_nsec - throttle_start_.tv_nsec) / 1e9L;
    if (due > elapsed) {
      long double wait = due - elapsed;
      timespec ts{static_cast<time_t>(wait),
                  static_cast<long>((wait - static_cast<long double>(static_cast<time_t>(wait))) * 1e9L)};
      while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
      }
    }
    throttled_bytes_ += bytes;
  }

  void SubmitWrites(Slot* slot) {
    const Chunk& c = slot->chunk;
    Throttle(c.length);
    slot->stage = Stage::kWriting;
    slot->pending = 0;
    writing_ = true;
    if (c.kind == ChunkKind::kBacking) {
      // Left to the target's backing file.
    } else if (!slot->is_data) {
      if (!target_zero_) SubmitZeroes(slot, c.target_offset, c.length);
    } else if (compress_cluster_) {
      // A cluster of zeroes is not stored (qemu-img convert -c), the others compressed whole,
      // each run of them in one write.
      uint64_t run = 0, run_start = 0;
      auto flush_run = [&] {
        if (run) SubmitData(slot, run_start, run, LB_REQ_COMPRESSED);
        run = 0;
      };
      for (uint64_t off = 0; off < c.length;) {
        uint64_t len = std::min(c.length - off,
                                compress_cluster_ - (c.target_offset + off) % compress_cluster_);
        if (!SectorIsZero(slot->buf.data() + off, len)) {
          if (!run) run_start = off;
          run += len;
        } else {
          flush_run();
          if (!target_zero_) SubmitZeroes(slot, c.target_offset + off, len);
        }
        off += len;
      }
      flush_run();
    } else if (settings_.min_sparse_sectors == 0) {
      SubmitData(slot, 0, c.length);
    } else {
      uint64_t sectors = (c.length + kSector - 1) / kSector;
      uint64_t first = c.target_offset / kSector;
      uint64_t done = 0;  // sectors
      while (done < sectors && !failed_) {
        uint64_t off = done * kSector;
        ScanResult run = ScanRunMin(slot->buf.data() + off, sectors - done, c.length - off,
                                     first + done, settings_.min_sparse_sectors);
        uint64_t len = std::min(run.sectors * kSector, c.length - off);
        if (run.data) {
          SubmitData(slot, off, len);
        } else if (!target_zero_) {
          SubmitZeroes(slot, c.target_offset + off, len);
        }
        done += run.sectors;
      }
    }
    if (slot->pending == 0) Finish(slot);
  }

  void SubmitData(Slot* slot, uint64_t buf_offset, uint64_t len, uint32_t flags = 0) {
    int r = lb_aio_pwrite(target_, slot->buf.data() + buf_offset, len,
                          slot->chunk.target_offset + buf_offset, flags, slot);
    if (r < 0) {
      WriteFailed(slot->chunk.target_offset + buf_offset, r);
      return;
    }
    ++slot->pending;
    ++inflight_;
  }

  void SubmitZeroes(Slot* slot, uint64_t offset, uint64_t len) {
    int r = lb_aio_pwrite_zeroes(target_, offset, len, LB_REQ_MAY_UNMAP, slot);
    if (r < 0) {
      WriteFailed(offset, r);
      return;
    }
    ++slot->pending;
    ++inflight_;
  }

  void WriteFailed(uint64_t offset, int err) {
    Fail("error while writing at byte " + std::to_string(offset) + ": " + strerror(-err));
  }

  void Finish(Slot* slot) {
    if (slot->is_data && total_) {
      copied_ += slot->chunk.length;
      progress_.Set(static_cast<float>(100.0 * static_cast<double>(copied_) /
                                        static_cast<double>(total_)));
    }
    if (!args_.out_of_order) {
      ++next_write_seq_;
      writing_ = false;
    }
    slot->stage = Stage::kFree;
  }

  void Reap() {
    lb_completion done[64];
    int n = lb_reap(ctx_.get(), 1, 64, -1, done);
    if (n < 0) {
      Fail(LibError());
      inflight_ = 0;
      return;
    }
    for (int i = 0; i < n; ++i) {
      --inflight_;
      Slot* slot = static_cast<Slot*>(done[i].user_data);
      if (slot->stage == Stage::kReading) {
        if (done[i].ret < 0) {
          ReadFailed(slot, done[i].ret);
        } else {
          slot->stage = Stage::kReadDone;
        }
        continue;
      }
      if (done[i].ret < 0) WriteFailed(slot->chunk.target_offset, done[i].ret);
      if (--slot->pending == 0) Finish(slot);
    }
  }

  Context& ctx_;
  std::vector<Source>& sources_;
  lb_backend* target_;
  Settings settings_;
  bool target_zero_;
  const ConvertArgs& args_;
  uint64_t compress_cluster_;  // -c: the target's cluster size
  bool backed_;                // the target has a backing file
  Planner planner_;
  Progress progress_;
  std::vector<Slot> slots_;
  uint64_t next_seq_ = 0, next_write_seq_ = 0;
  bool writing_ = false;
  int inflight_ = 0;
  bool failed_ = false;
  uint64_t total_ = 0, copied_ = 0;
  bool throttle_started_ = false;
  timespec throttle_start_{};
  uint64_t throttled_bytes_ = 0;
};

// ---- the command ----------------------------------------------------------------------------

// -m: qemu_strtol with base 0, the whole text, 1..16.
bool ParseCoroutines(const char* text, Settings* s) {
  char* end = nullptr;
  errno = 0;
  long v = strtol(text, &end, 0);
  if (errno || *end || end == text || v < 1 || v > 16) {
    Error("Invalid number of coroutines. Allowed number of coroutines is between 1 and 16");
    return false;
  }
  s->coroutines = static_cast<unsigned>(v);
  return true;
}

// -S: a size, a multiple of 512 up to 16 MiB (0: no sparse detection).
bool ParseSparse(const char* text, Settings* s) {
  std::optional<int64_t> v = CvtNum("buffer size for sparse output", text);
  if (!v) return false;
  if (*v % kSector || *v > kMaxSparse) {
    Error("Invalid buffer size for sparse output specified. Valid sizes are multiples of 512 "
          "up to 16777216. Select 0 to disable sparse detection (fully allocates output).");
    return false;
  }
  s->min_sparse_sectors = static_cast<uint64_t>(*v) / kSector;
  return true;
}

// Checks and creates the target (everything qemu-img does before opening it).
int CreateTarget(Context& ctx, const ConvertArgs& a, const std::string& out_format,
                 const std::string& target, uint64_t size) {
  int n = lb_create_options(ctx.get(), out_format.c_str(), target.c_str(), nullptr, 0);
  std::vector<lb_option_desc> descs(static_cast<size_t>(std::max(n, 0)));
  for (auto& d : descs) d.struct_size = sizeof(lb_option_desc);
  lb_create_options(ctx.get(), out_format.c_str(), target.c_str(), descs.data(), descs.size());
  bool has_backing = false;
  for (const lb_option_desc& d : descs) has_backing |= !strcmp(d.name, "backing_file");
  std::string opts = JoinOptions(a.options);
  if (!opts.empty() &&
      lb_create(ctx.get(), target.c_str(), out_format.c_str(), opts.c_str(), size,
                LB_CREATE_VALIDATE_ONLY) < 0) {
    // qemu-img reports option errors without the file name.
    std::string msg = LibError(), prefix = target + ": ";
    if (msg.rfind(prefix, 0) == 0) msg.erase(0, prefix.size());
    Error(msg);
    return 1;
  }
  if (!has_backing && !a.backing.empty()) {
    Error("Backing file not supported for file format '" + out_format + "'");
    return 1;
  }
  if (!has_backing && !a.backing_format.empty()) {
    Error("Backing file format not supported for file format '" + out_format + "'");
    return 1;
  }
  if (a.compress && !FormatCompresses(ctx.get(), out_format)) {
    Error("Compression not supported for this file format");
    return 1;
  }
  lb_options* o = nullptr;
  lb_options_new(&o);
  if (!opts.empty()) lb_options_parse(o, opts.c_str());
  // The target's size is the sources' (a "size" option does not change it).
  lb_options_set(o, "size", std::to_string(size).c_str());
  if (!a.backing.empty()) lb_options_set(o, "backing_file", a.backing.c_str());
  if (!a.backing_format.empty()) lb_options_set(o, "backing_fmt", a.backing_format.c_str());
  char* text = lb_options_to_string(o);
  lb_options_free(o);
  int r = lb_create(ctx.get(), target.c_str(), out_format.c_str(), text, size, 0);
  lb_free(text);
  if (r < 0) {
    std::string message = LibError(), prefix = target + ": ";
    if (message.rfind(prefix, 0) == 0) message.erase(0, prefix.size());
    Error(prefix + "error while converting " + out_format + ": " + message);
    return 1;
  }
  return 0;
}

void CloseAll(std::vector<Source>& sources) {
  for (Source& s : sources) lb_close(s.be);
  sources.clear();
}

int Run(Context& ctx, const ConvertArgs& a, const Settings& settings) {
  std::string out_format = a.out_format.empty() ? "raw" : a.out_format;
  if (a.target_is_zero && !a.no_create) {
    Error("--target-is-zero requires use of -n flag");
    return 1;
  }
  if (a.target_image_opts && !a.no_create) {
    Error("--target-image-opts requires use of -n flag");
    return 1;
  }
  if (a.skip_broken_bitmaps && !a.bitmaps) {
    Error("Use of --skip-broken-bitmaps requires --bitmaps");
    return 1;
  }
  std::string opts = JoinOptions(a.options);
  if (!opts.empty() && a.no_create) {
    Error("-o has no effect when skipping image creation");
    return 1;
  }
  size_t nsrc = a.files.empty() ? 0 : a.files.size() - 1;
  if (IsHelpOption(opts)) {
    return PrintCreateOptionsHelp(ctx, out_format, nsrc ? a.files.back().c_str() : nullptr);
  }
  if (nsrc < 1) {
    Error("Must specify image file name");
    return 1;
  }
  std::optional<uint32_t> src_cache = ParseCacheMode(a.src_cache);
  if (!src_cache) {
    Error("Invalid source cache option: " + a.src_cache);
    return 1;
  }
  uint32_t src_flags = *src_cache;
  if (a.force_share) src_flags |= LB_OPEN_FORCE_SHARE;
  std::vector<Source> sources;
  uint64_t total = 0;
  for (size_t i = 0; i < nsrc; ++i) {
    Source s;
    // qemu-img keeps others from writing or resizing the sources while it copies them.
    s.be = OpenBackend(ctx, {a.files[i], a.format, a.image_opts, 0}, src_flags);
    if (!s.be) {
      CloseAll(sources);
      return 1;
    }
    int64_t size = lb_get_size(s.be);
    if (size < 0) {
      Error("Could not get size of '" + a.files[i] + "': " + LibError());
      lb_close(s.be);
      CloseAll(sources);
      return 1;
    }
    s.size = static_cast<uint64_t>(size);
    s.padded = (s.size + kSector - 1) / kSector * kSector;
    total += s.padded;
    sources.push_back(s);
  }
  if (!a.snapshot.id_or_name.empty() && sources.size() > 1) {
    Error("No support for concatenating multiple snapshot");
    CloseAll(sources);
    return 1;
  }
  if (a.snapshot.given()) {
    if (!LoadSnapshotParam(a.snapshot, sources[0].be)) {
      CloseAll(sources);
      return 1;
    }
    // The snapshot's size is what is copied (qemu-img keeps the size the image had before
    // the snapshot was loaded, and copies past the snapshot's end when it was smaller).
    int64_t size = lb_get_size(sources[0].be);
    if (size < 0) {
      Error("Could not get size of '" + a.files[0] + "': " + LibError());
      CloseAll(sources);
      return 1;
    }
    total -= sources[0].padded;
    sources[0].size = static_cast<uint64_t>(size);
    sources[0].padded = (sources[0].size + kSector - 1) / kSector * kSector;
    total += sources[0].padded;
  }
  if (a.bitmaps) {
    Error("Source lacks bitmap support");
    CloseAll(sources);
    return 1;
  }
  const std::string& target = a.files.back();
  bool target_zero = a.target_is_zero;
  // Everything that can refuse the target is checked before it is created over.
  std::optional<uint32_t> target_cache = ParseCacheMode(a.cache.empty() ? "unsafe" : a.cache);
  if (!target_cache) {
    Error("Invalid cache option: " + a.cache);
    CloseAll(sources);
    return 1;
  }
  TargetGuard guard;
  if (!a.no_create) {
    if (lb_create_options(ctx.get(), out_format.c_str(), nullptr, nullptr, 0) == -EINVAL) {
      Error("Unknown file format '" + out_format + "'");
      CloseAll(sources);
      return 1;
    }
    if (!guard.Check(ctx, target, *target_cache) ||
        CreateTarget(ctx, a, out_format, target, total) != 0) {
      CloseAll(sources);
      return 1;
    }
  } else if (a.compress && !FormatCompresses(ctx.get(), out_format)) {
    Error("Compression not supported for this file format");
    CloseAll(sources);
    return 1;
  }
  uint32_t flags = LB_OPEN_RDWR | LB_OPEN_UNMAP | *target_cache;
  ImageSpec spec{target, a.target_image_opts ? "" : out_format, a.target_image_opts};
  lb_backend* out = OpenBackend(ctx, spec, flags);
  guard.Release();
  if (!out) {
    CloseAll(sources);
    return 1;
  }
  if (!a.no_create) {
    // Zero ranges of the source need no writes when the new image reads as zeroes.
    lb_node* node = nullptr;
    if (lb_backend_get_node(out, &node) == 0) {
      target_zero = lb_node_has_zero_init(node) == 1;
      lb_node_close(node);
    }
  }
  if (a.no_create) {
    int64_t size = lb_get_size(out);
    if (size >= 0 && static_cast<uint64_t>(size) < total) {
      Error("output file is smaller than input file");
      lb_close(out);
      CloseAll(sources);
      return 1;
    }
  }
  uint64_t compress_cluster = 0;
  if (a.compress) {
    // Compressed writes are whole clusters of the target.
    lb_node* node = nullptr;
    lb_image_info* info = nullptr;
    if (lb_backend_get_node(out, &node) == 0 && lb_node_get_info(node, 0, &info) == 0) {
      compress_cluster = info->cluster_size;
      lb_image_info_free(info);
    }
    if (node) lb_node_close(node);
    if (compress_cluster == 0) {
      Error("Compression not supported for this file format");
      lb_close(out);
      CloseAll(sources);
      return 1;
    }
  }
  // The target has a backing file (-B, -o backing_file): qemu-img's target_has_backing.
  bool backed = !a.backing.empty();
  if (!backed && !a.options.empty()) {
    lb_options* o = nullptr;
    lb_options_new(&o);
    backed = lb_options_parse(o, JoinOptions(a.options).c_str()) == 0 &&
             lb_options_get(o, "backing_file") != nullptr;
    lb_options_free(o);
  }
  Copier copier(ctx, sources, out, settings, target_zero, a, compress_cluster, backed);
  int ret = copier.Run();
  if (lb_close(out) < 0 && ret == 0) {
    Error(LibError());
    ret = 1;
  }
  CloseAll(sources);
  return ret;
}

}  // namespace

int RunConvert(int argc, char** argv) {
  Progress::InstallSignalHandler();
  static const option kLong[] = {
      BLKIMG_LONG_HELP,
      BLKIMG_LONG_OBJECT,
      BLKIMG_LONG_IMAGE_OPTS,
      BLKIMG_LONG_FORCE_SHARE,
      {"target-image-opts", no_argument, nullptr, kOptTargetImageOpts},
      {"salvage", no_argument, nullptr, kOptSalvage},
      {"target-is-zero", no_argument, nullptr, kOptTargetIsZero},
      {"bitmaps", no_argument, nullptr, kOptBitmaps},
      {"skip-broken-bitmaps", no_argument, nullptr, kOptSkipBrokenBitmaps},
      BLKIMG_LONG_END,
  };
  Context ctx;
  ConvertArgs a;
  Settings settings;
  for (;;) {
    int c = NextOption(argc, argv, ":hf:O:B:CcF:o:l:S:pt:T:qnm:Wr:U", kLong);
    if (c == -1) break;
    switch (c) {
      case 'h': PrintHelp(); return 0;
      case 'f': a.format = optarg; break;
      case 'O': a.out_format = optarg; break;
      case 'B': a.backing = optarg; break;
      case 'C': a.copy_offload = true; break;
      case 'c': a.compress = true; break;
      case 'F': a.backing_format = optarg; break;
      case 'o':
        if (!AddOptionList(optarg, &a.options)) return 1;
        break;
      case 'l':
        if (!ParseSnapshotParam(optarg, &a.snapshot)) return 1;
        break;
      case 'S':
        if (!ParseSparse(optarg, &settings)) return 1;
        break;
      case 'p': a.progress = true; break;
      case 't': a.cache = optarg; break;
      case 'T': a.src_cache = optarg; break;
      case 'q': a.quiet = true; break;
      case 'n': a.no_create = true; break;
      case 'm':
        if (!ParseCoroutines(optarg, &settings)) return 1;
        break;
      case 'W': a.out_of_order = true; break;
      case 'r': {
        std::optional<int64_t> v = CvtNum("rate limit", optarg);
        if (!v) return 1;
        settings.rate_limit = static_cast<uint64_t>(*v);
        break;
      }
      case 'U': a.force_share = true; break;
      case kOptObject:
        if (!ctx.AddObjects({optarg})) return 1;
        break;
      case kOptImageOpts: a.image_opts = true; break;
      case kOptTargetImageOpts: a.target_image_opts = true; break;
      case kOptSalvage: a.salvage = true; break;
      case kOptTargetIsZero: a.target_is_zero = true; break;
      case kOptBitmaps: a.bitmaps = true; break;
      case kOptSkipBrokenBitmaps: a.skip_broken_bitmaps = true; break;
      default: return 1;
    }
  }
  a.files.assign(argv + optind, argv + argc);
  return Run(ctx, a, settings);
}

}  // namespace blkimg
