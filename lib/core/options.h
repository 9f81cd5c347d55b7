// Block layer options: QEMU's flattened option dictionary, its two textual forms and typed,
// per-driver option schemas.
//
// Options mirror QEMU's flat QDict: every key is a dotted path ("file.filename") and every value
// a scalar. Two syntaxes produce them: "key=value,key2=value2" (the -drive / -o syntax, where ",,"
// stands for a literal comma) and "json:{...}" pseudo-filenames, whose nested objects and arrays
// flatten to dotted keys. Values parsed from key=value text are always strings; JSON values keep
// their type. A driver declares an OptionSchema and calls ConsumeOptions to take, convert and
// validate the keys it owns; whatever stays behind belongs to children or is an error the caller
// reports.
#ifndef LIBBLOCK_CORE_OPTIONS_H_
#define LIBBLOCK_CORE_OPTIONS_H_

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "nlohmann/json_fwd.hpp"

namespace libblock {

// A scalar option value as given by the user: text from key=value strings, or a typed JSON scalar.
using OptionValue = std::variant<std::string, int64_t, uint64_t, bool, double>;

// The text form of a value: strings as is, bools "on"/"off", numbers in decimal (doubles in the
// shortest form that reads back to the same value).
std::string OptionValueText(const OptionValue& value);

// QEMU's flattened QDict: dotted keys mapped to scalar values, kept sorted by key.
class Options {
 public:
  using Map = std::map<std::string, OptionValue, std::less<>>;
  using const_iterator = Map::const_iterator;

  bool Has(std::string_view key) const;
  // Null when absent; valid until the key is erased or overwritten.
  const OptionValue* Get(std::string_view key) const;
  // Text form of a scalar (see OptionValueText); nullopt when absent.
  std::optional<std::string> GetString(std::string_view key) const;
  void Set(std::string key, OptionValue value);          // overwrites
  void SetDefault(std::string key, OptionValue value);   // only if absent
  bool Erase(std::string_view key);
  std::optional<OptionValue> Take(std::string_view key);  // get and erase

  // Moves every key "prefix.rest" into the result as "rest" (QEMU's qdict_extract_subqdict).
  // `prefix` has no trailing dot; a key equal to `prefix` itself stays here.
  Options ExtractPrefix(std::string_view prefix);
  // True when some key starts with "prefix.".
  bool HasPrefix(std::string_view prefix) const;
  // Adds the keys of `other` that are absent here (QEMU's qdict_join without overwrite).
  void MergeMissing(const Options& other);

  bool empty() const { return map_.empty(); }
  size_t size() const { return map_.size(); }
  const_iterator begin() const { return map_.begin(); }
  const_iterator end() const { return map_.end(); }

  // "a=b,c.d=e" in key order with commas doubled, so ParseKeyValueOptions reads it back (as
  // strings: typed values come back as their text form).
  std::string ToString() const;
  // The unflattened tree: dotted keys become nested objects, and a nested object whose keys are
  // exactly 0..n-1 becomes an array (QEMU's qdict_crumple); the top level stays an object.
  // Strings stay strings, other scalars keep their JSON type. A key that is both a value and a
  // prefix ("a" and "a.b") cannot nest; the deeper key is then kept with its remaining dots at
  // the level of the clash.
  nlohmann::json ToJson() const;

  bool operator==(const Options& other) const = default;

 private:
  Map map_;
};

// Parses QEMU's "key=value,key2=value2" syntax. ",," is a literal comma in a value (and an error
// in a key); keys may be dotted but have no empty components; empty elements are errors, except
// for one trailing comma; a repeated key's last value wins (QemuOpts); values may be empty. If `implied_key` is non-empty, a first element without '=' is
// the value of `implied_key` ("qcow2,file=a.img" with implied key "driver"). All values are
// strings. Empty text gives empty options.
absl::StatusOr<Options> ParseKeyValueOptions(std::string_view text,
                                             std::string_view implied_key = {});

// True when `filename` starts with "json:".
bool IsJsonFilename(std::string_view filename);
// Parses a "json:{...}" pseudo-filename (prefix included). Nested objects flatten to dotted keys,
// arrays to "key.0", "key.1", ...; empty objects and arrays vanish. Strings become std::string,
// booleans bool, integers int64_t (uint64_t above INT64_MAX), other numbers double. Invalid JSON,
// a non-object top level, null values (but "backing": null, which becomes ""), empty keys, keys repeated within an object or after
// flattening, and nesting
// deeper than 64 levels are InvalidArgument errors.
absl::StatusOr<Options> ParseJsonFilename(std::string_view filename);

// A byte count as QEMU's qemu_strtosz reads it (util/size_parse.h: QEMU 7.2's values to the
// byte): decimal digits with an optional fraction, or 0x hex digits (greedy, so "0x1e" is
// 30), then an optional one-letter suffix B/K/M/G/T/P/E in either case (powers of 1024;
// none = bytes). The result must be below 2^64; a fraction without a unit larger than bytes
// is an error. Failures are EINVAL, "invalid size 'TEXT'" (+ ": too large ..." for range).
absl::StatusOr<uint64_t> ParseSize(std::string_view text);
// "on"/"off", "yes"/"no", "true"/"false", case-sensitive like QEMU.
absl::StatusOr<bool> ParseBool(std::string_view text);
// An int64 in decimal or 0x hex with an optional sign, and nothing else.
absl::StatusOr<int64_t> ParseInt(std::string_view text);

enum class OptionType { kString, kBool, kInt, kSize, kEnum };

// One option of a driver. Schemas are normally static constant tables; every string_view and
// span must outlive the schema's use.
struct OptionSpec {
  std::string_view name;
  OptionType type;
  std::string_view default_value;  // text form; empty = no default
  std::string_view help;
  absl::Span<const std::string_view> choices = {};  // kEnum only
};

struct OptionSchema {
  std::string_view owner;  // driver name used in messages, e.g. "file"
  absl::Span<const OptionSpec> specs;

  const OptionSpec* Find(std::string_view name) const;
  // One line per option like qemu-img's "-o help": "  name=<type>  - help (default: x)", with the
  // help column aligned.
  std::string Help() const;
};

// The validated, typed values of one schema, produced by ConsumeOptions.
//
// Asking for a name the schema doesn't declare, with the getter of another type, or with a Get*
// for an option that has neither a value nor a default is a programming error: the process
// aborts with a message on stderr.
class OptionValues {
 public:
  bool IsSet(std::string_view name) const;  // given by the user (not just defaulted)
  bool Has(std::string_view name) const;    // given or has a default

  // The value, or the default.
  std::string GetString(std::string_view name) const;  // kString and kEnum
  bool GetBool(std::string_view name) const;
  int64_t GetInt(std::string_view name) const;
  uint64_t GetSize(std::string_view name) const;

  // The value, or the default, or nullopt for options that have neither.
  std::optional<std::string> FindString(std::string_view name) const;
  std::optional<bool> FindBool(std::string_view name) const;
  std::optional<int64_t> FindInt(std::string_view name) const;
  std::optional<uint64_t> FindSize(std::string_view name) const;

 private:
  friend absl::StatusOr<OptionValues> ConsumeOptions(const OptionSchema& schema,
                                                     Options& opts);
  using Typed = std::variant<std::string, bool, int64_t, uint64_t>;
  struct Entry {
    OptionType type;
    std::optional<Typed> value;
    std::optional<Typed> default_value;
  };

  const Entry& Lookup(std::string_view name, std::string_view caller) const;
  // The value or default of an option of one of `types`; null when it has neither.
  const Typed* Effective(std::string_view name, std::string_view caller,
                         std::initializer_list<OptionType> types) const;
  // Like Effective, but aborts when there is neither.
  const Typed& Required(std::string_view name, std::string_view caller,
                        std::initializer_list<OptionType> types) const;

  std::string owner_;
  std::map<std::string, Entry, std::less<>> entries_;
};

// Takes every key that `schema` names out of `opts` (exact key match), converts and validates it,
// and fills in defaults. Keys the schema doesn't name stay in `opts` for the caller, who reports
// leftovers. String values are parsed per type; a JSON bool is accepted for kBool and JSON
// integers for kInt and kSize (negative sizes rejected); kString and kEnum need strings. Errors
// are InvalidArgument with errno EINVAL naming owner and option, e.g.
// "raw: parameter 'offset' expects an integer". On error `opts` is left unchanged.
absl::StatusOr<OptionValues> ConsumeOptions(const OptionSchema& schema, Options& opts);

}  // namespace libblock

#endif  // LIBBLOCK_CORE_OPTIONS_H_
