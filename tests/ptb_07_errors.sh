#!/bin/bash
# Error policies: on_target_error, on_source_error and on_cbw_error, with
# errors injected by swapping dm-error tables under the target or origin.
. "$(dirname "$0")/lib/tap.sh"
. "$(dirname "$0")/lib/ptb.sh"
need_root
need_cmd dmsetup

tap_plan 21
mapfile -t devs < <(make_brd 2 16)
origin=${devs[0]} tdisk=${devs[1]}
fill_random "$origin"
sz=$(dev_sectors "$origin")
dm_create ptb_src "0 $sz linear $origin 0"
dm_create ptb_tgt "0 $sz linear $tdisk 0"
dm_create ptb_e "0 $sz ptbackup /dev/mapper/ptb_src - 128"
dev=ptb_e tgt=/dev/mapper/ptb_tgt
want=$(sha_dev /dev/mapper/$dev)

swap() {	# swap DEV TABLE
	dmsetup reload "$1" --table "$2" && dmsetup suspend "$1" && dmsetup resume "$1"
}
tgt_ok() { swap ptb_tgt "0 $sz linear $tdisk 0"; }
tgt_bad() { swap ptb_tgt "0 $sz error"; }
fresh() {	# fresh ID: dismiss a finished job ID
	dm_msg $dev job dismiss "$1"
}

# report (the default): the job fails and says where.
tgt_bad
dm_msg $dev backup start r "$tgt"
tap_check "target error: job fails" ptb_wait_state $dev r failed 60
tap_eq "last error names the target" "target:-5" "$(ptb_job_field $dev r error)"
tap_check "target released after failure" dm_msg $dev backup start r2 "$tgt" sync=none
dm_msg $dev job cancel r2; fresh r; fresh r2

# stop: the job pauses; resume after the fault is repaired completes it.
tgt_ok
dm_msg $dev backup start s "$tgt" on_target_error=stop speed=2M
sleep 2
tgt_bad
tap_check "stop: job pauses on a target error" ptb_wait_state $dev s paused 60
tap_eq "stop: error recorded" "target:-5" "$(ptb_job_field $dev s error)"
tgt_ok
dm_msg $dev job set_speed s 0
tap_check "stop: resume" dm_msg $dev job resume s
tap_check "stop: job completes" ptb_wait_state $dev s completed 60
tap_eq "stop: backup is correct" "$want" "$(sha_dev "$tdisk")"
fresh s

# ignore: the job keeps retrying and completes once the target is back.
dd if=/dev/zero of="$tdisk" bs=1M oflag=direct status=none 2>/dev/null
# At 1 MiB/s the 16 MiB take 16 s: far more than the 2 s (and the slow
# swaps of the debug kernel) before the state is read.
dm_msg $dev backup start i "$tgt" on_target_error=ignore speed=1M
sleep 1
tgt_bad
sleep 1
tap_eq "ignore: job keeps running" running "$(ptb_job_field $dev i state)"
tgt_ok
dm_msg $dev job set_speed i 0
tap_check "ignore: job completes" ptb_wait_state $dev i completed 60
tap_eq "ignore: backup is correct" "$want" "$(sha_dev "$tdisk")"
fresh i

# Source errors: a bad stretch in the origin fails the job (report).
swap ptb_src "0 8192 linear $origin 0
8192 128 error
8320 $((sz - 8320)) linear $origin 8320"
dm_msg $dev backup start src "$tgt"
tap_check "source error: job fails" ptb_wait_state $dev src failed 60
tap_eq "last error names the source" "source:-5" "$(ptb_job_field $dev src error)"
fresh src
swap ptb_src "0 $sz linear $origin 0"

# Copy-before-write errors.
tgt_bad
dm_msg $dev backup start b "$tgt" sync=none
tap_check "break-snapshot: the user's write succeeds" \
	dd if=/dev/zero of=/dev/mapper/$dev bs=64k count=1 seek=5 oflag=direct status=none
tap_eq "break-snapshot: the job fails" failed "$(ptb_job_field $dev b state)"
tap_eq "break-snapshot: error names cbw" "cbw:-5" "$(ptb_job_field $dev b error)"
fresh b

dm_msg $dev backup start g "$tgt" sync=none on_cbw_error=break-guest-write
tap_expect_fail "break-guest-write: the user's write fails" \
	dd if=/dev/zero of=/dev/mapper/$dev bs=64k count=1 seek=6 oflag=direct status=none
tap_eq "break-guest-write: the job keeps running" running "$(ptb_job_field $dev g state)"
tap_eq "break-guest-write: error names cbw" "cbw:-5" "$(ptb_job_field $dev g error)"
tgt_ok
dd if=/dev/mapper/$dev of=/tmp/old6 bs=64k count=1 skip=6 iflag=direct status=none
tap_check "break-guest-write: the write succeeds once the target is back" \
	dd if=/dev/zero of=/dev/mapper/$dev bs=64k count=1 seek=6 oflag=direct status=none
tap_eq "break-guest-write: old data reached the target" "$(sha256sum < /tmp/old6)" \
	"$(dd if="$tdisk" bs=64k count=1 skip=6 iflag=direct status=none | sha256sum)"
dm_msg $dev job cancel g
tap_done
