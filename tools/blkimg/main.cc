// blkimg: the qemu-img counterpart, built on libblock.h alone.
//
//   blkimg [-h] [-V] COMMAND [options] ...   as `qemu-img COMMAND`, with the same flags, exit
//                                            codes and --output=json keys
//   blkimg io [-c CMD]... IMAGE              the qemu-io counterpart
//
// Command lines are parsed with getopt_long, as qemu-img parses them: options and operands
// may mix, a unique prefix of a long option is enough, the last of a repeated option wins, and
// an empty "--opt=" value is a value.
#include <getopt.h>

#include <cstdio>
#include <cstring>

#include "common.h"

int main(int argc, char** argv) {
  static const option kLong[] = {
      {"help", no_argument, nullptr, 'h'},
      {"version", no_argument, nullptr, 'V'},
      {"trace", required_argument, nullptr, 'T'},
      {nullptr, 0, nullptr, 0},
  };
  // '+': stop at the command name, whose own options follow it.
  for (;;) {
    int c = blkimg::NextOption(argc, argv, "+:hVT:", kLong);
    if (c == -1) break;
    switch (c) {
      case 'h':
        blkimg::PrintHelp();
        return 0;
      case 'V':
        printf("blkimg version %s\n", lb_version());
        return 0;
      case 'T':
        if (!blkimg::TraceOption(optarg)) return 1;
        break;
      default:
        return 1;
    }
  }
  if (optind >= argc) return blkimg::UsageError("Not enough arguments");
  const char* name = argv[optind];
  for (const blkimg::Command& cmd : blkimg::Commands()) {
    if (strcmp(cmd.name, name) != 0) continue;
    int sub_argc = argc - optind;
    char** sub_argv = argv + optind;
    optind = 0;  // restart getopt for the command's own options
    return cmd.run(sub_argc, sub_argv);
  }
  return blkimg::UsageError(std::string("Command not found: ") + name);
}
