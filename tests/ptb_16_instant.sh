#!/bin/bash
# The point in time with writes in flight.  Eight threads of stamp.py keep
# overwriting 4 KiB blocks of the device with O_DIRECT, each block stamped
# with (block, sequence); `backup start' comes from the writer itself between
# T0 and T1, so the hold-and-drain of a start runs with writes in flight and
# more writes held behind it.  After the job, every block of the target must
# hold a value the block had at one instant between T0 and T1: a write that
# completed before T0 is in, a write submitted after T1 is out, a write in
# flight in between may be either, a torn block never is, and one instant
# must fit every block at once.  Two rounds: 64 KiB chunks with a quarter of
# the device written (every 4th 64 KiB group, so copy-before-write cannot
# finish the job before the writes stop), and 4 KiB chunks with all of it.
. "$(dirname "$0")/lib/tap.sh"
. "$(dirname "$0")/lib/ptb.sh"
need_root
need_cmd dmsetup python3

LIB=$(cd "$(dirname "$0")/lib" && pwd -P)
stamp() { python3 "$LIB/stamp.py" "$@"; }
MB=32		# 8192 blocks of 4 KiB
WARMUP=2	# seconds of writes before `backup start'
AFTER=2		# seconds of writes after it returned
SPEED=1M	# slow enough that the job outlives the writes

kv() {	# kv KEY TEXT: the value of KEY=... in TEXT
	sed -n "s/.*\<$1=\([^ ]*\).*/\1/p" <<< "$2" | head -n1
}

# one_round NAME CHUNK_SECTORS EVERY
one_round() {
	local name=$1 chunk=$2 every=$3 origin target dev=ptb_inst_$1 log out rc state
	local before after failures
	origin=$(make_loop $MB)
	target=$(make_loop $MB)
	log=$(mktemp "${TMPDIR:-/tmp}/ptb-stamp.XXXXXX")
	tap_on_exit rm -f "$log"
	stamp init "$origin" > /dev/null
	dm_create "$dev" "0 $(dev_sectors "$origin") ptbackup $origin - $chunk"

	_tap_run stamp write "/dev/mapper/$dev" "$log" --threads 8 \
		--warmup $WARMUP --after $AFTER --every "$every" -- \
		dmsetup message "$dev" 0 backup start full "$target" sync=full speed=$SPEED
	tap_diag "$name: writer: $TAP_OUT"
	if [ "$TAP_RC" = 0 ]; then
		ok "$name: writes and backup start succeed"
	else
		not_ok "$name: writes and backup start succeed"
	fi
	state=$(ptb_job_field "$dev" full state)
	tap_diag "$name: when the writes stopped: $state," \
		"$(ptb_job_field "$dev" full "done") of $(ptb_job_field "$dev" full total) bytes copied"
	tap_eq "$name: the job outlived the writes" running "$state"
	dm_msg "$dev" job set_speed full 0
	tap_check "$name: job completes" ptb_wait_state "$dev" full completed 120

	out=$(stamp check "$log" "$target" 2>&1)
	rc=$?
	tap_diag "$name: target: $out"
	if [ $rc = 0 ]; then
		ok "$name: the target holds the device at one instant between T0 and T1"
	else
		not_ok "$name: the target holds the device at one instant between T0 and T1"
	fi
	before=$(kv before_t0 "$out")
	after=$(kv after_t1 "$out")
	if [ "${before:-0}" -gt 0 ] && [ "${after:-0}" -gt 0 ]; then
		ok "$name: writes completed before T0 ($before) and were submitted after T1 ($after)"
	else
		not_ok "$name: writes completed before T0 (${before:-?}) and were submitted after T1 (${after:-?})"
	fi

	# The checker can fail: the origin holds every block's last write, later
	# than the instant wherever a block was written after T1.
	out=$(stamp check "$log" "$origin" 2>&1)
	rc=$?
	failures=$(kv failures "$out")
	tap_diag "$name: origin: $(head -n1 <<< "$out")"
	if [ $rc = 1 ] && [ "${failures:-0}" -gt 0 ] && [ "$(kv final_mismatch "$out")" = 0 ]; then
		ok "$name: the origin holds every last write, and the checker rejects it as the instant"
	else
		not_ok "$name: the origin holds every last write, and the checker rejects it as the instant"
	fi
	dmsetup remove "$dev"
}

tap_plan 12
one_round chunk64k 128 4
one_round chunk4k 8 1
tap_done
