#!/bin/bash
# In-guest benchmark (`make bench'): dm-ptbackup against dm-linear, dm-era,
# dm-snapshot and dd, every configuration on the same brd ram disks in one
# run, every figure a ratio to its baseline measured in that run.
#
#   write path    4 KiB random writes (IOPS, p50/p99 latency) at iodepth 16
#                 and 1, 1 MiB sequential writes; baseline dm-linear, and
#                 for a mirror job dm-raid1 over the same two ram disks
#   cbw           first writes to never-copied chunks right after the point
#                 in time; baseline a fresh dm-snapshot with 64 KiB chunks
#   backup        full backup of an idle origin against dd, incremental
#                 backups of 1, 10 and 50% scattered dirty chunks against
#                 that fraction of the full backup's time plus 5% of it
#   memory        kernel memory per TiB of origin: a bitmap per granularity
#                 and a job, computed and measured (slab + vmalloc)
#
# Under -icount (the default of `make bench') the guest clock counts
# instructions: figures are exact path lengths, one round is enough.  With
# BENCH_ICOUNT=0 the guest runs on two CPUs in wall-clock time: each figure
# is the median of BENCH_ROUNDS interleaved rounds, with its spread.
#   BENCH_SECS=8  BENCH_MB=512  BENCH_ROUNDS=1  BENCH_JOBS=1  BENCH_OUT=/out
#   BENCH_PARTS="write cbw backup memory"  BENCH_CONFIGS="linear ... sync-full"
#   (a subset, to compare two builds quickly)
set -u
export DM_DISABLE_UDEV=1
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
secs=${BENCH_SECS:-8}
mb=${BENCH_MB:-512}
rounds=${BENCH_ROUNDS:-1}
jobs=${BENCH_JOBS:-1}
out=${BENCH_OUT:-/out}
rec=/tmp/bench-records.tsv
: > "$rec"

die() { echo "bench: $*" >&2; exit 1; }
modprobe brd rd_nr=5 rd_size=$((mb * 1024)) max_part=0 || die "cannot load brd"
for m in dm-era dm-snapshot dm-zero dm-mirror dm-ptbackup; do
	modprobe "$m" || die "cannot load $m"
done
O=/dev/ram0 M=/dev/ram1 T=/dev/ram3
sz=$(blockdev --getsz $O)
chunks=$((sz / 128))
# dm-snapshot's exception store: two ram disks, so that copying every
# chunk of the origin (and the store's own metadata) never overflows it.
dmsetup create bench-store --table "0 $sz linear /dev/ram2 0
$sz $sz linear /dev/ram4 0" || die "cannot create the snapshot store"
S=/dev/mapper/bench-store

record() {	# record GROUP CONFIG METRIC VALUE
	printf '%s\t%s\t%s\t%s\n' "$@" >> "$rec"
}
now_ns() { date +%s%N; }
zero_dev() { dd if=/dev/zero of="$1" bs=1M count="${2:-64}" oflag=direct status=none; }
dm_rm() { dmsetup remove "$@" 2>/dev/null; }

# fio_write DEV RW BS DEPTH [FIO-ARGS...] -> "IOPS P50_US P99_US KIB/S"
fio_write() {
	local dev=$1 rw=$2 bs=$3 depth=$4
	shift 4
	fio --output-format=json --name=b --filename="$dev" --direct=1 \
		--ioengine=libaio --iodepth="$depth" --rw="$rw" --bs="$bs" \
		--numjobs="$jobs" --group_reporting "$@" 2>/dev/null |
		python3 "$here/fio_stats.py"
}

timed_fio() {	# timed_fio DEV RW BS DEPTH
	fio_write "$@" --time_based --runtime="$secs" --norandommap --randrepeat=0
}

#----------------------------------------------------------------------
# Write path.  Each measurement gets a fresh device (and a fresh snapshot
# or job), so every configuration starts from the same state.

setup_linear() { dmsetup create bench --table "0 $sz linear $O 0"; }
setup_era() { zero_dev $M; dmsetup create bench --table "0 $sz era $M $O 128"; }
setup_snapshot() {	# setup_snapshot CHUNK-SECTORS
	zero_dev $S
	dmsetup create bench-snap --table "0 $sz snapshot $O $S P $1" &&
		dmsetup create bench --table "0 $sz snapshot-origin $O"
}
setup_snapshot_4k() { setup_snapshot 8; }
setup_snapshot_64k() { setup_snapshot 128; }
setup_ptbackup() { dmsetup create bench --table "0 $sz ptbackup $O - 128"; }
setup_bitmap() {
	zero_dev $M
	dmsetup create bench --table "0 $sz ptbackup $O $M 128" &&
		dmsetup message bench 0 bitmap add b
}
setup_sync_none() {
	setup_ptbackup && dmsetup message bench 0 backup start j $T sync=none
}
setup_sync_full() {
	setup_ptbackup && dmsetup message bench 0 backup start j $T
}
# Two-way mirrors of the origin onto T: dm-raid1 (core log, no initial
# resync) and a ptbackup mirror job that starts ready (sync=none).
setup_raid1() { dmsetup create bench --table "0 $sz mirror core 2 128 nosync 2 $O 0 $T 0"; }
setup_mirror() {
	setup_ptbackup && dmsetup message bench 0 mirror start j $T sync=none
}
teardown() { dm_rm bench; dm_rm bench-snap; }

job_done() {	# job_done -> bytes copied by job j of device bench
	dmsetup status bench | awk '{ for (i = 1; i <= NF; i++) if ($i == "j") { print $(i + 4); exit } }'
}

# measure CONFIG NAME RW BS DEPTH
measure() {
	local config=$1 name=$2 rw=$3 bs=$4 depth=$5 t0 d0 d1 r
	"setup_${config//-/_}" >/dev/null || { echo "# $config: setup failed"; teardown; return; }
	[ "$config" = sync-full ] && { d0=$(job_done); t0=$(now_ns); }
	read -r iops p50 p99 kib < <(timed_fio /dev/mapper/bench "$rw" "$bs" "$depth")
	if [ "$config" = sync-full ]; then
		d1=$(job_done)
		r=$(( (d1 - d0) * 1000000000 / 1024 / ($(now_ns) - t0) ))
		record write "$config" "${name}_job_kib_s" "$r"
	fi
	teardown
	record write "$config" "${name}_iops" "${iops:-0}"
	record write "$config" "${name}_p50_us" "${p50:-0}"
	record write "$config" "${name}_p99_us" "${p99:-0}"
	record write "$config" "${name}_kib_s" "${kib:-0}"
}

read -ra write_configs <<< "${BENCH_CONFIGS:-linear era snapshot-4k snapshot-64k ptbackup bitmap sync-none sync-full raid1 mirror}"
parts=" ${BENCH_PARTS:-write cbw backup memory} "
part() { [[ $parts == *" $1 "* ]]; }

#----------------------------------------------------------------------
# Copy-before-write right after the point in time: 4 KiB writes aligned to
# 64 KiB chunks, most of them on chunks not copied yet.

cbw_fio() {
	fio_write /dev/mapper/bench randwrite 4k 16 --blockalign=64k \
		--number_ios=4096 --norandommap --randrepeat=1
}

measure_cbw() {	# measure_cbw CONFIG
	"setup_${1//-/_}" >/dev/null || { echo "# cbw $1: setup failed"; teardown; return; }
	read -r iops _ < <(cbw_fio)
	teardown
	record cbw "$1" iops "${iops:-0}"
}

#----------------------------------------------------------------------
# Backup times.  The origin holds random data.

wait_job() {	# wait_job JOB: until it has ended; prints its state
	local ev st
	for ((;;)); do
		ev=$(dmsetup info -c --noheadings -o events bench)
		st=$(dmsetup status bench | awk -v j="$1" '{ for (i = 1; i <= NF; i++) if ($i == j) { print $(i + 3); exit } }')
		case $st in completed|failed|cancelled|"") echo "$st"; return ;; esac
		dmsetup wait bench "$ev" >/dev/null 2>&1
	done
}

# klog_ns PATTERN: the kernel log timestamp of the last line matching it.
klog_ns() {
	dmesg | grep -F -- "$1" | tail -n 1 |
		sed -n 's/^\[ *\([0-9]*\)\.\([0-9]*\)\].*/\1 \2/p' |
		awk '{ printf "%.0f\n", $1 * 1000000000 + $2 * 1000 }'
}

# klog_follow: a dmesg process printing new kernel messages to coprocess
# KLOG, blocked in the kernel once this returns.
klog_follow() {
	local wchan=0 i
	coproc KLOG { exec dmesg --follow-new; }
	# wchan is 0 while the process runs, the name of its wait once it sleeps.
	for ((i = 0; i < 50; i++)); do
		sleep 0.1
		read -r wchan < "/proc/$KLOG_PID/wchan" || break
		[ "$wchan" != 0 ] && break
	done
}

# time_job JOB ARGS... -> nanoseconds from the job's start to its
# completion, as the kernel logged them.  No process starts while the job
# runs: the guest has one CPU, and under TCG a process start-up takes
# milliseconds of it (a loop of dmsetup status and dmsetup wait took 45 ms
# of a 121 ms incremental backup).  The shell blocks on the kernel log
# instead, read by a dmesg started before the job, until the job's next
# message (its end).
time_job() {
	local st t0 t1 line
	klog_follow
	dmsetup message bench 0 backup start "$@" || { kill "$KLOG_PID"; echo 0; return; }
	while read -r -t 600 -u "${KLOG[0]}" line; do
		[[ $line == *": job $1"* && $line != *": job $1: backup of"* ]] && break
	done
	kill "$KLOG_PID"
	wait "$KLOG_PID" 2>/dev/null
	st=$(wait_job "$1")
	[ "$st" = completed ] || echo "# job $1 ended $st" >&2
	t0=$(klog_ns ": job $1: backup of")
	t1=$(klog_ns ": job $1 completed")
	echo $((${t1:-0} - ${t0:-0}))
	dmsetup message bench 0 job dismiss "$1"
}

# dd_ns ARGS...: dd's own measure of its copy, in nanoseconds.
dd_ns() {
	dd "$@" 2>&1 | awk '/copied/ { for (i = 1; i <= NF; i++) if ($i == "s," || $i == "s") { printf "%.0f\n", $(i - 1) * 1e9; exit } }'
}

measure_backups() {
	local pct n
	# A ram disk allocates its pages on their first write: the target gets
	# them before dd and the jobs write it.
	zero_dev $T $((sz / 2048))
	record backup dd full_ns "$(dd_ns if=$O of=$T bs=1M iflag=direct oflag=direct)"

	zero_dev $M
	dmsetup create bench --table "0 $sz ptbackup $O $M 128" || return
	dmsetup message bench 0 bitmap add b
	record backup ptbackup full_ns "$(time_job f $T bitmap=b)"
	for pct in 1 10 50; do
		n=$((chunks * pct / 100))
		fio_write /dev/mapper/bench randwrite 64k 16 --number_ios="$n" \
			--randrepeat=1 >/dev/null
		record backup ptbackup "inc${pct}_ns" \
			"$(time_job "i$pct" $T sync=incremental bitmap=b)"
	done
	teardown
}

#----------------------------------------------------------------------
# Memory per TiB: a ptbackup device over a 1 TiB dm-zero origin.

kmem_kib() { awk '/^Slab:|^VmallocUsed:/ { s += $2 } END { print s }' /proc/meminfo; }

measure_memory() {
	local tib=$((1 << 31)) before g
	dmsetup create bench-zo --table "0 $tib zero" &&
		dmsetup create bench-zt --table "0 $tib zero" &&
		dmsetup create bench --table "0 $tib ptbackup /dev/mapper/bench-zo - 128" ||
		{ echo "# memory: setup failed"; dm_rm bench bench-zo bench-zt; return; }
	for g in 64K 1M; do
		sync; before=$(kmem_kib)
		dmsetup message bench 0 bitmap add "g$g" granularity=$g transient
		record memory "bitmap-$g" measured_kib $(($(kmem_kib) - before))
		dmsetup message bench 0 bitmap remove "g$g"
	done
	record memory bitmap-64K computed_kib $(((1 << 40) / 65536 / 8 / 1024))
	record memory bitmap-1M computed_kib $(((1 << 40) / 1048576 / 8 / 1024))
	sync; before=$(kmem_kib)
	dmsetup message bench 0 backup start j /dev/mapper/bench-zt sync=none
	record memory job measured_kib $(($(kmem_kib) - before))
	# The done map (a bit per 64 KiB chunk) and 16 chunk buffers.
	record memory job computed_kib $(((1 << 40) / 65536 / 8 / 1024 + 16 * 64 + (8192 + 4096 * 48) / 1024))
	dmsetup message bench 0 job cancel j
	dm_rm bench bench-zo bench-zt
}

#----------------------------------------------------------------------

head -c "$((mb * 1024 * 1024))" /dev/urandom |
	dd of=$O bs=1M iflag=fullblock oflag=direct status=none
for ((round = 0; round < rounds; round++)); do
	part write && for c in "${write_configs[@]}"; do
		measure "$c" rand4k_qd16 randwrite 4k 16
		measure "$c" rand4k_qd1 randwrite 4k 1
		measure "$c" seq1m write 1M 16
	done
	if part cbw; then
		measure_cbw snapshot-64k
		measure_cbw sync-none
	fi
	part backup && measure_backups
done
part memory && measure_memory
dm_rm bench-store

mkdir -p "$out" 2>/dev/null
python3 "$here/bench_report.py" --icount "${BENCH_ICOUNT:-1}" --rounds "$rounds" \
	--mb "$mb" --secs "$secs" --jobs "$jobs" "$rec" "$out/results.json"
