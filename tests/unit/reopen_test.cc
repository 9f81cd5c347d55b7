// Reopening with changed options (Graph::Reopen, Backend::ReopenOptions; QEMU's bdrv_reopen
// with the old options kept): what a reopen may change and what it refuses with QEMU's
// "Cannot change the option" message, children following their parent, the file protocol's
// descriptor for new cache modes, raw's window and preallocate's sizes, and that a failed
// reopen leaves everything as it was.
#include <catch2/catch.hpp>
#include <fcntl.h>

#include <string>
#include <vector>

#include "core/backend.h"
#include "core/graph.h"
#include "core/info.h"
#include "core/options.h"
#include "test_drivers.h"
#include "test_support.h"
#include "util/status.h"

namespace libblock {
namespace {

using testing::AllocatedBytes;
using testing::FdFlagsFor;
using testing::FileSize;
using testing::kKiB;
using testing::kMiB;
using testing::Message;
using testing::NonZeroRandomBytes;
using testing::RawFileOpts;
using testing::ReadFile;
using testing::WriteFile;

constexpr int kODirect = 040000;  // x86-64 values, as /proc/self/fdinfo prints them (octal)
constexpr int kODsync = 010000;

struct Fixture : testing::GraphEnv {
  std::string path = dir.File("r.img");
  std::string data = NonZeroRandomBytes(kMiB, 7);

  Fixture() { WriteFile(path, data); }
  // Reopens `be` with `changes` ("key=value,..."), keeping its permissions.
  absl::Status Reopen(Backend& be, const std::string& changes,
                      std::optional<bool> writethrough = std::nullopt) {
    absl::StatusOr<Options> opts = ParseKeyValueOptions(changes);
    REQUIRE(opts.ok());
    const BackendOptions& bo = be.options();
    return be.ReopenOptions(std::move(*opts), !bo.read_only, bo.share_rw, bo.resize, bo.share_all, writethrough);
  }
  int FdFlags() {
    std::vector<int> flags = FdFlagsFor(path);
    REQUIRE(flags.size() == 1);
    return flags[0];
  }
};

TEST_CASE("raw's offset and size change in a reopen, checked as at open", "[reopen][raw]") {
  Fixture f;
  auto be = f.MustOpenBackend(RawFileOpts(f.path));
  REQUIRE(f.Reopen(*be, "offset=4096").ok());
  REQUIRE(be->size() == kMiB - 4096);
  REQUIRE(f.Read(*be, 0, 100) == f.data.substr(4096, 100));
  REQUIRE(f.Reopen(*be, "size=8192").ok());  // the offset stays
  REQUIRE(be->size() == 8192);
  REQUIRE(f.Read(*be, 8000, 192) == f.data.substr(4096 + 8000, 192));
  // the image is named by its new options
  INFO(DisplayFilename(*be->root()));
  REQUIRE(DisplayFilename(*be->root()).find("\"offset\": \"4096\"") != std::string::npos);

  REQUIRE(Message(f.Reopen(*be, "size=513")) == "Specified size is not multiple of 512");
  REQUIRE(Message(f.Reopen(*be, "offset=2M")) ==
          "Offset (2097152) cannot be greater than size of the containing file (1048576)");
  REQUIRE(Message(f.Reopen(*be, "size=2M")) ==
          "The sum of offset (4096) and size (2097152) has to be smaller or equal to the  actual "
          "size of the containing file (1048576)");
  REQUIRE(be->size() == 8192);
  REQUIRE(f.Read(*be, 0, 100) == f.data.substr(4096, 100));
}

TEST_CASE("options that cannot change are refused with QEMU's message", "[reopen]") {
  Fixture f;
  auto be = f.MustOpenBackend(RawFileOpts(f.path, "file.node-name=proto"));
  struct Case {
    const char* changes;
    const char* message;
  } cases[] = {
      {"bogus=1", "Cannot change the option 'bogus'"},
      {"a.b=1", "Cannot change the option 'a.b'"},
      {"driver=file", "Cannot change the option 'driver'"},
      {"file.locking=off", "Cannot change the option 'locking'"},
      // not given at open: any value is a change, the default included
      {"file.locking=auto", "Cannot change the option 'locking'"},
      {"file.aio=threads", "Cannot change the option 'aio'"},
      {"file.filename=/elsewhere.img", "Cannot change the option 'filename'"},
      {"node-name=other", "Cannot change the option 'node-name'"},
      {"file.node-name=other", "Cannot change the option 'node-name'"},
      {"force-share=off", "Cannot change the option 'force-share'"},
      {"cache=none", "Cannot change the option 'cache'"},
      {"file=nosuch", "Cannot find device='' nor node-name='nosuch'"},
      // the driver sees its options before the refusal, as QEMU's prepares them first
      {"offset=2M,bogus=1", "Offset (2097152) cannot be greater than size of the containing file "
                            "(1048576)"},
      // each node whole, parents first
      {"bogus=1,file.cache.direct=x", "Cannot change the option 'bogus'"},
      {"read-only=x", "raw: parameter 'read-only' expects 'on' or 'off'"},
  };
  std::string before = DisplayFilename(*be->root());
  for (const Case& c : cases) {
    INFO(c.changes);
    REQUIRE(Message(f.Reopen(*be, c.changes)) == c.message);
    REQUIRE(DisplayFilename(*be->root()) == before);
    REQUIRE(be->size() == kMiB);
  }
  // naming what is already there is no change
  REQUIRE(f.Reopen(*be, "driver=raw,file.driver=file,file=proto,file.node-name=proto").ok());
  REQUIRE(f.Reopen(*be, "file.filename=" + f.path).ok());
}

TEST_CASE("a refused reopen leaves the driver's prepared change undone", "[reopen]") {
  Fixture f;
  auto be = f.MustOpenBackend(RawFileOpts(f.path));
  REQUIRE(Message(f.Reopen(*be, "offset=4096,bogus=1")) == "Cannot change the option 'bogus'");
  REQUIRE(be->size() == kMiB);
  REQUIRE(f.Read(*be, 0, 64) == f.data.substr(0, 64));
  // a file reopened for O_DIRECT goes back to its old descriptor
  int flags = f.FdFlags();
  REQUIRE(Message(f.Reopen(*be, "cache.direct=on,file.bogus=1")) == "Cannot change the option 'bogus'");
  REQUIRE(f.FdFlags() == flags);
}

TEST_CASE("cache.direct and writethrough give the file a new descriptor", "[reopen][file]") {
  Fixture f;
  auto be = f.MustOpenBackend(RawFileOpts(f.path));
  REQUIRE(!(f.FdFlags() & (kODirect | kODsync)));
  REQUIRE(f.Reopen(*be, "cache.direct=on").ok());  // the file inherits it from raw
  REQUIRE((f.FdFlags() & kODirect));
  REQUIRE((f.FdFlags() & O_ACCMODE) == O_RDWR);
  const Node& file = *be->root()->primary_child()->node();
  REQUIRE(file.limits().request_alignment >= 512);
  f.Write(*be, 4097, "xyz");  // unaligned I/O is padded under O_DIRECT
  REQUIRE(f.Read(*be, 4096, 5) == f.data.substr(4096, 1) + "xyz" + f.data.substr(4100, 1));
  REQUIRE(f.Reopen(*be, "", /*writethrough=*/true).ok());
  REQUIRE((f.FdFlags() & (kODirect | kODsync)) == (kODirect | kODsync));
  REQUIRE(be->options().writethrough);
  REQUIRE(f.Reopen(*be, "cache.direct=off", false).ok());
  REQUIRE(!(f.FdFlags() & (kODirect | kODsync)));
  REQUIRE_FALSE(be->options().writethrough);
  REQUIRE(file.limits().request_alignment == 1);
  REQUIRE(ReadFile(f.path).substr(4097, 3) == "xyz");
}

TEST_CASE("a child's own options win over what it inherits", "[reopen]") {
  Fixture f;
  auto be = f.MustOpenBackend(RawFileOpts(f.path, "file.cache.direct=on"));
  REQUIRE((f.FdFlags() & kODirect));
  REQUIRE(f.Reopen(*be, "cache.direct=off").ok());
  REQUIRE((f.FdFlags() & kODirect));  // explicit on the file: it stays
  REQUIRE(f.Reopen(*be, "file.cache.direct=off").ok());
  REQUIRE(!(f.FdFlags() & kODirect));
  REQUIRE(f.Reopen(*be, "cache.direct=on").ok());
  REQUIRE(!(f.FdFlags() & kODirect));  // still its own, now off
}

TEST_CASE("discard and detect-zeroes change what requests do", "[reopen]") {
  Fixture f;
  auto be = f.MustOpenBackend(RawFileOpts(f.path));  // discard=ignore
  int64_t allocated = AllocatedBytes(f.path);
  REQUIRE(f.Discard(*be, 0, 64 * kKiB).ok());
  REQUIRE(AllocatedBytes(f.path) == allocated);
  REQUIRE(Message(f.Reopen(*be, "detect-zeroes=unmap")) ==
          "setting detect-zeroes to unmap is not allowed without setting discard operation to unmap");
  REQUIRE(f.Reopen(*be, "discard=unmap,detect-zeroes=unmap").ok());
  REQUIRE(f.Discard(*be, 0, 64 * kKiB).ok());
  REQUIRE(AllocatedBytes(f.path) < allocated);
  REQUIRE(f.Read(*be, 0, 16) == std::string(16, '\0'));
  int64_t punched = AllocatedBytes(f.path);
  f.Write(*be, 128 * kKiB, std::string(64 * kKiB, '\0'));  // detected, and unmapped
  REQUIRE(AllocatedBytes(f.path) < punched);
}

TEST_CASE("the node's mode is its read-only option; the backend's permissions its own", "[reopen][perm]") {
  Fixture f;
  auto be = f.MustOpenBackend(RawFileOpts(f.path));
  std::string node = be->root()->name();
  // a node cannot go read-only under its own writer
  REQUIRE(Message(f.Reopen(*be, "read-only=on")) ==
          "Read-only block node '" + node + "' cannot support read-write users");
  REQUIRE(be->ReopenOptions({}, false, false, false, false, std::nullopt).ok());  // drop write
  REQUIRE(f.Reopen(*be, "read-only=on").ok());
  REQUIRE(be->root()->flags().read_only);
  REQUIRE((f.FdFlags() & O_ACCMODE) == O_RDONLY);
  REQUIRE(Message(be->ReopenOptions({}, true, false, false, false, std::nullopt)) == "Block node is read-only");
  // read-write again, and still no writer until the backend asks to write
  REQUIRE(f.Reopen(*be, "read-only=off").ok());
  REQUIRE_FALSE(be->root()->flags().read_only);
  REQUIRE((f.FdFlags() & O_ACCMODE) == O_RDWR);
  REQUIRE_FALSE((be->perm() & kPermWrite));
  REQUIRE(StatusErrno(f.Zero(*be, 0, 512)) == EPERM);
  REQUIRE(be->ReopenOptions({}, true, false, false, false, std::nullopt).ok());
  f.Write(*be, 0, "w");
  REQUIRE(ReadFile(f.path)[0] == 'w');
}

TEST_CASE("preallocate's sizes change in a reopen", "[reopen][preallocate]") {
  testing::GraphEnv env;
  std::string path = env.dir.File("p.img");
  WriteFile(path, "");
  auto be = env.MustOpenBackend(
      "driver=preallocate,prealloc-size=1M,prealloc-align=64k,file.driver=file,file.filename=" + path,
      {.resize = true, .allow_write_beyond_eof = true});
  absl::StatusOr<Options> opts = ParseKeyValueOptions("prealloc-size=2M,prealloc-align=1M");
  REQUIRE(opts.ok());
  REQUIRE(be->ReopenOptions(std::move(*opts), true, false, true, false, std::nullopt).ok());
  env.Write(*be, 0, "x");
  REQUIRE(FileSize(path) == 3 * kMiB);  // align_up(1 + 2M, 1M)
  opts = ParseKeyValueOptions("prealloc-align=100");
  REQUIRE(Message(be->ReopenOptions(std::move(*opts), true, false, true, false, std::nullopt)) ==
          "prealloc-align parameter of preallocate filter is not aligned to 512");
}

TEST_CASE("null-co changes none of its options", "[reopen][null]") {
  testing::GraphEnv env;
  auto be = env.MustOpenBackend("driver=null-co,size=4096");
  absl::StatusOr<Options> opts = ParseKeyValueOptions("latency-ns=5");
  REQUIRE(opts.ok());
  REQUIRE(Message(be->ReopenOptions(std::move(*opts), true, false, false, false, std::nullopt)) ==
          "Cannot change the option 'latency-ns'");
  opts = ParseKeyValueOptions("size=4096,read-only=off");
  REQUIRE(be->ReopenOptions(std::move(*opts), true, false, false, false, std::nullopt).ok());
}

TEST_CASE("a driver's PrepareReopen is a coroutine that runs drained", "[reopen][drain]") {
  testing::GraphEnv env(testing::TestRegistry());
  std::string path = env.dir.File("t.img");
  WriteFile(path, std::string(64 * kKiB, 'd'));
  auto be = env.MustOpenBackend("driver=test-fmt,reopen-mark=on,node-name=t,file.driver=file,file.filename=" + path,
                                {.share_rw = true});
  Node* node = be->root();
  int calls = testing::TestFmtPrepareReopenCalls();

  // Read-write -> read-only: the driver sleeps, then writes "clean" through its file edge
  // (as qcow2 will flush its caches and clear its dirty bit). Meanwhile the backend above
  // queues what it is asked.
  Graph::ReopenRequest ro;
  ro.changes.Set("read-only", true);
  ro.edge_updates = {{be->root_child(), kPermConsistentRead, be->shared()}};
  std::optional<absl::Status> reopened;
  env.loop->Spawn(env.graph.ReopenCo(*node, std::move(ro)), [&](absl::Status st) { reopened = st; });
  REQUIRE_FALSE(reopened.has_value());  // suspended inside PrepareReopen
  REQUIRE(testing::TestFmtPrepareReopenCalls() == calls + 1);
  REQUIRE(be->quiesced());
  std::string buf(5, '\0');
  IoVec v(buf.data(), buf.size());
  std::optional<absl::Status> read;
  env.loop->Spawn(be->Read(0, 5, v), [&](absl::Status st) { read = st; });
  REQUIRE(be->queued() == 1);
  env.loop->RunUntil([&] { return reopened.has_value(); });
  INFO(reopened->ToString());
  REQUIRE(reopened->ok());
  REQUIRE(node->flags().read_only);
  env.loop->RunUntil([&] { return read.has_value(); });
  REQUIRE(read->ok());
  REQUIRE(buf == "clean");  // queued behind the reopen: it saw the driver's write
  REQUIRE(ReadFile(path).substr(0, 6) == "cleand");
  REQUIRE(testing::TestFmtLastReopenChanges() == "");  // only read-only changed

  // The driver is told which of its options change: not those given their current value.
  Graph::ReopenRequest opts;
  opts.changes.Set("reopen-mark", std::string("off"));
  opts.changes.Set("reopen-fail", std::string("off"));  // the default
  REQUIRE(env.graph.Reopen(*node, std::move(opts)).ok());
  REQUIRE(testing::TestFmtLastReopenChanges() == "reopen-mark=off");
}

TEST_CASE("a failing coroutine PrepareReopen aborts the whole reopen", "[reopen][drain]") {
  testing::GraphEnv env(testing::TestRegistry());
  std::string path = env.dir.File("t.img");
  WriteFile(path, std::string(64 * kKiB, 'd'));
  auto be = env.MustOpenBackend("driver=test-fmt,node-name=t,file.driver=file,file.filename=" + path);
  Node* node = be->root();
  Node* file = node->FindChild("file")->node();
  int fd_flags = FdFlagsFor(path).at(0);
  absl::StatusOr<Options> opts = ParseKeyValueOptions("read-only=on,reopen-fail=on,cache.direct=on");
  REQUIRE(opts.ok());
  absl::Status st = be->ReopenOptions(std::move(*opts), false, false, false, false, std::nullopt);
  REQUIRE(Message(st) == "test-fmt refuses the reopen");
  REQUIRE_FALSE(node->flags().read_only);
  REQUIRE_FALSE(file->flags().read_only);
  REQUIRE(node->open_options().GetString("reopen-fail") == std::nullopt);
  REQUIRE((be->perm() & kPermWrite) != 0);
  REQUIRE_FALSE(be->quiesced());
  REQUIRE_FALSE(node->drained());
  REQUIRE(FdFlagsFor(path).at(0) == fd_flags);
  env.Write(*be, 0, "still writable");
  REQUIRE(ReadFile(path).substr(0, 14) == "still writable");
}

}  // namespace
}  // namespace libblock
