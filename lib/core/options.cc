// Block layer options: the flat dictionary, the key=value and json: syntaxes, QEMU-compatible
// number parsing and schema validation.
//
// Compatibility notes (behaviour follows QEMU's documented syntax, not its code):
//  - key=value: elements split at single commas, ",," is a literal comma; the first element may
//    be an implied value. Unlike QEMU's keyval parser, "a=1,a.b=2" is accepted: -drive style
//    options legitimately combine "file=x" with "file.locking=off".
//  - Sizes: qemu_strtosz, with QEMU 7.2's values to the byte (util/size_parse.h, the parser
//    lb_parse_size exports): "1.5k" is 1536, "0.1k" 102, "0.0000000001T" 110.
#include "core/options.h"

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <set>
#include <vector>

#include "absl/strings/str_format.h"
#include "nlohmann/json.hpp"
#include "util/status.h"
#include "util/size_parse.h"

namespace libblock {
namespace {

// Same type as OptionValues::Typed (an alias names the type, so the two are interchangeable).
using TypedValue = std::variant<std::string, bool, int64_t, uint64_t>;

// Past this depth a json: filename is refused rather than flattened: such filenames can come from
// untrusted image headers (backing file names) and flattening recurses.
constexpr int kMaxJsonDepth = 64;

constexpr std::string_view kJsonPrefix = "json:";
// QEMU's wording, which scripts match.
constexpr std::string_view kJsonError = "Could not parse the JSON options";

absl::Status InvalidArgument(std::string_view message) { return ErrnoError(EINVAL, message); }

bool IsDigit(char c) { return c >= '0' && c <= '9'; }

int HexDigitValue(char c) {
  if (IsDigit(c)) return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

bool HasHexPrefix(std::string_view text) {
  return text.size() > 2 && text[0] == '0' && (text[1] == 'x' || text[1] == 'X') &&
         HexDigitValue(text[2]) >= 0;
}

// Reads digits of `base` starting at *pos into *value. False on overflow; stops at the first
// non-digit. The caller checks that at least one digit was read.
bool AccumulateDigits(std::string_view text, size_t* pos, int base, uint64_t* value) {
  bool ok = true;
  for (; *pos < text.size(); ++*pos) {
    char c = text[*pos];
    int digit = base == 16 ? HexDigitValue(c) : (IsDigit(c) ? c - '0' : -1);
    if (digit < 0) break;
    if (__builtin_mul_overflow(*value, static_cast<uint64_t>(base), value) ||
        __builtin_add_overflow(*value, static_cast<uint64_t>(digit), value)) {
      ok = false;
    }
  }
  return ok;
}

std::string EscapeCommas(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    out += c;
    if (c == ',') out += ',';
  }
  return out;
}

absl::Status CheckKey(std::string_view key, bool had_comma) {
  if (had_comma) {
    return InvalidArgument(absl::StrFormat("parameter name '%s' contains a comma", key));
  }
  if (key.empty()) return InvalidArgument("empty parameter name");
  size_t start = 0;
  while (true) {
    size_t dot = key.find('.', start);
    size_t end = dot == std::string_view::npos ? key.size() : dot;
    if (end == start) {
      return InvalidArgument(absl::StrFormat("invalid parameter name '%s': empty component", key));
    }
    if (dot == std::string_view::npos) return absl::OkStatus();
    start = dot + 1;
  }
}

// Option strings become C strings (file names, driver names, ...), where a NUL would cut them
// short: "a.img\0.other" would open a.img. QEMU's JSON parser keeps a \u0000 as the bytes
// C0 80 instead; libblock refuses such strings wherever options come from.
constexpr std::string_view kNulError = "contains a NUL character";

bool HasNul(std::string_view text) { return text.find('\0') != std::string_view::npos; }

// `text` with its NULs written as JSON writes them, for messages.
std::string ShowNul(std::string_view text) {
  std::string out;
  for (char c : text) {
    if (c == '\0') {
      out += "\\u0000";
    } else {
      out += c;
    }
  }
  return out;
}

nlohmann::json ScalarToJson(const OptionValue& value) {
  return std::visit([](const auto& v) { return nlohmann::json(v); }, value);
}

// Turns objects whose keys are exactly "0".."n-1" into arrays, bottom-up.
void CrumpleArrays(nlohmann::json& node) {
  if (!node.is_object()) return;
  for (auto& child : node) CrumpleArrays(child);
  if (node.empty()) return;
  for (size_t i = 0; i < node.size(); ++i) {
    if (!node.contains(std::to_string(i))) return;
  }
  nlohmann::json array = nlohmann::json::array();
  for (size_t i = 0; i < node.size(); ++i) array.push_back(std::move(node[std::to_string(i)]));
  node = std::move(array);
}

absl::Status FlattenJson(const nlohmann::json& node, const std::string& key, int depth,
                         Options& out) {
  if (depth > kMaxJsonDepth) {
    return InvalidArgument(
        absl::StrFormat("%s: nested more than %d levels deep", kJsonError, kMaxJsonDepth));
  }
  auto join = [&](const std::string& child) { return key.empty() ? child : key + "." + child; };
  if (node.is_object()) {
    for (const auto& item : node.items()) {
      if (item.key().empty()) {
        return InvalidArgument(absl::StrFormat("%s: empty key%s", kJsonError,
                                               key.empty() ? "" : " in '" + key + "'"));
      }
      if (HasNul(item.key())) {
        return InvalidArgument(absl::StrFormat("%s: key '%s' %s", kJsonError,
                                               ShowNul(join(item.key())), kNulError));
      }
      LB_RETURN_IF_ERROR(FlattenJson(item.value(), join(item.key()), depth + 1, out));
    }
    return absl::OkStatus();
  }
  if (node.is_array()) {
    for (size_t i = 0; i < node.size(); ++i) {
      LB_RETURN_IF_ERROR(FlattenJson(node[i], join(std::to_string(i)), depth + 1, out));
    }
    return absl::OkStatus();
  }
  OptionValue value;
  switch (node.type()) {
    case nlohmann::json::value_t::string: {
      const std::string& text = node.get_ref<const std::string&>();
      if (HasNul(text)) {
        return InvalidArgument(absl::StrFormat("%s: '%s' %s", kJsonError, key, kNulError));
      }
      value = text;
      break;
    }
    case nlohmann::json::value_t::boolean: value = node.get<bool>(); break;
    case nlohmann::json::value_t::number_integer: value = node.get<int64_t>(); break;
    case nlohmann::json::value_t::number_unsigned: {
      uint64_t u = node.get<uint64_t>();
      if (u <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        value = static_cast<int64_t>(u);
      } else {
        value = u;
      }
      break;
    }
    case nlohmann::json::value_t::number_float: value = node.get<double>(); break;
    case nlohmann::json::value_t::null: {
      // "backing": null (no backing file) is the one null QEMU's block options take; it is
      // the empty string here, as in QEMU's key=value syntax.
      std::string_view k = key;
      constexpr std::string_view kSuffix = ".backing";
      if (k == "backing" || (k.size() > kSuffix.size() && k.substr(k.size() - kSuffix.size()) == kSuffix)) {
        value = std::string();
        break;
      }
      return InvalidArgument(absl::StrFormat("%s: value of '%s' is null", kJsonError, key));
    }
    default:
      return InvalidArgument(absl::StrFormat("%s: unsupported value for '%s'", kJsonError, key));
  }
  if (out.Has(key)) {
    return InvalidArgument(absl::StrFormat("%s: parameter '%s' given twice", kJsonError, key));
  }
  out.Set(key, std::move(value));
  return absl::OkStatus();
}

// A SAX consumer that only remembers where parsing failed, for the error message.
struct JsonErrorLocator {
  size_t position = 0;
  bool null() { return true; }
  bool boolean(bool) { return true; }
  bool number_integer(int64_t) { return true; }
  bool number_unsigned(uint64_t) { return true; }
  bool number_float(double, const std::string&) { return true; }
  bool string(std::string&) { return true; }
  bool binary(nlohmann::json::binary_t&) { return true; }
  bool start_object(size_t) { return true; }
  bool key(std::string&) { return true; }
  bool end_object() { return true; }
  bool start_array(size_t) { return true; }
  bool end_array() { return true; }
  bool parse_error(size_t pos, const std::string&, const nlohmann::json::exception&) {
    position = pos;
    return false;
  }
};

std::string JoinChoices(absl::Span<const std::string_view> choices) {
  std::string out;
  for (size_t i = 0; i < choices.size(); ++i) {
    if (i > 0) out += i + 1 == choices.size() ? " or " : ", ";
    out += absl::StrFormat("'%s'", choices[i]);
  }
  return out;
}

// The error for a value that does not fit the spec's type; `text` is the value as given.
absl::Status TypeError(std::string_view owner, const OptionSpec& spec, std::string_view text) {
  std::string what;
  switch (spec.type) {
    case OptionType::kString: what = "expects a string"; break;
    case OptionType::kBool: what = "expects 'on' or 'off'"; break;
    case OptionType::kInt: what = "expects an integer"; break;
    case OptionType::kSize:
      what = "expects a non-negative number below 2^64 (optional suffix k, M, G, T, P or E)";
      break;
    case OptionType::kEnum:
      what = absl::StrFormat("does not accept value '%s' (expected %s)", text,
                             JoinChoices(spec.choices));
      break;
  }
  return InvalidArgument(absl::StrFormat("%s: parameter '%s' %s", owner, spec.name, what));
}

absl::StatusOr<TypedValue> ConvertText(std::string_view owner, const OptionSpec& spec,
                                       std::string_view text) {
  switch (spec.type) {
    case OptionType::kString:
      return TypedValue(std::string(text));
    case OptionType::kEnum:
      for (std::string_view choice : spec.choices) {
        if (choice == text) return TypedValue(std::string(text));
      }
      break;
    case OptionType::kBool:
      if (auto b = ParseBool(text); b.ok()) return TypedValue(*b);
      break;
    case OptionType::kInt:
      if (auto i = ParseInt(text); i.ok()) return TypedValue(*i);
      break;
    case OptionType::kSize:
      if (auto s = ParseSize(text); s.ok()) return TypedValue(*s);
      break;
  }
  return TypeError(owner, spec, text);
}

absl::StatusOr<TypedValue> Convert(std::string_view owner, const OptionSpec& spec,
                                   const OptionValue& value) {
  if (const auto* text = std::get_if<std::string>(&value)) {
    // The parsers refuse NULs already; options built in code are checked here.
    if (HasNul(*text)) {
      return InvalidArgument(absl::StrFormat("%s: parameter '%s' %s", owner, spec.name, kNulError));
    }
    return ConvertText(owner, spec, *text);
  }
  if (const auto* b = std::get_if<bool>(&value)) {
    if (spec.type == OptionType::kBool) return TypedValue(*b);
  } else if (const auto* i = std::get_if<int64_t>(&value)) {
    if (spec.type == OptionType::kInt) return TypedValue(*i);
    if (spec.type == OptionType::kSize && *i >= 0) return TypedValue(static_cast<uint64_t>(*i));
  } else if (const auto* u = std::get_if<uint64_t>(&value)) {
    if (spec.type == OptionType::kSize) return TypedValue(*u);
  }
  return TypeError(owner, spec, OptionValueText(value));
}

std::string_view TypeName(OptionType type) {
  switch (type) {
    case OptionType::kString: return "str";
    case OptionType::kBool: return "bool (on/off)";
    case OptionType::kInt: return "num";
    case OptionType::kSize: return "size";
    case OptionType::kEnum: return "enum";
  }
  return "?";
}

[[noreturn]] void Die(std::string_view owner, std::string_view caller, std::string_view name,
                      std::string_view problem) {
  std::fprintf(stderr, "libblock: %.*s: %.*s(\"%.*s\"): %.*s\n",
               static_cast<int>(owner.size()), owner.data(), static_cast<int>(caller.size()),
               caller.data(), static_cast<int>(name.size()), name.data(),
               static_cast<int>(problem.size()), problem.data());
  std::abort();
}

}  // namespace

std::string OptionValueText(const OptionValue& value) {
  struct Visitor {
    std::string operator()(const std::string& s) const { return s; }
    std::string operator()(bool b) const { return b ? "on" : "off"; }
    std::string operator()(int64_t i) const { return std::to_string(i); }
    std::string operator()(uint64_t u) const { return std::to_string(u); }
    std::string operator()(double d) const {
      char buf[64];
      auto result = std::to_chars(buf, buf + sizeof(buf), d);
      return std::string(buf, result.ptr);
    }
  };
  return std::visit(Visitor{}, value);
}

// ---- Options ----

bool Options::Has(std::string_view key) const { return map_.find(key) != map_.end(); }

const OptionValue* Options::Get(std::string_view key) const {
  auto it = map_.find(key);
  return it == map_.end() ? nullptr : &it->second;
}

std::optional<std::string> Options::GetString(std::string_view key) const {
  const OptionValue* value = Get(key);
  if (value == nullptr) return std::nullopt;
  return OptionValueText(*value);
}

void Options::Set(std::string key, OptionValue value) {
  map_.insert_or_assign(std::move(key), std::move(value));
}

void Options::SetDefault(std::string key, OptionValue value) {
  map_.try_emplace(std::move(key), std::move(value));
}

bool Options::Erase(std::string_view key) {
  auto it = map_.find(key);
  if (it == map_.end()) return false;
  map_.erase(it);
  return true;
}

std::optional<OptionValue> Options::Take(std::string_view key) {
  auto it = map_.find(key);
  if (it == map_.end()) return std::nullopt;
  OptionValue value = std::move(it->second);
  map_.erase(it);
  return value;
}

Options Options::ExtractPrefix(std::string_view prefix) {
  std::string start = std::string(prefix) + ".";
  Options result;
  auto it = map_.lower_bound(start);
  while (it != map_.end() && it->first.starts_with(start)) {
    result.map_.emplace(it->first.substr(start.size()), std::move(it->second));
    it = map_.erase(it);
  }
  return result;
}

bool Options::HasPrefix(std::string_view prefix) const {
  std::string start = std::string(prefix) + ".";
  auto it = map_.lower_bound(start);
  return it != map_.end() && it->first.starts_with(start);
}

void Options::MergeMissing(const Options& other) {
  for (const auto& [key, value] : other.map_) map_.try_emplace(key, value);
}

std::string Options::ToString() const {
  std::string out;
  for (const auto& [key, value] : map_) {
    if (!out.empty()) out += ',';
    out += EscapeCommas(key);
    out += '=';
    out += EscapeCommas(OptionValueText(value));
  }
  return out;
}

nlohmann::json Options::ToJson() const {
  nlohmann::json root = nlohmann::json::object();
  for (const auto& [key, value] : map_) {
    nlohmann::json* node = &root;
    std::string_view rest = key;
    while (true) {
      size_t dot = rest.find('.');
      if (dot == std::string_view::npos) break;
      std::string component(rest.substr(0, dot));
      auto child = node->find(component);
      if (child == node->end()) {
        node = &((*node)[component] = nlohmann::json::object());
      } else if (child->is_object()) {
        node = &*child;
      } else {
        break;  // a scalar sits here already: keep the rest of the key flat
      }
      rest.remove_prefix(dot + 1);
    }
    (*node)[std::string(rest)] = ScalarToJson(value);
  }
  for (auto& child : root) CrumpleArrays(child);
  return root;
}

// ---- Parsers ----

absl::StatusOr<Options> ParseKeyValueOptions(std::string_view text, std::string_view implied_key) {
  Options opts;
  if (text.empty()) return opts;
  size_t pos = 0;
  for (bool first = true;; first = false) {
    // One element, up to the next single comma, with ",," undoubled.
    std::string element;
    size_t eq = std::string::npos;
    bool comma_in_key = false;
    while (pos < text.size()) {
      char c = text[pos];
      if (c == ',') {
        if (pos + 1 == text.size() || text[pos + 1] != ',') break;
        if (eq == std::string::npos) comma_in_key = true;
        element += ',';
        pos += 2;
        continue;
      }
      if (c == '=' && eq == std::string::npos) eq = element.size();
      element += c;
      ++pos;
    }
    if (element.empty()) {
      return InvalidArgument(absl::StrFormat("empty element in options '%s'", text));
    }
    if (size_t nul = element.find('\0'); nul != std::string::npos) {
      // Named as the JSON form names it: the key, or the key whose value holds the NUL.
      if (eq != std::string::npos && nul < eq) {
        return InvalidArgument(absl::StrFormat("key '%s' %s",
                                               ShowNul(element.substr(0, eq)), kNulError));
      }
      std::string name = eq == std::string::npos
                             ? (first && !implied_key.empty() ? std::string(implied_key)
                                                              : ShowNul(element))
                             : element.substr(0, eq);
      return InvalidArgument(absl::StrFormat("'%s' %s", name, kNulError));
    }
    std::string key;
    std::string value;
    if (eq == std::string::npos) {
      if (!first || implied_key.empty()) {
        return InvalidArgument(
            absl::StrFormat("parameter '%s' has no value (expected key=value)", element));
      }
      key = std::string(implied_key);
      value = std::move(element);
    } else {
      key = element.substr(0, eq);
      value = element.substr(eq + 1);
      LB_RETURN_IF_ERROR(CheckKey(key, comma_in_key));
    }
    // As QemuOpts (qemu-img's -o, --image-opts and --object): a repeated key's last value wins.
    opts.Set(std::move(key), std::move(value));
    if (pos == text.size()) return opts;
    ++pos;  // the separating comma
    if (pos == text.size()) return opts;  // one trailing comma is accepted, as by QemuOpts
  }
}

bool IsJsonFilename(std::string_view filename) { return filename.starts_with(kJsonPrefix); }

absl::StatusOr<Options> ParseJsonFilename(std::string_view filename) {
  if (!IsJsonFilename(filename)) {
    return InvalidArgument(absl::StrFormat("%s: filename does not start with 'json:'", kJsonError));
  }
  std::string_view body = filename.substr(kJsonPrefix.size());
  // QEMU's JSON parser refuses a key repeated within one object; nlohmann would keep the last.
  std::vector<std::set<std::string>> open_objects;
  bool duplicate = false;
  nlohmann::json::parser_callback_t watch_keys = [&](int, nlohmann::json::parse_event_t event,
                                                     nlohmann::json& parsed) {
    switch (event) {
      case nlohmann::json::parse_event_t::object_start:
        open_objects.emplace_back();
        break;
      case nlohmann::json::parse_event_t::object_end:
        if (!open_objects.empty()) open_objects.pop_back();
        break;
      case nlohmann::json::parse_event_t::key:
        if (!open_objects.empty() && parsed.is_string() &&
            !open_objects.back().insert(parsed.get<std::string>()).second) {
          duplicate = true;
        }
        break;
      default:
        break;
    }
    return true;
  };
  nlohmann::json tree = nlohmann::json::parse(body, watch_keys, /*allow_exceptions=*/false);
  if (duplicate && !tree.is_discarded()) {
    return InvalidArgument(absl::StrFormat("%s: JSON parse error, duplicate key", kJsonError));
  }
  if (tree.is_discarded()) {
    JsonErrorLocator locator;
    nlohmann::json::sax_parse(body, &locator);
    return InvalidArgument(absl::StrFormat("%s: syntax error at byte %d of '%s'", kJsonError,
                                           locator.position + kJsonPrefix.size(), filename));
  }
  if (!tree.is_object()) {
    return InvalidArgument(absl::StrFormat("%s: expected an object, got %s", kJsonError,
                                           tree.type_name()));
  }
  Options opts;
  LB_RETURN_IF_ERROR(FlattenJson(tree, "", 0, opts));
  return opts;
}

absl::StatusOr<uint64_t> ParseSize(std::string_view text) {
  // A NUL would end QEMU's string early; here it cannot be part of a size.
  ParsedSize p = text.find('\0') == std::string_view::npos ? ParseQemuSize(std::string(text).c_str())
                                                          : ParsedSize{EINVAL};
  if (p.error == ERANGE) {
    return InvalidArgument(absl::StrFormat("invalid size '%s': too large (the limit is 2^64 - 1 bytes)", text));
  }
  if (p.error) return InvalidArgument(absl::StrFormat("invalid size '%s'", text));
  return p.value;
}

absl::StatusOr<bool> ParseBool(std::string_view text) {
  if (text == "on" || text == "yes" || text == "true") return true;
  if (text == "off" || text == "no" || text == "false") return false;
  return InvalidArgument(absl::StrFormat("invalid boolean '%s' (expected 'on' or 'off')", text));
}

absl::StatusOr<int64_t> ParseInt(std::string_view text) {
  std::string_view digits = text;
  bool negative = false;
  if (!digits.empty() && (digits[0] == '-' || digits[0] == '+')) {
    negative = digits[0] == '-';
    digits.remove_prefix(1);
  }
  bool hex = HasHexPrefix(digits);
  size_t pos = hex ? 2 : 0;
  uint64_t magnitude = 0;
  bool fits = AccumulateDigits(digits, &pos, hex ? 16 : 10, &magnitude);
  if (pos == (hex ? 2u : 0u) || pos != digits.size()) {
    return InvalidArgument(absl::StrFormat("invalid integer '%s'", text));
  }
  uint64_t limit = static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) + (negative ? 1 : 0);
  if (!fits || magnitude > limit) {
    return InvalidArgument(absl::StrFormat("integer '%s' is out of range", text));
  }
  // Negating in unsigned arithmetic handles INT64_MIN, whose magnitude has no int64 form.
  return negative ? static_cast<int64_t>(0 - magnitude) : static_cast<int64_t>(magnitude);
}

// ---- Schemas ----

const OptionSpec* OptionSchema::Find(std::string_view name) const {
  for (const OptionSpec& spec : specs) {
    if (spec.name == name) return &spec;
  }
  return nullptr;
}

std::string OptionSchema::Help() const {
  std::vector<std::string> heads;
  size_t width = 0;
  for (const OptionSpec& spec : specs) {
    std::string type = std::string(TypeName(spec.type));
    if (spec.type == OptionType::kEnum && !spec.choices.empty()) {
      type.clear();
      for (std::string_view choice : spec.choices) {
        if (!type.empty()) type += '|';
        type += choice;
      }
    }
    heads.push_back(absl::StrFormat("%s=<%s>", spec.name, type));
    width = std::max(width, heads.back().size());
  }
  std::string out;
  for (size_t i = 0; i < specs.size(); ++i) {
    out += absl::StrFormat("  %-*s  - %s", static_cast<int>(width), heads[i], specs[i].help);
    if (!specs[i].default_value.empty()) {
      out += absl::StrFormat(" (default: %s)", specs[i].default_value);
    }
    out += '\n';
  }
  return out;
}

// ---- OptionValues ----

const OptionValues::Entry& OptionValues::Lookup(std::string_view name,
                                                std::string_view caller) const {
  auto it = entries_.find(name);
  if (it == entries_.end()) Die(owner_, caller, name, "no such option in the schema");
  return it->second;
}

const OptionValues::Typed* OptionValues::Effective(std::string_view name, std::string_view caller,
                                                   std::initializer_list<OptionType> types) const {
  const Entry& entry = Lookup(name, caller);
  bool type_ok = false;
  for (OptionType type : types) type_ok |= entry.type == type;
  if (!type_ok) Die(owner_, caller, name, "the option has another type");
  if (entry.value) return &*entry.value;
  if (entry.default_value) return &*entry.default_value;
  return nullptr;
}

bool OptionValues::IsSet(std::string_view name) const {
  return Lookup(name, "OptionValues::IsSet").value.has_value();
}

bool OptionValues::Has(std::string_view name) const {
  const Entry& entry = Lookup(name, "OptionValues::Has");
  return entry.value.has_value() || entry.default_value.has_value();
}

const OptionValues::Typed& OptionValues::Required(std::string_view name, std::string_view caller,
                                                  std::initializer_list<OptionType> types) const {
  const Typed* typed = Effective(name, caller, types);
  if (typed == nullptr) Die(owner_, caller, name, "neither a value nor a default");
  return *typed;
}

std::string OptionValues::GetString(std::string_view name) const {
  return std::get<std::string>(
      Required(name, "OptionValues::GetString", {OptionType::kString, OptionType::kEnum}));
}

bool OptionValues::GetBool(std::string_view name) const {
  return std::get<bool>(Required(name, "OptionValues::GetBool", {OptionType::kBool}));
}

int64_t OptionValues::GetInt(std::string_view name) const {
  return std::get<int64_t>(Required(name, "OptionValues::GetInt", {OptionType::kInt}));
}

uint64_t OptionValues::GetSize(std::string_view name) const {
  return std::get<uint64_t>(Required(name, "OptionValues::GetSize", {OptionType::kSize}));
}

std::optional<std::string> OptionValues::FindString(std::string_view name) const {
  const Typed* typed =
      Effective(name, "OptionValues::FindString", {OptionType::kString, OptionType::kEnum});
  if (typed == nullptr) return std::nullopt;
  return std::get<std::string>(*typed);
}

std::optional<bool> OptionValues::FindBool(std::string_view name) const {
  const Typed* typed = Effective(name, "OptionValues::FindBool", {OptionType::kBool});
  if (typed == nullptr) return std::nullopt;
  return std::get<bool>(*typed);
}

std::optional<int64_t> OptionValues::FindInt(std::string_view name) const {
  const Typed* typed = Effective(name, "OptionValues::FindInt", {OptionType::kInt});
  if (typed == nullptr) return std::nullopt;
  return std::get<int64_t>(*typed);
}

std::optional<uint64_t> OptionValues::FindSize(std::string_view name) const {
  const Typed* typed = Effective(name, "OptionValues::FindSize", {OptionType::kSize});
  if (typed == nullptr) return std::nullopt;
  return std::get<uint64_t>(*typed);
}

absl::StatusOr<OptionValues> ConsumeOptions(const OptionSchema& schema, Options& opts) {
  OptionValues values;
  values.owner_ = std::string(schema.owner);
  std::vector<std::string_view> taken;
  for (const OptionSpec& spec : schema.specs) {
    OptionValues::Entry entry{spec.type, std::nullopt, std::nullopt};
    if (!spec.default_value.empty()) {
      auto parsed = ConvertText(schema.owner, spec, spec.default_value);
      if (!parsed.ok()) Die(schema.owner, "ConsumeOptions", spec.name, "invalid default in schema");
      entry.default_value = *std::move(parsed);
    }
    if (const OptionValue* given = opts.Get(spec.name)) {
      LB_ASSIGN_OR_RETURN(entry.value, Convert(schema.owner, spec, *given));
      taken.push_back(spec.name);
    }
    values.entries_.insert_or_assign(std::string(spec.name), std::move(entry));
  }
  // Only now, so that a failure leaves `opts` as it was.
  for (std::string_view name : taken) opts.Erase(name);
  return values;
}

}  // namespace libblock
