// The table of blkimg subcommands. Each lives in cmd_<name>.cc and exports Setup<Name>.
#include "common.h"

namespace blkimg {

std::function<int()> SetupCreate(CLI::App* sub);
std::function<int()> SetupInfo(CLI::App* sub);

const std::vector<Command>& Commands() {
  static const std::vector<Command> commands = {
      {"create", "create a new disk image", SetupCreate},
      {"info", "display information about a disk image", SetupInfo},
  };
  return commands;
}

}  // namespace blkimg
