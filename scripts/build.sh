#!/usr/bin/env bash
# Configures (once) and builds libblock. usage: build.sh [--asan] [BUILD_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
sanitize=0
if [ "${1:-}" = "--asan" ]; then sanitize=1; shift; fi
dir=${1:-$([ $sanitize = 1 ] && echo build-asan || echo build)}
if [ ! -f "$dir/build.ninja" ]; then
  if [ $sanitize = 1 ]; then
    meson setup "$dir" -Db_sanitize=address,undefined -Dbuildtype=debugoptimized >/dev/null
  else
    meson setup "$dir" >/dev/null
  fi
fi
ninja -C "$dir" -j2 >/dev/null
echo "$dir"
