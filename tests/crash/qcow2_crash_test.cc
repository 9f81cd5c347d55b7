// Power-cut replay over qcow2: every cut of a logged workload must leave an image that our
// check and `qemu-img check` find consistent (leaks allowed; after the repair-on-open a
// dirty lazy_refcounts image gets) and that holds every write made durable before the cut.
// The workload runs through qemu-io (QEMU's qcow2 driver: it checks the harness and our check
// on real crash states) and, once libblock's qcow2 driver is registered, through libblock.
// Exits 77 without qemu-img/qemu-io.
#include <catch2/catch.hpp>
#include <string>

#include "absl/strings/str_format.h"
#include "core/backend.h"
#include "core/registry.h"
#include "crash_harness.h"
#include "formats/qcow2/qcow2_check.h"
#include "qcow2_test_image.h"

namespace libblock::crash {
namespace {

using qcow2::CheckResult;

// The check of one rebuilt image: ours, on a copy repaired first when the image is dirty
// (what opening it read-write does), then qemu-img's on that same copy.
std::string CheckQcow2(testing::GraphEnv& env, const std::string& path) {
  std::string copy = env.dir.File("check.qcow2");
  testing::WriteFile(copy, testing::ReadFile(path));
  qcow2::Header h = testing::ReadQcow2Header(copy);
  bool dirty = h.incompatible_features & qcow2::kIncompatDirty;
  BackendOptions bo;
  bo.resize = true;
  bo.read_only = !dirty;
  absl::StatusOr<std::unique_ptr<Backend>> be = env.OpenBackend("driver=file,filename=" + copy, bo);
  if (!be.ok()) return "open: " + be.status().ToString();
  qcow2::CheckFix fix = dirty ? (qcow2::kFixLeaks | qcow2::kFixErrors) : 0;
  absl::StatusOr<CheckResult> r = env.loop->Run(qcow2::Check(*(*be)->root_child(), h, fix));
  absl::Status closed = (*be)->Close();
  if (!r.ok()) return "our check failed: " + r.status().ToString();
  if (!closed.ok()) return "close: " + closed.ToString();
  if (r->corruptions || r->check_errors) {
    std::string all;
    for (const auto& m : r->messages) all += "\n  " + m;
    return absl::StrFormat("our check: %d corruptions, %d errors%s", r->corruptions,
                           r->check_errors, all);
  }
  testing::CommandResult q = testing::Shell("qemu-img check -f qcow2 '" + copy + "' 2>&1");
  if (q.exit_code != 0 && q.exit_code != 3) {
    return absl::StrFormat("qemu-img check exits %d:\n%s", q.exit_code, q.out);
  }
  return "";
}

absl::StatusOr<std::string> ReadQcow2(testing::GraphEnv& env, const std::string& path) {
  std::string raw = env.dir.File("read.raw");
  testing::CommandResult r = testing::Shell("qemu-img convert -U -f qcow2 -O raw '" + path +
                                            "' '" + raw + "' 2>&1");
  if (r.exit_code != 0) return absl::InternalError("qemu-img convert: " + r.out);
  return testing::ReadFile(raw);
}

FormatUnderTest Qcow2(testing::GraphEnv& env, const std::string& create_opts, int64_t disk_size) {
  FormatUnderTest f;
  f.name = "qcow2";
  f.create = [create_opts, disk_size](const std::string& path) {
    testing::CommandResult r = testing::Shell(
        "qemu-img create -q -f qcow2 " + (create_opts.empty() ? "" : "-o " + create_opts) + " '" +
        path + "' " + std::to_string(disk_size) + " && qemu-io -f qcow2 -c 'write -q -P 0x5a 0 " +
        std::to_string(disk_size / 2) + "' '" + path + "'");
    INFO(r.out);
    REQUIRE(r.exit_code == 0);
  };
  f.check = [&env](const std::string& path) { return CheckQcow2(env, path); };
  f.read = [&env](const std::string& path) { return ReadQcow2(env, path); };
  return f;
}

WorkloadConfig Config(uint32_t seed) {
  WorkloadConfig c;
  c.seed = SeedFromEnv(seed);
  c.ops = OpsFromEnv(50);
  c.disk_size = 2 << 20;
  c.max_write = 128 << 10;
  c.constant_data = true;  // qemu-io writes patterns
  c.flush_every = 10;
  return c;
}

void RunQemuCase(const std::string& create_opts, uint32_t seed) {
  testing::GraphEnv env;
  WorkloadConfig wcfg = Config(seed);
  FormatUnderTest fmt = Qcow2(env, create_opts, wcfg.disk_size);
  std::string initial = env.dir.File("initial.qcow2"), image = env.dir.File("work.qcow2"),
              log = env.dir.File("work.log");
  fmt.create(initial);
  testing::WriteFile(image, testing::ReadFile(initial));
  std::vector<GuestOp> ops = MakeWorkload(wcfg);
  RunQemuIoWorkload(env, fmt, image, log, ops);
  ReplayConfig rcfg;
  rcfg.seed = wcfg.seed;
  rcfg.random_cuts = 12;
  rcfg.torn_cuts = 12;
  ReplayReport report = Replay(env, fmt, initial, log, ops, wcfg, rcfg);
  for (const auto& f : report.failures) UNSCOPED_INFO(f);
  CHECK(report.failures.empty());
  CHECK(report.flush_cuts > 10);
  CHECK(report.torn_cuts == rcfg.torn_cuts);
}

TEST_CASE("qcow2 written by qemu-io: every cut is consistent and holds closed epochs",
          "[crash][qcow2][interop]") {
  SECTION("64k clusters") { RunQemuCase("", 11); }
  SECTION("4k clusters, refcount_bits=1") { RunQemuCase("cluster_size=4096,refcount_bits=1", 12); }
  SECTION("lazy_refcounts") { RunQemuCase("lazy_refcounts=on", 13); }
  SECTION("extended_l2") { RunQemuCase("extended_l2=on,cluster_size=64k", 14); }
}

TEST_CASE("our check finds the corruption in a replayed image whose refcounts were dropped",
          "[crash][qcow2][interop]") {
  // The harness's qcow2 check must be able to fail: the last cut of a real workload with
  // the refcount block's entries for data clusters zeroed is a corruption for both checks.
  testing::GraphEnv env;
  WorkloadConfig wcfg = Config(21);
  wcfg.ops = 20;
  FormatUnderTest fmt = Qcow2(env, "", wcfg.disk_size);
  std::string initial = env.dir.File("initial.qcow2"), image = env.dir.File("work.qcow2"),
              log = env.dir.File("work.log");
  fmt.create(initial);
  testing::WriteFile(image, testing::ReadFile(initial));
  std::vector<GuestOp> ops = MakeWorkload(wcfg);
  RunQemuIoWorkload(env, fmt, image, log, ops);
  qcow2::Header h = testing::ReadQcow2Header(image);
  std::string data = testing::ReadFile(image);
  uint64_t refblock = 0;
  for (int i = 0; i < 8; ++i) refblock = (refblock << 8) | static_cast<uint8_t>(data[h.refcount_table_offset + i]);
  // Clusters 6.. (data) lose their refcounts.
  for (size_t b = refblock + 12; b < refblock + 64; ++b) data[b] = '\0';
  testing::WriteFile(image, data);
  std::string problem = fmt.check(image);
  CHECK_THAT(problem, Catch::Contains("our check"));
}

TEST_CASE("qcow2 written by libblock: every cut is consistent and holds what was flushed",
          "[crash][qcow2]") {
  const Driver* d = Registry::Builtin().Find("qcow2");
  LB_SKIP_UNLESS(d && d->instantiate, "libblock's qcow2 driver is not built yet");
  for (const std::string& opts : {std::string(""), std::string("cluster_size=4096"),
                                  std::string("lazy_refcounts=on")}) {
    DYNAMIC_SECTION("qcow2 " << opts) {
      testing::GraphEnv env;
      WorkloadConfig wcfg = Config(31);
      wcfg.constant_data = false;
      FormatUnderTest fmt = Qcow2(env, opts, wcfg.disk_size);
      std::string initial = env.dir.File("initial.qcow2"), image = env.dir.File("work.qcow2"),
                  log = env.dir.File("work.log");
      fmt.create(initial);
      testing::WriteFile(image, testing::ReadFile(initial));
      std::vector<GuestOp> ops = MakeWorkload(wcfg);
      RunWorkload(env, fmt, image, log, ops);
      ReplayReport report = Replay(env, fmt, initial, log, ops, wcfg, ReplayConfig{});
      for (const auto& f : report.failures) UNSCOPED_INFO(f);
      CHECK(report.failures.empty());
    }
  }
}

TEST_CASE("qcow2 snapshots taken and deleted by libblock: every cut is consistent",
          "[crash][qcow2][snapshot]") {
  // Internal snapshots created and deleted between the writes: each cut (inside the snapshot
  // table switch, the refcount walks, the L2 copies that follow) must check clean, leaks
  // aside, in our check and qemu-img's (which walk every snapshot's tables too), and keep
  // the flushed guest data.
  for (const std::string& opts : {std::string(""), std::string("cluster_size=4096,lazy_refcounts=on")}) {
    DYNAMIC_SECTION("qcow2 " << opts) {
      testing::GraphEnv env;
      WorkloadConfig wcfg = Config(41);
      wcfg.constant_data = false;
      wcfg.snapshot_every = 6;
      FormatUnderTest fmt = Qcow2(env, opts, wcfg.disk_size);
      std::string initial = env.dir.File("initial.qcow2"), image = env.dir.File("work.qcow2"),
                  log = env.dir.File("work.log");
      fmt.create(initial);
      testing::WriteFile(image, testing::ReadFile(initial));
      std::vector<GuestOp> ops = MakeWorkload(wcfg);
      int snapshots = 0;
      for (const GuestOp& op : ops) snapshots += op.kind == GuestOp::kSnapshot;
      REQUIRE(snapshots >= 4);
      RunWorkload(env, fmt, image, log, ops);
      ReplayConfig rcfg;
      rcfg.random_cuts = 30;
      ReplayReport report = Replay(env, fmt, initial, log, ops, wcfg, rcfg);
      for (const auto& f : report.failures) UNSCOPED_INFO(f);
      CHECK(report.failures.empty());
    }
  }
}

}  // namespace
}  // namespace libblock::crash

LB_TEST_REQUIRES(.programs = {"qemu-img", "qemu-io"})
