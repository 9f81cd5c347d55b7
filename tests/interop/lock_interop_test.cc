// Image locking against real QEMU processes (DESIGN.md §1.2): a VM in QEMU and a program
// linked with libblock must refuse each other exactly as two QEMUs do. qemu-io holds images in
// the background (`-c 'sleep N'`) while libblock opens them, and qemu-io/qemu-img are refused
// (or not) while libblock holds them; the lock bytes in /proc/locks are compared with QEMU's.
// Also: two Graphs on one loop (locks belong to the open file description, not the process)
// and the POSIX-lock fallback, whose locks still conflict with QEMU's OFD locks on Linux.
// Exits 77 when qemu-img or qemu-io is missing.
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "core/backend.h"
#include "core/graph.h"
#include "test_support.h"
#include "util/status.h"

namespace libblock {
namespace {

using testing::Background;
using testing::LockedBytes;
using testing::Message;
using testing::OfdOverride;
using testing::RawFileOpts;
using testing::Run;
using testing::WriteFile;

using Bytes = std::vector<int64_t>;
// What QEMU holds (test-peers.md §7, and checked again below).
const Bytes kQemuQcow2Rw = {100, 101, 103, 201, 203};  // metadata child: write+resize, shares neither
const Bytes kQemuRawRw = {100, 101};                   // qemu-io's raw: holds read+write, shares all
// What a libblock Backend with the default (device-style) sharing holds.
const Bytes kLibRw = {100, 101, 201, 203};
const Bytes kLibRo = {100, 201, 203};

std::string Busy(const std::string& path) { return "Is another process using the image [" + path + "]?"; }

// Waits (up to 10 s) until `path` carries exactly `want`; returns what it last saw.
Bytes WaitForLocks(const std::string& path, Background& holder, const Bytes& want) {
  Bytes seen;
  for (int i = 0; i < 1000; ++i) {
    seen = LockedBytes(path);
    if (seen == want || !holder.Running()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return seen;
}

std::unique_ptr<Background> HoldWithQemuIo(const std::string& fmt, const std::string& path,
                                           const Bytes& want) {
  auto holder = std::make_unique<Background>(
      std::vector<std::string>{"qemu-io", "-f", fmt, "-c", "sleep 60000", path});
  REQUIRE(holder->pid() > 0);
  REQUIRE(WaitForLocks(path, *holder, want) == want);
  REQUIRE(holder->Running());
  return holder;
}

// The shared env, plus images made by qemu-img or filled with zeroes.
struct Env : testing::GraphEnv {
  std::string MakeQcow2(const std::string& name) {
    std::string path = dir.File(name);
    testing::CommandResult r = Run({"qemu-img", "create", "-q", "-f", "qcow2", path, "1M"});
    INFO(r.out);
    REQUIRE(r.exit_code == 0);
    return path;
  }
  std::string MakeRaw(const std::string& name) {
    std::string path = dir.File(name);
    WriteFile(path, std::string(1 << 20, '\0'));
    return path;
  }
};

// ---- QEMU holds, libblock opens ---------------------------------------------------------------

TEST_CASE("a qcow2 image held read-write by qemu-io refuses libblock as it refuses QEMU", "[lock][interop]") {
  Env env;
  std::string img = env.MakeQcow2("held.qcow2");
  auto holder = HoldWithQemuIo("qcow2", img, kQemuQcow2Rw);

  for (std::string opts : {RawFileOpts(img), "driver=file,filename=" + img}) {
    INFO(opts);
    auto writer = env.OpenBackend(opts);
    REQUIRE_FALSE(writer.ok());
    REQUIRE_THAT(Message(writer.status()),
                 Catch::Contains("Failed to get \"write\" lock") && Catch::Contains(Busy(img)));
  }
  // A reader that does not share write is refused too (QEMU: qemu-img info, qemu-io -r).
  auto reader = env.OpenBackend(RawFileOpts(img), {.read_only = true});
  REQUIRE_THAT(Message(reader.status()),
               Catch::Contains("Failed to get shared \"write\" lock") && Catch::Contains(Busy(img)));
  REQUIRE(LockedBytes(img) == kQemuQcow2Rw);  // our failed attempts left nothing behind

  // force-share (qemu-img -U) reads anyway, holding only consistent-read.
  auto shared = env.MustOpenBackend(RawFileOpts(img, "read-only=on,force-share=on"), {.read_only = true});
  REQUIRE(LockedBytes(img) == Bytes{100, 100, 101, 103, 201, 203});
  std::string magic(4, '\0');
  REQUIRE(shared->PreadSync(0, magic.data(), 4).ok());
  REQUIRE(magic == "QFI\xfb");
  REQUIRE(shared->Close().ok());

  holder.reset();  // SIGKILL: the kernel drops its locks with its descriptors
  REQUIRE(LockedBytes(img).empty());
  auto writer = env.MustOpenBackend(RawFileOpts(img));
  REQUIRE(LockedBytes(img) == kLibRw);
}

TEST_CASE("a raw image held read-write by qemu-io refuses libblock writers that do not share write",
          "[lock][interop]") {
  Env env;
  std::string img = env.MakeRaw("held.raw");
  auto holder = HoldWithQemuIo("raw", img, kQemuRawRw);

  // qemu-io lets others write, but libblock's default device does not let qemu-io write.
  auto writer = env.OpenBackend(RawFileOpts(img));
  REQUIRE_THAT(Message(writer.status()),
               Catch::Contains("Failed to get shared \"write\" lock") && Catch::Contains(Busy(img)));
  REQUIRE(LockedBytes(img) == kQemuRawRw);
  // With share-rw both may write; libblock still keeps resize to itself.
  auto sharing = env.MustOpenBackend(RawFileOpts(img), {.share_rw = true});
  REQUIRE(LockedBytes(img) == Bytes{100, 100, 101, 101, 203});
  std::string data = "written while qemu-io holds the image";
  REQUIRE(sharing->PwriteSync(4096, data.data(), static_cast<int64_t>(data.size())).ok());
  REQUIRE(env.loop->Run(sharing->Flush()).ok());
  REQUIRE(testing::ReadFile(img).substr(4096, data.size()) == data);
}

// ---- libblock holds, QEMU opens ---------------------------------------------------------------

TEST_CASE("an image held by libblock refuses qemu-img and qemu-io as a QEMU holder would", "[lock][interop]") {
  Env env;
  SECTION("qcow2 held read-write (as raw): qemu-img info is refused, info -U works") {
    std::string img = env.MakeQcow2("lib.qcow2");
    auto be = env.MustOpenBackend(RawFileOpts(img));
    REQUIRE(LockedBytes(img) == kLibRw);
    testing::CommandResult info = Run({"qemu-img", "info", img});
    INFO(info.out);
    REQUIRE(info.exit_code == 1);
    REQUIRE_THAT(info.out, Catch::Contains("Failed to get shared \"write\" lock") && Catch::Contains(Busy(img)));
    testing::CommandResult forced = Run({"qemu-img", "info", "-U", img});
    INFO(forced.out);
    REQUIRE(forced.exit_code == 0);
    REQUIRE_THAT(forced.out, Catch::Contains("file format: qcow2"));
  }
  SECTION("raw held read-write: qemu-io cannot write, qemu-img info can read; after Close it can write") {
    std::string img = env.MakeRaw("lib.raw");
    auto be = env.MustOpenBackend(RawFileOpts(img));
    testing::CommandResult w = Run({"qemu-io", "-f", "raw", "-c", "write -P 0x5a 0 512", img});
    INFO(w.out);
    REQUIRE(w.exit_code != 0);
    REQUIRE_THAT(w.out, Catch::Contains("Failed to get \"write\" lock") && Catch::Contains(Busy(img)));
    // QEMU's own rule: `info` on a raw image only reads and shares everything (the raw
    // format unshares nothing), so a writer that does not share write does not stop it.
    testing::CommandResult info = Run({"qemu-img", "info", "-f", "raw", img});
    INFO(info.out);
    REQUIRE(info.exit_code == 0);
    REQUIRE(LockedBytes(img) == kLibRw);  // and it left nothing behind

    REQUIRE(be->Close().ok());
    REQUIRE(LockedBytes(img).empty());
    w = Run({"qemu-io", "-f", "raw", "-c", "write -P 0x5a 0 512", img});
    INFO(w.out);
    REQUIRE(w.exit_code == 0);
    auto again = env.MustOpenBackend(RawFileOpts(img), {.read_only = true});
    std::string back(512, '\0');
    REQUIRE(again->PreadSync(0, back.data(), 512).ok());
    REQUIRE(back == std::string(512, '\x5a'));
  }
  SECTION("held read-only: QEMU readers coexist, QEMU writers do not") {
    std::string img = env.MakeQcow2("ro.qcow2");
    auto be = env.MustOpenBackend(RawFileOpts(img), {.read_only = true});
    REQUIRE(LockedBytes(img) == kLibRo);
    testing::CommandResult info = Run({"qemu-img", "info", img});
    INFO(info.out);
    REQUIRE(info.exit_code == 0);
    testing::CommandResult w = Run({"qemu-io", "-f", "qcow2", "-c", "write 0 512", img});
    INFO(w.out);
    REQUIRE(w.exit_code != 0);
    REQUIRE_THAT(w.out, Catch::Contains("Failed to get \"write\" lock"));
  }
  SECTION("locking=off holds nothing and stops nobody") {
    std::string img = env.MakeRaw("off.raw");
    auto be = env.MustOpenBackend(RawFileOpts(img, "file.locking=off"));
    REQUIRE(LockedBytes(img).empty());
    testing::CommandResult w = Run({"qemu-io", "-f", "raw", "-c", "write 0 512", img});
    INFO(w.out);
    REQUIRE(w.exit_code == 0);
  }
}

// ---- within one process --------------------------------------------------------------------

TEST_CASE("two graphs on one loop conflict like two processes", "[lock][interop]") {
  Env env;
  std::string img = env.MakeRaw("two.raw");
  Graph other(*env.loop);
  auto first = env.MustOpenBackend(RawFileOpts(img));
  auto second = testing::OpenBackend(other, RawFileOpts(img));
  REQUIRE_FALSE(second.ok());
  REQUIRE_THAT(Message(second.status()), Catch::Contains("Failed to get \"write\" lock") &&
                                             Catch::Contains(Busy(img)));
  auto reader = testing::MustOpenBackend(other, RawFileOpts(img), {.read_only = true, .share_rw = true});
  REQUIRE(LockedBytes(img) == Bytes{100, 100, 101, 201, 203, 203});
  REQUIRE(reader->Close().ok());
  REQUIRE(first->Close().ok());
  REQUIRE(LockedBytes(img).empty());
}

// ---- POSIX fallback ------------------------------------------------------------------------

TEST_CASE("POSIX-lock fallback still conflicts with QEMU's OFD locks", "[lock][interop]") {
  Env env;
  std::string img = env.MakeRaw("posix.raw");
  OfdOverride no_ofd(false);
  {
    // libblock holds with POSIX locks; qemu-io's OFD test sees them.
    auto be = env.MustOpenBackend(RawFileOpts(img, "file.locking=on"));
    REQUIRE(env.warnings.size() == 1);
    REQUIRE_THAT(env.warnings[0], Catch::Contains("falling back to POSIX file locks"));
    REQUIRE(LockedBytes(img, "POSIX") == kLibRw);
    testing::CommandResult w = Run({"qemu-io", "-f", "raw", "-c", "write 0 512", img});
    INFO(w.out);
    REQUIRE(w.exit_code != 0);
    REQUIRE_THAT(w.out, Catch::Contains("Failed to get \"write\" lock") && Catch::Contains(Busy(img)));
    testing::CommandResult info = Run({"qemu-img", "info", "-f", "raw", img});
    REQUIRE(info.exit_code == 0);
  }
  REQUIRE(LockedBytes(img).empty());
  // qemu-io holds with OFD locks; libblock's POSIX test sees them.
  auto holder = HoldWithQemuIo("raw", img, kQemuRawRw);
  auto writer = env.OpenBackend(RawFileOpts(img, "file.locking=on"));
  REQUIRE_THAT(Message(writer.status()), Catch::Contains("Failed to get shared \"write\" lock"));
  REQUIRE(LockedBytes(img) == kQemuRawRw);
  // locking=auto without OFD locks takes none, as QEMU does, so nothing stops it.
  auto unlocked = env.MustOpenBackend(RawFileOpts(img));
  REQUIRE(LockedBytes(img) == kQemuRawRw);
}

}  // namespace
}  // namespace libblock

LB_TEST_REQUIRES(.programs = {"qemu-img", "qemu-io"})
