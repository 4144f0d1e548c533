#!/bin/bash
# In-guest benchmark: random 4 KiB write IOPS and sequential 1 MiB write
# throughput of dm-ptbackup against dm-linear, dm-era and dm-snapshot, all
# on brd ram disks in one run.  Under TCG the CPU is the bottleneck: read
# the ratios, not the absolute numbers.  `make bench' runs this on one CPU
# under -icount, where the guest clock counts instructions: every figure is
# then exact and repeatable, and one round is enough.
# Each configuration runs BENCH_ROUNDS times, interleaved with the others,
# and the best run counts, so that a passing disturbance hurts no one.
#   BENCH_SECS=8  BENCH_MB=512  BENCH_ROUNDS=2
set -u
export DM_DISABLE_UDEV=1
secs=${BENCH_SECS:-8}
mb=${BENCH_MB:-512}
rounds=${BENCH_ROUNDS:-2}

modprobe brd rd_nr=4 rd_size=$((mb * 1024)) max_part=0 || exit 1
modprobe dm-era 2>/dev/null
modprobe dm-snapshot 2>/dev/null
sz=$(blockdev --getsz /dev/ram0)
dd if=/dev/zero of=/dev/ram0 bs=1M count=$mb status=none
dd if=/dev/zero of=/dev/ram1 bs=1M count=64 status=none

fio_iops() {	# fio_iops DEV RW BS -> IOPS
	fio --output-format=terse --terse-version=3 --name=b --filename="$1" \
		--direct=1 --ioengine=libaio --iodepth=16 --rw="$2" --bs="$3" \
		--time_based --runtime="$secs" --norandommap --randrepeat=0 |
		awk -F';' '{ print $49 }'
}

declare -A rand seq all
run() {	# run NAME TABLE [SETUP...]
	local name=$1 table=$2
	shift 2
	dmsetup create bench --table "$table" || { echo "# $name: create failed"; return; }
	"$@"
	local r s
	r=$(fio_iops /dev/mapper/bench randwrite 4k)
	s=$(fio_iops /dev/mapper/bench write 1M)
	all[$name]+=" ${r:-0}"
	[ "${r:-0}" -gt "${rand[$name]:-0}" ] && rand[$name]=$r
	[ "${s:-0}" -gt "${seq[$name]:-0}" ] && seq[$name]=$s
	dmsetup remove bench
	dd if=/dev/zero of=/dev/ram1 bs=1M count=64 status=none
}

bitmap() { dmsetup message bench 0 bitmap add b; }
snap() { dmsetup create bench-snap --table "0 $sz snapshot /dev/ram0 /dev/ram2 P 128"; }

names=(linear ptbackup ptbackup+bitmap era snapshot-origin)
for ((round = 0; round < rounds; round++)); do
	run linear "0 $sz linear /dev/ram0 0"
	run ptbackup "0 $sz ptbackup /dev/ram0 - 128"
	run ptbackup+bitmap "0 $sz ptbackup /dev/ram0 /dev/ram1 128" bitmap
	run era "0 $sz era /dev/ram1 /dev/ram0 128"
	dd if=/dev/zero of=/dev/ram2 bs=1M count=64 status=none
	snap
	run snapshot-origin "0 $sz snapshot-origin /dev/ram0"
	dmsetup remove bench-snap 2>/dev/null
done

pct() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.1f", a * 100 / b }'; }
lin=${rand[linear]:-0}
lins=${seq[linear]:-0}
printf '%-18s %12s %8s %14s %8s\n' device "4k-rand-IOPS" "vs-lin" "1M-seq-KiB/s" "vs-lin"
for n in "${names[@]}"; do
	r=${rand[$n]:-0} s=${seq[$n]:-0}
	# terse v3 field 49 is write IOPS; sequential throughput = IOPS * 1 MiB
	printf '%-18s %12s %7s%% %14s %7s%%\n' "$n" "$r" "$(pct "$r" "$lin")" \
		"$((s * 1024))" "$(pct "$s" "$lins")"
done
echo "# 4k random write IOPS of every round (the table shows the best):"
for n in "${names[@]}"; do
	printf '#   %-18s%s\n' "$n" "${all[$n]}"
done
