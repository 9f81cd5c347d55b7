// Fuzz target: QEMU option syntax (key=value with ,, escapes, json: pseudo-filenames, sizes,
// booleans, integers) and schema validation. Any input must give a value or an error: never
// a crash, a hang or unbounded memory.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "core/options.h"
#include "nlohmann/json.hpp"

namespace {

constexpr std::string_view kChoices[] = {"auto", "on", "off"};
constexpr libblock::OptionSpec kSpecs[] = {
    {"size", libblock::OptionType::kSize, "1G", ""},
    {"flag", libblock::OptionType::kBool, "off", ""},
    {"count", libblock::OptionType::kInt, "0", ""},
    {"mode", libblock::OptionType::kEnum, "auto", "", kChoices},
    {"name", libblock::OptionType::kString, "", ""},
};
constexpr libblock::OptionSchema kSchema{"fuzz", kSpecs};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  (void)libblock::ParseSize(text);
  (void)libblock::ParseBool(text);
  (void)libblock::ParseInt(text);
  absl::StatusOr<libblock::Options> kv = libblock::ParseKeyValueOptions(text, "driver");
  if (kv.ok()) {
    // Round trip: what ToString prints must parse back to the same options.
    std::string printed = kv->ToString();
    absl::StatusOr<libblock::Options> again = libblock::ParseKeyValueOptions(printed);
    if (!again.ok() || !(*again == *kv)) __builtin_trap();
    (void)kv->ToJson();
    libblock::Options copy = *kv;
    (void)copy.ExtractPrefix("file");
    (void)libblock::ConsumeOptions(kSchema, copy);
  }
  std::string json = "json:" + std::string(text);
  absl::StatusOr<libblock::Options> js = libblock::ParseJsonFilename(json);
  if (js.ok()) {
    (void)js->ToJson();
    (void)libblock::ConsumeOptions(kSchema, *js);
  }
  return 0;
}
