#!/bin/bash
# Integrity: a full backup taken while fio writes and discards at random
# equals the device's image at the point in time, for two chunk sizes and a
# device whose size is not a multiple of the chunk size.
. "$(dirname "$0")/lib/tap.sh"
. "$(dirname "$0")/lib/ptb.sh"
need_root
need_cmd dmsetup fio

# wait_for_writes DEV: poll (60 s) until the device has completed writes.
wait_for_writes() {
	local stat i
	stat=/sys/block/dm-$(dmsetup info -c --noheadings -o minor "$1" | tr -d ' ')/stat
	for ((i = 0; i < 600; i++)); do
		[ "$(awk '{ print $5 }' "$stat")" -gt 0 ] 2>/dev/null && return 0
		sleep 0.1
	done
	return 1
}

stop_fio() {
	kill $FIO_PID 2>/dev/null
	wait $FIO_PID 2>/dev/null
}

# one_run NAME CHUNK ORIGIN_MB LEN_SECTORS HOW
#   HOW=suspend: fio runs before the start; the point in time is taken with
#                the device suspended (start message on a suspended device)
#   HOW=quiet:   the start message comes before fio does
one_run() {
	local name=$1 chunk=$2 mb=$3 len=$4 how=$5
	local origin target dev=ptb_i_$1 want got writes
	origin=$(make_loop "$mb")
	target=$(make_loop "$mb")
	fill_random "$origin"
	dm_create $dev "0 $len ptbackup $origin - $chunk"
	if [ "$how" = suspend ]; then
		start_fio /dev/mapper/$dev
		dmsetup suspend $dev
		want=$(sha_sectors "$origin" "$len")
		dm_msg $dev backup start full "$target" sync=full speed=6M
		dmsetup resume $dev
	else
		want=$(sha_sectors "$origin" "$len")
		# Slowly until fio's first writes are done: on a loaded machine
		# fio may start after a 6M/s job has already ended.
		dm_msg $dev backup start full "$target" sync=full speed=64K
		start_fio /dev/mapper/$dev
		wait_for_writes $dev || tap_diag "fio wrote nothing in 60 s"
		dm_msg $dev job set_speed full 6M
	fi
	if ! kill -0 $FIO_PID 2>/dev/null; then
		tap_diag "fio died early"
	fi
	tap_check "$name: job completes" ptb_wait_state $dev full completed 300
	kill -0 $FIO_PID 2>/dev/null
	tap_eq "$name: fio ran for the whole job" 0 $?
	stop_fio
	got=$(sha_sectors "$target" "$len")
	tap_eq "$name: backup equals the point-in-time image" "$want" "$got"
	writes=$(sha_sectors "$origin" "$len")
	if [ "$writes" = "$want" ]; then
		not_ok "$name: the workload changed the device"
	else
		ok "$name: the workload changed the device"
	fi
	# A completed full job has copied the whole device once: total and done
	# are both its size in bytes, as the table gave it (len sectors).
	tap_eq "$name: job total = done = device size" "$((len * 512)) $((len * 512))" \
		"$(ptb_job_field $dev full total) $(ptb_job_field $dev full done)"
	dmsetup remove $dev
}

tap_plan 15
one_run chunk64k-suspend 128 48 $((48 * 2048)) suspend
one_run chunk4k-quiet 8 24 $((24 * 2048)) quiet
# 40 MiB less 7 sectors: the last 64 KiB chunk is partial.
one_run oddsize-suspend 128 40 $((40 * 2048 - 7)) suspend
tap_done
