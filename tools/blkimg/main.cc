// blkimg: the qemu-img counterpart, built on libblock.h alone.
//
//   blkimg COMMAND [options] ...     as `qemu-img COMMAND`, with the same flags, exit codes
//                                    and --output=json keys
//   blkimg io [-c CMD]... IMAGE      the qemu-io counterpart
#include <cstdio>
#include <cstring>

#include "common.h"

int main(int argc, char** argv) {
  CLI::App app{"blkimg: inspect, create, convert and exercise disk images (qemu-img's "
               "counterpart, built on libblock)"};
  app.set_version_flag("-V,--version", std::string("blkimg version ") + lb_version());
  app.require_subcommand(1);
  app.fallthrough(false);
  std::function<int()> run;
  for (const blkimg::Command& cmd : blkimg::Commands()) {
    CLI::App* sub = app.add_subcommand(cmd.name, cmd.summary);
    std::function<int()> (*setup)(CLI::App*) = cmd.setup;
    std::function<int()> runner = setup(sub);
    sub->callback([&run, runner] { run = runner; });
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) ? 1 : 0;
  }
  return run ? run() : 1;
}
