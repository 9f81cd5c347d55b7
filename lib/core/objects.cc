#include "core/objects.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

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

// The whole of a secret file, with glib's wording for failures as QEMU reports them.
absl::StatusOr<std::string> ReadSecretFile(const std::string& path) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    int err = errno;
    return ErrnoError(err, absl::StrFormat("Unable to read %s: Failed to open file \u201c%s\u201d: %s",
                                           path, path, strerror(err)));
  }
  std::string value;
  char buf[4096];
  for (;;) {
    ssize_t n = read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int err = errno;
      close(fd);
      return ErrnoError(err, absl::StrFormat(
                                 "Unable to read %s: Error reading file \u201c%s\u201d: %s", path,
                                 path, strerror(err)));
    }
    if (n == 0) break;
    // A secret is small; refuse what would only exhaust memory.
    if (value.size() + static_cast<size_t>(n) > (64u << 20)) {
      close(fd);
      return ErrnoError(EFBIG, absl::StrFormat("Unable to read %s: the file is too large", path));
    }
    value.append(buf, static_cast<size_t>(n));
  }
  close(fd);
  return value;
}

}  // namespace

absl::Status Objects::Add(std::string_view spec) {
  // The first element is the type (QEMU's implied "qom-type").
  LB_ASSIGN_OR_RETURN(Options opts, ParseKeyValueOptions(spec, "qom-type"));
  std::optional<std::string> type = opts.GetString("qom-type");
  opts.Erase("qom-type");
  // Messages are QEMU's (QOM property parsing and the secret object's), which scripts match.
  if (!type) return ErrnoError(EINVAL, "Parameter 'qom-type' is missing");
  if (*type != "secret") {
    return ErrnoError(EINVAL, absl::StrFormat("Parameter 'qom-type' does not accept value '%s'",
                                              *type));
  }
  for (const auto& [key, value] : opts) {
    bool known = key == "id";
    for (const OptionSpec& spec : kSecretSpecs) known |= spec.name == key;
    if (!known) return ErrnoError(EINVAL, absl::StrFormat("Parameter '%s' is unexpected", key));
  }
  if (std::optional<std::string> format = opts.GetString("format")) {
    if (*format != "raw" && *format != "base64") {
      return ErrnoError(EINVAL, absl::StrFormat("Parameter 'format' does not accept value '%s'",
                                                *format));
    }
  }
  LB_ASSIGN_OR_RETURN(OptionValues v, ConsumeOptions(kSecretSchema, opts));
  std::optional<std::string> id = v.FindString("id");
  if (!id) return ErrnoError(EINVAL, "Parameter 'id' is missing");
  if (!WellFormedId(*id)) {
    return ErrnoError(EINVAL, "Parameter 'id' expects an identifier\nIdentifiers consist of "
                              "letters, digits, '-', '.', '_', starting with a letter.");
  }
  if (secrets_.count(*id)) {
    return ErrnoError(EEXIST, absl::StrFormat(
                                  "attempt to add duplicate property '%s' to object (type "
                                  "'container')", *id));
  }
  std::optional<std::string> data = v.FindString("data");
  std::optional<std::string> file = v.FindString("file");
  if (data && file) return ErrnoError(EINVAL, "'file' and 'data' are mutually exclusive");
  if (!data && !file) return ErrnoError(EINVAL, "Either 'file' or 'data' must be provided");
  std::string value;
  if (data) {
    value = *data;
  } else {
    LB_ASSIGN_OR_RETURN(value, ReadSecretFile(*file));
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
