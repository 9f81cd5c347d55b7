// blkimg io: qemu-io [-f FMT] [--image-opts] [-r] [-U] [-n] [-t CACHE] [-i AIO] [-k]
//            [-d DISCARD] [--object OBJ] [-m] [-c CMD]... [FILENAME]
//
// Runs qemu-io's commands (io_commands.h) on one image: each -c in order, or lines read from
// stdin behind a "blkimg> " prompt. As qemu-io, the image is read-write unless -r, and the
// exit status is 1 when any command failed. Like qemu-io, blkimg io lets every other user
// read and write the image alongside it: it is a test tool, not a guest device.
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
  std::string format, cache, aio, discard;
  bool image_opts = false, read_only = false, force_share = false, snapshot = false;
  bool copy_on_read = false, misalign = false;
  std::string filename;
};

bool ValidDiscard(std::string_view mode) {
  return mode == "ignore" || mode == "off" || mode == "unmap" || mode == "on";
}

bool ValidCache(std::string_view mode) {
  return mode == "writeback" || mode == "none" || mode == "off" || mode == "writethrough" ||
         mode == "directsync" || mode == "unsafe";
}

// qemu-io's -d: "unmap"/"on" pass discards down (qemu-io's default, unlike QEMU's),
// "ignore"/"off" drop them.
bool DiscardFlags(const std::string& mode, uint32_t* flags) {
  if (mode == "ignore" || mode == "off") return true;
  if (mode.empty() || mode == "unmap" || mode == "on") {
    *flags |= LB_OPEN_UNMAP;
    return true;
  }
  Error("Invalid discard option: " + mode);
  return false;
}

lb_backend* Open(Context& ctx, const IoArgs& a) {
  uint32_t flags = LB_OPEN_SHARE_RW;
  if (!a.read_only) flags |= LB_OPEN_RDWR;
  if (a.force_share) flags |= LB_OPEN_FORCE_SHARE;
  if (!a.cache.empty()) flags = (flags & ~LB_OPEN_CACHE_MASK) | CacheFlags(a.cache);
  if (!a.aio.empty()) flags = (flags & ~LB_OPEN_AIO_MASK) | AioFlags(a.aio);
  if (!DiscardFlags(a.discard, &flags)) return nullptr;
  if (a.force_share && !a.read_only) {
    Error("can't open device " + a.filename +
          ": force-share=on can only be used with read-only images");
    return nullptr;
  }
  ImageSpec image{a.filename, a.format, a.image_opts};
  lb_open_args args = ArgsFor(image, flags);
  lb_backend* be = nullptr;
  if (lb_open_ex(ctx.get(), &args, &be) < 0) {
    Error("can't open device " + a.filename + ": " + LibError());
    return nullptr;
  }
  return be;
}

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
  if (a.snapshot && !a.filename.empty()) {
    // snapshot=on puts a temporary qcow2 overlay over the image.
    Error("can't open device " + a.filename +
          ": snapshot mode needs the qcow2 driver, which this build of libblock lacks");
    return 1;
  }
  lb_backend* be = nullptr;
  if (!a.filename.empty()) {
    be = Open(ctx, a);
    if (!be) return 1;
  }
  bool ok = true;
  {
    uint32_t backend_flags = LB_OPEN_SHARE_RW | (a.read_only ? 0 : LB_OPEN_RDWR);
    io::Session session(ctx.get(), be, backend_flags);
    if (a.commands.empty()) {
      ok = RunInteractive(session);
    } else {
      for (const std::string& command : a.commands) {
        if (session.Execute(command) < 0) ok = false;
        if (session.quit_requested()) break;
      }
    }
    session.DrainAio();
    be = session.backend();
  }
  fflush(stdout);
  if (lb_close(be) < 0) {
    Error(LibError());
    ok = false;
  }
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
        if (!ValidDiscard(optarg)) {
          Error(std::string("Invalid discard option: ") + optarg);
          return 1;
        }
        a.discard = optarg;
        break;
      case 'f': a.format = optarg; break;
      case 'r': a.read_only = true; break;
      case 's': a.snapshot = true; break;
      case 'n':
        a.cache = "none";
        break;
      case 'C': a.copy_on_read = true; break;
      case 'm': a.misalign = true; break;
      case 'k': a.aio = "native"; break;
      case 't':
        if (!ValidCache(optarg)) {
          Error(std::string("Invalid cache option: ") + optarg);
          return 1;
        }
        a.cache = optarg;
        break;
      case 'T': break;  // no trace points to enable
      case 'U': a.force_share = true; break;
      case 'i':
        if (strcmp(optarg, "threads") && strcmp(optarg, "native") && strcmp(optarg, "io_uring")) {
          Error(std::string("Invalid aio option: ") + optarg);
          return 1;
        }
        a.aio = optarg;
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
  if (optind == argc - 1) a.filename = argv[optind];
  return Run(ctx, a);
}

}  // namespace blkimg
