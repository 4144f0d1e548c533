#!/bin/bash
# Table line: every rejection with its message, and what a good table gives.
. "$(dirname "$0")/lib/tap.sh"
. "$(dirname "$0")/lib/ptb.sh"
need_root
need_cmd dmsetup blockdev

tap_plan 25

# Autoloading: the module must not be loaded before the first create.
if [ -d /sys/module/dm_ptbackup ]; then
	rmmod dm_ptbackup 2>/dev/null
fi
mapfile -t devs < <(make_brd 2 16)
origin=${devs[0]} meta=${devs[1]}
sz=$(dev_sectors "$origin")

refuse() {	# refuse DESC TEXT TABLE
	expect_refused "$1" "$2" dmsetup create ptb_bad --table "$3"
	if dmsetup info ptb_bad >/dev/null 2>&1; then
		tap_diag "device ptb_bad was left behind"
		dmsetup remove ptb_bad
	fi
}

refuse "too few arguments" "Requires at least 3 arguments" \
	"0 $sz ptbackup $origin -"
refuse "missing origin" "Error opening origin device" \
	"0 $sz ptbackup /dev/nonexistent - 128"
refuse "device larger than origin" "larger than the origin" \
	"0 $((sz + 8)) ptbackup $origin - 128"
refuse "metadata is the origin" "Metadata device must differ" \
	"0 $sz ptbackup $origin $origin 128"
refuse "missing metadata device" "Error opening metadata device" \
	"0 $sz ptbackup $origin /dev/nonexistent 128"
for c in 0 4 96 4096 abc 128x -128 4294967424; do
	refuse "chunk size '$c' refused" "Invalid chunk size" \
		"0 $sz ptbackup $origin - $c"
done
refuse "bad feature count" "Invalid number of feature arguments" \
	"0 $sz ptbackup $origin - 128 3 copy_slots 4 x"
refuse "unknown feature" "Unrecognised feature argument" \
	"0 $sz ptbackup $origin - 128 1 frobnicate"
refuse "copy_slots 0" "Invalid copy_slots" \
	"0 $sz ptbackup $origin - 128 2 copy_slots 0"
refuse "copy_slots 257" "Invalid copy_slots" \
	"0 $sz ptbackup $origin - 128 2 copy_slots 257"
refuse "copy_slots without value" "Unrecognised feature argument" \
	"0 $sz ptbackup $origin - 128 1 copy_slots"
refuse "trailing garbage" "Unexpected arguments" \
	"0 $sz ptbackup $origin - 128 2 copy_slots 4 extra"
expect_refused "two ptbackup targets in one table" "alone" \
	dmsetup create ptb_bad --table "0 8 ptbackup $origin - 128
8 8 ptbackup $meta - 128"
dmsetup remove ptb_bad >/dev/null 2>&1

tap_check "module autoloads on create" \
	dmsetup create ptb_t --table "0 $sz ptbackup $origin $meta 128 2 copy_slots 4"
tap_on_exit dmsetup remove ptb_t
tap_check "module dm_ptbackup is loaded" test -d /sys/module/dm_ptbackup
tap_eq "status line of an idle device" "128 $((sz / 128)) rw 0 0" "$(status_of ptb_t)"
tap_eq "table line re-emits the arguments" \
	"$(printf '%d:%d' "$(stat -c '0x%t' "$origin")" "$(stat -c '0x%T' "$origin")") $(printf '%d:%d' "$(stat -c '0x%t' "$meta")" "$(stat -c '0x%T' "$meta")") 128 2 copy_slots 4" \
	"$(dmsetup table ptb_t | cut -d' ' -f4-)"

# The device keeps the origin's limits (a loop device: it has discard).
loop=$(make_loop 16)
dm_create ptb_l "0 $(dev_sectors "$loop") ptbackup $loop - 128"
dm=$(dmsetup info -c --noheadings -o blkdevname ptb_l)
o=$(basename "$loop")
lim_ok=1
for q in logical_block_size physical_block_size max_sectors_kb discard_max_bytes \
	 discard_granularity write_zeroes_max_bytes minimum_io_size optimal_io_size; do
	a=$(cat "/sys/block/$o/queue/$q") b=$(cat "/sys/block/$dm/queue/$q")
	if [ "$a" != "$b" ]; then
		tap_diag "queue/$q: origin $a, ptbackup $b"
		lim_ok=0
	fi
done
tap_eq "queue limits equal the origin's" 1 "$lim_ok"

tap_done
