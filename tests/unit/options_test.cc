// Block options: the flat dictionary, key=value and json: syntaxes, size/bool/int parsing and
// schema validation (ConsumeOptions, OptionValues).
#include "core/options.h"

#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cerrno>
#include <csignal>
#include <string>

#include "nlohmann/json.hpp"
#include "util/status.h"

namespace libblock {
namespace {

std::string Message(const absl::Status& status) { return std::string(status.message()); }

Options ParseOk(std::string_view text, std::string_view implied = {}) {
  auto parsed = ParseKeyValueOptions(text, implied);
  INFO(text);
  REQUIRE(parsed.ok());
  return *parsed;
}

std::string ParseError(std::string_view text, std::string_view implied = {}) {
  auto parsed = ParseKeyValueOptions(text, implied);
  INFO(text);
  REQUIRE_FALSE(parsed.ok());
  CHECK(StatusErrno(parsed.status()) == EINVAL);
  return Message(parsed.status());
}

TEST_CASE("key=value: doubled commas, dotted keys, empty values", "[options]") {
  Options opts = ParseOk("filename=a,,b.img,file.locking=off,x=,y=1,,,,2");
  REQUIRE(opts.size() == 4);
  CHECK(opts.GetString("filename") == "a,b.img");
  CHECK(opts.GetString("file.locking") == "off");
  CHECK(opts.GetString("x") == "");
  CHECK(opts.GetString("y") == "1,,2");
  CHECK(std::holds_alternative<std::string>(*opts.Get("file.locking")));
  // Only the first '=' separates; later ones belong to the value.
  CHECK(ParseOk("a=b=c").GetString("a") == "b=c");
  // ",,," is a literal comma followed by a separator.
  Options tricky = ParseOk("a=1,,,b=2");
  CHECK(tricky.GetString("a") == "1,");
  CHECK(tricky.GetString("b") == "2");
  CHECK(ParseOk("").empty());
}

TEST_CASE("key=value: implied key", "[options]") {
  Options opts = ParseOk("qcow2,file.filename=x,,y", "driver");
  CHECK(opts.GetString("driver") == "qcow2");
  CHECK(opts.GetString("file.filename") == "x,y");
  CHECK(ParseOk("a,,b", "driver").GetString("driver") == "a,b");
  // Only the first element may be implied, and only when an implied key is given.
  CHECK(ParseError("driver=raw,qcow2", "driver") ==
        "parameter 'qcow2' has no value (expected key=value)");
  CHECK(ParseError("qcow2") == "parameter 'qcow2' has no value (expected key=value)");
  // A repeated key's last value wins, as in QemuOpts.
  CHECK(ParseOk("qcow2,driver=raw", "driver").GetString("driver") == "raw");
}

TEST_CASE("key=value: malformed input", "[options]") {
  // One trailing comma is accepted, as QemuOpts accepts it; ",," stays an escaped comma.
  CHECK(ParseOk("a=1,").GetString("a") == "1");
  CHECK(ParseOk("a=1,,").GetString("a") == "1,");
  CHECK(ParseOk("a=1,,,").GetString("a") == "1,");
  CHECK(ParseOk("a=1,,,,b=2,").GetString("a") == "1,,b=2");
  CHECK(ParseError(",a=1") == "empty element in options ',a=1'");
  CHECK(ParseOk("a=1,,,,b=2,,,").GetString("a") == "1,,b=2,");
  CHECK(ParseOk("a=1,b=2,a=3").GetString("a") == "3");
  CHECK(ParseError("=x") == "empty parameter name");
  CHECK(ParseError("a,,b=1") == "parameter name 'a,b' contains a comma");
  CHECK(ParseError("file..name=1") == "invalid parameter name 'file..name': empty component");
  CHECK(ParseError(".a=1").find("empty component") != std::string::npos);
  CHECK(ParseError("a.=1").find("empty component") != std::string::npos);
}

TEST_CASE("ToString escapes commas and round-trips", "[options]") {
  Options opts;
  opts.Set("file.filename", std::string("a,b,,c.img"));
  opts.Set("driver", std::string("raw"));
  opts.Set("read-only", true);
  opts.Set("size", int64_t{-5});
  opts.Set("big", uint64_t{18446744073709551615u});
  opts.Set("ratio", 0.1);
  CHECK(opts.ToString() ==
        "big=18446744073709551615,driver=raw,file.filename=a,,b,,,,c.img,ratio=0.1,"
        "read-only=on,size=-5");
  Options back = ParseOk(opts.ToString());
  REQUIRE(back.size() == opts.size());
  for (const auto& [key, value] : opts) CHECK(back.GetString(key) == OptionValueText(value));
  CHECK(back.GetString("file.filename") == "a,b,,c.img");
}

TEST_CASE("json: filenames flatten nested objects and arrays with typed scalars", "[options]") {
  CHECK(IsJsonFilename("json:{}"));
  CHECK_FALSE(IsJsonFilename("JSON:{}"));
  CHECK_FALSE(IsJsonFilename("a.img"));
  auto parsed = ParseJsonFilename(
      R"(json:{"driver": "qcow2", "file": {"driver": "file", "filename": "a,b.img"},)"
      R"( "read-only": true, "n": -3, "m": 7, "huge": 18446744073709551615, "f": 1.5,)"
      R"( "list": ["x", {"y": false}], "flat.key": "v", "empty": {}})");
  REQUIRE(parsed.ok());
  const Options& opts = *parsed;
  CHECK(opts.size() == 11);
  CHECK(std::get<std::string>(*opts.Get("driver")) == "qcow2");
  CHECK(std::get<std::string>(*opts.Get("file.filename")) == "a,b.img");
  CHECK(std::get<bool>(*opts.Get("read-only")) == true);
  CHECK(std::get<int64_t>(*opts.Get("n")) == -3);
  CHECK(std::get<int64_t>(*opts.Get("m")) == 7);  // small unsigned JSON numbers are int64
  CHECK(std::get<uint64_t>(*opts.Get("huge")) == 18446744073709551615u);
  CHECK(std::get<double>(*opts.Get("f")) == 1.5);
  CHECK(std::get<std::string>(*opts.Get("list.0")) == "x");
  CHECK(std::get<bool>(*opts.Get("list.1.y")) == false);
  CHECK(std::get<std::string>(*opts.Get("flat.key")) == "v");
  CHECK_FALSE(opts.HasPrefix("empty"));
  CHECK(opts.GetString("read-only") == "on");
  CHECK(opts.GetString("f") == "1.5");
}

TEST_CASE("json: filenames reject bad JSON, non-objects, nulls and clashes", "[options]") {
  auto error = [](std::string_view filename) {
    auto parsed = ParseJsonFilename(filename);
    INFO(filename);
    REQUIRE_FALSE(parsed.ok());
    CHECK(parsed.status().code() == absl::StatusCode::kInvalidArgument);
    CHECK(StatusErrno(parsed.status()) == EINVAL);
    std::string message = Message(parsed.status());
    CHECK(message.starts_with("Could not parse the JSON options: "));
    return message;
  };
  CHECK(error(R"(json:{"driver": )").find("syntax error") != std::string::npos);
  CHECK(error("json:").find("syntax error") != std::string::npos);
  CHECK(error(R"(json:{"a": 1} x)").find("syntax error") != std::string::npos);
  CHECK(error(R"(json:["a"])").find("expected an object, got array") != std::string::npos);
  CHECK(error("json:3").find("expected an object, got number") != std::string::npos);
  CHECK(error(R"(json:{"file": {"x": null}})").find("'file.x' is null") != std::string::npos);
  CHECK(error(R"(json:{"a.b": 1, "a": {"b": 2}})").find("'a.b' given twice") != std::string::npos);
  // QEMU's parser refuses a key repeated within one object (nlohmann alone keeps the last).
  CHECK(error(R"(json:{"a": 1, "a": 2})") ==
        "Could not parse the JSON options: JSON parse error, duplicate key");
  CHECK(error(R"(json:{"f": {"x": 1, "x": 1}})") ==
        "Could not parse the JSON options: JSON parse error, duplicate key");
  CHECK(ParseJsonFilename(R"(json:{"f": {"x": 1}, "g": {"x": 1}})").ok());
  CHECK(error(R"(json:{"a": {"": 1}})").find("empty key in 'a'") != std::string::npos);
  CHECK(error("a.img").find("does not start with 'json:'") != std::string::npos);
  std::string deep = "json:{\"a\":" + std::string(100, '[') + "1" + std::string(100, ']') + "}";
  CHECK(error(deep).find("nested more than 64 levels") != std::string::npos);
}

TEST_CASE("ToJson unflattens keys and rebuilds arrays", "[options]") {
  auto parsed = ParseJsonFilename(
      R"(json:{"driver": "qcow2", "file": {"filename": "a.img", "n": 3},)"
      R"( "l": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], "b": true})");
  REQUIRE(parsed.ok());
  nlohmann::json tree = parsed->ToJson();
  CHECK(tree == nlohmann::json::parse(
                    R"({"driver": "qcow2", "file": {"filename": "a.img", "n": 3},)"
                    R"( "l": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], "b": true})"));
  // Key=value input stays textual; a value that is also a prefix keeps the deeper key flat.
  Options opts = ParseOk("file=a.img,file.locking=off,x.1=a,x.2=b");
  CHECK(opts.ToJson() ==
        nlohmann::json::parse(
            R"({"file": "a.img", "file.locking": "off", "x": {"1": "a", "2": "b"}})"));
  // The top level stays an object even with index-like keys.
  CHECK(ParseOk("0=a,1=b").ToJson() == nlohmann::json::parse(R"({"0": "a", "1": "b"})"));
}

TEST_CASE("ParseSize accepts qemu_strtosz forms", "[options]") {
  auto size = [](std::string_view text) {
    auto parsed = ParseSize(text);
    INFO(text << ": " << parsed.status());
    REQUIRE(parsed.ok());
    return *parsed;
  };
  // Values as qemu-img 7.2 reports them (qemu-img create -f raw x SIZE).
  CHECK(size("0") == 0);
  CHECK(size("512") == 512);
  CHECK(size("512b") == 512);
  CHECK(size("4k") == 4096);
  CHECK(size("4K") == 4096);
  CHECK(size("1.5M") == 1572864);
  CHECK(size("0.1k") == 102);
  CHECK(size("0.0000000001T") == 110);  // 109.95: rounded half up
  CHECK(size("0.0005k") == 1);
  CHECK(size("1.0") == 1);
  CHECK(size("1.") == 1);
  CHECK(size(" 1") == 1);
  CHECK(size("+1k") == 1024);
  CHECK(size("2g") == (uint64_t{2} << 30));
  CHECK(size("3T") == (uint64_t{3} << 40));
  CHECK(size("1P") == (uint64_t{1} << 50));
  CHECK(size("1E") == (uint64_t{1} << 60));
  CHECK(size("15.9999999999999999999E") == (uint64_t{15} << 60));  // the fraction rounds to 1.0
  CHECK(size("0x1000") == 4096);
  CHECK(size("0X1000") == 4096);
  CHECK(size("0x1e") == 30);  // 'e' is a hex digit, not the exabyte suffix
  CHECK(size("0x10k") == 16384);
  CHECK(size("18446744073709551615") == 18446744073709551615u);
}

TEST_CASE("ParseSize rejects malformed and out-of-range sizes", "[options]") {
  auto error = [](std::string_view text) {
    auto parsed = ParseSize(text);
    INFO(text);
    REQUIRE_FALSE(parsed.ok());
    CHECK(StatusErrno(parsed.status()) == EINVAL);
    return Message(parsed.status());
  };
  CHECK(error("16E") == "invalid size '16E': too large (the limit is 2^64 - 1 bytes)");
  CHECK(error("20000000000000000000").find("too large") != std::string::npos);
  CHECK(error("18446744073709551616").find("too large") != std::string::npos);
  CHECK(error("0x10000000000000000").find("too large") != std::string::npos);
  CHECK(error("-1") == "invalid size '-1'");
  CHECK(error("1x") == "invalid size '1x'");
  CHECK(error("1kb") == "invalid size '1kb'");
  CHECK(error("") == "invalid size ''");
  CHECK(error("k") == "invalid size 'k'");
  CHECK(error("0.5") == "invalid size '0.5'");
  CHECK(error("1.5b") == "invalid size '1.5b'");
  CHECK(error(".5k") == "invalid size '.5k'");
  CHECK(error("0x1.8k") == "invalid size '0x1.8k'");
  CHECK(error("1.5e3") == "invalid size '1.5e3'");
  CHECK(error("1 ") == "invalid size '1 '");
  CHECK(error(std::string_view("1\0k", 3)).find("invalid size") == 0);
}

TEST_CASE("ParseBool and ParseInt", "[options]") {
  for (std::string_view yes : {"on", "yes", "true"}) CHECK(ParseBool(yes).value() == true);
  for (std::string_view no : {"off", "no", "false"}) CHECK(ParseBool(no).value() == false);
  for (std::string_view bad : {"ON", "True", "1", "0", "", "maybe", "on "}) {
    INFO(bad);
    CHECK(StatusErrno(ParseBool(bad).status()) == EINVAL);
  }
  CHECK(ParseInt("42").value() == 42);
  CHECK(ParseInt("-42").value() == -42);
  CHECK(ParseInt("+7").value() == 7);
  CHECK(ParseInt("0x10").value() == 16);
  CHECK(ParseInt("-0x10").value() == -16);
  CHECK(ParseInt("010").value() == 10);  // no octal
  CHECK(ParseInt("9223372036854775807").value() == INT64_MAX);
  CHECK(ParseInt("-9223372036854775808").value() == INT64_MIN);
  CHECK(Message(ParseInt("9223372036854775808").status()) ==
        "integer '9223372036854775808' is out of range");
  CHECK(Message(ParseInt("-9223372036854775809").status()).find("out of range") !=
        std::string::npos);
  for (std::string_view bad : {"", "-", "0x", "1k", "1.0", " 1", "--1", "0x1g"}) {
    INFO(bad);
    CHECK(Message(ParseInt(bad).status()) == "invalid integer '" + std::string(bad) + "'");
  }
}

constexpr std::string_view kLockingChoices[] = {"auto", "on", "off"};
constexpr OptionSpec kSpecs[] = {
    {"filename", OptionType::kString, "", "file name of the image"},
    {"locking", OptionType::kEnum, "auto", "whether to lock the file", kLockingChoices},
    {"read-zeroes", OptionType::kBool, "off", "return zeroes on read"},
    {"size", OptionType::kSize, "1G", "virtual size"},
    {"offset", OptionType::kInt, "", "start offset"},
    {"cache.direct", OptionType::kBool, "", "bypass the host page cache"},
};
constexpr OptionSchema kSchema{"file", kSpecs};

absl::Status ConsumeError(Options opts) {
  auto values = ConsumeOptions(kSchema, opts);
  REQUIRE_FALSE(values.ok());
  CHECK(values.status().code() == absl::StatusCode::kInvalidArgument);
  CHECK(StatusErrno(values.status()) == EINVAL);
  return values.status();
}

TEST_CASE("NUL characters are refused in every string, key and syntax", "[options]") {
  using namespace std::string_literals;
  // A NUL in a C string cuts it: "a.img\0.other" would open a.img. Whatever the driver and
  // whatever the option, no parser lets one through.
  auto json_error = [](std::string_view filename) {
    auto parsed = ParseJsonFilename(filename);
    INFO(filename);
    REQUIRE_FALSE(parsed.ok());
    CHECK(StatusErrno(parsed.status()) == EINVAL);
    return Message(parsed.status());
  };
  CHECK(json_error(R"(json:{"driver": "raw", "file": {"filename": "a.img\u0000.other"}})") ==
        "Could not parse the JSON options: 'file.filename' contains a NUL character");
  CHECK(json_error(R"(json:{"driver": "raw\u0000"})") ==
        "Could not parse the JSON options: 'driver' contains a NUL character");
  CHECK(json_error(R"(json:{"list": ["x", "\u0000"]})") ==
        "Could not parse the JSON options: 'list.1' contains a NUL character");
  CHECK(json_error(R"(json:{"file": {"a\u0000b": 1}})") ==
        "Could not parse the JSON options: key 'file.a\\u0000b' contains a NUL character");
  // Escapes that are not NUL still pass, and so do raw bytes that are not UTF-8's.
  auto fine = ParseJsonFilename(R"(json:{"filename": "a\u0001\u00e9.img"})");
  REQUIRE(fine.ok());
  CHECK(fine->GetString("filename") == "a\x01\xc3\xa9.img");

  auto kv_error = [](std::string_view text, std::string_view implied = {}) {
    auto parsed = ParseKeyValueOptions(text, implied);
    REQUIRE_FALSE(parsed.ok());
    CHECK(StatusErrno(parsed.status()) == EINVAL);
    return Message(parsed.status());
  };
  CHECK(kv_error("driver=raw,file.filename=a.img\0.other"s) ==
        "'file.filename' contains a NUL character");
  CHECK(kv_error("raw\0,file=a"s, "driver") == "'driver' contains a NUL character");
  CHECK(kv_error("a\0b=1"s) == "key 'a\\u0000b' contains a NUL character");
  CHECK(kv_error("x=1,,\0"s) == "'x' contains a NUL character");

  // Options built in code reach the schema: strings of every type are checked there.
  for (const char* name : {"filename", "locking", "size", "read-zeroes", "offset"}) {
    Options o;
    o.Set(name, "1\0"s);
    CHECK(Message(ConsumeError(o)) == "file: parameter '"s + name + "' contains a NUL character");
  }
}

TEST_CASE("ConsumeOptions takes known keys, converts them and fills defaults", "[options]") {
  Options opts = ParseOk("filename=a.img,size=1.5k,cache.direct=on,cache.no-flush=off,file.x=1");
  auto values = ConsumeOptions(kSchema, opts);
  REQUIRE(values.ok());
  // Unknown keys (including near-misses sharing a prefix) stay behind for the caller.
  CHECK(opts.ToString() == "cache.no-flush=off,file.x=1");
  CHECK(values->IsSet("filename"));
  CHECK(values->GetString("filename") == "a.img");
  CHECK(values->GetSize("size") == 1536);
  CHECK(values->GetBool("cache.direct"));
  CHECK_FALSE(values->IsSet("locking"));
  CHECK(values->Has("locking"));
  CHECK(values->GetString("locking") == "auto");
  CHECK(values->GetBool("read-zeroes") == false);
  CHECK_FALSE(values->Has("offset"));
  CHECK(values->FindInt("offset") == std::nullopt);
  CHECK(values->FindSize("size") == 1536u);
  CHECK(values->FindBool("read-zeroes") == false);
  CHECK(values->FindString("locking") == "auto");
}

TEST_CASE("ConsumeOptions accepts typed JSON values", "[options]") {
  auto opts = ParseJsonFilename(
      R"(json:{"filename": "a.img", "read-zeroes": true, "size": 4096, "offset": -8,)"
      R"( "locking": "off", "cache": {"direct": "yes"}})");
  REQUIRE(opts.ok());
  auto values = ConsumeOptions(kSchema, *opts);
  REQUIRE(values.ok());
  CHECK(opts->empty());
  CHECK(values->GetBool("read-zeroes"));
  CHECK(values->GetSize("size") == 4096);
  CHECK(values->GetInt("offset") == -8);
  CHECK(values->GetString("locking") == "off");
  CHECK(values->GetBool("cache.direct"));

  Options big;
  big.Set("size", uint64_t{18446744073709551615u});
  REQUIRE(ConsumeOptions(kSchema, big).value().GetSize("size") == 18446744073709551615u);
}

TEST_CASE("ConsumeOptions errors name the owner and the option", "[options]") {
  Options opts;
  opts.Set("locking", std::string("maybe"));
  CHECK(Message(ConsumeError(opts)) ==
        "file: parameter 'locking' does not accept value 'maybe' (expected 'auto', 'on' or 'off')");
  opts.Set("locking", true);
  CHECK(Message(ConsumeError(opts)) ==
        "file: parameter 'locking' does not accept value 'on' (expected 'auto', 'on' or 'off')");

  const std::string size_message =
      "file: parameter 'size' expects a non-negative number below 2^64 (optional suffix k, M, G, "
      "T, P or E)";
  for (OptionValue bad : {OptionValue(std::string("16E")), OptionValue(int64_t{-1}),
                          OptionValue(true), OptionValue(1.5), OptionValue(std::string("-1"))}) {
    Options o;
    o.Set("size", bad);
    CHECK(Message(ConsumeError(o)) == size_message);
  }
  for (OptionValue bad : {OptionValue(std::string("maybe")), OptionValue(int64_t{1})}) {
    Options o;
    o.Set("read-zeroes", bad);
    CHECK(Message(ConsumeError(o)) == "file: parameter 'read-zeroes' expects 'on' or 'off'");
  }
  for (OptionValue bad : {OptionValue(std::string("1k")), OptionValue(uint64_t{1} << 63),
                          OptionValue(false), OptionValue(2.0)}) {
    Options o;
    o.Set("offset", bad);
    CHECK(Message(ConsumeError(o)) == "file: parameter 'offset' expects an integer");
  }
  for (OptionValue bad : {OptionValue(int64_t{3}), OptionValue(true)}) {
    Options o;
    o.Set("filename", bad);
    CHECK(Message(ConsumeError(o)) == "file: parameter 'filename' expects a string");
  }
  // A failure leaves the options untouched: nothing was consumed.
  Options partial = ParseOk("filename=a.img,offset=x,other=1");
  REQUIRE_FALSE(ConsumeOptions(kSchema, partial).ok());
  CHECK(partial.ToString() == "filename=a.img,offset=x,other=1");
}

TEST_CASE("OptionValues aborts on programming errors", "[options]") {
  Options empty;
  OptionValues values = ConsumeOptions(kSchema, empty).value();
  auto aborts = [](auto&& fn) {
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      std::signal(SIGABRT, SIG_DFL);  // Catch's handler would report the abort as a failure
      close(STDERR_FILENO);
      fn();
      _exit(0);
    }
    int status = 0;
    REQUIRE(waitpid(pid, &status, 0) == pid);
    return WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT;
  };
  CHECK(aborts([&] { (void)values.GetString("no-such-option"); }));
  CHECK(aborts([&] { (void)values.GetInt("size"); }));       // wrong type
  CHECK(aborts([&] { (void)values.GetInt("offset"); }));     // no value, no default
  CHECK_FALSE(aborts([&] { (void)values.FindInt("offset"); }));
}

TEST_CASE("schema lookup and help text", "[options]") {
  REQUIRE(kSchema.Find("size") != nullptr);
  CHECK(kSchema.Find("size")->type == OptionType::kSize);
  CHECK(kSchema.Find("cache") == nullptr);
  std::string help = kSchema.Help();
  CHECK(help.find("  filename=<str>                - file name of the image\n") == 0);
  CHECK(help.find("  locking=<auto|on|off>         - whether to lock the file (default: auto)\n") !=
        std::string::npos);
  CHECK(help.find("  cache.direct=<bool (on/off)>  - bypass the host page cache\n") !=
        std::string::npos);
  CHECK(std::count(help.begin(), help.end(), '\n') == 6);
}

TEST_CASE("dictionary operations: Set, Take, ExtractPrefix, MergeMissing", "[options]") {
  Options opts = ParseOk("driver=qcow2,file=base,file.filename=a.img,file.aio=native,"
                         "filex=1,file.locking.x=2,backing.file.filename=b.img");
  CHECK(opts.HasPrefix("file"));
  CHECK_FALSE(opts.HasPrefix("driver"));
  CHECK_FALSE(opts.HasPrefix("fil"));
  Options file = opts.ExtractPrefix("file");
  CHECK(file.ToString() == "aio=native,filename=a.img,locking.x=2");
  // "file" itself and look-alike keys stay; nested prefixes move whole.
  CHECK(opts.ToString() == "backing.file.filename=b.img,driver=qcow2,file=base,filex=1");
  CHECK_FALSE(opts.HasPrefix("file"));
  CHECK(opts.ExtractPrefix("nothing").empty());

  Options defaults;
  defaults.Set("driver", std::string("raw"));
  defaults.Set("read-only", false);
  opts.MergeMissing(defaults);
  CHECK(opts.GetString("driver") == "qcow2");  // present keys win
  CHECK(std::get<bool>(*opts.Get("read-only")) == false);

  opts.SetDefault("driver", std::string("vmdk"));
  CHECK(opts.GetString("driver") == "qcow2");
  opts.Set("driver", std::string("vmdk"));
  CHECK(opts.GetString("driver") == "vmdk");
  CHECK(opts.Take("driver") == OptionValue(std::string("vmdk")));
  CHECK_FALSE(opts.Has("driver"));
  CHECK(opts.Take("driver") == std::nullopt);
  CHECK(opts.Erase("filex"));
  CHECK_FALSE(opts.Erase("filex"));
  CHECK(opts.Get("filex") == nullptr);
  CHECK(opts.GetString("filex") == std::nullopt);
}

}  // namespace
}  // namespace libblock
