// blkimg info: qemu-img info [--object OBJ] [--image-opts] [-f FMT] [--output=human|json]
//              [--backing-chain] [-U] FILENAME
#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <string>

#include "common.h"
#include "nlohmann/json.hpp"

namespace blkimg {
namespace {

struct InfoArgs {
  std::string format;
  std::string output = "human";
  bool chain = false, force_share = false, image_opts = false;
  std::string filename;
};

// qemu-img's human rendering of the format-specific data: "key: value" with '-' turned into
// ' ', nested objects indented by four more spaces.
void PrintSpecific(const nlohmann::ordered_json& data, int indent) {
  for (auto& [key, value] : data.items()) {
    std::string name = key;
    std::replace(name.begin(), name.end(), '-', ' ');
    if (value.is_object()) {
      printf("%*s%s:\n", indent, "", name.c_str());
      PrintSpecific(value, indent + 4);
    } else if (value.is_array()) {
      printf("%*s%s:\n", indent, "", name.c_str());
      // QEMU's dump_qlist: "[i]:" and the nested lines for objects, "[i]: value" otherwise.
      for (size_t i = 0; i < value.size(); ++i) {
        const auto& e = value[i];
        if (e.is_object()) {
          printf("%*s[%zu]:\n", indent + 4, "", i);
          PrintSpecific(e, indent + 8);
        } else {
          printf("%*s[%zu]: %s\n", indent + 4, "", i,
                 e.is_string() ? e.get<std::string>().c_str() : e.dump().c_str());
        }
      }
    } else {
      std::string text = value.is_string() ? value.get<std::string>() : value.dump();
      printf("%*s%s: %s\n", indent, "", name.c_str(), text.c_str());
    }
  }
}

// The "Snapshot list:" table of qemu-img info, from the info's JSON.
void PrintSnapshots(const lb_image_info* info) {
  if (!info->json) return;
  auto j = nlohmann::ordered_json::parse(info->json, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object() || !j.contains("snapshots") || !j["snapshots"].is_array()) return;
  std::vector<SnapshotRow> rows;
  for (const auto& sn : j["snapshots"]) {
    SnapshotRow r;
    r.id = sn.value("id", std::string());
    r.name = sn.value("name", std::string());
    r.vm_state_size = sn.value("vm-state-size", uint64_t{0});
    r.date_sec = sn.value("date-sec", uint64_t{0});
    r.vm_clock_nsec = sn.value("vm-clock-sec", uint64_t{0}) * 1000000000ull +
                      sn.value("vm-clock-nsec", uint64_t{0});
    if (sn.contains("icount")) r.icount = sn["icount"].get<uint64_t>();
    rows.push_back(std::move(r));
  }
  PrintSnapshotTable(rows);
}

void PrintHuman(const lb_image_info* info) {
  printf("image: %s\n", info->filename);
  printf("file format: %s\n", info->format);
  printf("virtual size: %s (%" PRIu64 " bytes)\n", HumanSize(info->virtual_size).c_str(),
         info->virtual_size);
  if (info->actual_size >= 0) {
    printf("disk size: %s\n", HumanSize(static_cast<uint64_t>(info->actual_size)).c_str());
  } else {
    printf("disk size: unavailable\n");
  }
  if (info->encrypted) printf("encrypted: yes\n");
  if (info->cluster_size) printf("cluster_size: %u\n", info->cluster_size);
  if (info->backing_filename) {
    printf("backing file: %s", info->backing_filename);
    if (info->full_backing_filename && strcmp(info->full_backing_filename, info->backing_filename)) {
      printf(" (actual path: %s)", info->full_backing_filename);
    }
    printf("\n");
  }
  if (info->backing_format) printf("backing file format: %s\n", info->backing_format);
  if (info->dirty) printf("cleanly shut down: no\n");
  PrintSnapshots(info);
  if (info->format_specific) {
    auto spec = nlohmann::ordered_json::parse(info->format_specific);
    if (spec.contains("data")) {
      printf("Format specific information:\n");
      PrintSpecific(spec["data"], 4);
    }
  }
}

int Run(Context& ctx, const InfoArgs& a) {
  if (a.output != "human" && a.output != "json") {
    Error("--output must be used with human or json as argument.");
    return 1;
  }
  uint32_t flags = a.force_share ? LB_OPEN_FORCE_SHARE : 0;
  if (!a.chain) flags |= LB_OPEN_NO_BACKING;
  lb_node* node = OpenNode(ctx, {a.filename, a.format, a.image_opts}, flags);
  if (!node) return 1;
  lb_image_info* info = nullptr;
  if (lb_node_get_info(node, a.chain ? LB_INFO_BACKING_CHAIN : 0, &info) < 0) {
    Error(LibError());
    lb_node_close(node);
    return 1;
  }
  if (a.output == "json") {
    if (a.chain) {
      // The library's texts, one level deeper, as qemu-img prints the list (re-encoding
      // them would lose QEMU's escapes).
      std::string list = "[";
      for (const lb_image_info* i = info; i; i = i->backing) {
        list += i == info ? "\n    " : ",\n    ";
        for (const char* c = i->json; *c; ++c) {
          list += *c;
          if (*c == '\n') list += "    ";
        }
      }
      printf("%s\n]\n", list.c_str());
    } else {
      printf("%s\n", info->json);
    }
  } else {
    for (const lb_image_info* i = info; i; i = i->backing) {
      if (i != info) printf("\n");
      PrintHuman(i);
    }
  }
  lb_image_info_free(info);
  lb_node_close(node);
  return 0;
}

}  // namespace

int RunInfo(int argc, char** argv) {
  Context ctx;
  static const option kLong[] = {
      BLKIMG_LONG_HELP,
      {"format", required_argument, nullptr, 'f'},
      {"output", required_argument, nullptr, kOptOutput},
      {"backing-chain", no_argument, nullptr, kOptBackingChain},
      BLKIMG_LONG_OBJECT,
      BLKIMG_LONG_IMAGE_OPTS,
      BLKIMG_LONG_FORCE_SHARE,
      BLKIMG_LONG_END,
  };
  InfoArgs a;
  for (;;) {
    int c = NextOption(argc, argv, ":f:hU", kLong);
    if (c == -1) break;
    switch (c) {
      case 'h': PrintHelp(); return 0;
      case 'f': a.format = optarg; break;
      case 'U': a.force_share = true; break;
      case kOptOutput: a.output = optarg; break;
      case kOptBackingChain: a.chain = true; break;
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
