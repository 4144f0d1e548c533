#!/bin/bash
# The view target (ptbackup-view): a read-only device that shows a running
# job's image at its point in time while fio writes and discards on the
# ptbackup device; writes refused; the job and the device held while the
# view is open; reads fail once the job is cancelled or the device's
# table goes.  The reference is a copy of the idle origin taken before the
# job started, on its own ram disk; random reads compare the two at the
# same offsets (tests/lib/cmpreads.py).
. "$(dirname "$0")/lib/tap.sh"
. "$(dirname "$0")/lib/ptb.sh"
need_root
need_cmd dmsetup
need_cmd fio

tap_plan 23
mapfile -t devs < <(make_brd 4 32)
origin=${devs[0]} store=${devs[1]} ref=${devs[2]} store2=${devs[3]}
fill_random "$origin"
sz=$(dev_sectors "$origin")
dm_create ptb_v "0 $sz ptbackup $origin - 128"
dev=/dev/mapper/ptb_v view=/dev/mapper/ptb_vv
dd if="$origin" of="$ref" bs=1M iflag=direct oflag=direct status=none
want=$(sha_dev "$ref")

view_create() {	# view_create NAME JOB [SECTORS [DEV]]
	dmsetup create --readonly "$1" --table "0 ${3:-$sz} ptbackup-view ${4:-$dev} $2"
}

dm_msg ptb_v backup start pull "$store" sync=none
tap_check "view of a sync=none job created" view_create ptb_vv pull
tap_on_exit dmsetup remove --retry ptb_vv
tap_eq "view status: the job's state" running "$(dm_status_field ptb_vv 1)"
tap_eq "view equals the point in time before any write" "$want" "$(sha_dev "$view")"

start_fio "$dev"
tap_eq "view equals the point in time under writes and trims (1)" "$want" "$(sha_dev "$view")"
tap_eq "random reads of the view under writes equal the point in time" 0 "$(python3 tests/lib/cmpreads.py "$view" "$ref" 2000)"
tap_eq "view equals the point in time under writes and trims (2)" "$want" "$(sha_dev "$view")"
kill $FIO_PID
wait $FIO_PID 2>/dev/null
tap_check "the origin did change" test "$(sha_dev "$origin")" != "$want"
tap_check "copy-before-write saved old data" test "$(ptb_job_field ptb_v pull done)" -gt 0
tap_eq "view equals the point in time after the writes" "$want" "$(sha_dev "$view")"

tap_expect_fail "a write to the read-only view fails" \
	dd if=/dev/zero of="$view" bs=4k count=1 oflag=direct status=none
dmsetup create ptb_vw --table "0 $sz ptbackup-view $dev pull"
expect_refused "a write to a view created read-write is refused by the target" "read-only" \
	dd if=/dev/zero of=/dev/mapper/ptb_vw bs=4k count=1 oflag=direct status=none
dmsetup remove ptb_vw
expect_refused "a view of a job that does not exist is refused" "No job of that name" \
	view_create ptb_vx nosuch
expect_refused "a view of a device that is not ptbackup is refused" "Not a ptbackup device" \
	view_create ptb_vx pull "$sz" "$ref"
expect_refused "a view larger than the image is refused" "larger than the job" \
	view_create ptb_vx pull $((sz + 8))
tap_expect_fail "the ptbackup device cannot be removed while a view is open" \
	dmsetup remove ptb_v
dm_msg ptb_v bitmap add b
dd if=/dev/urandom of="$dev" bs=64k count=1 oflag=direct status=none
dm_msg ptb_v backup start inc "$store2" sync=incremental bitmap=b speed=1
expect_refused "a view of an incremental job is refused" "sync=none or sync=full" \
	view_create ptb_vx inc
dm_msg ptb_v job cancel inc
dm_msg ptb_v job dismiss inc

tap_check "cancel the job with the view open" dm_msg ptb_v job cancel pull
tap_expect_fail "reads of the view fail once the job is cancelled" \
	dd if="$view" of=/dev/null bs=64k count=1 iflag=direct status=none
expect_refused "dismiss refused while the view is open" "remove them first" \
	dm_msg ptb_v job dismiss pull
tap_check "view removed" dmsetup remove ptb_vv
tap_check "then the job is dismissed" dm_msg ptb_v job dismiss pull

# A reload to another target type with a view open: the view's reads fail,
# nothing hangs, the view and the device go.
dm_msg ptb_v backup start pull2 "$store" sync=none
view_create ptb_vv pull2
dmsetup reload ptb_v --table "0 $sz linear $origin 0"
dmsetup suspend ptb_v && dmsetup resume ptb_v
tap_expect_fail "after a reload to linear the view's reads fail" \
	dd if="$view" of=/dev/null bs=64k count=1 iflag=direct status=none
tap_check "then the view and the device are removed" \
	sh -c "dmsetup remove ptb_vv && dmsetup remove ptb_v"
tap_done
