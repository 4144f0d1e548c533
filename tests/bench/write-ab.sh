#!/bin/bash
# SPDX-License-Identifier: GPL-2.0-only
# In-guest A/B of the write path between two builds of dm-ptbackup.ko, on
# two CPUs in wall-clock time (what -icount cannot show: cache-line
# bouncing between CPUs).  Rounds interleave the builds: in each round each
# build is loaded in turn and 4 KiB random writes (BENCH_JOBS fio jobs,
# iodepth 16) run on dm-linear, on an idle ptbackup device and on one with
# a persistent bitmap, all over the same brd ram disk.  Prints the median
# ratio to dm-linear of the same round and its spread, and writes
# $BENCH_OUT/write-ab.json.
#
#   env: AB_A_KO, AB_B_KO (the two .ko files), AB_A_NAME, AB_B_NAME,
#        BENCH_ROUNDS (5), BENCH_SECS (8), BENCH_JOBS (2), BENCH_OUT (/out)
# Run from the host: scripts/bench-ab.sh (README.md, performance.rst).
set -u
export DM_DISABLE_UDEV=1
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
rounds=${BENCH_ROUNDS:-5} secs=${BENCH_SECS:-8} jobs=${BENCH_JOBS:-2}
out=${BENCH_OUT:-/out}
rec=/tmp/ab-records.tsv
: > "$rec"
die() { echo "write-ab: $*" >&2; exit 1; }
for v in AB_A_KO AB_B_KO; do [ -r "${!v:-}" ] || die "$v: no such module file"; done
modprobe brd rd_nr=2 rd_size=$((512 * 1024)) max_part=0 || die "cannot load brd"
modprobe dm-mod && modprobe dm-bufio && modprobe libcrc32c || die "cannot load dm-mod/dm-bufio"
O=/dev/ram0 M=/dev/ram1
sz=$(blockdev --getsz $O)

fio_iops() {
	fio --output-format=json --name=b --filename=/dev/mapper/ab --direct=1 \
		--ioengine=libaio --iodepth=16 --rw=randwrite --bs=4k --numjobs="$jobs" \
		--group_reporting --time_based --runtime="$secs" --norandommap \
		--randrepeat=0 2>/dev/null | python3 "$here/fio_stats.py" | cut -d' ' -f1
}
measure() {	# measure BUILD CONFIG TABLE [BITMAP]
	dd if=/dev/zero of=$M bs=1M count=64 oflag=direct status=none
	dmsetup create ab --table "$3" || die "cannot create $2"
	[ -n "${4:-}" ] && dmsetup message ab 0 bitmap add b
	printf '%s\t%s\t%s\t%s\n' "$r" "$1" "$2" "$(fio_iops)" >> "$rec"
	dmsetup remove ab
}
for ((r = 1; r <= rounds; r++)); do
	for b in A B; do
		ko=AB_${b}_KO
		insmod "${!ko}" || die "cannot load ${!ko}"
		measure "$b" linear "0 $sz linear $O 0"
		measure "$b" ptbackup "0 $sz ptbackup $O - 128"
		measure "$b" bitmap "0 $sz ptbackup $O $M 128" bitmap
		rmmod dm-ptbackup || die "cannot unload dm-ptbackup"
	done
done
python3 - "$rec" "$out/write-ab.json" "${AB_A_NAME:-A}" "${AB_B_NAME:-B}" <<'PY'
import json, statistics, sys
rows = [l.split("\t") for l in open(sys.argv[1]).read().splitlines()]
names = {"A": sys.argv[3], "B": sys.argv[4]}
iops = {}
for r, b, cfg, v in rows:
    iops.setdefault((b, cfg), {})[r] = float(v or 0)
res = []
print(f"{'build':<28} {'config':<10} {'median IOPS':>12} {'ratio':>7} {'spread':>7}")
for b in "AB":
    for cfg in ("linear", "ptbackup", "bitmap"):
        vals = iops[(b, cfg)]
        ratios = [vals[r] / iops[(b, "linear")][r] for r in vals if iops[(b, "linear")][r]]
        med = statistics.median(ratios)
        spread = (max(ratios) - min(ratios)) / med if med else 0
        m_iops = statistics.median(vals.values())
        res.append({"build": names[b], "config": cfg, "median_iops": m_iops,
                    "iops": list(vals.values()), "ratio_to_linear": med,
                    "ratios": ratios, "spread": spread})
        print(f"{names[b]:<28} {cfg:<10} {m_iops:>12.0f} {med:>7.3f} {spread:>7.3f}")
json.dump({"rounds": len(rows) // 6, "results": res}, open(sys.argv[2], "w"), indent=1)
PY
