#!/usr/bin/env bash
# A short demonstration of the main job on a real image, with Debian's qemu-img/qemu-io as
# the other side: libblock writes, QEMU reads; QEMU writes, libblock reads; and the two
# refuse each other through QEMU's image locks.
set -euo pipefail
cd "$(dirname "$0")/.."
demo=${BUILD_DIR:-build}/examples/blkio_demo
blkimg=${BUILD_DIR:-build}/tools/blkimg/blkimg
work=$(mktemp -d /tmp/libblock-demo.XXXXXX)
trap 'rm -rf "$work"' EXIT
img=$work/disk.raw
say() { printf '\n== %s\n' "$*"; }

say "libblock creates a 64 MiB raw image and writes a pattern; qemu-img and qemu-io read it"
$demo create "$img" 64
$demo write "$img" $((1 << 20)) 0xab
qemu-img info -f raw "$img" | sed -n '1,3p'
qemu-io -f raw -r -c "read -P 0xab 1M 64k" -c "read -P 0 1088k 64k" "$img" | grep -v '^[0-9]'

say "qemu-io writes a pattern; libblock reads it back and maps the image"
qemu-io -f raw -c "write -P 0x5a 8M 64k" "$img" | grep -v '^[0-9]'
$demo verify "$img" $((8 << 20)) 0x5a
$demo map "$img"

say "blkimg, the qemu-img counterpart: convert, then qemu-img compares and blkimg maps and describes"
$blkimg convert -f raw -O raw "$img" "$work/copy.raw"
qemu-img compare -f raw -F raw "$img" "$work/copy.raw"
$blkimg compare "$img" "$work/copy.raw"
$blkimg map -f raw "$work/copy.raw"
$blkimg info -f raw "$work/copy.raw"
$blkimg io -f raw -c "read -P 0x5a 8M 64k" "$work/copy.raw"

say "while libblock holds the image read-write, QEMU is refused (and -U still works)"
$demo hold "$img" 3 & holder=$!
sleep 1
qemu-io -f raw -c "write 0 4k" "$img" 2>&1 | sed 's/^/qemu-io says: /' || true
qemu-img info -U -f raw "$img" | sed -n '1,2p'
wait $holder

say "and the other way round: while qemu-io holds it, libblock is refused"
qemu-io -f raw -c "sleep 2000" "$img" & qemu=$!
sleep 0.5
$demo write "$img" 0 0x11 2>&1 | sed 's/^/libblock says: /' || true
wait $qemu
echo
echo "demo finished"
