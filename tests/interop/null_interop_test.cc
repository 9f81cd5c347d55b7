// null-co and null-aio against qemu-img: the sizes `qemu-img info` reports (default and the
// size option), `qemu-img map` on read-zeroes on and off next to libblock's block status,
// and qemu-img's message for a filename other than the driver's URI.
// Exits 77 when qemu-img is missing.
#include <catch2/catch.hpp>
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
using testing::Run;

const char* const kDrivers[] = {"null-co", "null-aio"};

TEST_CASE("null sizes agree with qemu-img info", "[null][interop]") {
  GraphEnv f;
  for (std::string drv : kDrivers) {
    INFO(drv);
    auto be = f.MustOpenBackend("driver=" + drv);
    testing::CommandResult r = Run({"qemu-img", "info", "--output=json", drv + "://"});
    INFO(r.out);
    REQUIRE(r.exit_code == 0);
    REQUIRE(nlohmann::json::parse(r.out)["virtual-size"] == be->size());
    for (std::string size : {"0", "512", "1M", "3G", "1T", "12345"}) {
      INFO(size);
      auto sized = f.MustOpenBackend("driver=" + drv + ",size=" + size);
      r = Run({"qemu-img", "info", "--output=json",
               "json:{\"driver\":\"" + drv + "\",\"size\":\"" + size + "\"}"});
      INFO(r.out);
      REQUIRE(r.exit_code == 0);
      REQUIRE(nlohmann::json::parse(r.out)["virtual-size"] == sized->size());
    }
  }
}

TEST_CASE("null block status agrees with qemu-img map", "[null][interop]") {
  GraphEnv f;
  for (std::string drv : kDrivers) {
    for (std::string zeroes : {"on", "off"}) {
      INFO(drv << " read-zeroes=" << zeroes);
      std::string opts = "driver=" + drv + ",size=1M,read-zeroes=" + zeroes;
      auto be = f.MustOpenBackend(opts);
      auto s = f.loop->Run(be->GetBlockStatus(0, 1048576));
      REQUIRE(s.ok());
      testing::CommandResult r = Run({"qemu-img", "map", "--output=json", "--image-opts", opts});
      INFO(r.out);
      REQUIRE(r.exit_code == 0);
      auto j = nlohmann::json::parse(r.out);
      REQUIRE(j.size() == 1);  // one extent, as libblock's
      REQUIRE(s->bytes == 1048576);
      REQUIRE(j[0]["length"] == s->bytes);
      REQUIRE(j[0]["zero"] == ((s->flags & kStatusZero) != 0));
      REQUIRE(j[0]["data"] == ((s->flags & kStatusData) != 0));
      REQUIRE(j[0]["present"] == ((s->flags & (kStatusZero | kStatusData)) != 0));
      REQUIRE(j[0]["zero"] == (zeroes == "on"));
    }
  }
}

TEST_CASE("null filename errors match qemu-img's", "[null][interop]") {
  GraphEnv f;
  for (std::string filename : {"null-co://foo", "null-aio://x"}) {
    INFO(filename);
    auto be = f.OpenBackend("", {}, filename);
    REQUIRE_FALSE(be.ok());
    testing::CommandResult r = Run({"qemu-img", "info", filename});
    INFO(r.out);
    REQUIRE(r.exit_code != 0);
    REQUIRE(r.out.find(std::string(be.status().message())) != std::string::npos);
  }
}

}  // namespace
}  // namespace libblock

LB_TEST_REQUIRES(.programs = {"qemu-img"})
