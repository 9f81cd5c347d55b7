#!/usr/bin/env bash
# Builds and runs the benchmarks against qemu-img. usage: bench.sh [--quick] [DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
dir=$(scripts/build.sh)
"$dir/bench/io_bench" "$@"
