// The table of blkimg subcommands. Each lives in cmd_<name>.cc and exports Run<Name>.
#include "common.h"

namespace blkimg {

int RunCheck(int argc, char** argv);
int RunCommit(int argc, char** argv);
int RunCreate(int argc, char** argv);
int RunInfo(int argc, char** argv);
int RunConvert(int argc, char** argv);
int RunCompare(int argc, char** argv);
int RunMap(int argc, char** argv);
int RunResize(int argc, char** argv);
int RunSnapshot(int argc, char** argv);
int RunRebase(int argc, char** argv);
int RunMeasure(int argc, char** argv);
int RunBench(int argc, char** argv);
int RunDd(int argc, char** argv);
int RunIo(int argc, char** argv);

const std::vector<Command>& Commands() {
  static const std::vector<Command> commands = {
      {"bench",
       "[-c count] [-d depth] [-f fmt] [--flush-interval=flush_interval] [-i aio] [-n] "
       "[--no-drain] [-o offset] [--pattern=pattern] [-q] [-s buffer_size] [-S step_size] "
       "[-t cache] [-w] [-U] filename",
       RunBench},
      {"check",
       "[--object objectdef] [--image-opts] [-q] [-f fmt] [--output=ofmt] [-r [leaks | all]] "
       "[-T src_cache] [-U] filename",
       RunCheck},
      {"commit",
       "[--object objectdef] [--image-opts] [-q] [-f fmt] [-t cache] [-b base] "
       "[-r rate_limit] [-d] [-p] filename",
       RunCommit},
      {"compare",
       "[--object objectdef] [--image-opts] [-f fmt] [-F fmt] [-T src_cache] [-p] [-q] [-s] "
       "[-U] filename1 filename2",
       RunCompare},
      {"convert",
       "[--object objectdef] [--image-opts] [--target-image-opts] [--target-is-zero] "
       "[--bitmaps] [-U] [-C] [-c] [-p] [-q] [-n] [-f fmt] [-t cache] [-T src_cache] "
       "[-O output_fmt] [-B backing_file [-F backing_fmt]] [-o options] [-l snapshot_param] "
       "[-S sparse_size] [-r rate_limit] [-m num_coroutines] [-W] [--salvage] "
       "filename [filename2 [...]] output_filename",
       RunConvert},
      {"create",
       "[--object objectdef] [-q] [-f fmt] [-b backing_file [-F backing_fmt]] [-u] "
       "[-o options] filename [size]",
       RunCreate},
      {"dd",
       "[--image-opts] [-U] [-f fmt] [-O output_fmt] [bs=block_size] [count=blocks] "
       "[skip=blocks] if=input of=output",
       RunDd},
      {"info",
       "[--object objectdef] [--image-opts] [-f fmt] [--output=ofmt] [--backing-chain] [-U] "
       "filename",
       RunInfo},
      {"io",
       "[-f fmt] [--image-opts] [-r] [-U] [-n] [-t cache] [-i aio] [-k] [-d discard] "
       "[--object objectdef] [-m] [-c command]... [filename]",
       RunIo},
      {"map",
       "[--object objectdef] [--image-opts] [-f fmt] [--start-offset=offset] "
       "[--max-length=len] [--output=ofmt] [-U] filename",
       RunMap},
      {"measure",
       "[--output=ofmt] [-O output_fmt] [-o options] [--size N | [--object objectdef] "
       "[--image-opts] [-f fmt] [-l snapshot_param] filename]",
       RunMeasure},
      {"snapshot",
       "[--object objectdef] [--image-opts] [-U] [-q] [-l | -a snapshot | -c snapshot | "
       "-d snapshot] filename",
       RunSnapshot},
      {"rebase",
       "[--object objectdef] [--image-opts] [-U] [-q] [-f fmt] [-t cache] [-T src_cache] [-p] "
       "[-u] -b backing_file [-F backing_fmt] filename",
       RunRebase},
      {"resize",
       "[--object objectdef] [--image-opts] [-f fmt] [--preallocation=prealloc] [-q] "
       "[--shrink] filename [+ | -]size",
       RunResize},
  };
  return commands;
}

}  // namespace blkimg
