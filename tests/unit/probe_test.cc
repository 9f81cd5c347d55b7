// Format probing: every format probe and ProbeFormat, against images made by qemu-img at test
// time and against hand-built headers for the formats qemu-img cannot create. Where qemu-img can
// say what it probes (a file it opens reports its format; a file it cannot open was at least not
// taken for raw), the tests compare with it directly.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "core/registry.h"
#include "formats/bochs/bochs_probe.h"
#include "formats/cloop/cloop_probe.h"
#include "formats/dmg/dmg_probe.h"
#include "formats/luks/luks_probe.h"
#include "formats/parallels/parallels_probe.h"
#include "formats/qcow/qcow_probe.h"
#include "formats/qcow2/qcow2_probe.h"
#include "formats/qed/qed_probe.h"
#include "formats/vdi/vdi_probe.h"
#include "formats/vhdx/vhdx_probe.h"
#include "formats/vmdk/vmdk_probe.h"
#include "formats/vpc/vpc_probe.h"
#include "test_support.h"

namespace libblock {
namespace {

using testing::HaveProgram;
using testing::ReadFile;
using testing::Run;
using testing::TempDir;
using testing::WriteFile;

using ProbeFn = int (*)(const uint8_t*, size_t, std::string_view);

struct NamedProbe {
  std::string name;
  ProbeFn probe;
};

const std::vector<NamedProbe>& AllProbes() {
  static const std::vector<NamedProbe> probes = {
      {"qcow2", qcow2::Probe}, {"qcow", qcow::Probe},   {"qed", qed::Probe},
      {"vdi", vdi::Probe},     {"vmdk", vmdk::Probe},   {"vpc", vpc::Probe},
      {"vhdx", vhdx::Probe},   {"luks", luks::Probe},   {"bochs", bochs::Probe},
      {"cloop", cloop::Probe}, {"dmg", dmg::Probe},     {"parallels", parallels::Probe},
  };
  return probes;
}

const uint8_t* Bytes(const std::string& s) { return reinterpret_cast<const uint8_t*>(s.data()); }

struct Probed {
  std::string format;
  int score;
};

Probed ProbeBytes(const std::string& bytes, std::string_view filename = "") {
  // An exactly-sized heap copy, so that a probe reading past `len` trips the sanitizers.
  std::vector<uint8_t> copy(bytes.begin(), bytes.end());
  ProbeMatch m = Registry::Builtin().ProbeFormat(copy.data(), copy.size(), filename);
  REQUIRE(m.driver != nullptr);
  return {std::string(m.driver->name), m.score};
}

// The first kProbeBufferSize bytes of a file (fewer if it is shorter).
std::string Head(const std::string& path) {
  std::string data = ReadFile(path);
  data.resize(std::min(data.size(), kProbeBufferSize));
  return data;
}

std::string Basename(const std::string& path) { return path.substr(path.rfind('/') + 1); }

void RequireQemuImg() {
  if (!HaveProgram("qemu-img")) FAIL("qemu-img is required (Debian package qemu-utils)");
}

// What qemu-img makes of a file when left to probe: the format it opened it with, or "" when
// the open failed (which means some format driver claimed it: raw opens anything).
std::string QemuProbe(const std::string& path) {
  testing::CommandResult r = Run({"qemu-img", "info", "--output=json", path});
  if (r.exit_code != 0) return "";
  const std::string key = "\"format\": \"";
  const size_t at = r.out.find(key);
  REQUIRE(at != std::string::npos);
  const size_t start = at + key.size();
  return r.out.substr(start, r.out.find('"', start) - start);
}

// Checks that ProbeFormat agrees with qemu-img on the file at `path`.
void CheckAgreesWithQemu(const std::string& path) {
  const Probed ours = ProbeBytes(Head(path), Basename(path));
  const std::string theirs = QemuProbe(path);
  INFO("file " << Basename(path) << ": ours " << ours.format << ", qemu-img '" << theirs << "'");
  if (theirs.empty()) {
    CHECK(ours.format != "raw");
  } else {
    CHECK(ours.format == theirs);
  }
}

struct GeneratedImage {
  std::string label;
  std::string path;
  std::string format;  // what it must probe as
  int score;
};

std::string Create(const TempDir& dir, const std::string& name, const std::string& format,
                   const std::vector<std::string>& options) {
  const std::string path = dir.File(name);
  std::vector<std::string> argv = {"qemu-img", "create", "-q", "-f", format};
  for (const std::string& o : options) {
    argv.push_back("-o");
    argv.push_back(o);
  }
  argv.push_back(path);
  argv.push_back("4M");
  testing::CommandResult r = Run(argv);
  INFO("qemu-img create " << name << ": " << r.out);
  REQUIRE(r.exit_code == 0);
  return path;
}

// Every image qemu-img can create (bar LUKS, which is slow to make), made once per run.
const std::vector<GeneratedImage>& Images() {
  static TempDir dir;
  static const std::vector<GeneratedImage> images = [] {
    RequireQemuImg();
    std::vector<GeneratedImage> v;
    auto add = [&](std::string label, std::string path, std::string format, int score) {
      v.push_back({std::move(label), std::move(path), std::move(format), score});
    };
    add("qcow2 v3", Create(dir, "v3.qcow2", "qcow2", {"compat=1.1"}), "qcow2", 100);
    add("qcow2 v2", Create(dir, "v2.qcow2", "qcow2", {"compat=0.10"}), "qcow2", 100);
    add("qcow", Create(dir, "a.qcow", "qcow", {}), "qcow", 100);
    add("qed", Create(dir, "a.qed", "qed", {}), "qed", 100);
    add("vdi dynamic", Create(dir, "dynamic.vdi", "vdi", {}), "vdi", 100);
    add("vdi static", Create(dir, "static.vdi", "vdi", {"static=on"}), "vdi", 100);
    for (const char* sub : {"monolithicSparse", "streamOptimized", "monolithicFlat",
                            "twoGbMaxExtentSparse", "twoGbMaxExtentFlat"}) {
      add(std::string("vmdk ") + sub,
          Create(dir, std::string(sub) + ".vmdk", "vmdk", {std::string("subformat=") + sub}),
          "vmdk", 100);
    }
    // The extent files behind the descriptors: a sparse extent is itself a VMDK, a flat one is
    // plain data.
    add("vmdk sparse extent", dir.File("twoGbMaxExtentSparse-s001.vmdk"), "vmdk", 100);
    add("vmdk flat extent", dir.File("monolithicFlat-flat.vmdk"), "raw", 1);
    add("vmdk 2GB flat extent", dir.File("twoGbMaxExtentFlat-f001.vmdk"), "raw", 1);
    add("vpc dynamic", Create(dir, "dynamic.vpc", "vpc", {"subformat=dynamic"}), "vpc", 100);
    // A fixed VHD has its footer only at the end: QEMU probes it as raw.
    add("vpc fixed", Create(dir, "fixed.vpc", "vpc", {"subformat=fixed"}), "raw", 1);
    add("vhdx dynamic", Create(dir, "dynamic.vhdx", "vhdx", {}), "vhdx", 100);
    add("vhdx fixed", Create(dir, "fixed.vhdx", "vhdx", {"subformat=fixed"}), "vhdx", 100);
    add("parallels", Create(dir, "a.parallels", "parallels", {}), "parallels", 100);
    add("raw", Create(dir, "a.raw", "raw", {}), "raw", 1);
    return v;
  }();
  return images;
}

// Checks the probes on the first bytes of an image that must probe as `format` with `score`:
// ProbeFormat picks it, its own probe gives the score and every other probe says 0.
void CheckProbesAs(const std::string& head, std::string_view filename, const std::string& format,
                   int score) {
  const Probed best = ProbeBytes(head, filename);
  CHECK(best.format == format);
  CHECK(best.score == score);
  for (const NamedProbe& p : AllProbes()) {
    INFO("probe " << p.name);
    const int own = p.probe(Bytes(head), head.size(), filename);
    CHECK(own == (p.name == format ? score : 0));
  }
}

TEST_CASE("images made by qemu-img probe as their format with QEMU's score", "[probe]") {
  for (const GeneratedImage& image : Images()) {
    INFO(image.label);
    const std::string head = Head(image.path);
    REQUIRE(!head.empty());  // descriptor files are shorter than the probe buffer
    CheckProbesAs(head, Basename(image.path), image.format, image.score);
  }
}

TEST_CASE("ProbeFormat agrees with qemu-img on the images it made", "[probe]") {
  for (const GeneratedImage& image : Images()) CheckAgreesWithQemu(image.path);
}

TEST_CASE("a LUKS1 image made by qemu-img probes as luks, LUKS2 does not", "[probe]") {
  RequireQemuImg();
  TempDir dir;
  const std::string path = dir.File("a.luks");
  // cryptsetup writes a LUKS1 header deterministically in milliseconds. qemu-img's key-slot
  // setup benchmarks the CPU and, on a loaded machine, often fails to time it ("Unable to get
  // accurate CPU usage"), so it is only the fallback, with retries.
  testing::CommandResult r;
  if (testing::HaveProgram("cryptsetup")) {
    r = testing::Shell("truncate -s 4M '" + path + "' && printf pass | cryptsetup luksFormat -q "
                       "--type luks1 --pbkdf-force-iterations 1000 --key-file=- '" + path + "'");
  } else {
    for (int attempt = 0; attempt < 10; ++attempt) {
      r = Run({"qemu-img", "create", "-q", "-f", "luks", "--object", "secret,id=s0,data=pass",
               "-o", "key-secret=s0,iter-time=10", path, "1M"});
      if (r.exit_code == 0) break;
    }
  }
  INFO("creating the LUKS image: " << r.out);
  REQUIRE(r.exit_code == 0);
  std::string head = Head(path);
  CheckProbesAs(head, "a.luks", "luks", 100);

  // The same header claiming version 2 (LUKS2): QEMU 7.2 does not take it.
  head[6] = 0;
  head[7] = 2;
  CheckProbesAs(head, "a.luks", "raw", 1);

  if (!HaveProgram("cryptsetup")) {
    WARN("skipped cryptsetup images: cryptsetup not installed");
    return;
  }
  for (const char* type : {"luks1", "luks2"}) {
    const std::string file = dir.File(std::string(type) + ".img");
    WriteFile(file, std::string(16 << 20, '\0'));
    testing::CommandResult c =
        Run({"sh", "-c",
             std::string("echo -n pass | cryptsetup luksFormat -q --type ") + type +
                 " --pbkdf-force-iterations 1000 --pbkdf pbkdf2 --key-file - " + file});
    INFO("cryptsetup luksFormat " << type << ": " << c.out);
    REQUIRE(c.exit_code == 0);
    const bool v1 = std::string_view(type) == "luks1";
    CheckProbesAs(Head(file), "", v1 ? "luks" : "raw", v1 ? 100 : 1);
  }
}

TEST_CASE("the qcow2 magic with version 1 is qcow, with version >= 2 qcow2", "[probe]") {
  const GeneratedImage& image = Images().front();
  REQUIRE(image.format == "qcow2");
  std::string head = Head(image.path);
  auto set_version = [&](uint32_t v) {
    for (int i = 0; i < 4; ++i) head[4 + i] = char(v >> (24 - 8 * i));
  };
  set_version(1);
  CheckProbesAs(head, "", "qcow", 100);
  set_version(2);
  CheckProbesAs(head, "", "qcow2", 100);
  set_version(4);  // a future version is still qcow2's to accept or refuse
  CheckProbesAs(head, "", "qcow2", 100);
  set_version(0);
  CheckProbesAs(head, "", "raw", 1);
  set_version(0x01000000);  // version 1 in the wrong byte order
  CheckProbesAs(head, "", "qcow2", 100);
}

TEST_CASE("truncated buffers are safe and probe as the zero-padded start QEMU sees", "[probe]") {
  // Every probe on every prefix of every image: none reads past `len` (the copies are exactly
  // sized, so a sanitizer build catches an overrun) and none claims a prefix shorter than what
  // it checks.
  for (const GeneratedImage& image : Images()) {
    const std::string head = Head(image.path);
    for (size_t len = 0; len <= head.size(); ++len) {
      std::vector<uint8_t> prefix(head.begin(), head.begin() + len);
      for (const NamedProbe& p : AllProbes()) {
        const int score = p.probe(prefix.data(), len, "");
        CHECK((score >= 0 && score <= 100));
      }
      const Probed r = ProbeBytes(std::string(prefix.begin(), prefix.begin() + len));
      CHECK((r.score >= 1 && r.score <= 100));
    }
  }

  // Lengths 0, 3 and 7 give raw, except that QEMU decides qed and sparse VMDK on a 4-byte magic
  // alone: a 7-byte file starting "QED\0" or "KDMV" is probed as that format (and then fails to
  // open), and so is a 3-byte "QED", whose zero padding completes the magic. qcow2/qcow need the
  // version word, VPC/VHDX/parallels longer magics, LUKS the version, VDI offset 0x40.
  for (const GeneratedImage& image : Images()) {
    const std::string head = Head(image.path);
    for (size_t len : {size_t{0}, size_t{3}, size_t{7}}) {
      INFO(image.label << ", first " << len << " bytes");
      const Probed r = ProbeBytes(head.substr(0, len));
      const bool magic_only = (len >= 3 && image.format == "qed") ||
                              (len >= 4 && head.starts_with("KDMV"));
      if (magic_only) {
        CHECK(r.format == image.format);
      } else {
        CHECK(r.format == "raw");
        CHECK(r.score == 1);
      }
    }
  }
  // A null buffer of length 0 is an empty image.
  CHECK(Registry::Builtin().ProbeFormat(nullptr, 0, "empty.dmg").driver->name == "raw");
}

TEST_CASE("short files probe as QEMU probes them", "[probe]") {
  RequireQemuImg();
  TempDir dir;
  // A qcow2 magic and version with nothing after: qcow2's own probe wants a whole header, but
  // QEMU probes the zero-padded 512 bytes, and so does ProbeFormat.
  const std::string qcow2_start("QFI\xfb\0\0\0\3", 8);
  CHECK(qcow2::Probe(Bytes(qcow2_start), qcow2_start.size(), "") == 0);
  CHECK(ProbeBytes(qcow2_start).format == "qcow2");

  const std::vector<std::string> starts = {
      qcow2_start,
      std::string("QFI\xfb\0\0\0", 7),
      std::string("QED\0", 4),
      std::string("QED", 3),
      std::string("QE", 2),
      std::string("KDMV", 4),
      std::string("KDM", 3),
      std::string("conectix", 8),
      std::string("conecti", 7),
      std::string("LUKS\xba\xbe\0\1", 8),
      std::string("version=1\n"),
      std::string("version=1"),
  };
  for (size_t i = 0; i < starts.size(); ++i) {
    const std::string path = dir.File("short" + std::to_string(i) + ".img");
    WriteFile(path, starts[i]);
    CheckAgreesWithQemu(path);
  }
}

TEST_CASE("only the first 512 bytes are looked at", "[probe]") {
  RequireQemuImg();
  TempDir dir;
  // A comment line filling the first 511 bytes, then "version=1\n": a descriptor to a scanner
  // reading the whole buffer, but QEMU only sees the 'v'.
  std::string text = "#" + std::string(509, 'x') + "\n" + "version=1\n";
  REQUIRE(text.size() == 521);
  CHECK(vmdk::Probe(Bytes(text), text.size(), "") == 100);
  CHECK(ProbeBytes(text).format == "raw");
  const std::string path = dir.File("long-comment.vmdk");
  WriteFile(path, text);
  CheckAgreesWithQemu(path);
}

TEST_CASE("random bytes probe as raw", "[probe]") {
  std::mt19937 rng(20240229);
  std::uniform_int_distribution<int> byte(0, 255);
  for (int i = 0; i < 2000; ++i) {
    std::string buf(kProbeBufferSize, '\0');
    for (char& c : buf) c = char(byte(rng));
    CheckProbesAs(buf, "disk.img", "raw", 1);
  }
}

std::string Padded(std::string start) {
  start.resize(kProbeBufferSize, '\0');
  return start;
}

void PutLe32(std::string& buf, size_t offset, uint32_t v) {
  for (int i = 0; i < 4; ++i) buf[offset + i] = char(v >> (8 * i));
}

TEST_CASE("ties go to the format QEMU tries first", "[probe]") {
  // VDI's signature at 0x40 can coexist with another format's magic at 0. qemu-img 7.2 opens
  // these as: qed and parallels before vdi, vdi before the rest (checked by the error each open
  // reports, since none of these crafted files opens).
  struct Case {
    std::string start;
    std::string winner;
  };
  const std::vector<Case> cases = {
      {std::string("QFI\xfb\0\0\0\3", 8), "vdi"},
      {std::string("QFI\xfb\0\0\0\1", 8), "vdi"},
      {std::string("KDMV"), "vdi"},
      {std::string("COWD"), "vdi"},
      {std::string("# Disk DescriptorFile\nversion=1\n"), "vdi"},
      {std::string("conectix"), "vdi"},
      {std::string("vhdxfile"), "vdi"},
      {std::string("LUKS\xba\xbe\0\1", 8), "vdi"},
      {std::string("QED\0", 4), "qed"},
      {std::string("WithoutFreeSpace\2\0\0\0", 20), "parallels"},
      {std::string("WithouFreSpacExt\2\0\0\0", 20), "parallels"},
  };
  for (const Case& c : cases) {
    std::string buf = Padded(c.start);
    PutLe32(buf, 0x40, 0xbeda107f);
    INFO("start " << c.start);
    const Probed r = ProbeBytes(buf);
    CHECK(r.format == c.winner);
    CHECK(r.score == 100);
  }

  // The cloop preamble in a file named *.dmg: both score 2, dmg is tried first.
  const std::string cloop_start = Padded(
      "#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\n");
  CHECK(ProbeBytes(cloop_start, "x.dmg").format == "dmg");
  CHECK(ProbeBytes(cloop_start, "x.cloop").format == "cloop");
}

TEST_CASE("vmdk text descriptors are recognised by their first line, as QEMU does", "[probe]") {
  RequireQemuImg();
  TempDir dir;
  struct Case {
    std::string text;
    bool vmdk;
  };
  const std::vector<Case> cases = {
      {"version=1\n", true},
      {"version=2\n", true},
      {"version=3\n", true},
      {"version=4\n", false},
      {"version=0\n", false},
      {"version=1\r\n", true},
      {"version=1\rx", false},
      {"version=1 \n", false},
      {"version=1", false},  // no line end: QEMU's zero padding does not supply one
      {"\nversion=1\n", false},  // an empty line is not a blank line to QEMU
      {"   \nversion=1\n", true},
      {"  \r\nversion=1\n", true},
      {"  x\nversion=1\n", false},
      {"\tversion=1\n", false},
      {"# Disk DescriptorFile\n#\nversion=2\nCID=fffffffe\n", true},
      {"# Disk DescriptorFile\nCID=fffffffe\nversion=1\n", false},
      {"#only a comment", false},
      {"VERSION=1\n", false},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[i];
    INFO("descriptor text '" << c.text << "'");
    const std::string buf = Padded(c.text);
    CHECK(vmdk::Probe(Bytes(buf), buf.size(), "") == (c.vmdk ? 100 : 0));
    CHECK(ProbeBytes(c.text).format == (c.vmdk ? "vmdk" : "raw"));
    const std::string path = dir.File("text" + std::to_string(i) + ".img");
    WriteFile(path, buf);
    CheckAgreesWithQemu(path);
  }
}

std::string BochsHeader(std::string_view subtype, uint32_t version) {
  std::string h(kProbeBufferSize, '\0');
  h.replace(0, 22, "Bochs Virtual HD Image");
  h.replace(32, 7, "Redolog");
  h.replace(48, subtype.size(), subtype);
  PutLe32(h, 64, version);
  PutLe32(h, 68, 512);  // header size
  return h;
}

TEST_CASE("bochs: growing redolog images, version 1.0 or 2.0", "[probe]") {
  RequireQemuImg();
  TempDir dir;
  struct Case {
    std::string subtype;
    uint32_t version;
    bool bochs;
  };
  const std::vector<Case> cases = {
      {"Growing", 0x00020000, true},   {"Growing", 0x00010000, true},
      {"Growing", 0x00030000, false},  {"Growing", 0x00000002, false},
      {"Undoable", 0x00020000, false}, {"Volatile", 0x00020000, false},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[i];
    INFO("subtype " << c.subtype << ", version " << c.version);
    const std::string h = BochsHeader(c.subtype, c.version);
    CheckProbesAs(h, "", c.bochs ? "bochs" : "raw", c.bochs ? 100 : 1);
    const std::string path = dir.File("bochs" + std::to_string(i) + ".img");
    WriteFile(path, h);
    CheckAgreesWithQemu(path);
  }
  // The strings must end where the expected text ends.
  std::string h = BochsHeader("Growing", 0x00020000);
  h[22] = ' ';
  CHECK(bochs::Probe(Bytes(h), h.size(), "") == 0);
  h = BochsHeader("Growings", 0x00020000);
  CHECK(bochs::Probe(Bytes(h), h.size(), "") == 0);
  h = BochsHeader("Growing", 0x00020000);
  CHECK(bochs::Probe(Bytes(h), kProbeBufferSize - 1, "") == 0);

  if (!HaveProgram("bximage")) {
    WARN("skipped bximage images: bximage not installed");
    return;
  }
  const std::string path = dir.File("growing.bochs");
  testing::CommandResult r =
      Run({"bximage", "-q", "-func=create", "-hd=10M", "-imgmode=growing", path});
  INFO("bximage: " << r.out);
  REQUIRE(r.exit_code == 0);
  CheckProbesAs(Head(path), "", "bochs", 100);
}

TEST_CASE("cloop: the V2.0 preamble scores 2", "[probe]") {
  const std::string preamble =
      "#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\n";
  std::string header = Padded(preamble);
  header[128 + 2] = 0x01;  // block size 64 KiB, big-endian, after the 128-byte preamble area
  CheckProbesAs(header, "a.img", "cloop", 2);
  // Cut anywhere inside the preamble, it is not cloop (nor is the zero-padded rest).
  for (size_t len = 0; len < preamble.size(); ++len) {
    INFO("first " << len << " bytes");
    CHECK(cloop::Probe(Bytes(preamble), len, "") == 0);
    CHECK(ProbeBytes(preamble.substr(0, len)).format == "raw");
  }
  std::string other = header;
  other[13] = '1';  // "#V1.0 Format"
  CheckProbesAs(other, "", "raw", 1);

  if (!HaveProgram("create_compressed_fs")) {
    WARN("skipped create_compressed_fs images: cloop-utils not installed");
    return;
  }
  TempDir dir;
  const std::string input = dir.File("input.iso");
  const std::string path = dir.File("a.cloop");
  WriteFile(input, std::string(1 << 20, 'x'));
  testing::CommandResult r =
      Run({"sh", "-c", "create_compressed_fs -B 65536 " + input + " " + path});
  INFO("create_compressed_fs: " << r.out);
  REQUIRE(r.exit_code == 0);
  CheckProbesAs(Head(path), "a.cloop", "cloop", 2);
}

TEST_CASE("dmg is recognised by the .dmg suffix alone", "[probe]") {
  const std::string zeros(kProbeBufferSize, '\0');
  CheckProbesAs(zeros, "disk.dmg", "dmg", 2);
  CheckProbesAs(zeros, "/some/dir/x.dmg", "dmg", 2);
  CheckProbesAs(zeros, ".dmg", "raw", 1);  // nothing before the suffix
  CheckProbesAs(zeros, "disk.DMG", "raw", 1);
  CheckProbesAs(zeros, "disk.dmg.bak", "raw", 1);
  CheckProbesAs(zeros, "", "raw", 1);
  // Any header wins over the name.
  const std::string qed_start = Padded(std::string("QED\0", 4));
  CHECK(dmg::Probe(Bytes(qed_start), qed_start.size(), "disk.dmg") == 2);
  CHECK(ProbeBytes(qed_start, "disk.dmg").format == "qed");
}

TEST_CASE("parallels: both magics, version 2 only", "[probe]") {
  std::string h = Padded("WithouFreSpacExt");
  PutLe32(h, 16, 2);
  CheckProbesAs(h, "", "parallels", 100);
  PutLe32(h, 16, 3);
  CheckProbesAs(h, "", "raw", 1);
  h = Padded("WithoutFreeSpace");
  PutLe32(h, 16, 2);
  CheckProbesAs(h, "", "parallels", 100);
  CHECK(parallels::Probe(Bytes(h), 63, "") == 0);  // the header is 64 bytes
}

TEST_CASE("vdi: the signature is little-endian at 0x40", "[probe]") {
  std::string h(kProbeBufferSize, '\0');
  PutLe32(h, 0x40, 0xbeda107f);
  CheckProbesAs(h, "", "vdi", 100);
  h.assign(kProbeBufferSize, '\0');
  PutLe32(h, 0x40, 0x7f10dabe);  // byte-swapped
  CheckProbesAs(h, "", "raw", 1);
  h.assign(kProbeBufferSize, '\0');
  PutLe32(h, 0, 0xbeda107f);  // at the wrong offset
  CheckProbesAs(h, "", "raw", 1);
}

}  // namespace
}  // namespace libblock
