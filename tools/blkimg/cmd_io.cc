// blkimg io: qemu-io [-f FMT] [--image-opts] [-r] [-U] [-n] [-t CACHE] [-i AIO] [-k]
//            [-d DISCARD] [--object OBJ] [-m] [-c CMD]... [FILENAME]
//
// Runs qemu-io's commands (io_commands.h) on one image: each -c in order, or lines read from
// stdin behind a "blkimg> " prompt. As qemu-io, the image is read-write unless -r, and the
// exit status is 1 when any command failed. Like qemu-io, blkimg io lets every other user
// read and write the image alongside it: it is a test tool, not a guest device.
#include <cstdio>
#include <iostream>

#include "common.h"
#include "io_commands.h"

namespace blkimg {
namespace {

struct IoArgs {
  std::vector<std::string> objects;
  std::vector<std::string> commands;
  std::string format, cache, aio, discard;
  bool image_opts = false, read_only = false, force_share = false, nocache = false;
  bool native_aio = false, misalign = false;
  std::string filename;
};

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
  if (a.nocache) flags |= LB_OPEN_CACHE_NONE;
  if (!a.cache.empty()) flags = (flags & ~LB_OPEN_CACHE_MASK) | CacheFlags(a.cache);
  if (a.native_aio) flags |= LB_OPEN_AIO_IO_URING;
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

int Run(const IoArgs& a) {
  Context ctx;
  ctx.AddObjects(a.objects);
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

}  // namespace

std::function<int()> SetupIo(CLI::App* sub) {
  auto a = std::make_shared<IoArgs>();
  AddObjectOption(sub, &a->objects);
  AddImageOptsOption(sub, &a->image_opts);
  AddForceShareOption(sub, &a->force_share);
  sub->add_option("-c,--cmd", a->commands, "run a qemu-io command (repeatable)")
      ->allow_extra_args(false);
  sub->add_option("-f,--format", a->format, "image format");
  sub->add_flag("-r,--read-only", a->read_only, "open the image read-only");
  sub->add_flag("-n,--nocache", a->nocache, "bypass the host page cache (-t none)");
  sub->add_option("-t,--cache", a->cache, "cache mode");
  sub->add_option("-i,--aio", a->aio, "AIO mode: threads, native or io_uring");
  sub->add_flag("-k,--native-aio", a->native_aio, "use the kernel's AIO (-i native)");
  sub->add_option("-d,--discard", a->discard, "discard mode: ignore or unmap");
  sub->add_flag("-m,--misalign", a->misalign,
                "accepted for qemu-io compatibility (libblock aligns buffers itself)");
  sub->add_option("filename", a->filename, "image (or option string with --image-opts)");
  return [a] { return Run(*a); };
}

}  // namespace blkimg
