// blkimg snapshot: qemu-img snapshot [--object OBJ] [--image-opts] [-U] [-q]
//                  [-l | -a SNAPSHOT | -c SNAPSHOT | -d SNAPSHOT] FILENAME
//
// Lists, creates, applies or deletes internal snapshots through lb_snapshot_*. As in
// qemu-img: -l opens read-only (and may share with -U); the others open
// read-write. -a finds the snapshot by id first, then by name; -d by name only (qemu-img's
// bdrv_snapshot_find), deleting the first with that name. A new snapshot gets
// the current time and a zero VM clock and icount, as qemu-img gives it.
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <string>

#include "common.h"

namespace blkimg {
namespace {

enum class Action { kNone, kList, kApply, kCreate, kDelete };

struct SnapshotArgs {
  Action action = Action::kNone;
  std::string snapshot;
  bool quiet = false, force_share = false, image_opts = false;
  std::string filename;
};

// The image's snapshots, or nullopt (the format has none: qemu-img prints nothing then).
std::optional<std::vector<SnapshotRow>> ListRows(lb_node* node) {
  lb_snapshot_list* list = nullptr;
  if (lb_snapshot_list_get(node, &list) < 0) return std::nullopt;
  std::vector<SnapshotRow> rows;
  for (size_t i = 0; i < lb_snapshot_list_count(list); ++i) {
    lb_snapshot sn = LB_SNAPSHOT_INIT;
    if (lb_snapshot_list_entry(list, i, &sn) < 0) break;
    SnapshotRow r;
    r.id = sn.id;
    r.name = sn.name;
    r.vm_state_size = sn.vm_state_size;
    r.date_sec = sn.date_sec;
    r.vm_clock_nsec = sn.vm_clock_nsec;
    if (sn.icount != LB_SNAPSHOT_NO_ICOUNT) r.icount = sn.icount;
    rows.push_back(std::move(r));
  }
  lb_snapshot_list_free(list);
  return rows;
}

int Run(Context& ctx, const SnapshotArgs& a) {
  // No action opens the image read-write and does nothing, as qemu-img does.
  uint32_t flags = (a.action == Action::kList ? 0 : LB_OPEN_RDWR) | (a.force_share ? LB_OPEN_FORCE_SHARE : 0);
  lb_backend* be = OpenBackend(ctx, {a.filename, "", a.image_opts}, flags);
  if (!be) return 1;
  lb_node* node = nullptr;
  if (lb_backend_get_node(be, &node) < 0) {
    Error(LibError());
    lb_close(be);
    return 1;
  }
  int ret = 0;
  const std::string& name = a.snapshot;
  switch (a.action) {
    case Action::kNone:
      break;
    case Action::kList: {
      std::optional<std::vector<SnapshotRow>> rows = ListRows(node);
      if (rows && !rows->empty()) PrintSnapshotTable(*rows);
      break;
    }
    case Action::kCreate: {
      lb_snapshot sn = LB_SNAPSHOT_INIT;
      sn.name = name.c_str();
      struct timespec now;
      clock_gettime(CLOCK_REALTIME, &now);
      sn.date_sec = static_cast<uint32_t>(now.tv_sec);
      sn.date_nsec = static_cast<uint32_t>(now.tv_nsec / 1000 * 1000);  // QEMU: microseconds
      sn.icount = 0;
      if (lb_snapshot_create(node, &sn, nullptr) < 0) {
        int err = -lb_get_errno();
        Error("Could not create snapshot '" + name + "': " + std::to_string(err) + " (" +
              strerror(-err) + ")");
        ret = 1;
      }
      break;
    }
    case Action::kApply:
      if (lb_snapshot_apply(node, name.c_str()) < 0) {
        std::string why = lb_get_errno() == ENOTSUP ? "Block driver does not support snapshots"
                                                    : LibError();
        Error("Could not apply snapshot '" + name + "': " + why);
        ret = 1;
      }
      break;
    case Action::kDelete: {
      // qemu-img finds the snapshot by name alone (bdrv_snapshot_find: the first one with
      // that name; an id does not match), then deletes it by id and name.
      std::optional<std::vector<SnapshotRow>> rows = ListRows(node);
      const SnapshotRow* found = nullptr;
      for (size_t i = 0; rows && i < rows->size() && !found; ++i) {
        if ((*rows)[i].name == name) found = &(*rows)[i];
      }
      if (!found) {
        Error("Could not delete snapshot '" + name + "': snapshot not found");
        ret = 1;
      } else if (lb_snapshot_delete(node, found->id.c_str(), found->name.c_str()) < 0) {
        Error("Could not delete snapshot '" + name + "': " + LibError());
        ret = 1;
      }
      break;
    }
  }
  lb_node_close(node);
  if (lb_close(be) < 0 && ret == 0) {
    Error(LibError());
    ret = 1;
  }
  return ret;
}

}  // namespace

int RunSnapshot(int argc, char** argv) {
  Context ctx;
  static const option kLong[] = {
      BLKIMG_LONG_HELP,
      BLKIMG_LONG_OBJECT,
      BLKIMG_LONG_IMAGE_OPTS,
      BLKIMG_LONG_FORCE_SHARE,
      BLKIMG_LONG_END,
  };
  SnapshotArgs a;
  for (;;) {
    int c = NextOption(argc, argv, ":la:c:d:hqU", kLong);
    if (c == -1) break;
    auto set = [&](Action action) {
      if (a.action != Action::kNone) {
        UsageError("Cannot mix '-l', '-a', '-c', '-d'");
        return false;
      }
      a.action = action;
      if (action != Action::kList) a.snapshot = optarg;
      return true;
    };
    switch (c) {
      case 'h': PrintHelp(); return 0;
      case 'l':
        if (!set(Action::kList)) return 1;
        break;
      case 'a':
        if (!set(Action::kApply)) return 1;
        break;
      case 'c':
        if (!set(Action::kCreate)) return 1;
        break;
      case 'd':
        if (!set(Action::kDelete)) return 1;
        break;
      case 'q': a.quiet = true; break;
      case 'U': a.force_share = true; break;
      case kOptObject:
        if (!ctx.AddObjects({optarg})) return 1;
        break;
      case kOptImageOpts: a.image_opts = true; break;
      default: return 1;
    }
  }
  if (optind != argc - 1) return UsageError("Expecting one image file name");
  a.filename = argv[optind];
  return Run(ctx, a);
}

}  // namespace blkimg
