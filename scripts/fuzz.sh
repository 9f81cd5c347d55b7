#!/usr/bin/env bash
# Builds the libFuzzer targets with clang (+ ASan/UBSan) and runs each for SECONDS (default
# 60), growing tests/fuzz/corpus/<target>. New crashers land in build-fuzz/crash-*.
# usage: fuzz.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
# clang 14 + C++20 coroutines: ASan at -O2 crashes the compiler and UBSan fails with
# "Cannot represent a difference across sections"; ASan at -O1 works. (UBSan is covered by
# the GCC build of the whole suite: scripts/test.sh --asan.)
if [ ! -f build-fuzz/build.ninja ]; then
  CC=clang CXX=clang++ meson setup build-fuzz -Dfuzzing=true -Db_sanitize=address \
    -Doptimization=1 -Db_lundef=false -Dexamples=false -Dbench=false >/dev/null
fi
ninja -C build-fuzz -j2 tests/fuzz_options tests/fuzz_probe tests/fuzz_qcow2 >/dev/null
for t in options probe qcow2; do
  echo "== fuzz_$t for ${secs}s"
  len=4096; [ "$t" = qcow2 ] && len=131072  # whole small images
  (cd build-fuzz && ./tests/fuzz_$t -max_total_time="$secs" -max_len="$len" \
     "../tests/fuzz/corpus/$t")
done
