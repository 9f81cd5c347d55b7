// JSON text as QEMU writes it; see json_text.h. The decoding rules below were read off
// qemu-img's output for file names holding each kind of byte sequence (see
// tests/cli/test_names.py), not from QEMU's code.
#include "core/json_text.h"

#include <cstdint>
#include <cstdio>

namespace libblock {
namespace {

constexpr int32_t kInvalid = -1;

// The code point at *pos, or kInvalid for a malformed sequence; advances *pos past what it
// consumed. A lead byte announces a length (up to six bytes, as in the original UTF-8); the
// continuation bytes that follow are consumed up to that length, and a sequence cut short
// by any other byte ends there. Overlong forms are invalid except C0 80 (U+0000 in
// modified UTF-8), and so are surrogates, noncharacters and code points above U+10FFFF.
int32_t NextCodePoint(std::string_view s, size_t* pos) {
  uint8_t lead = static_cast<uint8_t>(s[*pos]);
  ++*pos;
  if (lead < 0x80) return lead;
  int length;
  uint32_t min;
  uint32_t cp;
  if (lead < 0xc0) {
    return kInvalid;  // a continuation byte without a lead
  } else if (lead < 0xe0) {
    length = 2, min = 0x80, cp = lead & 0x1f;
  } else if (lead < 0xf0) {
    length = 3, min = 0x800, cp = lead & 0x0f;
  } else if (lead < 0xf8) {
    length = 4, min = 0x10000, cp = lead & 0x07;
  } else if (lead < 0xfc) {
    length = 5, min = 0x200000, cp = lead & 0x03;
  } else if (lead < 0xfe) {
    length = 6, min = 0x4000000, cp = lead & 0x01;
  } else {
    return kInvalid;  // 0xfe, 0xff
  }
  for (int i = 1; i < length; ++i) {
    if (*pos >= s.size() || (static_cast<uint8_t>(s[*pos]) & 0xc0) != 0x80) return kInvalid;
    cp = (cp << 6) | (static_cast<uint8_t>(s[*pos]) & 0x3f);
    ++*pos;
  }
  if (cp < min) return length == 2 && cp == 0 ? 0 : kInvalid;
  if (cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return kInvalid;
  if ((cp >= 0xfdd0 && cp <= 0xfdef) || (cp & 0xfffe) == 0xfffe) return kInvalid;
  return static_cast<int32_t>(cp);
}

void AppendEscape(std::string& out, uint32_t unit) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "\\u%04X", unit);
  out += buf;
}

template <typename Json>
void Write(const Json& value, bool pretty, int depth, std::string& out) {
  auto newline = [&](int level) {
    if (pretty) {
      out += '\n';
      out.append(static_cast<size_t>(level) * 4, ' ');
    }
  };
  if (value.is_object() || value.is_array()) {
    bool object = value.is_object();
    out += object ? '{' : '[';
    bool first = true;
    for (auto it = value.begin(); it != value.end(); ++it) {
      if (!first) out += pretty ? "," : ", ";
      first = false;
      newline(depth + 1);
      if (object) {
        out += QemuJsonString(it.key());
        out += ": ";
      }
      Write(*it, pretty, depth + 1, out);
    }
    newline(depth);
    out += object ? '}' : ']';
    return;
  }
  if (value.is_string()) {
    out += QemuJsonString(value.template get_ref<const std::string&>());
    return;
  }
  out += value.dump();  // numbers, booleans, null: never throws
}

}  // namespace

std::string QemuJsonString(std::string_view bytes) {
  std::string out = "\"";
  for (size_t pos = 0; pos < bytes.size();) {
    int32_t cp = NextCodePoint(bytes, &pos);
    switch (cp) {
      case '"': out += "\\\""; continue;
      case '\\': out += "\\\\"; continue;
      case '\b': out += "\\b"; continue;
      case '\f': out += "\\f"; continue;
      case '\n': out += "\\n"; continue;
      case '\r': out += "\\r"; continue;
      case '\t': out += "\\t"; continue;
      default: break;
    }
    if (cp == kInvalid) {
      AppendEscape(out, 0xfffd);
    } else if (cp >= 0x20 && cp < 0x7f) {
      out += static_cast<char>(cp);
    } else if (cp > 0xffff) {
      uint32_t v = static_cast<uint32_t>(cp) - 0x10000;
      AppendEscape(out, 0xd800 | (v >> 10));
      AppendEscape(out, 0xdc00 | (v & 0x3ff));
    } else {
      AppendEscape(out, static_cast<uint32_t>(cp));
    }
  }
  out += '"';
  return out;
}

std::string QemuJsonText(const nlohmann::json& value, bool pretty) {
  std::string out;
  Write(value, pretty, 0, out);
  return out;
}

std::string QemuJsonText(const nlohmann::ordered_json& value, bool pretty) {
  std::string out;
  Write(value, pretty, 0, out);
  return out;
}

}  // namespace libblock
