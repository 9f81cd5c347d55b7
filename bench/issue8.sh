#!/usr/bin/env bash
# Issue 8's performance table, in one run: blkimg (libblock) against qemu-img and fio on the
# same images, side by side. Informative only: nothing is asserted, nothing fails on a number.
#
# usage: bench/issue8.sh [--runs N] [--mem DIR] [--disk DIR] [--size SIZE] [--quick]
#                        [--blkimg PATH] [--only PATTERN]
#   --runs N      runs per tool and row (default 3); the best is reported, with the spread
#                 (best-to-worst, in % of the best) in brackets
#   --mem DIR     a memory file system for the page-cache rows (default /dev/shm)
#   --disk DIR    a directory on a real disk for the O_DIRECT rows (default /var/tmp)
#   --size SIZE   image size (default 1G)
#   --quick       a fifth of the request counts, 1 run (a smoke run)
#   --blkimg P    the blkimg binary (default build/tools/blkimg/blkimg)
#   --only PAT    run only the rows whose name matches the extended regex PAT
#
# Images hold real data (random bytes; base64 text where compression must have something to
# do), never holes or fallocated space. Read rows: "limit" is fio, one thread. For the page
# cache it is psync (plain pread, iodepth 1: what one thread of the host can do at all); for
# O_DIRECT it is fio's io_uring engine at the same queue depth. qemu-img bench and blkimg bench
# run the same request stream: -S steps through the image by a prime number of 4k blocks (a
# scattered order, all blocks once, the same for both tools; qemu-img bench has no random
# mode), or sequentially with "seq" rows. Write and convert rows compare elapsed times with
# qemu-img's. Columns:
#   limit, qemu-img, blkimg    IOPS (reads, writes) or seconds (convert), best of N [spread]
#   blk/limit                  blkimg's IOPS as a fraction of the limit (reads)
#   blk/qemu                   blkimg's speed over qemu-img's (> 1: blkimg is faster)
#   target                     the issue's target for the row
# Rows whose format the build does not have print "n/a (qcow2 not built)".
set -euo pipefail
cd "$(dirname "$0")/.."

runs=3 mem=/dev/shm disk=/var/tmp size=1G scale=1 blkimg=build/tools/blkimg/blkimg only=.
while [ $# -gt 0 ]; do
  case $1 in
    --runs) runs=$2; shift 2 ;;
    --mem) mem=$2; shift 2 ;;
    --disk) disk=$2; shift 2 ;;
    --size) size=$2; shift 2 ;;
    --quick) scale=5; runs=1; shift ;;
    --blkimg) blkimg=$2; shift 2 ;;
    --only) only=$2; shift 2 ;;
    -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
    *) echo "issue8.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
for tool in qemu-img fio python3 "$blkimg"; do
  command -v "$tool" >/dev/null || { echo "issue8.sh: '$tool' not found" >&2; exit 2; }
done
blkimg=$(realpath "$blkimg")
bytes=$(numfmt --from=iec "${size^^}")
blocks=$((bytes / 4096))
# A prime number of blocks, coprime with any power-of-two image size: -S visits every block.
stride=$((40009 * 4096))

work_mem=$(mktemp -d "$mem/libblock-issue8.XXXXXX")
work_disk=$(mktemp -d "$disk/libblock-issue8.XXXXXX")
trap 'rm -rf "$work_mem" "$work_disk"' EXIT

echo "# $(date -u '+%F %T') UTC, $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)," \
  "kernel $(uname -r), $(qemu-img --version | head -1), $(fio --version)"
echo "# page cache in $mem ($(stat -f -c %T "$mem")), disk rows in $disk ($(stat -f -c %T "$disk"))," \
  "image $size, best of $runs"

raw=$work_mem/raw.img
head -c "$bytes" /dev/urandom >"$raw"

have_qcow2=yes
qcow2=$work_mem/img.qcow2
qemu-img convert -f raw -O qcow2 "$raw" "$qcow2"
if ! "$blkimg" info -f qcow2 "$qcow2" >/dev/null 2>&1; then have_qcow2=no; fi

# ---- measuring --------------------------------------------------------------------------------

# Each measurement prints one number (IOPS or seconds); `best` keeps the best of $runs and the
# spread. The tools of one row run alternately, so that they see the same machine.
declare -A results
measure() {  # KEY HIGHER_IS_BETTER(1|0) COMMAND...
  local key=$1 hib=$2; shift 2
  local v
  v=$("$@") || v=nan
  results[$key]+="$v "
}
best() {  # KEY HIGHER_IS_BETTER -> "best spread%"
  python3 - "$2" ${results[$1]:-} <<'EOF'
import sys
hib = sys.argv[1] == "1"
vals = [float(v) for v in sys.argv[2:] if v not in ("nan", "")]
if not vals:
    print("nan nan")
else:
    b = max(vals) if hib else min(vals)
    w = min(vals) if hib else max(vals)
    print(b, abs(b - w) / b * 100 if b else 0)
EOF
}

# "Run completed in 1.234 seconds." -> IOPS
bench_iops() {  # TOOL COUNT ARGS...
  local tool=$1 count=$2; shift 2
  local secs
  secs=$("$tool" bench -c "$count" "$@" | sed -n 's/^Run completed in \([0-9.]*\) seconds\.$/\1/p')
  awk -v s="$secs" -v n="$count" 'BEGIN { if (s > 0) printf "%.0f\n", n / s; else print "nan" }'
}

fio_iops() {  # FILE RW BS ENGINE DIRECT DEPTH SECONDS
  fio --name=limit --filename="$1" --rw="$2" --bs="$3" --ioengine="$4" --direct="$5" \
      --iodepth="$6" --runtime="$7" --time_based --output-format=json 2>/dev/null |
    python3 -c 'import json, sys
job = json.load(sys.stdin)["jobs"][0]
side = job["read"] if job["read"]["io_bytes"] else job["write"]
print(round(side["iops"]))'
}

seconds() {  # COMMAND... -> elapsed seconds
  local t0 t1
  t0=$(date +%s.%N)
  "$@" >/dev/null 2>&1 || { echo nan; return; }
  t1=$(date +%s.%N)
  awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f\n", b - a }'
}

fmt() {  # VALUE SPREAD UNIT
  python3 - "$@" <<'EOF'
import sys
v, s, unit = sys.argv[1], sys.argv[2], sys.argv[3]
if v == "nan":
    print("-")
elif unit == "iops":
    x = float(v)
    t = "%.0fk" % (x / 1000) if x >= 10000 else "%.1fk" % (x / 1000)
    print("%s [%.0f%%]" % (t, float(s)))
else:
    print("%.2fs [%.0f%%]" % (float(v), float(s)))
EOF
}
ratio() {  # A B -> A/B
  awk -v a="$1" -v b="$2" 'BEGIN { if (a == "nan" || b == "nan" || b == 0) print "-"; else printf "%.2f\n", a / b }'
}

printf '%-44s %14s %14s %14s %9s %9s  %s\n' row limit qemu-img blkimg blk/limit blk/qemu target
row_out() {  # NAME KIND(read|write|time) TARGET
  local name=$1 kind=$2 target=$3 l q b lim_v lim_s q_v q_s b_v b_s
  read -r lim_v lim_s < <(best "$name/limit" 1)
  if [ "$kind" = time ]; then
    read -r q_v q_s < <(best "$name/qemu" 0)
    read -r b_v b_s < <(best "$name/blkimg" 0)
    l=- q=$(fmt "$q_v" "$q_s" s) b=$(fmt "$b_v" "$b_s" s)
    printf '%-44s %14s %14s %14s %9s %9s  %s\n' "$name" "$l" "$q" "$b" - "$(ratio "$q_v" "$b_v")" "$target"
  else
    read -r q_v q_s < <(best "$name/qemu" 1)
    read -r b_v b_s < <(best "$name/blkimg" 1)
    l=$(fmt "$lim_v" "$lim_s" iops) q=$(fmt "$q_v" "$q_s" iops) b=$(fmt "$b_v" "$b_s" iops)
    printf '%-44s %14s %14s %14s %9s %9s  %s\n' "$name" "$l" "$q" "$b" "$(ratio "$b_v" "$lim_v")" \
      "$(ratio "$b_v" "$q_v")" "$target"
  fi
}
na_row() { printf '%-44s %14s %14s %14s %9s %9s  %s\n' "$1" - - "n/a ($2)" - - "$3"; }
wanted() { [[ $1 =~ $only ]]; }

# ---- page-cache reads (tmpfs, cache=writeback) --------------------------------------------------

read_row() {  # NAME FORMAT IMAGE DEPTH ORDER(scattered|seq) TARGET
  local name=$1 fmt_=$2 img=$3 depth=$4 order=$5 target=$6 count qcount step=()
  wanted "$name" || return 0
  if [ "$fmt_" = qcow2 ] && [ $have_qcow2 = no ]; then na_row "$name" "qcow2 not built" "$target"; return; fi
  # A few seconds each: qemu-img is an order of magnitude slower at QD1 here.
  count=$(( (depth == 1 ? 300000 : 600000) / scale ))
  qcount=$(( (depth == 1 ? 45000 : 200000) / scale ))
  [ "$order" = scattered ] && step=(-S "$stride")
  local rw=randread; [ "$order" = seq ] && rw=read
  for _ in $(seq "$runs"); do
    measure "$name/limit" 1 fio_iops "$raw" "$rw" 4k psync 0 1 $((2 > scale ? 2 : 1))
    measure "$name/qemu" 1 bench_iops qemu-img "$qcount" -f "$fmt_" -d "$depth" -s 4k "${step[@]}" \
      -t writeback -i threads "$img"
    measure "$name/blkimg" 1 bench_iops "$blkimg" "$count" -f "$fmt_" -d "$depth" -s 4k "${step[@]}" \
      -t writeback "$img"
  done
  row_out "$name" read "$target"
}

read_row "4k read QD1 raw page cache" raw "$raw" 1 scattered ">=0.50 limit"
read_row "4k read QD32 raw page cache" raw "$raw" 32 scattered ">=0.80 limit, >=1.3x qemu"
read_row "4k read QD32 raw page cache (seq)" raw "$raw" 32 seq "(reference)"
read_row "4k read QD1 qcow2 page cache" qcow2 "$qcow2" 1 scattered ">=0.50 limit"
read_row "4k read QD32 qcow2 page cache" qcow2 "$qcow2" 32 scattered ">=0.80 limit, >=1.3x qemu"

# ---- O_DIRECT reads on the disk -----------------------------------------------------------------

draw=$work_disk/raw.img
if wanted "O_DIRECT"; then
  cp "$raw" "$draw"
  sync "$draw"
fi
direct_row() {  # NAME DEPTH
  local name=$1 depth=$2 count
  wanted "$name" || return 0
  count=$(( (depth == 1 ? 20000 : 100000) / scale ))
  for _ in $(seq "$runs"); do
    measure "$name/limit" 1 fio_iops "$draw" randread 4k io_uring 1 "$depth" 2
    measure "$name/qemu" 1 bench_iops qemu-img "$count" -f raw -d "$depth" -s 4k -S "$stride" \
      -t none -i io_uring "$draw"
    measure "$name/blkimg" 1 bench_iops "$blkimg" "$count" -f raw -d "$depth" -s 4k -S "$stride" \
      -t none -i io_uring "$draw"
  done
  row_out "$name" read ">=0.95 fio"
}
direct_row "4k read QD1 raw O_DIRECT disk" 1
direct_row "4k read QD32 raw O_DIRECT disk" 32
rm -f "$draw"

# ---- writes -------------------------------------------------------------------------------------

# 64k writes at QD32 into a fresh image (every write allocates), page cache.
write_row() {  # NAME FORMAT [BACKING]
  local name=$1 fmt_=$2 backing=${3:-} count target=">=1.3x qemu" img=$work_mem/w.img
  wanted "$name" || return 0
  if [ "$fmt_" = qcow2 ] && [ $have_qcow2 = no ]; then na_row "$name" "qcow2 not built" "$target"; return; fi
  count=$(( 16384 / scale ))  # the whole 1 GiB image once, 64k at a time
  local create=(qemu-img create -q -f "$fmt_")
  [ -n "$backing" ] && create+=(-b "$backing" -F raw)
  for _ in $(seq "$runs"); do
    for tool in qemu blkimg; do
      rm -f "$img"
      "${create[@]}" "$img" "$size"
      if [ $tool = qemu ]; then
        measure "$name/qemu" 1 bench_iops qemu-img "$count" -w -f "$fmt_" -d 32 -s 64k -t writeback -i threads "$img"
      else
        measure "$name/blkimg" 1 bench_iops "$blkimg" "$count" -w -f "$fmt_" -d 32 -s 64k -t writeback "$img"
      fi
    done
  done
  rm -f "$img"
  row_out "$name" write "$target"
}
write_row "64k write QD32 raw allocating" raw
write_row "64k write QD32 qcow2 allocating" qcow2
# 4k writes over a raw backing file: each first write to a 64k cluster copies the rest of it.
backing_row() {
  local name="4k write QD32 qcow2 over raw backing" count target=">=1.3x qemu" img=$work_mem/o.qcow2
  wanted "$name" || return 0
  if [ $have_qcow2 = no ]; then na_row "$name" "qcow2 not built" "$target"; return; fi
  count=$(( 100000 / scale ))
  for _ in $(seq "$runs"); do
    for tool in qemu blkimg; do
      rm -f "$img"
      qemu-img create -q -f qcow2 -b "$raw" -F raw "$img"
      if [ $tool = qemu ]; then
        measure "$name/qemu" 1 bench_iops qemu-img "$count" -w -f qcow2 -d 32 -s 4k -S "$stride" -t writeback -i threads "$img"
      else
        measure "$name/blkimg" 1 bench_iops "$blkimg" "$count" -w -f qcow2 -d 32 -s 4k -S "$stride" -t writeback "$img"
      fi
    done
  done
  rm -f "$img"
  row_out "$name" write "$target"
}
backing_row

# ---- compressed clusters and convert ------------------------------------------------------------

text=$work_mem/text.raw
if wanted "compress|convert"; then
  head -c "$bytes" < <(base64 -w 0 /dev/urandom) >"$text"  # real data that deflate shrinks
fi
if wanted "compressed"; then
  name="64k read QD32 qcow2 compressed clusters"
  if [ $have_qcow2 = no ]; then
    na_row "$name" "qcow2 not built" ">=1.3x qemu"
  else
    qemu-img convert -c -f raw -O qcow2 "$text" "$work_mem/c.qcow2"
    for _ in $(seq "$runs"); do
      measure "$name/qemu" 1 bench_iops qemu-img $((16384 / scale)) -f qcow2 -d 32 -s 64k -t writeback -i threads "$work_mem/c.qcow2"
      measure "$name/blkimg" 1 bench_iops "$blkimg" $((16384 / scale)) -f qcow2 -d 32 -s 64k -t writeback "$work_mem/c.qcow2"
    done
    rm -f "$work_mem/c.qcow2"
    row_out "$name" read ">=1.3x qemu"
  fi
fi

convert_row() {  # NAME SRC SRCFMT DSTFMT [-c] TARGET
  local name=$1 src=$2 sfmt=$3 dfmt=$4 extra=$5 target=$6 out=$work_mem/out.img
  wanted "$name" || return 0
  if { [ "$sfmt" = qcow2 ] || [ "$dfmt" = qcow2 ]; } && [ $have_qcow2 = no ]; then
    na_row "$name" "qcow2 not built" "$target"; return
  fi
  local args=(convert -f "$sfmt" -O "$dfmt" -t writeback -T writeback)
  [ -n "$extra" ] && args+=("$extra")
  for _ in $(seq "$runs"); do
    rm -f "$out"; measure "$name/qemu" 0 seconds qemu-img "${args[@]}" "$src" "$out"
    rm -f "$out"; measure "$name/blkimg" 0 seconds "$blkimg" "${args[@]}" "$src" "$out"
  done
  rm -f "$out"
  row_out "$name" time "$target"
}
if wanted "convert" && [ $have_qcow2 = yes ]; then
  qemu-img convert -f raw -O qcow2 "$text" "$work_mem/text.qcow2"
fi
convert_row "convert raw->raw (reference)" "$text" raw raw "" "(reference)"
convert_row "convert qcow2->raw" "$work_mem/text.qcow2" qcow2 raw "" ">=1.3x qemu"
convert_row "convert raw->qcow2" "$text" raw qcow2 "" ">=1.3x qemu"
convert_row "convert -c raw->qcow2" "$text" raw qcow2 -c ">=2x qemu"

echo "# limit: fio psync (page cache) or io_uring at the same depth (O_DIRECT), one thread;"
echo "# [n%]: spread of the $runs runs; blk/qemu > 1: blkimg faster. Load now: $(cut -d' ' -f1-3 /proc/loadavg)"
