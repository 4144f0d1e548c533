#!/bin/bash
# Incremental backups: a full backup, then incrementals to the same target
# while fio writes; after each, the target equals the device at that job's
# point in time.  A failed and a cancelled incremental lose no change.
. "$(dirname "$0")/lib/tap.sh"
. "$(dirname "$0")/lib/ptb.sh"
need_root
need_cmd dmsetup fio python3

tap_plan 19
origin=$(make_loop 32)
meta=$(make_loop 4)
tdisk=$(make_loop 32)
fill_random "$origin"
sz=$(dev_sectors "$origin")
dm_create ptb_T "0 $sz linear $tdisk 0"
T=/dev/mapper/ptb_T
dev=ptb_inc
dm_create $dev "0 $sz ptbackup $origin $meta 128"
dm_msg $dev bitmap add inc

fio --output=/dev/null --filename=/dev/mapper/$dev --direct=1 --time_based \
	--runtime=900 --name=w --ioengine=psync --rw=randwrite --bsrange=4k-128k \
	--rate_iops=40 &
FIO=$!
tap_on_exit kill $FIO

img=$(mktemp -d "${TMPDIR:-/tmp}/ptb-inc.XXXXXX")
tap_on_exit rm -rf "$img"
# backup NAME OPTIONS...: start a job at a frozen instant; echo the
# device's checksum at that instant.  Copies of the device and of the
# target as they are at that instant (before the job writes the target) are
# left in $img/dev and $img/tgt.
backup() {
	local name=$1
	shift
	dmsetup suspend $dev
	sha_dev "$origin"
	dd if="$origin" of="$img/dev" bs=1M iflag=direct status=none
	dd if="$T" of="$img/tgt" bs=1M iflag=direct status=none
	dm_msg $dev backup start "$name" "$T" "$@"
	dmsetup resume $dev
}
dirty() { dm_msg $dev bitmap list | awk '$1 == "inc" { print $6 }'; }

want=$(backup full0 sync=full bitmap=inc speed=8M)
tap_check "full backup completes" ptb_wait_state $dev full0 completed 120
tap_eq "full backup is the point-in-time image" "$want" "$(sha_dev "$T")"
dm_msg $dev job dismiss full0

# The target holds the previous job's image (checked), the bitmap the writes
# made since (granularity = chunk = 64 KiB), and every fio write changes
# the chunks it touches (random, scrambled data): so an incremental's total
# must be exactly the 64 KiB chunks where the device at its instant differs
# from the target.
for i in 1 2 3; do
	sleep 2
	want=$(backup "inc$i" sync=incremental bitmap=inc speed=4M)
	total=$(ptb_job_field $dev "inc$i" total)
	changed=$(python3 "$(dirname "$0")/lib/chunks.py" diff "$img/dev" "$img/tgt" 65536 | wc -w)
	tap_eq "incremental $i copies exactly the $changed changed chunks (total $total)" \
		"1 $((changed * 65536))" "$((changed > 0)) $total"
	tap_check "incremental $i completes" ptb_wait_state $dev "inc$i" completed 120
	tap_eq "incremental $i is the point-in-time image" "$want" "$(sha_dev "$T")"
	dm_msg $dev job dismiss "inc$i"
done

# A failed incremental: the target errors half-way.
sleep 2
dmsetup suspend $dev
dm_msg $dev backup start bad "$T" sync=incremental bitmap=inc speed=256K
dmsetup resume $dev
sleep 1
dmsetup reload ptb_T --table "0 $sz error" && dmsetup suspend ptb_T && dmsetup resume ptb_T
tap_check "incremental fails on target errors" ptb_wait_state $dev bad failed 60
dmsetup reload ptb_T --table "0 $sz linear $tdisk 0" && dmsetup suspend ptb_T && dmsetup resume ptb_T
dm_msg $dev job dismiss bad
want=$(backup after_fail sync=incremental bitmap=inc)
tap_check "the next incremental completes" ptb_wait_state $dev after_fail completed 120
tap_eq "and no change was lost" "$want" "$(sha_dev "$T")"
dm_msg $dev job dismiss after_fail

# A cancelled incremental.
sleep 2
dmsetup suspend $dev
dm_msg $dev backup start cxl "$T" sync=incremental bitmap=inc speed=64K
dmsetup resume $dev
sleep 1
tap_check "cancel an incremental" dm_msg $dev job cancel cxl
dm_msg $dev job dismiss cxl
want=$(backup after_cancel sync=incremental bitmap=inc)
tap_check "the next incremental completes" ptb_wait_state $dev after_cancel completed 120
tap_eq "and no change was lost" "$want" "$(sha_dev "$T")"
dm_msg $dev job dismiss after_cancel

# bitmap_mode=never leaves the bitmap as it was (plus new writes).
kill $FIO; wait $FIO 2>/dev/null
dd if=/dev/urandom of=/dev/mapper/$dev bs=64k count=4 seek=7 oflag=direct status=none
before=$(dirty)
dm_msg $dev backup start nv "$T" sync=incremental bitmap=inc bitmap_mode=never
ptb_wait_state $dev nv completed 60
tap_eq "bitmap_mode=never keeps the bits" "$before" "$(dirty)"
dm_msg $dev job dismiss nv
dm_msg $dev backup start os "$T" sync=incremental bitmap=inc
ptb_wait_state $dev os completed 60
tap_eq "on-success clears them" 0 "$(dirty)"
tap_done
