// The host_device protocol on loop devices, and file-protocol cases that need a file system
// of their own (btrfs for nocow, ext4 on 4096-byte sectors for O_DIRECT alignment).
//
// Needs root (losetup, mount): the main below exits 77, which meson reports as skipped, when
// it is not root or losetup is missing. Every loop device and mount is undone by RAII, also
// when an assertion fails. Expected values come from the kernel's own ioctls (BLKGETSIZE64,
// BLKSSZGET, BLKPBSZGET) and QEMU's file-posix messages.
#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <memory>
#include <string>
#include <vector>

#include "core/backend.h"
#include "core/graph.h"
#include "test_support.h"
#include "util/status.h"

namespace libblock {
namespace {

using testing::AllocatedBytes;
using testing::FileSize;
using testing::GraphEnv;
using testing::kMiB;
using testing::LockedBytes;
using testing::Message;
using testing::NonZeroRandomBytes;
using testing::ReadFile;
using testing::Run;
using testing::TempDir;
using testing::WriteFile;

const std::vector<int64_t> kRwLocks = {100, 101, 201, 203};

std::string Trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

// A loop device over `backing`, detached on destruction.
class LoopDevice {
 public:
  LoopDevice(const std::string& backing, int sector_size) {
    std::vector<std::string> argv = {"losetup", "-f", "--show"};
    if (sector_size != 512) {
      argv.push_back("-b");
      argv.push_back(std::to_string(sector_size));
    }
    argv.push_back(backing);
    testing::CommandResult r = Run(argv);
    if (r.exit_code == 0) path_ = Trim(r.out);
    error_ = r.out;
  }
  ~LoopDevice() {
    if (!path_.empty()) Run({"losetup", "-d", path_});
  }
  LoopDevice(const LoopDevice&) = delete;
  LoopDevice& operator=(const LoopDevice&) = delete;
  const std::string& path() const { return path_; }
  const std::string& error() const { return error_; }

 private:
  std::string path_;
  std::string error_;
};

// A mount of `device` on `dir`, unmounted on destruction.
class Mount {
 public:
  Mount(const std::string& device, const std::string& dir) : dir_(dir) {
    testing::CommandResult r = Run({"mount", device, dir});
    mounted_ = r.exit_code == 0;
    error_ = r.out;
  }
  ~Mount() {
    if (mounted_) Run({"umount", dir_});
  }
  Mount(const Mount&) = delete;
  Mount& operator=(const Mount&) = delete;
  bool ok() const { return mounted_; }
  const std::string& error() const { return error_; }

 private:
  std::string dir_;
  bool mounted_ = false;
  std::string error_;
};

// A sparse backing file of `size` bytes in `dir` with a loop device over it.
struct Disk {
  std::string backing;
  std::unique_ptr<LoopDevice> dev;
  Disk(const TempDir& dir, const std::string& name, int64_t size, int sector_size, const std::string& data = "") {
    backing = dir.File(name);
    WriteFile(backing, data);
    REQUIRE(truncate(backing.c_str(), size) == 0);
    dev = std::make_unique<LoopDevice>(backing, sector_size);
    INFO(dev->error());
    REQUIRE_FALSE(dev->path().empty());
  }
  const std::string& path() const { return dev->path(); }
};

Node* ProtocolNode(const Backend& be) {
  Node* n = be.root();
  while (n && n->driver().kind != DriverKind::kProtocol) {
    n = n->primary_child() ? n->primary_child()->node() : nullptr;
  }
  REQUIRE(n);
  return n;
}

struct DeviceIoctls {
  uint64_t size = 0;
  int logical = 0;
  unsigned int physical = 0;
};

DeviceIoctls QueryDevice(const std::string& dev) {
  DeviceIoctls d;
  int fd = open(dev.c_str(), O_RDONLY | O_CLOEXEC);
  REQUIRE(fd >= 0);
  REQUIRE(ioctl(fd, BLKGETSIZE64, &d.size) == 0);
  REQUIRE(ioctl(fd, BLKSSZGET, &d.logical) == 0);
  REQUIRE(ioctl(fd, BLKPBSZGET, &d.physical) == 0);
  close(fd);
  return d;
}

// ---- host_device -------------------------------------------------------------------------

TEST_CASE("host_device: size and block sizes come from the device", "[host_device]") {
  for (int sector : {512, 4096}) {
    INFO("sector size " << sector);
    GraphEnv env;
    Disk disk(env.dir, "disk.img", 16 * kMiB, sector);
    DeviceIoctls want = QueryDevice(disk.path());
    REQUIRE(want.size == 16 * kMiB);
    REQUIRE(want.logical == sector);
    auto be = env.MustOpenBackend("driver=raw,file.driver=host_device,file.filename=" + disk.path());
    Node* dev = ProtocolNode(*be);
    REQUIRE(dev->driver().name == "host_device");
    REQUIRE(be->size() == static_cast<int64_t>(want.size));
    absl::StatusOr<BlockSizes> sizes = dev->impl()->ProbeBlockSizes();
    REQUIRE(sizes.ok());
    REQUIRE(sizes->logical == static_cast<uint32_t>(sector));
    REQUIRE(sizes->physical == want.physical);
    sizes = be->root()->impl()->ProbeBlockSizes();  // raw passes them up
    REQUIRE(sizes.ok());
    REQUIRE(sizes->logical == static_cast<uint32_t>(sector));
    // Devices have no allocation map: block status says data everywhere.
    absl::StatusOr<BlockStatus> bs = env.loop->Run(be->GetBlockStatus(0, be->size()));
    REQUIRE(bs.ok());
    REQUIRE(bs->bytes == be->size());
    REQUIRE((bs->flags & kStatusData));
    // Images are locked as in QEMU, on the device node.
    REQUIRE(LockedBytes(disk.path()) == kRwLocks);
    // A device keeps its old contents: a copy into it must write zeroes (raw asks its file).
    REQUIRE_FALSE(dev->impl()->HasZeroInit());
    REQUIRE_FALSE(be->root()->impl()->HasZeroInit());
  }
}

TEST_CASE("host_device: a plain /dev path probes host_device, then raw", "[host_device]") {
  GraphEnv env;
  std::string data = NonZeroRandomBytes(8192, 1);
  Disk disk(env.dir, "probe.img", 16 * kMiB, 512, data);
  auto be = env.MustOpenBackend("", {}, disk.path());
  REQUIRE(be->root()->driver().name == "raw");
  REQUIRE(be->root()->flags().probed);
  REQUIRE(ProtocolNode(*be)->driver().name == "host_device");
  REQUIRE(env.warnings.size() == 1);
  REQUIRE_THAT(env.warnings[0], Catch::Contains("probing guessed raw"));
  REQUIRE_BYTES(env.Read(*be, 0, 8192), data);
  // A regular file is not a device, whatever the driver is told.
  absl::Status st = env.OpenBackend("driver=host_device,filename=" + disk.backing).status();
  REQUIRE(Message(st) == "'host_device' driver requires '" + disk.backing +
                             "' to be either a character or block device");
  st = env.OpenBackend("driver=file,filename=" + disk.path()).status();
  REQUIRE(Message(st) == "'file' driver requires '" + disk.path() + "' to be a regular file");
}

TEST_CASE("host_device: O_DIRECT on 4096-byte sectors pads 512-byte requests", "[host_device]") {
  GraphEnv env;
  std::string model = NonZeroRandomBytes(16 * kMiB, 2);
  Disk disk(env.dir, "disk4k.img", 16 * kMiB, 4096, model);
  auto be = env.MustOpenBackend("driver=raw,cache=none,file.driver=host_device,file.filename=" + disk.path());
  Node* dev = ProtocolNode(*be);
  REQUIRE(dev->flags().cache_direct);
  REQUIRE(dev->limits().request_alignment == 4096);
  for (int64_t off : {int64_t{512} * 3, int64_t{512} * 9, int64_t{512} * 15 + 4096 * 100}) {
    std::string sector = NonZeroRandomBytes(512, static_cast<uint32_t>(off));
    env.Write(*be, off, sector);
    model.replace(static_cast<size_t>(off), 512, sector);
  }
  std::string odd = NonZeroRandomBytes(5000, 3);
  env.Write(*be, 777, odd);
  model.replace(777, odd.size(), odd);
  REQUIRE(env.loop->Run(be->Flush()).ok());
  REQUIRE_BYTES(env.Read(*be, 0, 16 * kMiB), model);
  REQUIRE_BYTES(ReadFile(disk.backing), model);
}

TEST_CASE("host_device: write-zeroes and discard reach the device", "[host_device]") {
  GraphEnv env;
  std::string model = NonZeroRandomBytes(16 * kMiB, 4);
  Disk disk(env.dir, "zd.img", 16 * kMiB, 512, model);
  int64_t full = AllocatedBytes(disk.backing);
  REQUIRE(full >= 16 * kMiB);
  auto be = env.MustOpenBackend("driver=raw,discard=unmap,file.driver=host_device,file.filename=" + disk.path());
  REQUIRE(env.loop->Run(be->WriteZeroes(kMiB, kMiB, 0)).ok());
  REQUIRE(env.loop->Run(be->WriteZeroes(3 * kMiB, kMiB, kReqMayUnmap)).ok());
  REQUIRE(env.loop->Run(be->WriteZeroes(100, 1000, 0)).ok());  // sub-sector: read-modify-write
  REQUIRE(env.loop->Run(be->Discard(8 * kMiB, 2 * kMiB)).ok());
  REQUIRE(env.loop->Run(be->Flush()).ok());
  for (auto [off, len] : {std::pair<int64_t, int64_t>{kMiB, kMiB}, {3 * kMiB, kMiB}, {100, 1000}, {8 * kMiB, 2 * kMiB}}) {
    model.replace(static_cast<size_t>(off), static_cast<size_t>(len), std::string(static_cast<size_t>(len), '\0'));
  }
  REQUIRE_BYTES(env.Read(*be, 0, 16 * kMiB), model);
  REQUIRE_BYTES(ReadFile(disk.backing), model);
  // The loop driver turns the discard into a hole in its backing file.
  REQUIRE(AllocatedBytes(disk.backing) <= full - 2 * kMiB);
}

TEST_CASE("host_device: devices cannot grow, and create only checks the size", "[host_device]") {
  GraphEnv env;
  std::string data = NonZeroRandomBytes(4096, 5);
  Disk disk(env.dir, "fixed.img", 16 * kMiB, 512, data);
  {
    auto be = env.MustOpenBackend("driver=host_device,filename=" + disk.path(), {.resize = true});
    absl::Status st = env.loop->Run(be->Truncate(32 * kMiB, false, PreallocMode::kOff));
    REQUIRE_THAT(Message(st), Catch::Contains("Cannot grow device files"));
    st = env.loop->Run(be->Truncate(8 * kMiB, true, PreallocMode::kOff));
    REQUIRE_THAT(Message(st), Catch::Contains("Cannot resize device files"));
    st = env.loop->Run(be->Truncate(16 * kMiB, true, PreallocMode::kOff));
    REQUIRE(st.ok());
    st = env.loop->Run(be->Truncate(16 * kMiB, false, PreallocMode::kFull));
    REQUIRE_THAT(Message(st), Catch::Contains("unsupported for this non-regular file"));
    REQUIRE(be->size() == 16 * kMiB);
  }
  absl::Status st = env.Create(disk.path(), "host_device", "size=32M");
  REQUIRE_THAT(Message(st), Catch::Contains("Cannot grow device files"));
  REQUIRE(env.Create(disk.path(), "host_device", "size=16M").ok());
  REQUIRE(env.Create(disk.path(), "raw", "size=8M").ok());  // raw over a device: host_device
  REQUIRE_THAT(Message(env.Create(disk.path(), "raw", "size=1G")), Catch::Contains("Cannot grow device files"));
  REQUIRE_THAT(Message(env.Create(disk.backing, "host_device", "size=1M")),
               Catch::Contains("is not a device"));
  // Creating on a device never touches its data.
  REQUIRE_BYTES(ReadFile(disk.backing).substr(0, 4096), data);
  REQUIRE(QueryDevice(disk.path()).size == 16 * kMiB);
}

TEST_CASE("host_device: two read-write opens of one device conflict", "[host_device]") {
  GraphEnv env;
  Disk disk(env.dir, "shared.img", 16 * kMiB, 512);
  auto first = env.MustOpenBackend("driver=raw,file.driver=host_device,file.filename=" + disk.path());
  auto second = env.OpenBackend("driver=raw,file.driver=host_device,file.filename=" + disk.path());
  REQUIRE_FALSE(second.ok());
  REQUIRE_THAT(Message(second.status()),
               Catch::Contains("Failed to get \"write\" lock\nIs another process using the image [" +
                               disk.path() + "]?"));
  REQUIRE(LockedBytes(disk.path()) == kRwLocks);
}

// ---- file protocol on special file systems --------------------------------------------------

TEST_CASE("O_DIRECT on an empty file of a 4096-byte-sector file system", "[file]") {
  // An empty file cannot show its O_DIRECT alignment (reads at EOF are never checked), so it
  // must not be guessed as 512: the first 512-byte write would fail with EINVAL.
  LB_SKIP_UNLESS(testing::HaveProgram("mkfs.ext4"), "mkfs.ext4 is not installed");
  GraphEnv env;
  Disk disk(env.dir, "ext4.img", 32 * kMiB, 4096);
  REQUIRE(Run({"mkfs.ext4", "-q", disk.path()}).exit_code == 0);
  std::string mnt = env.dir.File("mnt");
  REQUIRE(mkdir(mnt.c_str(), 0755) == 0);
  Mount mount(disk.path(), mnt);
  INFO(mount.error());
  REQUIRE(mount.ok());
  std::string path = mnt + "/empty.img";
  WriteFile(path, "");
  {
    auto be = env.MustOpenBackend("driver=raw,cache=none,file.driver=file,file.filename=" + path,
                                  {.resize = true, .allow_write_beyond_eof = true});
    std::string a = NonZeroRandomBytes(512, 6), b = NonZeroRandomBytes(512, 7);
    env.Write(*be, 0, a);
    env.Write(*be, 1536, b);
    REQUIRE(ProtocolNode(*be)->limits().request_alignment % 4096 == 0);
    REQUIRE(env.loop->Run(be->Flush()).ok());
    // Padding to whole blocks may leave the file longer than written (zeroes), as in QEMU.
    std::string file = ReadFile(path);
    REQUIRE(file.size() >= 2048);
    REQUIRE_BYTES(file, a + std::string(1024, '\0') + b + std::string(file.size() - 2048, '\0'));
    REQUIRE_BYTES(env.Read(*be, 0, 2048), a + std::string(1024, '\0') + b);
  }
  // A file with data shows its alignment.
  WriteFile(path, NonZeroRandomBytes(65536, 8));
  auto be = env.MustOpenBackend("driver=raw,cache=none,file.driver=file,file.filename=" + path);
  REQUIRE(ProtocolNode(*be)->limits().request_alignment == 4096);
}

bool HasNocow(const std::string& path) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  REQUIRE(fd >= 0);
  int attr = 0;
  REQUIRE(ioctl(fd, FS_IOC_GETFLAGS, &attr) == 0);
  close(fd);
  return (attr & FS_NOCOW_FL) != 0;
}

TEST_CASE("create: nocow=on sets the btrfs No_COW attribute", "[file]") {
  LB_SKIP_UNLESS(testing::HaveProgram("mkfs.btrfs"), "mkfs.btrfs is not installed (Debian package btrfs-progs)");
  GraphEnv env;
  Disk disk(env.dir, "btrfs.img", 256 * kMiB, 512);
  testing::CommandResult mkfs = Run({"mkfs.btrfs", "-q", "-f", disk.path()});
  INFO(mkfs.out);
  REQUIRE(mkfs.exit_code == 0);
  std::string mnt = env.dir.File("mnt");
  REQUIRE(mkdir(mnt.c_str(), 0755) == 0);
  Mount mount(disk.path(), mnt);
  INFO(mount.error());
  REQUIRE(mount.ok());
  for (std::string fmt : {"file", "raw"}) {
    INFO("format " << fmt);
    std::string nocow = mnt + "/nocow-" + fmt + ".img", cow = mnt + "/cow-" + fmt + ".img";
    REQUIRE(env.Create(nocow, fmt, "size=4M,nocow=on").ok());
    REQUIRE(env.Create(cow, fmt, "size=4M").ok());
    REQUIRE(FileSize(nocow) == 4 * kMiB);
    REQUIRE(HasNocow(nocow));
    REQUIRE_FALSE(HasNocow(cow));
    if (testing::HaveProgram("lsattr")) {
      auto attrs = [](const std::string& p) {
        std::string out = Run({"lsattr", p}).out;
        return out.substr(0, out.find(' '));
      };
      REQUIRE(attrs(nocow).find('C') != std::string::npos);
      REQUIRE(attrs(cow).find('C') == std::string::npos);
    }
  }
  // The image is usable afterwards.
  auto be = env.MustOpenBackend("driver=raw,file.driver=file,file.filename=" + mnt + "/nocow-raw.img");
  env.Write(*be, 4096, "nocow data");
  REQUIRE(env.Read(*be, 4096, 10) == "nocow data");
}

}  // namespace
}  // namespace libblock

LB_TEST_REQUIRES(.root = true, .programs = {"losetup"}, .devices = {"/dev/loop-control"})
