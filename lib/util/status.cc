#include "util/status.h"

#include <cerrno>
#include <cstring>
#include <string>

#include "absl/strings/cord.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace libblock {
namespace {

constexpr char kErrnoPayload[] = "libblock/errno";

absl::StatusCode CodeForErrno(int err) {
  switch (err) {
    case EINVAL: case ERANGE: case EDOM: case EFBIG: case ENAMETOOLONG:
      return absl::StatusCode::kInvalidArgument;
    case ENOENT: case ENXIO: case ENODEV: case ENOMEDIUM:
      return absl::StatusCode::kNotFound;
    case EEXIST:
      return absl::StatusCode::kAlreadyExists;
    case EPERM: case EACCES: case EROFS:
      return absl::StatusCode::kPermissionDenied;
    case ENOSPC: case ENOMEM: case EDQUOT: case EMFILE: case ENFILE:
      return absl::StatusCode::kResourceExhausted;
    case ENOTSUP: case ENOSYS: case ENOTTY:
      return absl::StatusCode::kUnimplemented;
    case EAGAIN: case EBUSY:
      return absl::StatusCode::kUnavailable;
    case ECANCELED:
      return absl::StatusCode::kCancelled;
    case ETIMEDOUT:
      return absl::StatusCode::kDeadlineExceeded;
    default:
      return absl::StatusCode::kInternal;
  }
}

int ErrnoForCode(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kOk: return 0;
    case absl::StatusCode::kInvalidArgument: return EINVAL;
    case absl::StatusCode::kOutOfRange: return EINVAL;
    case absl::StatusCode::kNotFound: return ENOENT;
    case absl::StatusCode::kAlreadyExists: return EEXIST;
    case absl::StatusCode::kPermissionDenied: return EPERM;
    case absl::StatusCode::kResourceExhausted: return ENOSPC;
    case absl::StatusCode::kUnimplemented: return ENOTSUP;
    case absl::StatusCode::kUnavailable: return EAGAIN;
    case absl::StatusCode::kCancelled: return ECANCELED;
    case absl::StatusCode::kDeadlineExceeded: return ETIMEDOUT;
    case absl::StatusCode::kFailedPrecondition: return EINVAL;
    default: return EIO;
  }
}

}  // namespace

absl::Status ErrnoError(int err, std::string_view message) {
  if (err <= 0) err = EIO;
  absl::Status status(CodeForErrno(err), AbslView(message));
  status.SetPayload(kErrnoPayload, absl::Cord(std::to_string(err)));
  return status;
}

absl::Status ErrnoStatus(int err, std::string_view message) {
  if (err <= 0) err = EIO;
  std::string text(message);
  text += ": ";
  text += std::strerror(err);
  return ErrnoError(err, text);
}

int StatusErrno(const absl::Status& status) {
  if (status.ok()) return 0;
  if (auto payload = status.GetPayload(kErrnoPayload)) {
    int err = 0;
    if (absl::SimpleAtoi(payload->Flatten(), &err) && err > 0) return err;
  }
  return ErrnoForCode(status.code());
}

absl::Status Prepend(const absl::Status& status, std::string_view prefix) {
  if (status.ok()) return status;
  absl::Status out(status.code(), absl::StrCat(AbslView(prefix), status.message()));
  status.ForEachPayload([&](absl::string_view type, const absl::Cord& payload) {
    out.SetPayload(type, payload);
  });
  return out;
}

}  // namespace libblock
