#!/bin/bash
# cbw_timeout=<seconds> on `backup start': a copy-before-write that takes
# longer counts as failed and on_cbw_error applies, so a slow store does
# not stall the protected device.  The store is a dm-delay device whose
# writes take 5 s; the timeout is 1 s.  A job without the timeout is the
# control: its write waits for the slow store and succeeds.
. "$(dirname "$0")/lib/tap.sh"
. "$(dirname "$0")/lib/ptb.sh"
need_root
need_cmd dmsetup
need_module dm-delay

tap_plan 17
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
		dd of="$dev" bs=$CH seek="$1" count=1 oflag=direct status=none 2>/dev/null
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

dm_msg ptb_t backup start t3 "$store" sync=none on_cbw_error=break-guest-write
tap_eq "no timeout by default" 0 "$(ptb_job_info ptb_t t3 cbw_timeout)"
tap_check "control, no timeout: the write waits for the slow store and succeeds" write_chunk 12
tap_eq "the job runs" running "$(ptb_job_field ptb_t t3 state)"
tap_eq "without error" - "$(ptb_job_field ptb_t t3 error)"
job_end t3
tap_check "the device is removed" dmsetup remove ptb_t
tap_done
