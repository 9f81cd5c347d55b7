// qcow2 create against qemu-img 7.2: for each option set, the image libblock creates has the
// same bytes, file length and allocated extents as qemu-img's, and `qemu-img check` finds it
// clean. Refusals carry qemu-img's messages and create nothing. Exits 77 without qemu-img.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <string>
#include <utility>
#include <vector>

#include "core/graph.h"
#include "core/options.h"
#include "core/registry.h"
#include "formats/qcow2/qcow2_create.h"
#include "test_support.h"
#include "util/status.h"

namespace libblock {
namespace {

using testing::FileSize;
using testing::GraphEnv;
using testing::Run;

// The data extents of a file (SEEK_DATA/SEEK_HOLE), as [start, end) pairs.
std::vector<std::pair<int64_t, int64_t>> DataExtents(const std::string& path) {
  std::vector<std::pair<int64_t, int64_t>> out;
  int fd = open(path.c_str(), O_RDONLY);
  REQUIRE(fd >= 0);
  const int64_t end = lseek(fd, 0, SEEK_END);
  int64_t off = 0;
  while (off < end) {
    int64_t d = lseek(fd, off, SEEK_DATA);
    if (d < 0) break;
    int64_t h = lseek(fd, d, SEEK_HOLE);
    out.emplace_back(d, h);
    off = h;
  }
  close(fd);
  return out;
}

// The bytes of `path` in `extents`, concatenated.
std::string ReadExtents(const std::string& path, const std::vector<std::pair<int64_t, int64_t>>& extents) {
  std::string out;
  int fd = open(path.c_str(), O_RDONLY);
  REQUIRE(fd >= 0);
  for (auto [start, end] : extents) {
    std::string chunk(static_cast<size_t>(end - start), '\0');
    REQUIRE(pread(fd, chunk.data(), chunk.size(), start) == static_cast<ssize_t>(chunk.size()));
    out += chunk;
  }
  close(fd);
  return out;
}

// Creates `path` with libblock's qcow2 create and `opts` (qemu-img's -o syntax), merging the
// file protocol's options as Graph::Create does.
absl::Status LibblockCreate(GraphEnv& env, const std::string& path, const std::string& opts,
                            uint64_t size) {
  absl::StatusOr<Options> parsed = ParseKeyValueOptions(opts);
  if (!parsed.ok()) return parsed.status();
  parsed->Set("size", size);
  const Driver* file = env.graph.registry().Find("file");
  std::vector<OptionSpec> specs(qcow2::kCreateSchema.specs.begin(), qcow2::kCreateSchema.specs.end());
  for (const OptionSpec& s : file->create_options->specs) {
    bool dup = false;
    for (const OptionSpec& have : specs) dup = dup || have.name == s.name;
    if (!dup) specs.push_back(s);
  }
  OptionSchema schema{"qcow2", specs};
  absl::StatusOr<OptionValues> values = ConsumeOptions(schema, *parsed);
  if (!values.ok()) return values.status();
  REQUIRE(parsed->empty());
  CreateContext ctx{env.graph, path, std::move(*values), {}};
  return env.loop->Run(qcow2::Create(ctx));
}

struct Case {
  std::string opts;
  uint64_t size;
};

TEST_CASE("qcow2 create writes the image qemu-img writes", "[qcow2][create][interop]") {
  const std::vector<Case> cases = {
      {"", 0},
      {"", 1 << 30},
      {"", 1000},
      {"", 100ull << 30},
      {"compat=0.10", 1 << 20},
      {"compat=1.1,lazy_refcounts=on", 1 << 20},
      {"cluster_size=512", 1 << 30},
      {"cluster_size=512,refcount_bits=64", 1 << 30},
      {"cluster_size=512,refcount_bits=1", 64 << 20},
      {"cluster_size=4k,refcount_bits=1", 1 << 30},
      {"cluster_size=2M", 10ull << 30},
      {"cluster_size=2M,extended_l2=on", 10ull << 30},
      {"refcount_bits=64", 64 << 20},
      {"refcount_bits=2", 64 << 20},
      {"refcount_bits=4", 64 << 20},
      {"refcount_bits=8", 64 << 20},
      {"refcount_bits=32", 64 << 20},
      {"extended_l2=on", 1 << 30},
      {"compression_type=zstd", 1 << 20},
      {"preallocation=metadata", 1 << 30},
      {"preallocation=metadata,compat=0.10", 64 << 20},
      {"preallocation=metadata,extended_l2=on", 64 << 20},
      {"preallocation=metadata,cluster_size=512", 8 << 20},
      {"preallocation=metadata,cluster_size=4k,refcount_bits=64", 64 << 20},
      {"preallocation=metadata,cluster_size=2M", 3ull << 30},
      {"preallocation=falloc", 64 << 20},
      {"preallocation=falloc", 3ull << 30},
      {"preallocation=full", 64 << 20},
      {"preallocation=falloc,extended_l2=on", 64 << 20},
      {"preallocation=falloc,cluster_size=512", 8 << 20},
      {"preallocation=full,cluster_size=4k,refcount_bits=1", 32 << 20},
      {"data_file=DATA", 1 << 20},
      {"data_file=DATA,data_file_raw=on,compression_type=zstd,cluster_size=4k,refcount_bits=1,lazy_refcounts=on", 1 << 20},
      {"data_file=DATA,preallocation=metadata", 64 << 20},
      {"data_file=DATA,preallocation=falloc", 64 << 20},
      {"backing_file=BASE,backing_fmt=raw", 1 << 20},
      {"backing_file=BASE,backing_fmt=raw,preallocation=metadata,extended_l2=on", 1 << 20},
      {"nocow=on,extent_size_hint=0", 1 << 20},
  };
  for (const Case& c : cases) {
    GraphEnv env;
    auto subst = [&](std::string opts, const std::string& tag) {
      for (auto [from, to] : {std::pair<std::string, std::string>{"DATA", env.dir.File(tag + ".data")},
                              {"BASE", "base.raw"}}) {
        for (size_t at = opts.find(from); at != std::string::npos; at = opts.find(from)) {
          opts.replace(at, from.size(), to);
        }
      }
      return opts;
    };
    DYNAMIC_SECTION("-o '" << c.opts << "' size " << c.size) {
      const std::string ours = env.dir.File("ours.qcow2"), theirs = env.dir.File("qemu.qcow2");
      std::vector<std::string> argv = {"qemu-img", "create", "-q", "-f", "qcow2"};
      const std::string their_opts = subst(c.opts, "qemu");
      if (!their_opts.empty()) {
        argv.push_back("-o");
        argv.push_back(their_opts);
      }
      argv.push_back("-u");  // the backing file need not exist
      argv.push_back(theirs);
      argv.push_back(std::to_string(c.size));
      testing::CommandResult q = Run(argv);
      INFO(q.out);
      REQUIRE(q.exit_code == 0);
      absl::Status st = LibblockCreate(env, ours, subst(c.opts, "ours"), c.size);
      INFO(st.message());
      REQUIRE(st.ok());
      if (const char* keep = getenv("LB_KEEP_IMAGES")) {
        std::string tag = c.opts + "-" + std::to_string(c.size);
        for (char& ch : tag) ch = (ch == '=' || ch == ',' || ch == '/') ? '_' : ch;
        Run({"cp", ours, std::string(keep) + "/ours-" + tag + ".qcow2"});
        Run({"cp", theirs, std::string(keep) + "/qemu-" + tag + ".qcow2"});
      }
      CHECK(FileSize(ours) == FileSize(theirs));
      // Same allocated extents, and the same bytes in them (holes read as zeroes on both
      // sides; the data file names differ by design, "ours.data" and "qemu.data").
      const auto extents = DataExtents(ours);
      CHECK(extents == DataExtents(theirs));
      std::string a = ReadExtents(ours, extents), b = ReadExtents(theirs, extents);
      if (c.opts.find("DATA") != std::string::npos) {
        const std::string tn = env.dir.File("qemu.data"), on = env.dir.File("ours.data");
        size_t at = b.find(tn);
        REQUIRE(at != std::string::npos);
        b.replace(at, tn.size(), on);
        CHECK(FileSize(env.dir.File("ours.data")) == FileSize(env.dir.File("qemu.data")));
        CHECK(DataExtents(env.dir.File("ours.data")) == DataExtents(env.dir.File("qemu.data")));
      }
      REQUIRE_BYTES(a, b);
      if (c.opts.find("BASE") == std::string::npos) {
        testing::CommandResult check = Run({"qemu-img", "check", ours});
        INFO(check.out);
        CHECK(check.exit_code == 0);
      }
    }
  }
}

TEST_CASE("qcow2 create refuses what qemu-img refuses, with its message, creating nothing",
          "[qcow2][create][interop]") {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"compat=0.9", "Parameter 'version' does not accept value '0.9'"},
      {"compat=v2,lazy_refcounts=on", "Lazy refcounts only supported with compatibility level 1.1 and above (use version=v3 or greater)"},
      {"compat=v2,refcount_bits=8", "Different refcount widths than 16 bits require compatibility level 1.1 or above (use version=v3 or greater)"},
      {"refcount_bits=3", "Refcount width must be a power of two and may not exceed 64 bits"},
      {"refcount_bits=128", "Refcount width must be a power of two and may not exceed 64 bits"},
      {"refcount_bits=0", "Refcount width must be a power of two and may not exceed 64 bits"},
      {"cluster_size=1000", "Cluster size must be a power of two between 512 and 2048k"},
      {"cluster_size=4M", "Cluster size must be a power of two between 512 and 2048k"},
      {"cluster_size=256", "Cluster size must be a power of two between 512 and 2048k"},
      {"compat=0.10,extended_l2=on", "Extended L2 entries are only supported with compatibility level 1.1 and above (use version=v3 or greater)"},
      {"extended_l2=on,cluster_size=8k", "Extended L2 entries are only supported with cluster sizes of at least 16384 bytes"},
      {"compression_type=lz4", "Parameter 'compression-type' does not accept value 'lz4'"},
      {"compat=0.10,compression_type=zstd", "Non-zlib compression type is only supported with compatibility level 1.1 and above (use version=v3 or greater)"},
      {"data_file_raw=on", "data-file-raw requires data-file"},
      {"compat=0.10,data_file=x.raw", "External data files are only supported with compatibility level 1.1 and above (use version=v3 or greater)"},
      {"backing_fmt=raw", "Backing format cannot be used without backing file"},
      {"backing_file=b.raw,backing_fmt=raw,preallocation=metadata", "Backing file and preallocation can only be used at the same time if extended_l2 is on"},
      {"preallocation=foo", "Parameter 'preallocation' does not accept value 'foo'"},
      {"data_file=x.raw,data_file_raw=on,backing_file=b.raw,backing_fmt=raw", "Backing file and data-file-raw cannot be used at the same time"},
      {"cluster_size=512", "The image size is too large for file format 'qcow2' (try using a larger cluster size)"},
  };
  for (const auto& [opts, message] : cases) {
    DYNAMIC_SECTION("-o " << opts) {
      GraphEnv env;
      const std::string path = env.dir.File("e.qcow2");
      const uint64_t size = opts == "cluster_size=512" ? (100ull << 40) : (1 << 20);
      testing::CommandResult q = Run({"qemu-img", "create", "-q", "-f", "qcow2", "-u", "-o", opts,
                                      path, std::to_string(size)});
      CHECK(q.exit_code == 1);
      CHECK(q.out == "qemu-img: " + path + ": " + message + "\n");
      CHECK(access(path.c_str(), F_OK) != 0);
      absl::Status st = LibblockCreate(env, path, opts, size);
      CHECK(st.message() == message);
      CHECK(access(path.c_str(), F_OK) != 0);
      CHECK(access(env.dir.File("x.raw").c_str(), F_OK) != 0);
    }
  }
  GraphEnv env;
  const std::string path = env.dir.File("e.qcow2");
  absl::Status st = LibblockCreate(env, path, "encrypt.format=luks", 1 << 20);
  CHECK(StatusErrno(st) == ENOTSUP);
  CHECK_THAT(std::string(st.message()), Catch::Contains("encrypted images are not supported"));
  CHECK(access(path.c_str(), F_OK) != 0);
}

}  // namespace
}  // namespace libblock

LB_TEST_REQUIRES(.programs = {"qemu-img"})
