// The raw format driver: the offset/size window, its option errors (QEMU's texts), child
// role and permissions, the probed-image sector-0 guard (compared with qemu-io), create
// (compared with qemu-img info), and both-direction interop with qemu-io/qemu-img on plain
// raw files (contents, compare, map).
#include <algorithm>
#include <catch2/catch.hpp>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/backend.h"
#include "core/graph.h"
#include "core/options.h"
#include "nlohmann/json.hpp"
#include "test_support.h"
#include "util/checked_math.h"
#include "util/status.h"

namespace libblock {
namespace {

using testing::AllocatedBytes;
using testing::FileSize;
using testing::HaveProgram;
using testing::kKiB;
using testing::kMiB;
using testing::RandomBytes;
using testing::ReadFile;
using testing::Run;
using testing::WriteFile;

// A qcow2 v3 header start: enough for every prober to call the sector qcow2.
const std::string kQcow2Header("QFI\xfb\x00\x00\x00\x03", 8);

// "driver=raw,<extra>,file.driver=file,file.filename=<path>": raw's options ahead of the file
// child's (testing::RawFileOpts appends them instead).
std::string RawOpts(const std::string& path, const std::string& extra = "") {
  return "driver=raw," + (extra.empty() ? "" : extra + ",") + "file.driver=file,file.filename=" + path;
}

struct Fixture : testing::GraphEnv {
  // The message of an open that must fail.
  std::string OpenError(const std::string& opts) {
    auto be = OpenBackend(opts);
    REQUIRE_FALSE(be.ok());
    return std::string(be.status().message());
  }
};

// qemu-io's "can't open: <message>" text for `opts`, or "" when it opened.
std::string QemuOpenError(const std::string& opts) {
  testing::CommandResult r = Run({"qemu-io", "--image-opts", opts, "-c", "read 0 0"});
  size_t at = r.out.find("can't open: ");
  if (r.exit_code == 0 || at == std::string::npos) return "";
  std::string msg = r.out.substr(at + 12);
  return msg.substr(0, msg.find('\n'));
}

// ---- offset/size window ------------------------------------------------------------------------

TEST_CASE("an offset/size window maps guest bytes to file bytes", "[raw]") {
  Fixture f;
  std::string path = f.dir.File("w.img");
  std::string file = RandomBytes(1 * kMiB, 1);
  WriteFile(path, file);
  const int64_t off = 64 * kKiB, size = 128 * kKiB;
  {
    auto be = f.MustOpenBackend(RawOpts(path, "offset=64k,size=128k"));
    REQUIRE(be->size() == size);
    REQUIRE_BYTES(f.Read(*be, 0, size), file.substr(off, size));
    REQUIRE_BYTES(f.Read(*be, 777, 3333), file.substr(off + 777, 3333));

    // An unaligned write lands at offset+1000 in the file, and nowhere else.
    std::string data = RandomBytes(5000, 2);
    REQUIRE(be->PwriteSync(1000, data.data(), 5000).ok());
    file.replace(off + 1000, 5000, data);
    REQUIRE(f.loop->Run(be->WriteZeroes(size - 4096, 4096)).ok());
    file.replace(off + size - 4096, 4096, std::string(4096, '\0'));
    REQUIRE_BYTES(ReadFile(path), file);

    // Through a backend, the device ends at the window's end (QEMU's blk bounds: EIO).
    std::string buf(1024, 'x');
    REQUIRE(StatusErrno(be->PreadSync(size - 512, buf.data(), 1024)) == EIO);
    REQUIRE(StatusErrno(be->PreadSync(size, buf.data(), 1)) == EIO);
    REQUIRE(StatusErrno(be->PwriteSync(size - 512, buf.data(), 1024)) == EIO);
    // Node level, a read past the window's end reads zeroes, not the file's bytes after it.
    buf.assign(1024, 'x');
    REQUIRE(f.loop->Run(be->root_child()->Pread(size - 512, buf.data(), 1024)).ok());
    REQUIRE_BYTES(buf.substr(0, 512), file.substr(off + size - 512, 512));
    REQUIRE_BYTES(buf.substr(512), std::string(512, '\0'));
  }
  REQUIRE_BYTES(ReadFile(path), file);

  // A node-level write past the fixed size is refused by raw itself (ENOSPC), even with
  // the resize permission and writes past EOF allowed above it; so are zeroes and discard.
  {
    auto be = f.MustOpenBackend(RawOpts(path, "offset=64k,size=128k,discard=unmap"),
                                {.resize = true, .allow_write_beyond_eof = true});
    std::string buf(1024, 'y');
    REQUIRE(StatusErrno(be->PwriteSync(size - 512, buf.data(), 1024)) == ENOSPC);
    REQUIRE(StatusErrno(be->PwriteSync(size + 4096, buf.data(), 512)) == ENOSPC);
    REQUIRE(StatusErrno(f.loop->Run(be->WriteZeroes(size, 4096))) == ENOSPC);
    REQUIRE(StatusErrno(f.loop->Run(be->root_child()->Discard(size - 4096, 8192))) == ENOSPC);
    // Inside the window the same edge writes.
    REQUIRE(be->PwriteSync(size - 1024, buf.data(), 1024).ok());
    file.replace(off + size - 1024, 1024, buf);
  }
  REQUIRE_BYTES(ReadFile(path), file);
  REQUIRE(FileSize(path) == 1 * kMiB);
}

TEST_CASE("qemu-io reads what libblock wrote through the same window", "[raw]") {
  LB_SKIP_UNLESS(HaveProgram("qemu-io"), "qemu-io not installed");
  Fixture f;
  std::string path = f.dir.File("w.img");
  WriteFile(path, RandomBytes(512 * kKiB, 3));
  std::string opts = RawOpts(path, "offset=4096,size=256k");
  {
    auto be = f.MustOpenBackend(opts);
    std::string a(10000, '\x5a');
    REQUIRE(be->PwriteSync(12345, a.data(), 10000).ok());
  }
  testing::CommandResult r = Run({"qemu-io", "--image-opts", opts, "-c", "read -P 0x5a 12345 10000"});
  INFO(r.out);
  REQUIRE(r.exit_code == 0);
  // ...and not at the unshifted offset.
  r = Run({"qemu-io", "-f", "raw", "-c", "read -P 0x5a 12345 10000", path});
  REQUIRE(r.exit_code == 1);
  r = Run({"qemu-io", "-f", "raw", "-c", "read -P 0x5a 16441 10000", path});
  REQUIRE(r.exit_code == 0);
}

TEST_CASE("raw option errors use QEMU's texts", "[raw]") {
  Fixture f;
  std::string path = f.dir.File("e.img");
  WriteFile(path, std::string(1 * kMiB, '\0'));
  struct Case {
    std::string extra, message;
  };
  std::vector<Case> cases = {
      {"size=1000", "Specified size is not multiple of 512"},
      {"offset=2M", "Offset (2097152) cannot be greater than size of the containing file (1048576)"},
      {"offset=512k,size=1M",
       "The sum of offset (524288) and size (1048576) has to be smaller or equal to the  actual "
       "size of the containing file (1048576)"},
      {"offset=1,size=1M",
       "The sum of offset (1) and size (1048576) has to be smaller or equal to the  actual size "
       "of the containing file (1048576)"},
      // Offsets are unsigned in QEMU: one past INT64_MAX is still far beyond the file.
      {"offset=9223372036854775808",
       "Offset (9223372036854775808) cannot be greater than size of the containing file (1048576)"},
      {"offset=18446744073709551104",
       "Offset (18446744073709551104) cannot be greater than size of the containing file (1048576)"},
  };
  bool qemu = HaveProgram("qemu-io");
  for (const Case& c : cases) {
    std::string opts = RawOpts(path, c.extra);
    INFO(opts);
    REQUIRE(f.OpenError(opts) == c.message);
    if (qemu) REQUIRE(QemuOpenError(opts) == c.message);
  }
  REQUIRE(f.graph.nodes().empty());  // failed opens leave nothing behind

  // The edges: a window ending exactly at EOF, and an empty one at EOF, are fine.
  auto a = f.MustOpenBackend(RawOpts(path, "offset=512k,size=512k"), {.read_only = true});
  REQUIRE(a->size() == 512 * kKiB);
  auto b = f.MustOpenBackend(RawOpts(path, "offset=1M"), {.read_only = true});
  REQUIRE(b->size() == 0);
  // Without size the window is the rest of the file, whatever the offset's alignment; like
  // every node length it is reported in whole sectors (QEMU: 1048064 as well).
  auto c = f.MustOpenBackend(RawOpts(path, "offset=1000"), {.read_only = true});
  REQUIRE(c->size() == AlignUp<int64_t>(1 * kMiB - 1000, kSectorSize));
}

TEST_CASE("truncate: fixed-size windows refuse, offset-only windows resize the file", "[raw]") {
  Fixture f;
  std::string path = f.dir.File("t.img");
  std::string file = RandomBytes(256 * kKiB, 4);
  WriteFile(path, file);
  {
    auto be = f.MustOpenBackend(RawOpts(path, "offset=64k,size=64k"), {.resize = true});
    absl::Status st = f.loop->Run(be->Truncate(128 * kKiB, true, PreallocMode::kOff));
    REQUIRE(StatusErrno(st) == ENOTSUP);
    REQUIRE(st.message() == "Cannot resize fixed-size raw disks");
    REQUIRE(be->size() == 64 * kKiB);
  }
  REQUIRE(FileSize(path) == 256 * kKiB);
  {
    auto be = f.MustOpenBackend(RawOpts(path, "offset=64k"), {.resize = true});
    REQUIRE(be->size() == 192 * kKiB);
    REQUIRE(f.loop->Run(be->Truncate(1 * kMiB, true, PreallocMode::kOff)).ok());
    REQUIRE(FileSize(path) == 64 * kKiB + 1 * kMiB);
    REQUIRE(be->size() == 1 * kMiB);
    // The grown part reads as zeroes, the old part is intact.
    REQUIRE_BYTES(f.Read(*be, 0, 192 * kKiB), file.substr(64 * kKiB));
    REQUIRE_BYTES(f.Read(*be, 192 * kKiB, 1 * kMiB - 192 * kKiB), std::string(1 * kMiB - 192 * kKiB, '\0'));
    // Shrinking cuts the file at offset+size.
    REQUIRE(f.loop->Run(be->Truncate(100 * kKiB, true, PreallocMode::kOff)).ok());
    REQUIRE(FileSize(path) == 164 * kKiB);
    REQUIRE(be->size() == 100 * kKiB);
  }
  REQUIRE_BYTES(ReadFile(path), file.substr(0, 164 * kKiB));
  if (HaveProgram("qemu-io")) {
    // QEMU does the same: truncate N on an offset window makes the file offset+N long.
    testing::CommandResult r =
        Run({"qemu-io", "--image-opts", RawOpts(path, "offset=64k"), "-c", "truncate 1M"});
    INFO(r.out);
    REQUIRE(r.exit_code == 0);
    REQUIRE(FileSize(path) == 64 * kKiB + 1 * kMiB);
    r = Run({"qemu-io", "--image-opts", RawOpts(path, "offset=64k,size=64k"), "-c", "truncate 1M"});
    REQUIRE(r.out.find("Cannot resize fixed-size raw disks") != std::string::npos);
  }
}

// ---- child role and permissions --------------------------------------------------------------

TEST_CASE("raw's file child: filtered without a window, data with one", "[raw][perm]") {
  Fixture f;
  std::string path = f.dir.File("p.img");
  WriteFile(path, std::string(256 * kKiB, '\0'));
  auto file_edge = [](Backend& be) {
    Child* c = be.root()->FindChild("file");
    REQUIRE(c);
    return c;
  };
  SECTION("no offset/size: filtered, permissions pass through") {
    auto ro = f.MustOpenBackend(RawOpts(path), {.read_only = true});
    Child* c = file_edge(*ro);
    REQUIRE(c->role() == (kRoleFiltered | kRolePrimary));
    REQUIRE(c->perm() == kPermConsistentRead);
    REQUIRE(c->node()->perm() == kPermConsistentRead);
    ro.reset();
    auto rw = f.MustOpenBackend(RawOpts(path));
    c = file_edge(*rw);
    REQUIRE(c->perm() == (kPermConsistentRead | kPermWrite));  // no resize: nobody asked
    REQUIRE(c->node()->perm() == (kPermConsistentRead | kPermWrite));
    REQUIRE(c->shared() == rw->shared());
    rw.reset();
    auto rs = f.MustOpenBackend(RawOpts(path), {.resize = true});
    REQUIRE(file_edge(*rs)->perm() == (kPermConsistentRead | kPermWrite | kPermResize));
  }
  SECTION("with an offset: data|primary, but write/resize only when raw's users need them") {
    auto ro = f.MustOpenBackend(RawOpts(path, "offset=4096"), {.read_only = true});
    Child* c = file_edge(*ro);
    REQUIRE(c->role() == (kRoleData | kRolePrimary));
    REQUIRE(c->perm() == kPermConsistentRead);
    ro.reset();
    auto rw = f.MustOpenBackend(RawOpts(path, "offset=4096,size=64k"));
    c = file_edge(*rw);
    REQUIRE(c->role() == (kRoleData | kRolePrimary));
    REQUIRE(c->perm() == (kPermConsistentRead | kPermWrite));
    REQUIRE((c->node()->perm() & kPermResize) == 0);
    rw.reset();
    auto rs = f.MustOpenBackend(RawOpts(path, "offset=4096"), {.resize = true});
    REQUIRE(file_edge(*rs)->perm() == (kPermConsistentRead | kPermWrite | kPermResize));
  }
  SECTION("two read-write raw users of one file do not conflict over resize") {
    // Each raw node shares what its own backend shares; neither holds resize, so a second
    // writer that shares write is accepted.
    auto a = f.MustOpenBackend(RawOpts(path, "offset=0,size=64k"), {.share_rw = true});
    auto b = f.OpenBackend(
        "driver=raw,offset=64k,size=64k,file=" + a->root()->FindChild("file")->node()->name(),
        {.share_rw = true});
    INFO(b.status().ToString());
    REQUIRE(b.ok());
    REQUIRE(((*b)->root()->FindChild("file")->node()->perm() & kPermResize) == 0);
  }
}

// ---- probing and the sector-0 guard ------------------------------------------------------------

TEST_CASE("a probed raw image refuses writes that would make sector 0 probe as a format", "[raw]") {
  Fixture f;
  std::string path = f.dir.File("probed.img");
  std::string file = RandomBytes(64 * kKiB, 5);
  file.replace(0, 512, std::string(512, '\0'));
  WriteFile(path, file);
  auto be = f.MustOpenBackend("", {}, path);
  Node* raw = be->root();
  REQUIRE(raw->driver().name == "raw");
  REQUIRE(raw->flags().probed);
  REQUIRE(raw->limits().request_alignment == 512);
  REQUIRE(raw->FindChild("file")->node()->limits().request_alignment == 1);
  REQUIRE(f.warnings.size() == 1);
  REQUIRE(f.warnings[0].find("probing guessed raw") != std::string::npos);

  auto write = [&](int64_t off, const std::string& data) {
    return be->PwriteSync(off, data.data(), static_cast<int64_t>(data.size()));
  };
  // A qcow2 header at 0, as a partial sector, a whole sector, or inside a larger write.
  REQUIRE(StatusErrno(write(0, kQcow2Header)) == EPERM);
  std::string sector = kQcow2Header + std::string(504, '\0');
  REQUIRE(StatusErrno(write(0, sector)) == EPERM);
  REQUIRE(StatusErrno(write(0, sector + RandomBytes(8192, 6))) == EPERM);
  REQUIRE_BYTES(ReadFile(path), file);

  // Other places and other contents are fine.
  REQUIRE(write(1, "QFI\xfb").ok());
  file.replace(1, 4, "QFI\xfb");
  REQUIRE(write(512, sector).ok());
  file.replace(512, 512, sector);
  REQUIRE(write(0, std::string(4096, '\0')).ok());
  file.replace(0, 4096, std::string(4096, '\0'));
  std::string noise = RandomBytes(1024, 7);
  REQUIRE(write(0, noise).ok());
  file.replace(0, 1024, noise);
  REQUIRE_BYTES(ReadFile(path), file);

  // A 1-byte write is judged by the whole sector it produces: "QFI\0" + version is not a
  // header, completing the magic at offset 3 makes one.
  REQUIRE(write(0, std::string("QFI\x00\x00\x00\x00\x03", 8)).ok());
  file.replace(0, 8, std::string("QFI\x00\x00\x00\x00\x03", 8));
  REQUIRE(write(3, "\xfa").ok());
  file[3] = '\xfa';
  REQUIRE(StatusErrno(write(3, "\xfb")) == EPERM);
  REQUIRE_BYTES(ReadFile(path), file);
  // Write-zeroes can never create a header.
  REQUIRE(f.loop->Run(be->WriteZeroes(0, 512)).ok());
  file.replace(0, 512, std::string(512, '\0'));
  REQUIRE_BYTES(ReadFile(path), file);
}

TEST_CASE("an explicitly raw image may get any sector 0, and is not sector-aligned", "[raw]") {
  Fixture f;
  std::string path = f.dir.File("explicit.img");
  WriteFile(path, std::string(64 * kKiB, '\0'));
  {
    auto be = f.MustOpenBackend(RawOpts(path));
    REQUIRE_FALSE(be->root()->flags().probed);
    REQUIRE(be->root()->limits().request_alignment == 1);
    REQUIRE(f.warnings.empty());
    REQUIRE(be->PwriteSync(0, kQcow2Header.data(), 8).ok());
  }
  REQUIRE_BYTES(ReadFile(path).substr(0, 8), kQcow2Header);
  // A read-only probed open warns about nothing: it cannot write sector 0.
  WriteFile(path, std::string(64 * kKiB, '\0'));
  auto ro = f.MustOpenBackend("", {.read_only = true}, path);
  REQUIRE(ro->root()->flags().probed);
  REQUIRE(f.warnings.empty());
}

TEST_CASE("the sector-0 guard matches qemu-io's", "[raw]") {
  LB_SKIP_UNLESS(HaveProgram("qemu-io"), "qemu-io not installed");
  Fixture f;
  std::string hdr = f.dir.File("hdr");
  WriteFile(hdr, kQcow2Header);
  std::string base = RandomBytes(64 * kKiB, 8);
  base.replace(0, 512, std::string(512, '\0'));
  struct Case {
    std::string name;
    bool explicit_raw;
    int64_t offset;
    std::string data;
  };
  std::vector<Case> cases = {
      {"qcow2 header at 0, probed", false, 0, kQcow2Header},
      {"qcow2 header at 0, driver=raw", true, 0, kQcow2Header},
      {"qcow2 header at 1, probed", false, 1, kQcow2Header},
      {"qcow2 header at 512, probed", false, 512, kQcow2Header},
      {"zeroes at 0, probed", false, 0, std::string(600, '\0')},
  };
  for (const Case& c : cases) {
    INFO(c.name);
    std::string ours = f.dir.File("ours.img"), theirs = f.dir.File("theirs.img");
    WriteFile(ours, base);
    WriteFile(theirs, base);
    WriteFile(hdr, c.data);
    std::vector<std::string> argv = {"qemu-io"};
    if (c.explicit_raw) argv.insert(argv.end(), {"-f", "raw"});
    argv.insert(argv.end(), {"-c", "write -s " + hdr + " " + std::to_string(c.offset) + " " +
                                       std::to_string(c.data.size()),
                             theirs});
    testing::CommandResult r = Run(argv);
    bool qemu_ok = r.out.find("Operation not permitted") == std::string::npos;
    INFO(r.out);
    REQUIRE(r.exit_code == (qemu_ok ? 0 : 1));
    absl::Status st;
    {
      auto be = c.explicit_raw ? f.MustOpenBackend(RawOpts(ours)) : f.MustOpenBackend("", {}, ours);
      st = be->PwriteSync(c.offset, c.data.data(), static_cast<int64_t>(c.data.size()));
    }
    REQUIRE(st.ok() == qemu_ok);
    if (!st.ok()) REQUIRE(StatusErrno(st) == EPERM);
    REQUIRE_BYTES(ReadFile(ours), ReadFile(theirs));
  }
  // The 1-byte write that completes a header: refused by both.
  std::string ours = f.dir.File("ours.img"), theirs = f.dir.File("theirs.img");
  std::string almost = base;
  almost.replace(0, 8, std::string("QFI\x00\x00\x00\x00\x03", 8));
  WriteFile(ours, almost);
  WriteFile(theirs, almost);
  testing::CommandResult r = Run({"qemu-io", "-c", "write -P 0xfb 3 1", theirs});
  REQUIRE(r.out.find("Operation not permitted") != std::string::npos);
  {
    auto be = f.MustOpenBackend("", {}, ours);
    REQUIRE(StatusErrno(be->PwriteSync(3, "\xfb", 1)) == EPERM);
  }
  REQUIRE_BYTES(ReadFile(ours), ReadFile(theirs));
}

// ---- create ------------------------------------------------------------------------------------

TEST_CASE("raw create makes the file, with the requested preallocation", "[raw]") {
  Fixture f;
  bool qemu = HaveProgram("qemu-img");
  for (std::string mode : {"off", "falloc", "full"}) {
    INFO(mode);
    std::string path = f.dir.File("c-" + mode + ".img");
    auto o = ParseKeyValueOptions("size=1M,preallocation=" + mode);
    REQUIRE(o.ok());
    absl::Status st = f.graph.Create(path, "raw", std::move(*o));
    INFO(st.ToString());
    REQUIRE(st.ok());
    REQUIRE(FileSize(path) == 1 * kMiB);
    if (mode == "off") {
      REQUIRE(AllocatedBytes(path) < 1 * kMiB);
    } else {
      REQUIRE(AllocatedBytes(path) >= 1 * kMiB);
    }
    REQUIRE_BYTES(ReadFile(path), std::string(1 * kMiB, '\0'));
    if (qemu) {
      testing::CommandResult r = Run({"qemu-img", "info", "--output=json", "-f", "raw", path});
      INFO(r.out);
      REQUIRE(r.exit_code == 0);
      REQUIRE(nlohmann::json::parse(r.out)["virtual-size"] == 1 * kMiB);
    }
    // And it opens as a 1M raw disk.
    auto be = f.MustOpenBackend(RawOpts(path), {.read_only = true});
    REQUIRE(be->size() == 1 * kMiB);
  }
  // Creating over an existing file truncates it.
  std::string path = f.dir.File("c-off.img");
  WriteFile(path, std::string(3 * kMiB, 'x'));
  REQUIRE(f.graph.Create(path, "raw", *ParseKeyValueOptions("size=64k")).ok());
  REQUIRE_BYTES(ReadFile(path), std::string(64 * kKiB, '\0'));

  absl::Status st = f.graph.Create(f.dir.File("bad.img"), "raw", *ParseKeyValueOptions("size=1M,bogus=1"));
  REQUIRE_FALSE(st.ok());
  REQUIRE(std::string(st.message()).find("bogus") != std::string::npos);
  st = f.graph.Create(f.dir.File("bad.img"), "raw", *ParseKeyValueOptions("size=1M,preallocation=sparse"));
  REQUIRE_FALSE(st.ok());
  REQUIRE(std::string(st.message()).find("sparse") != std::string::npos);
}

}  // namespace
}  // namespace libblock
