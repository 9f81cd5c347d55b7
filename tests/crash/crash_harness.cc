// The power-cut replay harness (see crash_harness.h).
#include "crash_harness.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <map>
#include <catch2/catch.hpp>
#include <cstdlib>
#include <random>
#include <sstream>

#include "absl/strings/str_format.h"
#include "core/backend.h"
#include "core/node.h"
#include "core/snapshot.h"
#include "nlohmann/json.hpp"

namespace libblock::crash {

using blklogwrites::kFlagDiscard;
using blklogwrites::kFlagFlush;
using blklogwrites::ParsedLog;
using blklogwrites::Record;

std::string MakeData(uint8_t pattern, int64_t offset, int64_t bytes, bool constant) {
  std::string data(static_cast<size_t>(bytes), static_cast<char>(pattern));
  if (constant) return data;
  for (int64_t i = 0; i < bytes; ++i) {
    int64_t o = offset + i;
    // Never zero, different in every sector and from one write to the next.
    data[i] = static_cast<char>(1 + (pattern * 37 + (o >> 9) * 7 + o) % 255);
  }
  return data;
}

std::vector<GuestOp> MakeWorkload(const WorkloadConfig& cfg) {
  std::mt19937 rng(cfg.seed);
  auto uniform = [&](int64_t lo, int64_t hi) {  // [lo, hi]
    return std::uniform_int_distribution<int64_t>(lo, hi)(rng);
  };
  std::vector<GuestOp> ops;
  for (int i = 0; i < cfg.ops; ++i) {
    GuestOp op;
    int64_t r = uniform(0, 99);
    if (uniform(1, cfg.flush_every) == 1) {
      op.kind = GuestOp::kFlush;
      ops.push_back(op);
      continue;
    }
    if (cfg.snapshot_every && uniform(1, cfg.snapshot_every) == 1) {
      op.kind = GuestOp::kSnapshot;
      op.pattern = static_cast<uint8_t>(uniform(0, 255));
      ops.push_back(op);
      continue;
    }
    op.kind = r < 75 ? GuestOp::kWrite : r < 88 ? GuestOp::kZero : GuestOp::kDiscard;
    bool aligned = !cfg.unaligned || uniform(0, 2) == 0 || op.kind != GuestOp::kWrite;
    int64_t bytes = uniform(1, cfg.max_write);
    // Some writes are small (sub-cluster), some exactly a few clusters.
    if (uniform(0, 3) == 0) bytes = uniform(1, 8192);
    int64_t offset = uniform(0, cfg.disk_size - 1);
    if (aligned) {
      offset = offset / 512 * 512;
      bytes = std::max<int64_t>(512, bytes / 512 * 512);
    }
    bytes = std::min(bytes, cfg.disk_size - offset);
    if (bytes <= 0) continue;
    // Overlap: every fourth request lands on a range an earlier one used.
    if (!ops.empty() && uniform(0, 3) == 0) {
      const GuestOp& prev = ops[static_cast<size_t>(uniform(0, static_cast<int64_t>(ops.size()) - 1))];
      if (prev.kind != GuestOp::kFlush && prev.kind != GuestOp::kSnapshot) {
        offset = std::min(prev.offset + prev.bytes / 2, cfg.disk_size - 512);
        if (aligned) offset = offset / 512 * 512;
        bytes = std::min(bytes, cfg.disk_size - offset);
      }
    }
    op.offset = offset;
    op.bytes = bytes;
    op.pattern = static_cast<uint8_t>(uniform(1, 255));
    op.constant = cfg.constant_data;
    ops.push_back(op);
  }
  ops.push_back(GuestOp{.kind = GuestOp::kFlush});
  return ops;
}

namespace {

Node* FindFilter(Graph& graph) {
  for (Node* n : graph.nodes()) {
    if (n->driver().name == "blklogwrites") return n;
  }
  return nullptr;
}

uint64_t LoggedEntries(Node& filter) {
  nlohmann::json info;
  filter.impl()->FillInfo(info);
  return info["log-entries"].get<uint64_t>();
}

void Pwrite(int fd, const char* data, int64_t bytes, int64_t offset) {
  while (bytes > 0) {
    ssize_t n = pwrite(fd, data, static_cast<size_t>(bytes), offset);
    REQUIRE(n > 0);
    data += n;
    bytes -= n;
    offset += n;
  }
}

void CopyFile(const std::string& from, const std::string& to) {
  testing::WriteFile(to, testing::ReadFile(from));
}

// The guest content the cut must show: known bytes and their values.
struct Expectation {
  std::string data;
  std::vector<bool> known;
  std::vector<int> op;  // which op wrote the byte (-1: initial content)
};

// The last flush whose completion a prefix of `cut` entries holds (0: none).
size_t DurableFlush(const std::vector<GuestOp>& ops, uint64_t cut) {
  size_t durable = 0;
  for (size_t i = 0; i < ops.size(); ++i) {
    if (ops[i].kind == GuestOp::kFlush && ops[i].log_entries_done <= cut) durable = i;
  }
  return durable;
}

// Requests before ops[durable] (a flush) are durable; later ones may or may not have landed.
Expectation Expected(const std::string& initial, const std::vector<GuestOp>& ops, size_t durable) {
  Expectation e{initial, std::vector<bool>(initial.size(), true),
                std::vector<int>(initial.size(), -1)};
  for (size_t i = 0; i < ops.size(); ++i) {
    const GuestOp& op = ops[i];
    if (op.kind == GuestOp::kFlush || op.kind == GuestOp::kSnapshot) continue;
    size_t start = static_cast<size_t>(op.offset);
    size_t len = std::min(static_cast<size_t>(op.bytes), e.data.size() - start);
    bool certain = i < durable;
    if (certain && op.kind == GuestOp::kWrite) {
      e.data.replace(start, len, MakeData(op.pattern, op.offset, static_cast<int64_t>(len), op.constant));
    } else if (certain && op.kind == GuestOp::kZero) {
      e.data.replace(start, len, std::string(len, '\0'));
    }
    bool now_known = certain && op.kind != GuestOp::kDiscard;
    std::fill(e.known.begin() + static_cast<int64_t>(start),
              e.known.begin() + static_cast<int64_t>(start + len), now_known);
    std::fill(e.op.begin() + static_cast<int64_t>(start), e.op.begin() + static_cast<int64_t>(start + len),
              static_cast<int>(i));
  }
  return e;
}

}  // namespace

void RunWorkload(testing::GraphEnv& env, const FormatUnderTest& fmt, const std::string& image,
                 const std::string& log, std::vector<GuestOp>& ops) {
  testing::WriteFile(log, "");
  std::string opts = "driver=" + fmt.name + (fmt.open_options.empty() ? "" : "," + fmt.open_options) +
                     ",discard=unmap,file.driver=blklogwrites,file.file.driver=file,"
                     "file.file.filename=" + image + ",file.log.driver=file,file.log.filename=" + log;
  auto be = env.MustOpenBackend(opts);
  Node* filter = FindFilter(env.graph);
  REQUIRE(filter != nullptr);
  for (GuestOp& op : ops) {
    absl::Status st;
    switch (op.kind) {
      case GuestOp::kWrite: {
        std::string data = MakeData(op.pattern, op.offset, op.bytes, op.constant);
        st = be->PwriteSync(op.offset, data.data(), op.bytes);
        break;
      }
      case GuestOp::kZero:
        st = env.Zero(*be, op.offset, op.bytes, (op.pattern & 1) ? kReqMayUnmap : 0);
        break;
      case GuestOp::kDiscard:
        st = env.Discard(*be, op.offset, op.bytes);
        break;
      case GuestOp::kFlush:
        st = env.Flush(*be);
        break;
      case GuestOp::kSnapshot: {
        auto list = env.loop->Run(ListSnapshots(*be->root()));
        REQUIRE(list.ok());
        if ((op.pattern & 1) || list->empty()) {
          SnapshotInfo sn;
          sn.name = "crash" + std::to_string(op.pattern);
          st = env.loop->Run(CreateSnapshot(*be->root(), sn));
        } else {
          const SnapshotKey id(list->front().id);
          st = env.loop->Run(DeleteSnapshot(*be->root(), id, std::nullopt));
        }
        break;
      }
    }
    INFO("op at " << op.offset << " +" << op.bytes << ": " << st.ToString());
    REQUIRE(st.ok());
    op.log_entries_done = LoggedEntries(*filter);
  }
  REQUIRE(be->Close().ok());
}

void RunQemuIoWorkload(const testing::GraphEnv& env, const FormatUnderTest& fmt,
                       const std::string& image, const std::string& log,
                       std::vector<GuestOp>& ops) {
  testing::WriteFile(log, "");
  std::string opts = "driver=" + fmt.name + (fmt.open_options.empty() ? "" : "," + fmt.open_options) +
                     ",discard=unmap,file.driver=blklogwrites,file.file.driver=file,"
                     "file.file.filename=" + image + ",file.log.driver=file,file.log.filename=" + log +
                     ",file.log-append=on";
  std::ostringstream cmd;
  uint64_t entries = 0;
  auto run_epoch = [&](GuestOp& flush) {
    if (cmd.str().empty()) {  // nothing in this epoch: no process, nothing logged
      flush.log_entries_done = entries;
      return;
    }
    std::string line = "qemu-io --image-opts '" + opts + "'" + cmd.str() + " >/dev/null";
    testing::CommandResult r = testing::Shell(line);
    INFO(line << "\n" << r.out);
    REQUIRE(r.exit_code == 0);
    cmd.str("");
    std::string bytes = testing::ReadFile(log);
    REQUIRE(bytes.size() >= blklogwrites::kSuperBytes);
    entries = blklogwrites::DecodeSuper(reinterpret_cast<const uint8_t*>(bytes.data())).nr_entries;
    flush.log_entries_done = entries;
  };
  for (GuestOp& op : ops) {
    switch (op.kind) {
      case GuestOp::kWrite:
        REQUIRE(op.constant);
        cmd << " -c 'write -q -P " << int{op.pattern} << " " << op.offset << " " << op.bytes << "'";
        break;
      case GuestOp::kZero:
        cmd << " -c 'write -q -z " << ((op.pattern & 1) ? "-u " : "") << op.offset << " "
            << op.bytes << "'";
        break;
      case GuestOp::kDiscard:
        cmd << " -c 'discard -q " << op.offset << " " << op.bytes << "'";
        break;
      case GuestOp::kFlush:
        run_epoch(op);
        break;
      case GuestOp::kSnapshot:
        FAIL("qemu-io cannot take internal snapshots: no kSnapshot in qemu-io workloads");
        break;
    }
  }
}

ReplayReport Replay(testing::GraphEnv& env, const FormatUnderTest& fmt, const std::string& initial,
                    const std::string& log, const std::vector<GuestOp>& ops,
                    const WorkloadConfig& wcfg, const ReplayConfig& rcfg) {
  ReplayReport report;
  std::string log_bytes = testing::ReadFile(log);
  absl::StatusOr<ParsedLog> parsed = blklogwrites::ParseLog(
      std::span(reinterpret_cast<const uint8_t*>(log_bytes.data()), log_bytes.size()), log);
  INFO(parsed.status().ToString());
  REQUIRE(parsed.ok());
  if (rcfg.tamper) rcfg.tamper(*parsed);
  const std::vector<Record>& records = parsed->records;

  absl::StatusOr<std::string> initial_content = fmt.read(initial);
  REQUIRE(initial_content.ok());
  initial_content->resize(static_cast<size_t>(wcfg.disk_size), '\0');

  struct Cut {
    uint64_t prefix;  // records applied whole
    bool torn = false;
    const char* kind;
  };
  std::vector<Cut> cuts;
  cuts.push_back({0, false, "start"});
  for (size_t i = 0; i < records.size(); ++i) {
    if (records[i].entry.flags & kFlagFlush) cuts.push_back({i + 1, false, "flush"});
  }
  report.flush_cuts = static_cast<int>(cuts.size());
  std::mt19937 rng(rcfg.seed);
  auto pick = [&](uint64_t hi) { return std::uniform_int_distribution<uint64_t>(0, hi)(rng); };
  for (int i = 0; i < rcfg.random_cuts && !records.empty(); ++i) {
    cuts.push_back({pick(records.size()), false, "random"});
    report.random_cuts++;
  }
  std::vector<size_t> tearable;
  for (size_t i = 0; i < records.size(); ++i) {
    if (!(records[i].entry.flags & (kFlagFlush | kFlagDiscard)) && records[i].bytes >= 1024) {
      tearable.push_back(i);
    }
  }
  for (int i = 0; i < rcfg.torn_cuts && !tearable.empty(); ++i) {
    cuts.push_back({tearable[pick(tearable.size() - 1)], true, "torn"});
    report.torn_cuts++;
  }
  std::stable_sort(cuts.begin(), cuts.end(),
                   [](const Cut& a, const Cut& b) { return a.prefix < b.prefix; });

  std::string rolling = env.dir.File("replay.img"), torn = env.dir.File("torn.img");
  CopyFile(initial, rolling);
  int fd = open(rolling.c_str(), O_WRONLY);
  REQUIRE(fd >= 0);
  auto apply = [&](int target, const Record& r, const std::vector<bool>* sectors) {
    if (r.entry.flags & kFlagFlush) return;
    if (r.entry.flags & kFlagDiscard) {
      // A discard reads back as zeroes from the file protocol (discard=unmap punches holes);
      // what lies past the end of the file stays unwritten.
      off_t end = lseek(target, 0, SEEK_END);
      int64_t len = std::min<int64_t>(r.bytes, std::max<int64_t>(0, end - r.offset));
      if (len > 0) {
        std::string zero(static_cast<size_t>(len), '\0');
        Pwrite(target, zero.data(), len, r.offset);
      }
      return;
    }
    for (int64_t s = 0; s < r.bytes; s += 512) {
      if (sectors && !(*sectors)[static_cast<size_t>(s / 512)]) continue;
      Pwrite(target, log_bytes.data() + r.log_offset + s, std::min<int64_t>(512, r.bytes - s),
             r.offset + s);
    }
  };

  uint64_t applied = 0;
  std::map<size_t, Expectation> expectations;  // by durable flush
  for (const Cut& cut : cuts) {
    while (applied < cut.prefix) apply(fd, records[applied++], nullptr);
    std::string target = rolling;
    std::string what = absl::StrFormat("%s cut after %d of %d log entries", cut.kind, cut.prefix,
                                       records.size());
    if (cut.torn) {
      CopyFile(rolling, torn);
      int tfd = open(torn.c_str(), O_WRONLY);
      REQUIRE(tfd >= 0);
      const Record& r = records[cut.prefix];
      std::vector<bool> sectors(static_cast<size_t>((r.bytes + 511) / 512));
      for (size_t s = 0; s < sectors.size(); ++s) sectors[s] = pick(1) == 1;
      sectors[pick(sectors.size() - 1)] = true;   // something of it landed
      sectors[pick(sectors.size() - 1)] = false;  // and something did not
      apply(tfd, r, &sectors);
      close(tfd);
      target = torn;
      what += absl::StrFormat(", entry %d torn (%d-byte write at %d)", cut.prefix, r.bytes, r.offset);
    }
    if (fmt.check) {
      std::string problem = fmt.check(target);
      if (!problem.empty()) report.failures.push_back(what + ": check: " + problem);
    }
    absl::StatusOr<std::string> content = fmt.read(target);
    if (!content.ok()) {
      report.failures.push_back(what + ": read: " + content.status().ToString());
      continue;
    }
    content->resize(static_cast<size_t>(wcfg.disk_size), '\0');
    size_t durable = DurableFlush(ops, cut.prefix);
    auto it = expectations.find(durable);
    if (it == expectations.end()) {
      it = expectations.emplace(durable, Expected(*initial_content, ops, durable)).first;
    }
    const Expectation& e = it->second;
    for (size_t b = 0; b < e.data.size(); ++b) {
      if (e.known[b] && (*content)[b] != e.data[b]) {
        report.failures.push_back(absl::StrFormat(
            "%s: guest byte %d reads 0x%02x, expected 0x%02x (%s)", what, b,
            static_cast<uint8_t>((*content)[b]), static_cast<uint8_t>(e.data[b]),
            e.op[b] < 0 ? std::string("initial content")
                        : absl::StrFormat("written by request %d, durable", e.op[b])));
        break;
      }
    }
  }
  close(fd);
  return report;
}

uint32_t SeedFromEnv(uint32_t fallback) {
  const char* s = std::getenv("LB_CRASH_SEED");
  return s ? static_cast<uint32_t>(std::strtoul(s, nullptr, 10)) : fallback;
}

int OpsFromEnv(int fallback) {
  const char* s = std::getenv("LB_CRASH_OPS");
  return s ? std::atoi(s) : fallback;
}

}  // namespace libblock::crash
