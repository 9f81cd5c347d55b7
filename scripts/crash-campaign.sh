#!/bin/sh
# A longer power-cut replay campaign than CI runs: the crash tests (tests/crash) over many
# seeds and a longer workload. Usage:
#   scripts/crash-campaign.sh [BUILD_DIR] [FIRST_SEED] [RUNS] [OPS]
# e.g. scripts/crash-campaign.sh build 1 50 400. Every run prints its seed; a failing seed
# reproduces with LB_CRASH_SEED=<seed> LB_CRASH_OPS=<ops> BUILD_DIR/tests/test_<name>.
set -eu
build=${1:-build}
first=${2:-1}
runs=${3:-20}
ops=${4:-300}
failed=0
seed=$first
while [ "$seed" -lt $((first + runs)) ]; do
  for t in raw_crash qcow2_crash; do
    bin="$build/tests/test_$t"
    [ -x "$bin" ] || { echo "missing $bin (build it first)"; exit 1; }
    if LB_CRASH_SEED=$seed LB_CRASH_OPS=$ops "$bin" >"/tmp/crash-$t-$seed.log" 2>&1; then
      echo "seed $seed $t: ok"
    else
      rc=$?
      if [ "$rc" -eq 77 ]; then echo "seed $seed $t: skipped"; continue; fi
      echo "seed $seed $t: FAILED (log in /tmp/crash-$t-$seed.log)"
      failed=$((failed + 1))
    fi
  done
  seed=$((seed + 1))
done
echo "$((runs * 2 - failed)) passed, $failed failed"
[ "$failed" -eq 0 ]
