#include "core/perm.h"

namespace libblock {

std::string PermNames(Perm perm) {
  static constexpr struct {
    Perm bit;
    const char* name;
  } kNames[] = {
      {kPermConsistentRead, "consistent read"},
      {kPermWrite, "write"},
      {kPermWriteUnchanged, "write unchanged"},
      {kPermResize, "resize"},
  };
  std::string out;
  for (const auto& n : kNames) {
    if (!(perm & n.bit)) continue;
    if (!out.empty()) out += ", ";
    out += n.name;
  }
  return out;
}

void DefaultChildPerm(ChildRole role, const ChildPermContext& ctx, Perm perm, Perm shared,
                      Perm* nperm, Perm* nshared) {
  if (role & kRoleFiltered) {
    *nperm = perm & kPermAll;
    *nshared = shared & kPermAll;
    return;
  }
  if (role & kRoleCow) {
    // A backing file is only read, and only the parent's consistent-read need matters. If the
    // parent's users accept changing data (they share write), the backing file may change too.
    Perm p = perm & kPermConsistentRead;
    Perm s = (shared & kPermWrite) || ctx.backing_may_change ? (kPermWrite | kPermResize) : 0;
    s |= kPermConsistentRead | kPermWriteUnchanged;
    *nperm = p;
    *nshared = s;
    return;
  }
  // Storage children (data and/or metadata) start from pass-through.
  Perm p = perm & kPermAll;
  Perm s = shared & kPermAll;
  if (role & kRoleMetadata) {
    // Formats update metadata even when nobody writes guest data, and they cache it, so no
    // one else may write or resize the file under them.
    if (ctx.parent_writable) p |= kPermWrite | kPermResize;
    p |= kPermConsistentRead;
    s &= ~(kPermWrite | kPermResize);
  }
  if (role & kRoleData) {
    // The format assumes the size it saw; copy-on-read writes real data into the data file;
    // writing past the end grows the file.
    s &= ~kPermResize;
    if (p & kPermWriteUnchanged) p |= kPermWrite;
    if (p & kPermWrite) p |= kPermResize;
  }
  *nperm = p;
  *nshared = s;
}

}  // namespace libblock
