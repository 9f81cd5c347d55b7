#include "core/objects.h"

#include <cerrno>
#include <fstream>
#include <sstream>

#include "absl/strings/escaping.h"
#include "absl/strings/str_format.h"
#include "core/options.h"
#include "util/status.h"

namespace libblock {
namespace {

constexpr std::string_view kFormats[] = {"raw", "base64"};
constexpr OptionSpec kSecretSpecs[] = {
    {"id", OptionType::kString, "", "the name images use for the secret"},
    {"data", OptionType::kString, "", "the secret itself"},
    {"file", OptionType::kString, "", "a file holding the secret"},
    {"format", OptionType::kEnum, "raw", "encoding of the data: raw or base64", kFormats},
};
constexpr OptionSchema kSecretSchema{"secret", kSecretSpecs};

bool WellFormedId(std::string_view id) {
  if (id.empty() || !std::isalpha(static_cast<unsigned char>(id[0]))) return false;
  for (char c : id) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '.' && c != '_') return false;
  }
  return true;
}

}  // namespace

absl::Status Objects::Add(std::string_view spec) {
  // The first element is the type (QEMU's implied "qom-type").
  LB_ASSIGN_OR_RETURN(Options opts, ParseKeyValueOptions(spec, "qom-type"));
  std::optional<std::string> type = opts.GetString("qom-type");
  opts.Erase("qom-type");
  if (!type) return ErrnoError(EINVAL, "--object: the object type is missing");
  if (*type != "secret") {
    return ErrnoError(EINVAL, absl::StrFormat("invalid object type: %s", *type));
  }
  LB_ASSIGN_OR_RETURN(OptionValues v, ConsumeOptions(kSecretSchema, opts));
  if (!opts.empty()) {
    return ErrnoError(EINVAL, absl::StrFormat("secret: unknown parameter '%s'", opts.begin()->first));
  }
  std::optional<std::string> id = v.FindString("id");
  if (!id) return ErrnoError(EINVAL, "Parameter 'id' is missing");
  if (!WellFormedId(*id)) return ErrnoError(EINVAL, absl::StrFormat("Invalid object id: %s", *id));
  if (secrets_.count(*id)) {
    return ErrnoError(EEXIST, absl::StrFormat("attempt to add duplicate property '%s'", *id));
  }
  std::optional<std::string> data = v.FindString("data");
  std::optional<std::string> file = v.FindString("file");
  if (data.has_value() == file.has_value()) {
    return ErrnoError(EINVAL, "secret: exactly one of 'data' and 'file' must be given");
  }
  std::string value;
  if (data) {
    value = *data;
  } else {
    std::ifstream in(*file, std::ios::binary);
    if (!in) return ErrnoStatus(errno ? errno : ENOENT, absl::StrFormat("Unable to read %s", *file));
    std::stringstream ss;
    ss << in.rdbuf();
    value = ss.str();
  }
  if (v.GetString("format") == "base64") {
    std::string decoded;
    if (!absl::Base64Unescape(value, &decoded)) {
      return ErrnoError(EINVAL, absl::StrFormat("secret '%s': data is not valid base64", *id));
    }
    value = std::move(decoded);
  }
  secrets_.emplace(*id, std::move(value));
  return absl::OkStatus();
}

absl::StatusOr<std::string> Objects::Secret(std::string_view id) const {
  auto it = secrets_.find(id);
  if (it == secrets_.end()) {
    return ErrnoError(ENOENT, absl::StrFormat("No secret with id '%s'", id));
  }
  return it->second;
}

}  // namespace libblock
