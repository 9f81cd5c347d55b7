// blkimg io: qemu-io [-f FMT] [--image-opts] [-r] [-U] [-n] [-t CACHE] [-i AIO] [-k]
//            [-d DISCARD] [--object OBJ] [-m] [-c CMD]... [FILENAME]
//
// Runs qemu-io's commands (io_commands.h) on one image: each -c in order, or lines read from
// stdin behind a "blkimg> " prompt. As qemu-io, the image is read-write unless -r, writes are
// writethrough unless -t/-n say otherwise, and the exit status is 1 when any command failed.
// Like qemu-io, blkimg io lets other users write the image alongside it (io::kIoSharing): it
// is a test tool, not a guest device.
#include <csignal>
#include <cstdio>
#include <cstring>
#include <iostream>

#include "common.h"
#include "io_commands.h"

namespace blkimg {
namespace {

struct IoArgs {
  std::vector<std::string> commands;
  io::OpenRequest open;
  bool image_opts = false;
  // -m: qemu-io misaligns its buffers; libblock takes buffers of any alignment (it bounces
  // what O_DIRECT refuses), so there is nothing to change.
  bool misalign = false;
};

// qemu-io's interactive mode: a prompt before every line, until "quit" or end of input.
bool RunInteractive(io::Session& session) {
  bool ok = true;
  std::string line;
  while (!session.quit_requested()) {
    printf("blkimg> ");
    fflush(stdout);
    if (!std::getline(std::cin, line)) break;
    if (session.Execute(line) < 0) ok = false;
  }
  return ok;
}

int Run(Context& ctx, const IoArgs& a) {
  io::Session session(ctx.get());
  if ((!a.open.filename.empty() || !a.open.options.empty()) && session.Open(a.open) < 0) {
    return 1;
  }
  bool ok = true;
  if (a.commands.empty()) {
    ok = RunInteractive(session);
  } else {
    for (const std::string& command : a.commands) {
      if (session.Execute(command) < 0) ok = false;
      if (session.quit_requested()) break;
    }
  }
  session.DrainAio();
  fflush(stdout);
  if (session.Close() < 0) ok = false;
  return ok ? 0 : 1;
}

void PrintIoUsage() {
  printf("Usage: blkimg io [OPTIONS]... [-c STRING]... [file]\n"
         "libblock's disk exerciser (qemu-io's counterpart)\n"
         "\n"
         "  --object OBJECTDEF   define an object such as 'secret' for\n"
         "                       passwords and/or encryption keys\n"
         "  --image-opts         treat file as option string\n"
         "  -c, --cmd STRING     execute command with its arguments\n"
         "                       from the given string\n"
         "  -f, --format FMT     specifies the block driver to use\n"
         "  -r, --read-only      export read-only\n"
         "  -s, --snapshot       use snapshot file (needs qcow2: refused by this build)\n"
         "  -n, --nocache        disable host cache, short for -t none\n"
         "  -C, --copy-on-read   enable copy-on-read\n"
         "  -m, --misalign       misalign allocations for O_DIRECT\n"
         "  -k, --native-aio     use kernel AIO implementation\n"
         "                       (Linux only, prefer use of -i)\n"
         "  -i, --aio=MODE       use AIO mode (threads, native or io_uring)\n"
         "  -t, --cache=MODE     use the given cache mode for the image\n"
         "  -d, --discard=MODE   use the given discard mode for the image\n"
         "  -T, --trace PATTERN  accepted for qemu-io compatibility (no trace points)\n"
         "  -U, --force-share    force shared permissions\n"
         "  -h, --help           display this help and exit\n"
         "  -V, --version        output version information and exit\n"
         "\n"
         "See 'blkimg io -c help' for information on available commands.\n");
}

// qemu-io's signal dispositions, so that sigraise (and signals from outside) end blkimg io
// or leave it running exactly as they do qemu-io: its main loop blocks SIGBUS, SIGUSR1,
// SIGALRM and SIGIO (it reads them from a signalfd) and it ignores SIGPIPE. Set before the
// context starts any thread, which inherits the mask.
void SetUpSignals() {
  sigset_t blocked;
  sigemptyset(&blocked);
  for (int sig : {SIGBUS, SIGUSR1, SIGALRM, SIGIO}) sigaddset(&blocked, sig);
  pthread_sigmask(SIG_BLOCK, &blocked, nullptr);
  signal(SIGPIPE, SIG_IGN);
}

}  // namespace

int RunIo(int argc, char** argv) {
  static const option kLong[] = {
      {"help", no_argument, nullptr, 'h'},
      {"version", no_argument, nullptr, 'V'},
      {"cmd", required_argument, nullptr, 'c'},
      {"format", required_argument, nullptr, 'f'},
      {"read-only", no_argument, nullptr, 'r'},
      {"snapshot", no_argument, nullptr, 's'},
      {"nocache", no_argument, nullptr, 'n'},
      {"copy-on-read", no_argument, nullptr, 'C'},
      {"misalign", no_argument, nullptr, 'm'},
      {"native-aio", no_argument, nullptr, 'k'},
      {"discard", required_argument, nullptr, 'd'},
      {"cache", required_argument, nullptr, 't'},
      {"trace", required_argument, nullptr, 'T'},
      {"object", required_argument, nullptr, kOptObject},
      {"image-opts", no_argument, nullptr, kOptImageOpts},
      {"force-share", no_argument, nullptr, 'U'},
      {"aio", required_argument, nullptr, 'i'},
      {nullptr, 0, nullptr, 0},
  };
  // qemu-io lets getopt print its own complaints, named after the program.
  char program[] = "blkimg";
  argv[0] = program;
  SetUpSignals();
  Context ctx;
  IoArgs a;
  for (;;) {
    int c = getopt_long(argc, argv, "hVc:d:f:rsnCmkt:T:Ui:", kLong, nullptr);
    if (c == -1) break;
    switch (c) {
      case 'h': PrintIoUsage(); return 0;
      case 'V': printf("blkimg io version %s\n", lb_version()); return 0;
      case 'c': a.commands.push_back(optarg); break;
      case 'd':
        if (!io::ValidDiscardMode(optarg)) return 1;
        a.open.discard = optarg;
        break;
      case 'f': a.open.format = optarg; break;
      case 'r': a.open.read_only = true; break;
      case 's': a.open.snapshot = true; break;
      case 'n': a.open.cache = "none"; break;
      case 'C': a.open.copy_on_read = true; break;
      case 'm': a.misalign = true; break;
      case 'k': a.open.aio = "native"; break;
      case 't':
        if (!io::ValidCacheMode(optarg)) return 1;
        a.open.cache = optarg;
        break;
      case 'T':
        if (!TraceOption(optarg)) return 1;
        break;
      case 'U': a.open.force_share = true; break;
      case 'i':
        if (!io::ValidAioMode(optarg)) return 1;
        a.open.aio = optarg;
        break;
      case kOptObject:
        if (!ctx.AddObjects({optarg})) return 1;
        break;
      case kOptImageOpts: a.image_opts = true; break;
      default:
        PrintIoUsage();
        return 1;
    }
  }
  if (optind < argc - 1) {
    PrintIoUsage();
    return 1;
  }
  if (a.image_opts && !a.open.format.empty()) {
    io::ErrorReport("--image-opts and -f are mutually exclusive");
    return 1;
  }
  if (optind == argc - 1) {
    // With --image-opts the operand is the image's options, and no filename is named.
    if (a.image_opts) {
      a.open.options.push_back(argv[optind]);
    } else {
      a.open.filename = argv[optind];
    }
  }
  return Run(ctx, a);
}

}  // namespace blkimg
