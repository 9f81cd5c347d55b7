// User-defined objects (QEMU's --object / object-add): today, secrets. Images name a secret
// by id ("key-secret=sec0", "password-secret=pw"); the value never appears in messages,
// options dumps or logs.
#ifndef LIBBLOCK_CORE_OBJECTS_H_
#define LIBBLOCK_CORE_OBJECTS_H_

#include <map>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace libblock {

class Objects {
 public:
  // Adds an object from QEMU's syntax: "secret,id=ID,data=TEXT[,format=raw|base64]" or
  // "secret,id=ID,file=PATH[,format=raw|base64]".
  absl::Status Add(std::string_view spec);
  // The decoded bytes of secret `id`.
  absl::StatusOr<std::string> Secret(std::string_view id) const;
  bool Has(std::string_view id) const { return secrets_.count(std::string(id)) != 0; }

 private:
  std::map<std::string, std::string, std::less<>> secrets_;
};

}  // namespace libblock

#endif  // LIBBLOCK_CORE_OBJECTS_H_
