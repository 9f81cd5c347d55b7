#!/usr/bin/env bash
# On a fresh Debian 12 machine, as root: install the dependencies, build, run the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh >/dev/null
echo "libblock: built in build/"
scripts/demo.sh
