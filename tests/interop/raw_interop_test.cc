// raw against qemu-io/qemu-img, both directions: images qemu-io wrote (patterns, unaligned
// writes, write -z, discard) read identically through libblock; images libblock wrote (random
// data, write-zeroes, discard=unmap) pass `qemu-img compare` against an independently built
// reference and `qemu-io read -P`; `qemu-img map` and libblock's block status agree.
// Exits 77 when qemu-img or qemu-io is missing.
#include <catch2/catch.hpp>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "core/backend.h"
#include "core/graph.h"
#include "core/options.h"
#include "nlohmann/json.hpp"
#include "test_support.h"
#include "util/status.h"

namespace libblock {
namespace {

using testing::GraphEnv;
using testing::kKiB;
using testing::kMiB;
using testing::RandomBytes;
using testing::ReadFile;
using testing::Run;
using testing::WriteFile;

struct Extent {
  int64_t start, length;
  bool data, zero;
  bool operator==(const Extent&) const = default;
};

std::string Describe(const std::vector<Extent>& v) {
  std::ostringstream out;
  for (const Extent& e : v) {
    out << "[" << e.start << ", +" << e.length << ")" << (e.data ? " data" : "") << (e.zero ? " zero" : "")
        << "\n";
  }
  return out.str();
}

void Append(std::vector<Extent>& v, Extent e) {
  if (!v.empty() && v.back().data == e.data && v.back().zero == e.zero &&
      v.back().start + v.back().length == e.start) {
    v.back().length += e.length;
  } else {
    v.push_back(e);
  }
}

// `qemu-img map --output=json -f raw` of a file, adjacent equal extents merged.
std::vector<Extent> QemuMap(const std::string& path) {
  testing::CommandResult r = Run({"qemu-img", "map", "--output=json", "-f", "raw", path});
  INFO(r.out);
  REQUIRE(r.exit_code == 0);
  std::vector<Extent> out;
  for (const auto& j : nlohmann::json::parse(r.out)) {
    REQUIRE(j["present"] == true);
    REQUIRE(j["depth"] == 0);
    REQUIRE(j["offset"] == j["start"]);  // raw maps every byte to itself
    Append(out, {j["start"], j["length"], j["data"], j["zero"]});
  }
  return out;
}

// The same walk over a backend's root through libblock's block status.
std::vector<Extent> OurMap(EventLoop& loop, Backend& be) {
  std::vector<Extent> out;
  int64_t size = be.size();
  for (int64_t pos = 0; pos < size;) {
    absl::StatusOr<BlockStatus> s = loop.Run(be.GetBlockStatus(pos, size - pos));
    INFO(s.status().ToString());
    REQUIRE(s.ok());
    REQUIRE(s->bytes > 0);
    REQUIRE((s->flags & kStatusAllocated) != 0);
    REQUIRE((s->flags & kStatusOffsetValid) != 0);
    REQUIRE(s->map == pos);
    Append(out, {pos, s->bytes, (s->flags & kStatusData) != 0, (s->flags & kStatusZero) != 0});
    pos += s->bytes;
  }
  return out;
}

void QemuIo(const std::vector<std::string>& args) {
  std::vector<std::string> argv = {"qemu-io"};
  argv.insert(argv.end(), args.begin(), args.end());
  testing::CommandResult r = Run(argv);
  INFO(r.out);
  REQUIRE(r.exit_code == 0);
  REQUIRE(r.out.find("failed") == std::string::npos);
}

TEST_CASE("libblock reads what qemu-io wrote", "[raw][interop]") {
  GraphEnv f;
  std::string path = f.dir.File("q.img");
  REQUIRE(Run({"qemu-img", "create", "-q", "-f", "raw", path, "4M"}).exit_code == 0);
  // The same operations, applied to a model.
  std::string model(4 * kMiB, '\0');
  struct Op {
    char kind;  // 'w' pattern write, 'z' write -z, 'd' discard
    int pattern;
    int64_t offset, length;
  };
  std::vector<Op> ops = {
      {'w', 0x11, 0, 64 * kKiB},           {'w', 0x22, 100000, 7777},
      {'w', 0x33, 1 * kMiB, 1 * kMiB},     {'z', 0, 1536 * kKiB, 64 * kKiB},
      {'d', 0, 1792 * kKiB, 128 * kKiB},   {'w', 0x44, 3 * kMiB + 1, 511},
      {'w', 0x55, 4 * kMiB - 512, 512},    {'z', 0, 1000, 3000},
      {'w', 0x66, 2 * kMiB + 4096, 8192},  {'z', 0, 2 * kMiB + 8192, 4096},
  };
  std::vector<std::string> args = {"-f", "raw", "-d", "unmap"};
  for (const Op& op : ops) {
    std::string range = std::to_string(op.offset) + " " + std::to_string(op.length);
    if (op.kind == 'w') {
      args.insert(args.end(), {"-c", "write -q -P " + std::to_string(op.pattern) + " " + range});
    } else if (op.kind == 'z') {
      args.insert(args.end(), {"-c", "write -q -z " + range});
    } else {
      args.insert(args.end(), {"-c", "discard -q " + range});
    }
    model.replace(op.offset, op.length, std::string(op.length, static_cast<char>(op.pattern)));
  }
  args.push_back(path);
  QemuIo(args);
  // The model is right about QEMU (and the file): zeroed and discarded ranges read zeroes.
  QemuIo({"-f", "raw", "-c", "read -q -P 0 1536k 64k", "-c", "read -q -P 0 1792k 128k",
          "-c", "read -q -P 0x33 1600k 192k", "-c", "read -q -P 0x44 3145729 511", path});
  REQUIRE_BYTES(ReadFile(path), model);

  {
    auto be = f.MustOpenBackend("driver=raw,file.driver=file,file.filename=" + path, {.read_only = true});
    REQUIRE(be->size() == 4 * kMiB);
    REQUIRE_BYTES(f.Read(*be, 0, 4 * kMiB), model);
    // Unaligned reads straddling the pattern boundaries.
    REQUIRE_BYTES(f.Read(*be, 99999, 7779), model.substr(99999, 7779));
    REQUIRE_BYTES(f.Read(*be, 3 * kMiB - 3, 520), model.substr(3 * kMiB - 3, 520));
    std::vector<Extent> ours = OurMap(*f.loop, *be);
    std::vector<Extent> theirs = QemuMap(path);
    INFO("ours:\n" << Describe(ours) << "qemu:\n" << Describe(theirs));
    REQUIRE(ours == theirs);
    // The discarded range is a hole for both.
    bool hole = false;
    for (const Extent& e : ours) {
      if (e.start <= 1792 * kKiB && e.start + e.length >= 1920 * kKiB) hole = e.zero && !e.data;
    }
    REQUIRE(hole);
  }
  // Probed, and through an offset window.
  {
    auto be = f.MustOpenBackend("", {.read_only = true}, path);
    REQUIRE(be->root()->flags().probed);
    REQUIRE_BYTES(f.Read(*be, 0, 4 * kMiB), model);
  }
  {
    auto be = f.MustOpenBackend("driver=raw,offset=1000000,size=2M,file.driver=file,file.filename=" + path,
                                {.read_only = true});
    REQUIRE_BYTES(f.Read(*be, 0, 2 * kMiB), model.substr(1000000, 2 * kMiB));
  }
}

TEST_CASE("qemu-img and qemu-io read what libblock wrote", "[raw][interop]") {
  GraphEnv f;
  const int64_t size = 8 * kMiB;
  std::string path = f.dir.File("ours.img"), ref = f.dir.File("ref.img");
  REQUIRE(f.graph.Create(path, "raw", *ParseKeyValueOptions("size=8M")).ok());
  std::string model(size, '\0');
  std::mt19937 rng(20261121);
  {
    auto be = f.MustOpenBackend("driver=raw,discard=unmap,file.driver=file,file.filename=" + path);
    for (int i = 0; i < 300; ++i) {
      int kind = static_cast<int>(rng() % 10);
      int64_t len = 1 + rng() % (192 * kKiB);
      int64_t off = rng() % (size - len);
      if (kind < 6) {
        std::string data = RandomBytes(static_cast<size_t>(len), static_cast<uint32_t>(i));
        REQUIRE(be->PwriteSync(off, data.data(), len).ok());
        model.replace(off, len, data);
      } else if (kind < 8) {
        ReqFlags flags = kind == 7 ? kReqMayUnmap : 0;
        REQUIRE(f.loop->Run(be->WriteZeroes(off, len, flags)).ok());
        model.replace(off, len, std::string(len, '\0'));
      } else {
        // Discard whole 64k blocks: with discard=unmap on a file they become holes.
        off = off / (64 * kKiB) * (64 * kKiB);
        len = (1 + static_cast<int64_t>(rng() % 4)) * 64 * kKiB;
        len = std::min(len, size - off);
        REQUIRE(f.loop->Run(be->Discard(off, len)).ok());
        model.replace(off, len, std::string(len, '\0'));
      }
    }
    // Known patterns last, for qemu-io read -P.
    for (int p = 1; p <= 4; ++p) {
      std::string data(static_cast<size_t>(p * 1000 + 1), static_cast<char>(0x10 * p));
      int64_t off = p * kMiB + p * 7;
      REQUIRE(be->PwriteSync(off, data.data(), static_cast<int64_t>(data.size())).ok());
      model.replace(off, data.size(), data);
    }
    REQUIRE(f.loop->Run(be->Flush()).ok());
    std::vector<Extent> ours = OurMap(*f.loop, *be);
    std::vector<Extent> theirs = QemuMap(path);
    INFO("ours:\n" << Describe(ours) << "qemu:\n" << Describe(theirs));
    REQUIRE(ours == theirs);
    REQUIRE(ours.size() > 2);  // the walk saw both holes and data
  }
  WriteFile(ref, model);
  testing::CommandResult r = Run({"qemu-img", "compare", "-f", "raw", "-F", "raw", ref, path});
  INFO(r.out);
  REQUIRE(r.exit_code == 0);
  for (int p = 1; p <= 4; ++p) {
    QemuIo({"-f", "raw", "-r", "-c",
            "read -q -P " + std::to_string(0x10 * p) + " " + std::to_string(p * kMiB + p * 7) + " " +
                std::to_string(p * 1000 + 1),
            path});
  }
  // The oracle notices a single wrong byte.
  model[5 * kMiB + 3] ^= 1;
  WriteFile(ref, model);
  r = Run({"qemu-img", "compare", "-f", "raw", "-F", "raw", ref, path});
  REQUIRE(r.exit_code == 1);
  REQUIRE(r.out.find("Content mismatch at offset 5242880") != std::string::npos);
}

TEST_CASE("qemu-img info agrees with libblock-created raw images", "[raw][interop]") {
  GraphEnv f;
  for (std::string size : {"0", "512", "1M", "1G", "3000000000"}) {
    INFO(size);
    std::string path = f.dir.File("c.img");
    REQUIRE(f.graph.Create(path, "raw", *ParseKeyValueOptions("size=" + size)).ok());
    testing::CommandResult r = Run({"qemu-img", "info", "--output=json", "-f", "raw", path});
    REQUIRE(r.exit_code == 0);
    auto be = f.MustOpenBackend("driver=raw,file.driver=file,file.filename=" + path, {.read_only = true});
    REQUIRE(nlohmann::json::parse(r.out)["virtual-size"] == be->size());
    REQUIRE(be->size() == static_cast<int64_t>(*ParseSize(size)));
  }
}

}  // namespace
}  // namespace libblock

LB_TEST_REQUIRES(.programs = {"qemu-img", "qemu-io"})
