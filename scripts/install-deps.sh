#!/usr/bin/env bash
# Installs everything libblock needs to build and test, from Debian 12's archive. Run as root.
set -euo pipefail
packages=(
  # build
  g++ meson ninja-build pkg-config
  libabsl-dev liburing-dev nlohmann-json3-dev zlib1g-dev libzstd-dev libgcrypt20-dev catch2
  # sanitizer and fuzzing builds
  clang libclang-rt-14-dev
  # test peers and oracles: qemu-img/qemu-io, loop devices, file systems for nocow tests
  qemu-utils util-linux btrfs-progs e2fsprogs cryptsetup-bin fio
  # read errors on demand: a FUSE file system (tests/cli/faultyfs.py)
  python3-fusepy libfuse2
  # system-call counts next to qemu-io (tests/cli/test_io_session.py)
  strace
  # scripts
  python3
)
export DEBIAN_FRONTEND=noninteractive
if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -print -quit 2>/dev/null)" ] ||
   [ "${LIBBLOCK_APT_UPDATE:-1}" = 1 ]; then
  apt-get update -q -o DPkg::Lock::Timeout=600 >/dev/null
fi
apt-get install -y -q -o DPkg::Lock::Timeout=600 --no-install-recommends "${packages[@]}" >/dev/null
echo "libblock: dependencies installed (${#packages[@]} packages)"
