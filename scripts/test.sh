#!/usr/bin/env bash
# Builds libblock and runs the whole test suite; the last line is "N passed, N failed".
# usage: test.sh [--asan] [meson test arguments...]
#   --asan   build with AddressSanitizer + UndefinedBehaviorSanitizer (in build-asan/)
set -uo pipefail
cd "$(dirname "$0")/.."
asan=()
if [ "${1:-}" = "--asan" ]; then asan=(--asan); shift; fi
dir=$(scripts/build.sh "${asan[@]}") || { echo "build failed"; echo "0 passed, 1 failed"; exit 1; }
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
meson test -C "$dir" --num-processes 2 --print-errorlogs "$@"
status=$?
python3 - "$dir/meson-logs/testlog.json" <<'PY'
import json, sys
counts = {}
for line in open(sys.argv[1]):
    line = line.strip()
    if line:
        r = json.loads(line)["result"]
        counts[r] = counts.get(r, 0) + 1
passed = counts.get("OK", 0) + counts.get("EXPECTEDFAIL", 0)
skipped = counts.get("SKIP", 0)
failed = sum(v for k, v in counts.items() if k not in ("OK", "EXPECTEDFAIL", "SKIP"))
if skipped:
    print(f"{skipped} skipped (a tool or privilege was missing; see the log)")
print(f"{passed} passed, {failed} failed")
PY
exit $status
