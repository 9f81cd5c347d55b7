#!/bin/sh
# `meson install` puts libblock.h, libblock.so.0 and libblock.pc in place, and a C99 program
# builds against the installed copy through pkg-config alone.
# usage: check_install.sh BUILD_DIR SOURCE_OF_A_C_PROGRAM
set -eu
build=$1
program=$2
dest=$(mktemp -d)
trap 'rm -rf "$dest"' EXIT
meson install -C "$build" --destdir "$dest" --no-rebuild --quiet >/dev/null
header=$(find "$dest" -name libblock.h | head -n1)
pc=$(find "$dest" -name libblock.pc | head -n1)
so=$(find "$dest" -name 'libblock.so.0' | head -n1)
for f in "$header" "$pc" "$so"; do
  [ -n "$f" ] || { echo "missing an installed file (header: '$header', pc: '$pc', so: '$so')"; exit 1; }
done
export PKG_CONFIG_PATH="$(dirname "$pc")" PKG_CONFIG_SYSROOT_DIR="$dest"
cflags=$(pkg-config --cflags libblock)
libs=$(pkg-config --libs libblock)
# A sanitized library needs the program linked with the same runtime (ASan must load first).
san=""
case "${SANITIZE:-none}" in none|"") ;; *) san="-fsanitize=$SANITIZE" ;; esac
cc -std=c99 -pedantic -Werror -Wall $san $cflags "$program" $libs -o "$dest/program"
LD_LIBRARY_PATH="$(dirname "$so")" "$dest/program" >/dev/null
echo "ok: installed $(basename "$header"), $(basename "$pc"), $(basename "$so"); a program built and ran"
