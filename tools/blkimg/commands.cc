// The table of blkimg subcommands. Each lives in cmd_<name>.cc and exports Setup<Name>.
#include "common.h"

namespace blkimg {

std::function<int()> SetupCreate(CLI::App* sub);
std::function<int()> SetupInfo(CLI::App* sub);
std::function<int()> SetupConvert(CLI::App* sub);
std::function<int()> SetupCompare(CLI::App* sub);
std::function<int()> SetupMap(CLI::App* sub);
std::function<int()> SetupResize(CLI::App* sub);
std::function<int()> SetupBench(CLI::App* sub);
std::function<int()> SetupDd(CLI::App* sub);
std::function<int()> SetupIo(CLI::App* sub);

const std::vector<Command>& Commands() {
  static const std::vector<Command> commands = {
      {"create", "create a new disk image", SetupCreate},
      {"info", "display information about a disk image", SetupInfo},
      {"convert", "convert an image to another format or copy it", SetupConvert},
      {"compare", "check whether two images have the same content", SetupCompare},
      {"map", "dump the allocation metadata of an image", SetupMap},
      {"resize", "change the virtual size of an image", SetupResize},
      {"bench", "run a simple I/O benchmark on an image", SetupBench},
      {"dd", "copy from one image to another, dd style", SetupDd},
      {"io", "run qemu-io commands on an image", SetupIo},
  };
  return commands;
}

}  // namespace blkimg
