// qcow2 check against `qemu-img check`: images made by qemu-img/qemu-io (clean, with leaks
// made by editing refcounts or by a qemu-io killed mid-way, and corrupted by editing bytes)
// must give the same counters, the same messages in the same order, and repairs that leave
// images qemu-img finds clean with their data intact. Exits 77 without qemu-img/qemu-io.
#include <catch2/catch.hpp>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "core/backend.h"
#include "formats/qcow2/qcow2_check.h"
#include "nlohmann/json.hpp"
#include "qcow2_test_image.h"
#include "test_support.h"
#include "util/endian.h"

namespace libblock::qcow2 {
namespace {

using testing::GraphEnv;
using testing::Run;
using testing::Shell;

void MustShell(const std::string& cmd) {
  testing::CommandResult r = Shell(cmd);
  INFO(cmd << "\n" << r.out);
  REQUIRE(r.exit_code == 0);
}

struct QemuCheck {
  int exit_code = -1;
  std::vector<std::string> messages;  // stderr lines
  nlohmann::json json;
};

QemuCheck RunQemuCheck(const GraphEnv& env, const std::string& path) {
  QemuCheck q;
  std::string err = env.dir.File("check.err"), out = env.dir.File("check.json");
  testing::CommandResult r = Shell("qemu-img check --output=json '" + path + "' >'" + out +
                                   "' 2>'" + err + "'");
  q.exit_code = r.exit_code;
  for (absl::string_view line : absl::StrSplit(testing::ReadFile(err), '\n', absl::SkipEmpty())) {
    q.messages.emplace_back(line);
  }
  std::string text = testing::ReadFile(out);
  INFO(text);
  q.json = nlohmann::json::parse(text);
  return q;
}

absl::StatusOr<CheckResult> RunOurs(GraphEnv& env, const std::string& path, CheckFix fix) {
  BackendOptions bo;
  bo.resize = true;
  bo.read_only = fix == 0;
  std::unique_ptr<Backend> be =
      env.MustOpenBackend("driver=file,filename=" + path, bo);
  Header header = testing::ReadQcow2Header(path);
  absl::StatusOr<CheckResult> r = env.loop->Run(Check(*be->root_child(), header, fix));
  REQUIRE(be->Close().ok());
  return r;
}

int64_t JsonInt(const nlohmann::json& j, const char* key) {
  return j.contains(key) ? j[key].get<int64_t>() : 0;
}

// Our counters and messages equal qemu-img's for the image as it is.
void RequireSameAsQemu(GraphEnv& env, const std::string& path) {
  QemuCheck q = RunQemuCheck(env, path);
  absl::StatusOr<CheckResult> ours = RunOurs(env, path, 0);
  REQUIRE(ours.ok());
  INFO("qemu-img: " << q.json.dump());
  CHECK(ours->messages == q.messages);
  CHECK(ours->corruptions == JsonInt(q.json, "corruptions"));
  CHECK(ours->leaks == JsonInt(q.json, "leaks"));
  CHECK(ours->check_errors == JsonInt(q.json, "check-errors"));
  CHECK(ours->image_end_offset == JsonInt(q.json, "image-end-offset"));
  CHECK(ours->total_clusters == JsonInt(q.json, "total-clusters"));
  CHECK(ours->allocated_clusters == JsonInt(q.json, "allocated-clusters"));
  CHECK(ours->fragmented_clusters == JsonInt(q.json, "fragmented-clusters"));
  CHECK(ours->compressed_clusters == JsonInt(q.json, "compressed-clusters"));
}

// A workload of qemu-io commands over a 4 MiB disk: unaligned writes across clusters, zeroes
// (with and without unmap), discards.
std::string Workload(const std::string& img) {
  return "qemu-io -f qcow2 -c 'write -P 1 0 70000' -c 'write -P 2 300000 200000' "
         "-c 'write -P 3 1048576 4096' -c 'write -z 2097152 131072' -c 'write -z -u 0 65536' "
         "-c 'write -P 4 3000000 500000' -c 'discard 3145728 131072' '" + img + "' >/dev/null";
}

TEST_CASE("clean images: same counters as qemu-img check", "[qcow2][check][interop]") {
  struct Case {
    std::string name, create, prepare;
  };
  std::vector<Case> cases = {
      {"default", "", ""},
      {"512-byte clusters, refcount_bits=1", "-o cluster_size=512,refcount_bits=1", ""},
      {"4k clusters, refcount_bits=64", "-o cluster_size=4096,refcount_bits=64", ""},
      {"refcount_bits=2", "-o cluster_size=4096,refcount_bits=2", ""},
      {"refcount_bits=8", "-o refcount_bits=8", ""},
      {"compat=0.10", "-o compat=0.10", ""},
      {"extended_l2", "-o extended_l2=on,cluster_size=128k", ""},
      {"lazy_refcounts", "-o lazy_refcounts=on", ""},
      {"preallocation=metadata", "-o preallocation=metadata", ""},
      {"2M clusters", "-o cluster_size=2M", ""},
      {"data_file", "-o data_file=IMG.data", ""},
      {"snapshot", "", "qemu-img snapshot -c s1 IMG && "},
      {"bitmap", "", "qemu-img bitmap --add IMG b0 && "},
  };
  for (const Case& c : cases) {
    DYNAMIC_SECTION(c.name) {
      GraphEnv env;
      std::string img = env.dir.File("a.qcow2");
      std::string create = c.create;
      size_t pos = create.find("IMG");
      if (pos != std::string::npos) create.replace(pos, 3, img);
      MustShell("qemu-img create -f qcow2 " + create + " '" + img + "' 4M >/dev/null");
      std::string prepare = c.prepare;
      while ((pos = prepare.find("IMG")) != std::string::npos) prepare.replace(pos, 3, img);
      MustShell(prepare + Workload(img));
      // Snapshots: more writes after the snapshot share nothing with it.
      if (!c.prepare.empty()) MustShell(Workload(img));
      RequireSameAsQemu(env, img);
    }
  }
}

TEST_CASE("compressed clusters: same counters as qemu-img check", "[qcow2][check][interop]") {
  for (const char* type : {"zlib", "zstd"}) {
    DYNAMIC_SECTION(type) {
      GraphEnv env;
      std::string raw = env.dir.File("a.raw"), img = env.dir.File("a.qcow2");
      testing::WriteFile(raw, testing::RandomBytes(1 << 20, 1) + std::string(1 << 20, 'x') +
                                  std::string(1 << 20, '\0'));
      MustShell("qemu-img convert -c -O qcow2 -o compression_type=" + std::string(type) + " '" +
                raw + "' '" + img + "'");
      MustShell("qemu-io -f qcow2 -c 'write -P 7 100000 10000' '" + img + "' >/dev/null");
      RequireSameAsQemu(env, img);
    }
  }
}

// Refcount block entry `cluster` of `path` (the block must exist) set to `value`.
void SetRefcount(const std::string& path, int64_t cluster, uint64_t value) {
  Header h = testing::ReadQcow2Header(path);
  std::string data = testing::ReadFile(path);
  int64_t per_block = (h.cluster_size() * 8) >> h.refcount_order;
  uint64_t rt = LoadBe64(reinterpret_cast<const uint8_t*>(&data[h.refcount_table_offset + 8 * (cluster / per_block)]));
  REQUIRE(rt != 0);
  REQUIRE(h.refcount_order == 4);
  uint8_t be[2];
  StoreBe16(be, static_cast<uint16_t>(value));
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  f.seekp(static_cast<std::streamoff>(rt + 2 * (cluster % per_block)));
  f.write(reinterpret_cast<const char*>(be), 2);
}

void Poke64(const std::string& path, int64_t offset, uint64_t value) {
  uint8_t be[8];
  StoreBe64(be, value);
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  f.seekp(offset);
  f.write(reinterpret_cast<const char*>(be), 8);
}
uint64_t Peek64(const std::string& path, int64_t offset) {
  std::string data = testing::ReadFile(path);
  return LoadBe64(reinterpret_cast<const uint8_t*>(&data[offset]));
}

// An image with 64 KiB clusters: header, refcount table, refcount block, L1, L2, data.
std::string MakeImage(GraphEnv& env, const std::string& name = "a.qcow2") {
  std::string img = env.dir.File(name);
  MustShell("qemu-img create -f qcow2 '" + img + "' 10M >/dev/null");
  MustShell("qemu-io -f qcow2 -c 'write -P 1 0 128k' -c 'write -P 2 1M 64k' '" + img +
            "' >/dev/null");
  return img;
}

void RequireQemuClean(GraphEnv& env, const std::string& img) {
  QemuCheck q = RunQemuCheck(env, img);
  INFO(q.json.dump());
  for (const auto& m : q.messages) INFO(m);
  REQUIRE(q.exit_code == 0);
  REQUIRE(q.messages.empty());
}

void RequireData(const std::string& img) {
  testing::CommandResult r = Shell("qemu-io -f qcow2 -c 'read -q -P 1 0 128k' -c 'read -q -P 2 1M 64k' "
                                   "-c 'read -q -P 0 128k 896k' '" + img + "'");
  INFO(r.out);
  REQUIRE(r.exit_code == 0);
  REQUIRE(r.out.find("Pattern verification failed") == std::string::npos);
}

TEST_CASE("leaks on metadata and free clusters: reported like qemu-img, repaired",
          "[qcow2][check][interop]") {
  GraphEnv env;
  std::string img = MakeImage(env);
  int64_t clusters = testing::FileSize(img) / 65536;
  // A refcount on a cluster nobody uses (the file extended to hold it), and one too many on
  // the refcount block itself (cluster 2).
  Shell("truncate -s " + std::to_string((clusters + 2) * 65536) + " '" + img + "'");
  SetRefcount(img, clusters + 1, 1);
  SetRefcount(img, 2, 2);
  RequireSameAsQemu(env, img);
  absl::StatusOr<CheckResult> r = RunOurs(env, img, kFixLeaks);
  REQUIRE(r.ok());
  CHECK(r->leaks_fixed == 2);
  CHECK(r->leaks == 0);
  RequireQemuClean(env, img);
  RequireData(img);
}

TEST_CASE("a pure leak is repaired in place", "[qcow2][check][interop]") {
  GraphEnv env;
  std::string img = MakeImage(env);
  int64_t clusters = testing::FileSize(img) / 65536;
  Shell("truncate -s " + std::to_string((clusters + 3) * 65536) + " '" + img + "'");
  SetRefcount(img, clusters + 1, 1);
  SetRefcount(img, clusters + 2, 3);
  RequireSameAsQemu(env, img);
  absl::StatusOr<CheckResult> r = RunOurs(env, img, kFixLeaks);
  REQUIRE(r.ok());
  CHECK(r->leaks_fixed == 2);
  CHECK(r->leaks == 0);
  CHECK(r->corruptions == 0);
  std::vector<std::string> expected = {
      absl::StrFormat("Leaked cluster %d refcount=1 reference=0", clusters + 1),
      absl::StrFormat("Leaked cluster %d refcount=3 reference=0", clusters + 2),
      absl::StrFormat("Repairing cluster %d refcount=1 reference=0", clusters + 1),
      absl::StrFormat("Repairing cluster %d refcount=3 reference=0", clusters + 2),
  };
  CHECK(r->messages == expected);
  RequireQemuClean(env, img);
  RequireData(img);
}

TEST_CASE("a refcount too low is an error; kFixErrors rebuilds", "[qcow2][check][interop]") {
  GraphEnv env;
  std::string img = MakeImage(env);
  // The first data cluster (after header, reftable, refblock, L1, L2: cluster 5) loses its
  // refcount: a later allocation could overwrite it.
  SetRefcount(img, 5, 0);
  RequireSameAsQemu(env, img);
  absl::StatusOr<CheckResult> r0 = RunOurs(env, img, 0);
  REQUIRE(r0.ok());
  REQUIRE(r0->corruptions >= 1);

  SECTION("kFixLeaks refuses: the structure needs a rebuild") {
    absl::StatusOr<CheckResult> r = RunOurs(env, img, kFixLeaks);
    REQUIRE(r.ok());
    CHECK(r->check_errors == 1);
    CHECK(r->messages.back() == "ERROR need to rebuild refcount structures");
  }
  SECTION("kFixErrors rebuilds the refcount structure") {
    absl::StatusOr<CheckResult> r = RunOurs(env, img, kFixLeaks | kFixErrors);
    REQUIRE(r.ok());
    for (const auto& m : r->messages) INFO(m);
    CHECK(r->corruptions == 0);
    CHECK(r->leaks == 0);
    CHECK(r->corruptions_fixed >= 1);
    CHECK(r->header_changed);
    CHECK(std::find(r->messages.begin(), r->messages.end(), "Rebuilding refcount structure") !=
          r->messages.end());
    RequireQemuClean(env, img);
    RequireData(img);
  }
}

TEST_CASE("a refcount too low on a shared cluster is raised in place", "[qcow2][check][interop]") {
  GraphEnv env;
  std::string img = env.dir.File("a.qcow2");
  MustShell("qemu-img create -f qcow2 '" + img + "' 10M >/dev/null");
  MustShell("qemu-io -f qcow2 -c 'write -P 1 0 128k' -c 'write -P 2 1M 64k' '" + img +
            "' >/dev/null");
  MustShell("qemu-img snapshot -c s1 '" + img + "'");
  // Cluster 5 is data shared by the snapshot (refcount 2): 1 is too low but not zero.
  SetRefcount(img, 5, 1);
  RequireSameAsQemu(env, img);
  absl::StatusOr<CheckResult> r = RunOurs(env, img, kFixErrors);
  REQUIRE(r.ok());
  for (const auto& m : r->messages) INFO(m);
  CHECK(r->corruptions == 0);
  CHECK(r->corruptions_fixed >= 1);
  RequireQemuClean(env, img);
  RequireData(img);
}

TEST_CASE("COPIED flags: reported like qemu-img, repaired", "[qcow2][check][interop]") {
  GraphEnv env;
  std::string img = MakeImage(env);
  Header h = testing::ReadQcow2Header(img);
  uint64_t l1e = Peek64(img, static_cast<int64_t>(h.l1_table_offset));
  uint64_t l2 = l1e & kL1OffsetMask;
  uint64_t l2e = Peek64(img, static_cast<int64_t>(l2 + 8));
  Poke64(img, static_cast<int64_t>(h.l1_table_offset), l1e & ~kOflagCopied);
  Poke64(img, static_cast<int64_t>(l2 + 8), l2e & ~kOflagCopied);
  RequireSameAsQemu(env, img);
  absl::StatusOr<CheckResult> r = RunOurs(env, img, kFixErrors);
  REQUIRE(r.ok());
  CHECK(r->corruptions == 0);
  CHECK(r->corruptions_fixed == 2);
  RequireQemuClean(env, img);
  CHECK(Peek64(img, static_cast<int64_t>(h.l1_table_offset)) == l1e);
  CHECK(Peek64(img, static_cast<int64_t>(l2 + 8)) == l2e);
}

TEST_CASE("corruptions made by editing bytes: same report as qemu-img", "[qcow2][check][interop]") {
  GraphEnv env;
  std::string img = MakeImage(env);
  Header h = testing::ReadQcow2Header(img);
  uint64_t l1e = Peek64(img, static_cast<int64_t>(h.l1_table_offset));
  uint64_t l2 = l1e & kL1OffsetMask;
  SECTION("unaligned data cluster") {
    uint64_t e = Peek64(img, static_cast<int64_t>(l2));
    Poke64(img, static_cast<int64_t>(l2), e + 512);
    RequireSameAsQemu(env, img);
  }
  SECTION("reserved bits in an L2 entry") {
    uint64_t e = Peek64(img, static_cast<int64_t>(l2));
    Poke64(img, static_cast<int64_t>(l2), e | (1ull << 57));
    RequireSameAsQemu(env, img);
  }
  SECTION("data cluster past the end of the file") {
    Poke64(img, static_cast<int64_t>(l2 + 16), kOflagCopied | (1ull << 40));
    RequireSameAsQemu(env, img);
  }
  SECTION("reserved bits in an L1 entry") {
    Poke64(img, static_cast<int64_t>(h.l1_table_offset), l1e | 1);
    RequireSameAsQemu(env, img);
  }
  SECTION("a refcount block referenced twice") {
    Poke64(img, static_cast<int64_t>(h.refcount_table_offset + 8),
           Peek64(img, static_cast<int64_t>(h.refcount_table_offset)));
    RequireSameAsQemu(env, img);
    absl::StatusOr<CheckResult> r = RunOurs(env, img, kFixErrors | kFixLeaks);
    REQUIRE(r.ok());
    CHECK(r->corruptions == 0);
    RequireQemuClean(env, img);
    RequireData(img);
  }
  SECTION("an L2 table past the end of the file") {
    Poke64(img, static_cast<int64_t>(h.l1_table_offset), kOflagCopied | (1ull << 32));
    RequireSameAsQemu(env, img);
  }
  SECTION("an unaligned L2 table") {
    Poke64(img, static_cast<int64_t>(h.l1_table_offset), l1e + 512);
    RequireSameAsQemu(env, img);
  }
  SECTION("a refcount block outside the image") {
    Poke64(img, static_cast<int64_t>(h.refcount_table_offset + 8), 1ull << 30);
    RequireSameAsQemu(env, img);
  }
}

TEST_CASE("a bogus compressed length: same report as qemu-img", "[qcow2][check][interop]") {
  GraphEnv env;
  std::string raw = env.dir.File("a.raw"), img = env.dir.File("a.qcow2");
  testing::WriteFile(raw, std::string(256 << 10, 'x'));  // compresses
  MustShell("qemu-img convert -c -O qcow2 '" + raw + "' '" + img + "'");
  Header h = testing::ReadQcow2Header(img);
  uint64_t l2 = Peek64(img, static_cast<int64_t>(h.l1_table_offset)) & kL1OffsetMask;
  uint64_t e = Peek64(img, static_cast<int64_t>(l2 + 8));
  REQUIRE((e & kOflagCompressed));
  // The sector count field (bits 54..61 for 64k clusters) at its maximum: past the end.
  Poke64(img, static_cast<int64_t>(l2 + 8), e | (0xffull << 54));
  RequireSameAsQemu(env, img);
  absl::StatusOr<CheckResult> r = RunOurs(env, img, 0);
  REQUIRE(r.ok());
  CHECK(r->corruptions > 0);
}

TEST_CASE("a dirty lazy_refcounts image left by a killed qemu-io is repaired and marked clean",
          "[qcow2][check][interop]") {
  GraphEnv env;
  std::string img = env.dir.File("a.qcow2");
  MustShell("qemu-img create -f qcow2 -o lazy_refcounts=on '" + img + "' 10M >/dev/null");
  Shell("qemu-io -f qcow2 -c 'write -P 1 0 128k' -c 'write -P 2 1M 64k' -c 'sigraise 9' '" +
        img + "' >/dev/null 2>&1");
  Header h = testing::ReadQcow2Header(img);
  REQUIRE((h.incompatible_features & kIncompatDirty));
  absl::StatusOr<CheckResult> r = RunOurs(env, img, kFixLeaks | kFixErrors);
  REQUIRE(r.ok());
  for (const auto& m : r->messages) INFO(m);
  CHECK(r->corruptions == 0);
  CHECK(r->leaks == 0);
  CHECK(r->header_changed);
  Header after = testing::ReadQcow2Header(img);
  CHECK(!(after.incompatible_features & kIncompatDirty));
  RequireQemuClean(env, img);
  RequireData(img);
}

}  // namespace
}  // namespace libblock::qcow2

LB_TEST_REQUIRES(.programs = {"qemu-img", "qemu-io"})
