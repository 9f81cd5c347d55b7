#!/usr/bin/env bash
# Builds, then runs bench/compare.sh (blkimg bench against qemu-img bench, plus fio's limit).
# usage: scripts/bench.sh [compare.sh arguments, e.g. --quick or --runs 7 --dir /var/tmp]
# The library-level benchmark (no process start-up, null-co too) is build/bench/io_bench.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=$(scripts/build.sh)
exec bench/compare.sh --blkimg "$dir/tools/blkimg/blkimg" "$@"
