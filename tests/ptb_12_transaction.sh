#!/bin/bash
# Transactions: all elements or none.
. "$(dirname "$0")/lib/tap.sh"
. "$(dirname "$0")/lib/ptb.sh"
need_root
need_cmd dmsetup

tap_plan 21
origin=$(make_loop 16)
meta=$(make_loop 4)
t1=$(make_loop 16) t2=$(make_loop 16) busy=$(make_loop 16)
sz=$(dev_sectors "$origin")
dev=ptb_tx
dm_create $dev "0 $sz ptbackup $origin $meta 128"
dm_create ptb_tx_holder "0 $sz linear $busy 0"
state() { dm_msg $dev bitmap list; dm_msg $dev job list | cut -d" " -f1,4; }

tap_check "a transaction of three elements" dm_msg $dev transaction \
	bitmap add a \; bitmap add b granularity=256K \; \
	backup start j "$t1" sync=full bitmap=a speed=64K
tap_eq "both bitmaps exist" "a b" "$(dm_msg $dev bitmap list | cut -d' ' -f1 | tr '\n' ' ' | sed 's/ $//')"
tap_eq "the job runs on bitmap a" "running busy" \
	"$(ptb_job_field $dev j state) $(dm_msg $dev bitmap list | awk '$1 == "a" { print $5 }')"

before=$(state)
txrefuse() {	# txrefuse DESC TEXT ELEMENTS...
	local desc=$1 text=$2 now
	shift 2
	expect_refused "$desc" "$text" dm_msg $dev transaction "$@" || return
	now=$(state)
	if [ "$now" != "$before" ]; then
		not_ok "$desc: nothing changed"
		tap_diag "before: $before" "after: $now"
	else
		ok "$desc: nothing changed"
	fi
}
txrefuse "a failing last element" "element 1: no bitmap \`nope'" \
	bitmap add c \; bitmap remove nope
txrefuse "a busy bitmap" "element 1: bitmap a is in use" \
	bitmap add c \; bitmap clear a
txrefuse "the same job id twice" "element 1: job x already exists" \
	backup start x "$t2" \; backup start x "$t2"
txrefuse "a message that cannot be in a transaction" "cannot be part of a transaction" \
	bitmap add c \; bitmap list
txrefuse "an element that fails only when applied (busy target)" "undoing the earlier ones" \
	bitmap add c \; bitmap disable b \; backup start y "$busy"

# Clear, merge and remove are undone from copies taken as they are applied.
dd if=/dev/urandom of=/dev/mapper/$dev bs=4k count=1 seek=1000 oflag=direct status=none
dd if=/dev/urandom of=/dev/mapper/$dev bs=4k count=1 seek=3000 oflag=direct status=none
dm_msg $dev bitmap add e disabled
dm_msg $dev bitmap merge b e
before=$(state)
dumps() { dm_msg $dev bitmap dump b; echo; dm_msg $dev bitmap dump e; }
dumps_before=$(dumps)
tap_diag "before: $before"
txrefuse "clear, merge and remove are undone" "undoing the earlier ones" \
	bitmap clear b \; bitmap merge b e \; bitmap clear e \; bitmap remove e \; \
	bitmap remove b \; bitmap add b \; backup start y "$busy"
tap_eq "and the bits are as before" "$dumps_before" "$(dumps)"

# Enabling an enabled bitmap, then failing: it stays enabled.
txrefuse "undo leaves an enabled bitmap enabled" "undoing the earlier ones" \
	bitmap enable b \; backup start y "$busy"
# A job on a cleared bitmap is undone before the clear, under the same
# hold (its bitmap hand-over must not wait for it), while fio writes.
fio --output=/dev/null --filename=/dev/mapper/$dev --direct=1 --name=w \
	--ioengine=libaio --iodepth=4 --rw=randwrite --bs=4k --time_based \
	--runtime=30 --offset=8M --size=4M &
fio_pid=$!
sleep 2
dmesg_mark
dm_msg $dev transaction bitmap clear b \; backup start y2 "$t2" sync=incremental bitmap=b \; \
	backup start y "$busy" 2>/dev/null
tap_eq "the job was started, then cancelled by the undo" 1 "$(dmesg_since | grep -c 'job y2 cancelled')"
tap_eq "and is gone" "" "$(dm_msg $dev job list | grep -w y2)"
# fio keeps re-dirtying 8M..12M, so look where it does not write: the
# 256 KiB granule of the 4 KiB block written at 4096000 (block 1000 above)
# must still be dirty, in the same extent as before the transaction.
tap_eq "its bitmap is idle again, not cleared" "idle 3932160 262144" \
	"$(dm_msg $dev bitmap list | awk '$1 == "b" { print $5 }') $(dm_msg $dev bitmap dump b |
		awk '$1 != "next" && $1 <= 4096000 && 4096000 < $1 + $2 { print $1, $2 }')"
kill $fio_pid; wait $fio_pid 2>/dev/null
tap_done
