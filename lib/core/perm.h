// Permissions on graph edges, with QEMU's bit values and default per-role child rules.
//
// Each edge parent->child carries `perm` (what the parent needs) and `shared` (what the
// parent tolerates other parents doing). A node's cumulative permission is the OR of its
// parents' perm; its cumulative shared mask is the AND of their shared masks. Bit values
// are QEMU's (include/block/block-common.h): they are also the lock byte offsets (100+bit,
// 200+bit) the file protocol uses, so they are part of the on-disk/inter-process contract.
#ifndef LIBBLOCK_CORE_PERM_H_
#define LIBBLOCK_CORE_PERM_H_

#include <cstdint>
#include <string>

namespace libblock {

using Perm = uint32_t;
inline constexpr Perm kPermConsistentRead = 0x1;
inline constexpr Perm kPermWrite = 0x2;
inline constexpr Perm kPermWriteUnchanged = 0x4;
inline constexpr Perm kPermResize = 0x8;
inline constexpr Perm kPermAll = 0xf;
inline constexpr int kPermBits = 4;

// "consistent read, write" — QEMU's bdrv_perm_names wording, used in every conflict message.
std::string PermNames(Perm perm);

// What a child edge is for (QEMU's BdrvChildRole). A role is a combination of flags.
using ChildRole = uint32_t;
inline constexpr ChildRole kRoleData = 1u << 0;      // holds guest data
inline constexpr ChildRole kRoleMetadata = 1u << 1;  // holds the format's metadata
inline constexpr ChildRole kRoleFiltered = 1u << 2;  // the parent is a filter over it
inline constexpr ChildRole kRoleCow = 1u << 3;       // backing file (copy-on-write source)
inline constexpr ChildRole kRolePrimary = 1u << 4;   // the node's primary child ("file")
inline constexpr ChildRole kRoleImage = kRoleData | kRoleMetadata;

// State of the parent node that the default rules depend on.
struct ChildPermContext {
  bool parent_writable = false;   // the parent is (or is becoming) read-write
  bool backing_may_change = false;  // Node::backing_writes_allowed: cow children share write
};

// QEMU's default child permissions (bdrv_default_perms), derived from the parent's cumulative
// permissions `perm`/`shared` and the child's role:
//  * filtered: pass every bit through;
//  * cow (backing): only consistent-read is taken; write/resize are shared only if the
//    parent's users share write;
//  * metadata: also write+resize when the parent is writable, always consistent-read, and
//    never share write or resize (the format caches metadata);
//  * data: never share resize; write-unchanged is upgraded to write, write implies resize.
void DefaultChildPerm(ChildRole role, const ChildPermContext& ctx, Perm perm, Perm shared,
                      Perm* nperm, Perm* nshared);

}  // namespace libblock

#endif  // LIBBLOCK_CORE_PERM_H_
