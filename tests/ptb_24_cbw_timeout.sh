#!/bin/bash
# cbw_timeout=<seconds> on `backup start': a copy-before-write that takes
# longer counts as failed and on_cbw_error applies, so a slow store does
# not stall the protected device.  The store is a dm-delay device whose
# writes take 5 s; the timeout is 1 s.  A job without the timeout is the
# control: its write waits for the slow store and succeeds.  Writes that a
# timeout lets go after the job failed go at once, not when the store is
# done; a copy still waiting for a slot buffer at its timeout is withdrawn.
. "$(dirname "$0")/lib/tap.sh"
. "$(dirname "$0")/lib/ptb.sh"
need_root
need_cmd dmsetup
need_module dm-delay

tap_plan 22
mapfile -t devs < <(make_brd 3 16)
origin=${devs[0]} base=${devs[1]} ref=${devs[2]}
fill_random "$origin"
sz=$(dev_sectors "$origin")
CH=65536
dm_create ptb_t "0 $sz ptbackup $origin - 128"
dm_create ptb_td "0 $sz delay $base 0 0 $base 0 5000"
dev=/dev/mapper/ptb_t store=/dev/mapper/ptb_td view=/dev/mapper/ptb_tv
tap_on_exit dmsetup remove --retry ptb_tv

chunk_of() {	# chunk_of DEV N: sha256 of 64 KiB chunk N
	dd if="$1" bs=$CH skip="$2" count=1 iflag=direct status=none 2>/dev/null | sha256sum |
		cut -d' ' -f1
}
write_chunk() {	# write_chunk N: new data over chunk N
	head -c $CH /dev/urandom |
		dd iflag=fullblock of="$dev" bs=$CH seek="$1" count=1 oflag=direct status=none 2>/dev/null
}
job_end() {
	dm_rm ptb_tv
	dm_msg ptb_t job cancel "$1" 2>/dev/null
	dm_msg ptb_t job dismiss "$1"
}

expect_refused "cbw_timeout must be a number" "invalid value \`1s' for cbw_timeout" \
	dm_msg ptb_t backup start x "$store" sync=none cbw_timeout=1s
expect_refused "cbw_timeout has a maximum" "invalid value \`3601' for cbw_timeout" \
	dm_msg ptb_t backup start x "$store" sync=none cbw_timeout=3601

dd if="$origin" of="$ref" bs=1M iflag=direct oflag=direct status=none
dm_msg ptb_t backup start t1 "$store" sync=none cbw_timeout=1 on_cbw_error=break-guest-write
dmsetup create --readonly ptb_tv --table "0 $sz ptbackup-view $dev t1"
tap_eq "job list shows the timeout" 1 "$(ptb_job_info ptb_t t1 cbw_timeout)"
tap_expect_fail "break-guest-write: a write whose copy times out fails" write_chunk 5
tap_eq "the job goes on" running "$(ptb_job_field ptb_t t1 state)"
tap_eq "its error is the timeout" cbw:-110 "$(ptb_job_field ptb_t t1 error)"
sleep 6
tap_check "once the slow copy has landed, a write to its chunk succeeds" write_chunk 5
tap_eq "and the view shows the chunk as at the point in time" \
	"$(chunk_of "$ref" 5)" "$(chunk_of "$view" 5)"
tap_check "the device's data is the write's" test "$(chunk_of "$dev" 5)" != "$(chunk_of "$ref" 5)"
job_end t1

dm_msg ptb_t backup start t2 "$store" sync=none cbw_timeout=1
tap_check "break-snapshot: a write whose copy times out succeeds" write_chunk 9
tap_eq "and the job fails" failed "$(ptb_job_field ptb_t t2 state)"
tap_eq "on the timeout" cbw:-110 "$(ptb_job_field ptb_t t2 error)"
job_end t2

timed_write() {	# timed_write N: milliseconds a write over chunk N took ("fail": failed)
	local t0 r=0
	t0=$(date +%s%N)
	write_chunk "$1" || r=1
	[ $r = 0 ] && echo $((($(date +%s%N) - t0) / 1000000)) || echo fail
}
dm_msg ptb_t backup start t4 "$store" sync=none cbw_timeout=1
timed_write 20 > /tmp/ptb24.a &
sleep 0.5
timed_write 21 > /tmp/ptb24.b &
wait
tap_on_exit rm -f /tmp/ptb24.a /tmp/ptb24.b
a=$(cat /tmp/ptb24.a) b=$(cat /tmp/ptb24.b)
tap_check "break-snapshot: the first write goes on at its timeout, not after the store's 5 s ($a ms)" \
	test "$a" != fail -a "$a" -lt 4000
tap_check "so does a second one, timing out after the job failed ($b ms)" \
	test "$b" != fail -a "$b" -lt 4000
job_end t4

# One slot buffer: the second write's copy waits for it behind the first.
dm_rm ptb_t
dm_create ptb_t "0 $sz ptbackup $origin - 128 2 copy_slots 1"
dm_msg ptb_t backup start t5 "$store" sync=none cbw_timeout=1 on_cbw_error=break-guest-write
write_chunk 30 &
sleep 0.2
tap_expect_fail "one slot, break-guest-write: the queued copy's write fails at its timeout" \
	write_chunk 31
wait
# Had it stayed queued, it would have been saved by second 11.
sleep 12
tap_eq "the queued copy was withdrawn: only the first chunk was saved" 1 \
	"$(ptb_job_info ptb_t t5 saved)"
tap_eq "the job goes on" running "$(ptb_job_field ptb_t t5 state)"
job_end t5

dm_msg ptb_t backup start t3 "$store" sync=none on_cbw_error=break-guest-write
tap_eq "no timeout by default" 0 "$(ptb_job_info ptb_t t3 cbw_timeout)"
tap_check "control, no timeout: the write waits for the slow store and succeeds" write_chunk 12
tap_eq "the job runs" running "$(ptb_job_field ptb_t t3 state)"
tap_eq "without error" - "$(ptb_job_field ptb_t t3 error)"
job_end t3
tap_check "the device is removed" dmsetup remove ptb_t
tap_done
