// Status helpers shared by the whole library.
//
// Inside libblock every expected failure is an absl::Status. A failure that came from a syscall
// (or that must surface as a particular errno at the C ABI) carries that errno as a payload, so
// the C guard can return exactly -errno. Messages follow QEMU's error_prepend convention: the
// innermost layer states the fault, callers prepend context ("file 'a.img': ").
#ifndef LIBBLOCK_UTIL_STATUS_H_
#define LIBBLOCK_UTIL_STATUS_H_

#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace libblock {

// A status with `message` verbatim and `err` (a positive errno) attached.
absl::Status ErrnoError(int err, std::string_view message);

// A status "message: strerror(err)", like QEMU's error_setg_errno.
absl::Status ErrnoStatus(int err, std::string_view message);

// The errno a status maps to: the attached payload if there is one, else one derived from the
// status code. OK maps to 0.
int StatusErrno(const absl::Status& status);

// `status` with `prefix` prepended to its message; code and errno payload are kept.
absl::Status Prepend(const absl::Status& status, std::string_view prefix);

// absl::string_view is not std::string_view in Debian's Abseil; this bridges the two.
inline absl::string_view AbslView(std::string_view s) { return absl::string_view(s.data(), s.size()); }

}  // namespace libblock

#define LB_STATUS_CONCAT_INNER_(a, b) a##b
#define LB_STATUS_CONCAT_(a, b) LB_STATUS_CONCAT_INNER_(a, b)

// Ordinary functions.
#define LB_RETURN_IF_ERROR(expr)                          \
  do {                                                    \
    absl::Status lb_status_ = (expr);                     \
    if (!lb_status_.ok()) return lb_status_;              \
  } while (0)

#define LB_ASSIGN_OR_RETURN(lhs, expr) \
  LB_ASSIGN_OR_RETURN_IMPL_(LB_STATUS_CONCAT_(lb_statusor_, __LINE__), lhs, expr, return)

// Coroutines (Task<...>) must leave with co_return.
#define LB_CO_RETURN_IF_ERROR(expr)                       \
  do {                                                    \
    absl::Status lb_status_ = (expr);                     \
    if (!lb_status_.ok()) co_return lb_status_;           \
  } while (0)

#define LB_CO_ASSIGN_OR_RETURN(lhs, expr) \
  LB_ASSIGN_OR_RETURN_IMPL_(LB_STATUS_CONCAT_(lb_statusor_, __LINE__), lhs, expr, co_return)

#define LB_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr, ret) \
  auto tmp = (expr);                                   \
  if (!tmp.ok()) ret std::move(tmp).status();          \
  lhs = std::move(tmp).value()

#endif  // LIBBLOCK_UTIL_STATUS_H_
