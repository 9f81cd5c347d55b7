// blkimg map: qemu-img map [--object OBJ] [--image-opts] [-f FMT] [--start-offset=OFF]
//             [--max-length=LEN] [--output=human|json] [-U] FILENAME
//
// Walks the image with lb_block_status and prints one entry per run of extents that look
// alike, in qemu-img 7.2's formats: JSON objects with the keys "start", "length", "depth",
// "present", "zero", "data" and, when the data has a place in the storage file, "offset";
// or the human table of the ranges holding data. Runs merge as qemu-img merges them: same
// flags and depth, and host offsets that continue each other.
#include <cinttypes>
#include <cstdio>
#include <cstring>

#include "common.h"

namespace blkimg {
namespace {

struct MapArgs {
  std::string format;
  std::string output = "human";
  uint64_t start_offset = 0;
  std::optional<uint64_t> max_length;
  bool force_share = false, image_opts = false;
  std::string filename;
};

// One line of the map: a guest range and where its content comes from.
struct MapEntry {
  uint64_t start = 0;
  uint64_t length = 0;
  uint32_t depth = 0;
  bool present = false, zero = false, data = false;
  std::optional<uint64_t> offset;  // in the storage file
  std::string file;                // the storage file's name (bytes), for the File column
};

bool Mergeable(const MapEntry& cur, const MapEntry& next) {
  if (cur.length == 0) return false;
  if (cur.depth != next.depth || cur.present != next.present || cur.zero != next.zero ||
      cur.data != next.data || cur.offset.has_value() != next.offset.has_value() ||
      cur.file != next.file) {
    return false;
  }
  return !cur.offset || *cur.offset + cur.length == *next.offset;
}

class MapPrinter {
 public:
  explicit MapPrinter(bool json) : json_(json) {
    if (!json_) printf("Offset          Length          Mapped to       File\n");
  }

  // Prints one entry; `last` closes the JSON list. Returns false after printing qemu-img's
  // error for data the human format cannot place.
  bool Print(const MapEntry& e, bool last) {
    if (json_) {
      printf("%s{ \"start\": %" PRIu64 ", \"length\": %" PRIu64 ", \"depth\": %u, "
             "\"present\": %s, \"zero\": %s, \"data\": %s",
             first_ ? "[" : "", e.start, e.length, e.depth, e.present ? "true" : "false",
             e.zero ? "true" : "false", e.data ? "true" : "false");
      if (e.offset) printf(", \"offset\": %" PRIu64, *e.offset);
      printf("}%s\n", last ? "]" : ",");
      first_ = false;
      return true;
    }
    if (e.data && !e.offset) {
      Error("File contains external, encrypted or compressed clusters.");
      return false;
    }
    if (e.data && !e.zero) {
      // "%#-16x": hex with 0x except for 0, left-aligned in 16 columns.
      printf("%s%s%s%s\n", Hex(e.start).c_str(), Hex(e.length).c_str(), Hex(*e.offset).c_str(),
             e.file.c_str());
    }
    return true;
  }

 private:
  static std::string Hex(uint64_t v) {
    char buf[32];
    snprintf(buf, sizeof buf, "%#-16" PRIx64, v);
    return buf;
  }

  bool json_;
  bool first_ = true;
};

int Run(Context& ctx, const MapArgs& a) {
  lb_backend* be =
      OpenBackend(ctx, {a.filename, a.format, a.image_opts}, a.force_share ? LB_OPEN_FORCE_SHARE : 0);
  if (!be) return 1;
  int64_t size = lb_get_size(be);
  if (size < 0) {
    Error("Could not get image size: " + LibError());
    lb_close(be);
    return 1;
  }
  uint64_t start = a.start_offset;
  uint64_t end = static_cast<uint64_t>(size);
  // Both are below 2^63, so the sum cannot wrap.
  if (a.max_length) end = std::min(end, start + *a.max_length);
  bool json = a.output == "json";
  MapPrinter printer(json);
  MapEntry cur;
  cur.start = start;
  int ret = 0;
  while (cur.start + cur.length < end) {
    uint64_t pos = cur.start + cur.length;
    lb_extent ext = LB_EXTENT_INIT;
    if (lb_block_status(be, pos, end - pos, 0, &ext) < 0) {
      Error("Could not read file metadata: " + LibError());
      ret = 1;
      break;
    }
    MapEntry next;
    next.start = pos;
    next.length = std::min(ext.length, end - pos);
    next.depth = ext.depth;
    next.present = ext.flags & LB_STATUS_ALLOCATED;
    next.zero = ext.flags & LB_STATUS_ZERO;
    next.data = ext.flags & LB_STATUS_DATA;
    // libblock reports null-co's identity mapping even where nothing is allocated; qemu-img
    // shows no offset for ranges no image of the chain provides. Ranges that read as zeroes
    // keep theirs (qcow2's unallocated subclusters of allocated clusters, without a backing
    // file).
    if (ext.has_host_offset && (next.present || next.zero)) next.offset = ext.host_offset;
    // The file holding the data, by the name qemu-img prints (the library's bytes: a name
    // taken out of a json: text would have lost what is not UTF-8).
    if (ext.filename) next.file = ext.filename;
    if (Mergeable(cur, next)) {
      cur.length += next.length;
      continue;
    }
    if (cur.length > 0 && !printer.Print(cur, false)) {
      ret = 1;
      break;
    }
    cur = next;
  }
  if (ret == 0 && !printer.Print(cur, true)) ret = 1;
  lb_close(be);
  return ret;
}

}  // namespace

int RunMap(int argc, char** argv) {
  Context ctx;
  static const option kLong[] = {
      BLKIMG_LONG_HELP,
      {"format", required_argument, nullptr, 'f'},
      {"output", required_argument, nullptr, kOptOutput},
      BLKIMG_LONG_OBJECT,
      BLKIMG_LONG_IMAGE_OPTS,
      BLKIMG_LONG_FORCE_SHARE,
      {"start-offset", required_argument, nullptr, kOptStartOffset},
      {"max-length", required_argument, nullptr, kOptMaxLength},
      BLKIMG_LONG_END,
  };
  MapArgs a;
  // qemu-img's order of checks: option values as they come, operands, then the output format.
  for (;;) {
    int c = NextOption(argc, argv, ":f:hU", kLong);
    if (c == -1) break;
    switch (c) {
      case 'h': PrintHelp(); return 0;
      case 'f': a.format = optarg; break;
      case 'U': a.force_share = true; break;
      case kOptOutput: a.output = optarg; break;
      case kOptObject:
        if (!ctx.AddObjects({optarg})) return 1;
        break;
      case kOptImageOpts: a.image_opts = true; break;
      case kOptStartOffset: {
        std::optional<int64_t> v = CvtNum("start offset", optarg);
        if (!v) return 1;
        a.start_offset = static_cast<uint64_t>(*v);
        break;
      }
      case kOptMaxLength: {
        std::optional<int64_t> v = CvtNum("max length", optarg);
        if (!v) return 1;
        a.max_length = static_cast<uint64_t>(*v);
        break;
      }
      default: return 1;
    }
  }
  if (optind != argc - 1) return UsageError("Expecting one image file name");
  a.filename = argv[optind];
  if (a.output != "human" && a.output != "json") {
    Error("--output must be used with human or json as argument.");
    return 1;
  }
  return Run(ctx, a);
}

}  // namespace blkimg
