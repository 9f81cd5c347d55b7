#!/bin/sh
# The dynamic symbols libblock.so exports must be exactly capi/libblock.symbols: nothing
# internal leaks, nothing shipped disappears, every symbol carries its version node.
# usage: check_symbols.sh LIBBLOCK_SO EXPECTED_LIST
set -eu
actual=$(nm -D --defined-only "$1" | awk '$2 != "A" {print $3}' | sort)
expected=$(sort "$2")
if [ "$actual" != "$expected" ]; then
  echo "exported symbols differ from $2:"
  printf '%s\n' "$actual" > "${TMPDIR:-/tmp}/lb-actual-symbols.$$"
  printf '%s\n' "$expected" | diff -u - "${TMPDIR:-/tmp}/lb-actual-symbols.$$" || true
  rm -f "${TMPDIR:-/tmp}/lb-actual-symbols.$$"
  exit 1
fi
soname=$(readelf -d "$1" | sed -n 's/.*Library soname: \[\(.*\)\].*/\1/p')
if [ "$soname" != "libblock.so.0" ]; then
  echo "SONAME is '$soname', expected libblock.so.0"
  exit 1
fi
echo "ok: $(printf '%s\n' "$actual" | wc -l) symbols, SONAME $soname"
