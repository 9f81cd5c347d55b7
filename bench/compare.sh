#!/usr/bin/env bash
# blkimg bench against qemu-img bench: the same parameters on the same image, alternating the
# two tools run by run, then the medians and their ratio; plus what fio (io_uring, O_DIRECT)
# gets from the same file, as the device's limit. Informative only: nothing is asserted.
#
# usage: bench/compare.sh [--runs N] [--dir DIR] [--size SIZE] [--quick] [--blkimg PATH]
#   --runs N     runs per tool and workload (default 5); the median is reported
#   --dir DIR    where the test image lives (default /var/tmp; use a real disk, not tmpfs,
#                for cache=none)
#   --size SIZE  image size for truncate/fallocate (default 1G)
#   --quick      a tenth of the request counts and 3 runs (a smoke run)
#   --blkimg P   the blkimg binary (default build/tools/blkimg/blkimg)
#
# Workloads (qemu-img bench semantics: sequential offsets stepping by the request size,
# wrapping at the end of the image, DEPTH requests in flight):
#   4k reads at queue depth 1 and 32, 64k writes at queue depth 32,
#   each with cache=none/aio=io_uring and cache=writeback/aio=threads.
# The ratio column is qemu-img's time / blkimg's time: above 1 means blkimg is faster.
set -euo pipefail
cd "$(dirname "$0")/.."

runs=5 dir=/var/tmp size=1G scale=1 blkimg=build/tools/blkimg/blkimg
while [ $# -gt 0 ]; do
  case $1 in
    --runs) runs=$2; shift 2 ;;
    --dir) dir=$2; shift 2 ;;
    --size) size=$2; shift 2 ;;
    --quick) scale=10; runs=3; shift ;;
    --blkimg) blkimg=$2; shift 2 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "compare.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
for tool in qemu-img "$blkimg"; do
  command -v "$tool" >/dev/null || { echo "compare.sh: '$tool' not found (build first)" >&2; exit 2; }
done

image=$(mktemp "$dir/libblock-bench.XXXXXX")
trap 'rm -f "$image"' EXIT
# Real data throughout: neither holes nor fallocated (unwritten) extents, which a file system
# answers without reading anything.
head -c "$(numfmt --from=iec "${size^^}")" /dev/urandom >"$image"
sync "$image"

# "Run completed in 1.234 seconds." -> 1.234
bench_seconds() {
  "$@" | sed -n 's/^Run completed in \([0-9.]*\) seconds\.$/\1/p'
}

median() {
  sort -g | awk '{v[NR] = $1} END {
    if (NR == 0) { print "nan"; exit }
    if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# fio's time for the same request stream: io_uring, O_DIRECT, sequential, DEPTH in flight.
fio_seconds() {  # RW BS DEPTH COUNT
  local rw=$1 bs=$2 depth=$3 count=$4 bytes
  bytes=$(( $(numfmt --from=iec "${bs^^}") * count ))
  fio --name=limit --filename="$image" --ioengine=io_uring --direct=1 --rw="$rw" \
      --bs="$bs" --iodepth="$depth" --io_size="$bytes" --output-format=json 2>/dev/null |
    python3 -c 'import json, sys
job = json.load(sys.stdin)["jobs"][0]
side = job["read"] if job["read"]["io_bytes"] else job["write"]
print(side["runtime"] / 1000.0)'
}

printf '%-42s %10s %10s %8s %12s %10s\n' workload qemu-img blkimg ratio blkimg-MiB/s fio-limit
# name rw size depth count
workloads=(
  "4k-read-qd1 read 4k 1 40000"
  "4k-read-qd32 read 4k 32 200000"
  "64k-write-qd32 write 64k 32 40000"
)
for mode in "none io_uring" "writeback threads"; do
  read -r cache aio <<<"$mode"
  for w in "${workloads[@]}"; do
    read -r name rw bs depth count <<<"$w"
    count=$(( count / scale ))
    args=(bench -f raw -c "$count" -d "$depth" -s "$bs" -t "$cache" -i "$aio")
    [ "$rw" = write ] && args+=(-w)
    q=() b=()
    for _ in $(seq "$runs"); do
      q+=("$(bench_seconds qemu-img "${args[@]}" "$image")")
      b+=("$(bench_seconds "$blkimg" "${args[@]}" "$image")")
    done
    qm=$(printf '%s\n' "${q[@]}" | median)
    bm=$(printf '%s\n' "${b[@]}" | median)
    ratio=$(awk -v q="$qm" -v b="$bm" 'BEGIN { printf "%.2f", (b > 0 ? q / b : 0) }')
    mibs=$(awk -v b="$bm" -v n="$count" -v s="$(numfmt --from=iec "${bs^^}")" \
      'BEGIN { printf "%.0f", (b > 0 ? n * s / b / 1048576 : 0) }')
    limit=-
    if [ "$cache" = none ] && command -v fio >/dev/null; then
      limit=$(fio_seconds "$rw" "$bs" "$depth" "$count")
    fi
    printf '%-42s %10s %10s %8s %12s %10s\n' "$name cache=$cache aio=$aio" "$qm" "$bm" \
      "$ratio" "$mibs" "$limit"
  done
done
echo "(seconds are medians of $runs alternating runs; ratio = qemu-img / blkimg; fio-limit is"
echo " fio's time for the same requests with io_uring and O_DIRECT)"
