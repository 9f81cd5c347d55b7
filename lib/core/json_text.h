// JSON text as QEMU writes it (its QObject JSON writer, matched byte for byte against
// qemu-img's output): what `qemu-img info --output=json` prints and what json: filenames
// look like.
//
// Strings are bytes, not UTF-8: file names can hold any byte but NUL. They are read as
// QEMU reads them (UTF-8, with the modified-UTF-8 C0 80 for U+0000); every malformed
// sequence, overlong form, surrogate, noncharacter or code point above U+10FFFF becomes
// \uFFFD, and everything outside printable ASCII is written as \uXXXX (upper-case hex,
// surrogate pairs above U+FFFF). The text is therefore plain ASCII, valid JSON whatever the
// bytes were, and writing it never throws (nlohmann's dump throws on invalid UTF-8).
#ifndef LIBBLOCK_CORE_JSON_TEXT_H_
#define LIBBLOCK_CORE_JSON_TEXT_H_

#include <string>
#include <string_view>

#include "nlohmann/json.hpp"

namespace libblock {

// `bytes` as a JSON string literal, quotes included, escaped as QEMU escapes it.
std::string QemuJsonString(std::string_view bytes);

// `value` as QEMU writes it. Pretty: four spaces of indentation per level, one member or
// element per line, "key": value, and empty containers open and close on separate lines
// (qemu-img --output=json). Compact: one line with ", " and ": " separators (json: names).
std::string QemuJsonText(const nlohmann::json& value, bool pretty);
std::string QemuJsonText(const nlohmann::ordered_json& value, bool pretty);

}  // namespace libblock

#endif  // LIBBLOCK_CORE_JSON_TEXT_H_
