// QEMU's JSON text (core/json_text): string escapes for any bytes, and the pretty and
// compact layouts. The expected strings are qemu-img's own output for such file names.
#include "core/json_text.h"

#include <catch2/catch.hpp>
#include <string>

namespace libblock {
namespace {

using namespace std::string_literals;

TEST_CASE("strings are bytes, escaped as QEMU escapes them", "[json]") {
  struct Case {
    std::string bytes, text;
  };
  const Case cases[] = {
      {"a.img", R"("a.img")"},
      {"/x/<>&'", R"("/x/<>&'")"},
      {"\"\\\b\f\n\r\t", R"("\"\\\b\f\n\r\t")"},
      {"\x01\x1f\x7f", R"("\u0001\u001F\u007F")"},
      {"\xc3\xa9\xe2\x82\xac", R"("\u00E9\u20AC")"},
      {"\xf0\x9f\x98\x80", R"("\uD83D\uDE00")"},
      {"\xc0\x80", R"("\u0000")"},                       // modified UTF-8's NUL
      {"\xc0\x81\xc1\xbf\xe0\x80\x80", R"("\uFFFD\uFFFD\uFFFD")"},  // overlong
      {"\xed\xa0\x80", R"("\uFFFD")"},                   // surrogate
      {"\xef\xb7\x90\xef\xb7\xb0", R"("\uFFFD\uFDF0")"},  // noncharacter, then not one
      {"\xef\xbf\xbe\xf0\x9f\xbf\xbe\xf0\x9f\xbf\xbd", R"("\uFFFD\uFFFD\uD83F\uDFFD")"},
      {"\xf4\x90\x80\x80\xf8\x88\x80\x80\x80x", R"("\uFFFD\uFFFDx")"},  // beyond U+10FFFF
      {"\xff\xfe\x80", R"("\uFFFD\uFFFD\uFFFD")"},       // one per stray byte
      {"\xe2\x82x\xc3\xc3\xa9", R"("\uFFFDx\uFFFD\u00E9")"},  // cut short by another byte
      {"\xf0\x9f\x98", R"("\uFFFD")"},                   // cut short by the end
  };
  for (const Case& c : cases) {
    INFO(c.text);
    CHECK(QemuJsonString(c.bytes) == c.text);
  }
}

TEST_CASE("pretty and compact layouts", "[json]") {
  nlohmann::ordered_json j = {{"virtual-size", 1048576},
                              {"filename", "\xff.img"},
                              {"dirty-flag", false},
                              {"data", {{"flags", nlohmann::ordered_json::array()}, {"n", {1, 2}}}}};
  CHECK(QemuJsonText(j, true) ==
        "{\n"
        "    \"virtual-size\": 1048576,\n"
        "    \"filename\": \"\\uFFFD.img\",\n"
        "    \"dirty-flag\": false,\n"
        "    \"data\": {\n"
        "        \"flags\": [\n"
        "        ],\n"
        "        \"n\": [\n"
        "            1,\n"
        "            2\n"
        "        ]\n"
        "    }\n"
        "}");
  CHECK(QemuJsonText(j, false) ==
        R"({"virtual-size": 1048576, "filename": "\uFFFD.img", "dirty-flag": false, )"
        R"("data": {"flags": [], "n": [1, 2]}})");
  CHECK(QemuJsonText(nlohmann::json::object(), false) == "{}");
}

}  // namespace
}  // namespace libblock
