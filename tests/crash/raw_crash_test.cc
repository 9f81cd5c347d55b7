// Power-cut replay over raw images: the harness itself, on the format whose crash states are
// the log prefixes themselves (every flushed byte must survive every cut), and proof that it
// reports a lost write, a lost flush and a stale read.
#include <catch2/catch.hpp>
#include <string>

#include "crash_harness.h"

namespace libblock::crash {
namespace {

FormatUnderTest Raw(int64_t disk_size) {
  FormatUnderTest f;
  f.name = "raw";
  f.create = [disk_size](const std::string& path) {
    testing::WriteFile(path, testing::RandomBytes(static_cast<size_t>(disk_size), 99));
  };
  f.read = [](const std::string& path) -> absl::StatusOr<std::string> {
    return testing::ReadFile(path);
  };
  return f;
}

struct Run {
  testing::GraphEnv env;
  WorkloadConfig wcfg;
  FormatUnderTest fmt;
  std::vector<GuestOp> ops;
  std::string initial = env.dir.File("initial.img"), image = env.dir.File("work.img"),
              log = env.dir.File("work.log");

  explicit Run(WorkloadConfig cfg) : wcfg(cfg), fmt(Raw(cfg.disk_size)) {
    fmt.create(initial);
    testing::WriteFile(image, testing::ReadFile(initial));
    ops = MakeWorkload(wcfg);
    RunWorkload(env, fmt, image, log, ops);
  }
};

WorkloadConfig Config() {
  WorkloadConfig c;
  c.seed = SeedFromEnv(7);
  c.ops = OpsFromEnv(150);
  c.disk_size = 4 << 20;
  c.max_write = 192 << 10;
  return c;
}

TEST_CASE("raw: every cut holds what was flushed before it", "[crash][raw]") {
  Run run(Config());
  // The image after the workload is the whole log applied.
  ReplayConfig rcfg;
  rcfg.seed = run.wcfg.seed;
  ReplayReport report = Replay(run.env, run.fmt, run.initial, run.log, run.ops, run.wcfg, rcfg);
  for (const auto& f : report.failures) UNSCOPED_INFO(f);
  CHECK(report.failures.empty());
  CHECK(report.flush_cuts > 5);
  CHECK(report.torn_cuts == rcfg.torn_cuts);
  CHECK(report.random_cuts == rcfg.random_cuts);
  // The final state is the last cut: the whole workload.
  CHECK(testing::ReadFile(run.env.dir.File("replay.img")) == testing::ReadFile(run.image));
}

TEST_CASE("raw: unaligned writes through a 4k log sector size", "[crash][raw]") {
  WorkloadConfig c = Config();
  c.seed += 1000;
  c.ops = 60;
  testing::GraphEnv env;
  FormatUnderTest fmt = Raw(c.disk_size);
  std::string initial = env.dir.File("initial.img"), image = env.dir.File("work.img"),
              log = env.dir.File("work.log");
  fmt.create(initial);
  testing::WriteFile(image, testing::ReadFile(initial));
  std::vector<GuestOp> ops = MakeWorkload(c);
  fmt.open_options = "";
  // The filter's log-sector-size is given through the file options.
  FormatUnderTest with4k = fmt;
  with4k.name = "raw";
  with4k.open_options = "file.log-sector-size=4096";
  RunWorkload(env, with4k, image, log, ops);
  ReplayReport report = Replay(env, fmt, initial, log, ops, c, ReplayConfig{});
  for (const auto& f : report.failures) UNSCOPED_INFO(f);
  CHECK(report.failures.empty());
}

TEST_CASE("the harness reports lost and reordered writes", "[crash][raw]") {
  Run run(Config());
  ReplayConfig rcfg;
  rcfg.random_cuts = 0;
  rcfg.torn_cuts = 0;

  // The flush in the middle of the log, and the data writes between it and the one before.
  auto middle_epoch = [](const blklogwrites::ParsedLog& log) {
    std::vector<size_t> flushes;
    for (size_t i = 0; i < log.records.size(); ++i) {
      if (log.records[i].entry.flags & blklogwrites::kFlagFlush) flushes.push_back(i);
    }
    REQUIRE(flushes.size() >= 3);
    size_t m = flushes.size() / 2;
    return std::make_pair(flushes[m - 1] + 1, flushes[m]);
  };
  SECTION("the writes before a flush are lost") {
    rcfg.tamper = [&](blklogwrites::ParsedLog& log) {
      auto [first, end] = middle_epoch(log);
      for (size_t j = end; j-- > first;) {
        if (log.records[j].entry.flags == 0) log.records.erase(log.records.begin() + static_cast<int64_t>(j));
      }
    };
    ReplayReport report = Replay(run.env, run.fmt, run.initial, run.log, run.ops, run.wcfg, rcfg);
    REQUIRE(!report.failures.empty());
    CHECK_THAT(report.failures.front(), Catch::Contains("durable"));
  }
  SECTION("the writes before a flush land one sector off") {
    rcfg.tamper = [&](blklogwrites::ParsedLog& log) {
      auto [first, end] = middle_epoch(log);
      for (size_t j = first; j < end; ++j) {
        if (log.records[j].entry.flags == 0) log.records[j].offset += 512;
      }
    };
    ReplayReport report = Replay(run.env, run.fmt, run.initial, run.log, run.ops, run.wcfg, rcfg);
    REQUIRE(!report.failures.empty());
  }
  SECTION("a check that fails is reported for every cut") {
    run.fmt.check = [](const std::string&) { return std::string("broken"); };
    ReplayReport report = Replay(run.env, run.fmt, run.initial, run.log, run.ops, run.wcfg, rcfg);
    CHECK(static_cast<int>(report.failures.size()) == report.cuts());
  }
}

}  // namespace
}  // namespace libblock::crash
