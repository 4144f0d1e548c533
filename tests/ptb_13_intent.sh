#!/bin/bash
# The write-intent log behind persistent bitmaps: a clean shutdown (remove,
# or suspend) leaves exact bitmaps; after an unclean one exactly the
# regions still in the log are marked dirty, regions idle for a whole
# commit period have left it, and their bits were committed.
. "$(dirname "$0")/lib/tap.sh"
. "$(dirname "$0")/lib/ptb.sh"
need_root
need_cmd dmsetup fio

MIB=1048576
REGION=$((4 * MIB))	# 64 MiB origin: 16 intent regions of 4 MiB
tap_plan 15
origin=$(make_loop 64)
mdisk=$(make_loop 4)
sz=$(dev_sectors "$origin")
msz=$(dev_sectors "$mdisk")
dm_create ptb_imeta "0 $msz linear $mdisk 0"
table="0 $sz ptbackup $origin /dev/mapper/ptb_imeta 128"
meta_swap() {
	dmsetup reload ptb_imeta --table "$1" && dmsetup suspend ptb_imeta &&
		dmsetup resume ptb_imeta
}
cut_metadata() { meta_swap "0 $msz flakey $mdisk 0 0 1000 1 drop_writes"; }
restore_metadata() { meta_swap "0 $msz linear $mdisk 0"; }
write4k() {	# write4k BYTE-OFFSET
	dd if=/dev/urandom of=/dev/mapper/ptb_int bs=4k count=1 seek=$(($1 / 4096)) \
		oflag=direct conv=notrunc status=none
}
# recreate: create again; UNCLEAN is how many unclean-shutdown lines that
# logged.  Not run in $(...): the dmesg mark must stay set in this shell
# for the dmesg_since checks that follow.
recreate() {
	UNCLEAN="create failed"
	dmesg_mark
	dmsetup create ptb_int --table "$table" >&2 || return 1
	UNCLEAN=$(dmesg_since | grep -c 'unclean shutdown')
}
dump() { dm_msg ptb_int bitmap dump b | tr '\n' ' ' | sed 's/ $//'; }
in_log() {	# in_log META-DEV REGION: is REGION's bit set in the on-disk intent log (block 2)?
	local v
	v=$(dd if="$1" bs=4k skip=2 count=1 iflag=direct status=none |
		od -An -tu1 -j $(($2 / 8)) -N 1 | tr -d ' ')
	[ -n "$v" ] && (( (v >> ($2 % 8)) & 1 ))
}
wait_log() {	# wait_log META-DEV REGION in|out: poll (30 s) until REGION is in/out of the on-disk log
	local i
	for ((i = 0; i < 300; i++)); do
		if in_log "$1" "$2"; then [ "$3" = in ] && return 0
		else [ "$3" = out ] && return 0
		fi
		sleep 0.1
	done
	tap_diag "region $2 still not $3 of the on-disk intent log of $1 after 30 s"
	return 1
}
# hold_region META-DEV BYTE: a writer rewrites the 4 KiB block at BYTE every
# 50 ms, far less than the 1 s a region must be idle to leave the log, until
# release_region.  Returns once the region is in the on-disk log, so a cut
# of the metadata after this keeps it there whatever the machine's speed.
hold_region() {
	fio --output=/dev/null --filename=/dev/mapper/ptb_int --name=hold --direct=1 \
		--ioengine=psync --rw=write --bs=4k --offset="$2" --size=4k --time_based \
		--runtime=300 --rate_iops=20 &
	HOLD=$!
	tap_on_exit kill $HOLD
	wait_log "$1" $(($2 / REGION)) in
}
release_region() { kill $HOLD; wait $HOLD 2>/dev/null; }

dmsetup create ptb_int --table "$table"
tap_on_exit dmsetup remove --retry ptb_int
dm_msg ptb_int bitmap add b

# 1. Clean shutdown by remove: the bitmap is exact.
write4k $((12 * MIB))
dmsetup remove ptb_int
recreate
tap_eq "remove is a clean shutdown" 0 "$UNCLEAN"
tap_eq "and leaves the exact bitmap" "$((12 * MIB)) 65536" "$(dump)"

# 2. Unclean shutdown.  Region 5 is written, then idle until it has left
#    the on-disk log (after one or two commit periods), so its bit is
#    committed.  Region 1 is being written when the metadata's writes are cut.
write4k $((20 * MIB))
wait_log /dev/mapper/ptb_imeta 5 out	# bits are committed before the log shrinks
hold_region /dev/mapper/ptb_imeta $((5 * MIB + 8192))
cut_metadata
release_region
dmsetup remove ptb_int
restore_metadata
recreate
tap_eq "an unclean shutdown is noticed" 1 "$UNCLEAN"
tap_eq "the region in the log is marked whole, the idle one is exact" \
	"$REGION $REGION $((12 * MIB)) 65536 $((20 * MIB)) 65536" "$(dump)"
tap_eq "one region of 16 was in the log" 1 \
	"$(dmesg_since | grep -c 'unclean shutdown: 1 of 16 intent regions (4096 KiB each)')"

# Replayed: a second start is clean and changes nothing.
dmsetup remove ptb_int
recreate
tap_eq "the replayed log is empty" 0 "$UNCLEAN"
tap_eq "and the bitmap is unchanged" \
	"$REGION $REGION $((12 * MIB)) 65536 $((20 * MIB)) 65536" "$(dump)"

# 3. Suspend is a clean point too: metadata writes lost after it cost nothing.
write4k $((30 * MIB))
dmsetup suspend ptb_int
cut_metadata
dmsetup remove ptb_int
restore_metadata
recreate
tap_eq "a suspended device is clean" 0 "$UNCLEAN"
tap_eq "and its bitmap exact" \
	"$REGION $REGION $((12 * MIB)) 65536 $((20 * MIB)) 65536 $((30 * MIB)) 65536" "$(dump)"

# 4. A lost intent write is never silent: the write goes on, tracking is
#    flagged lost.
meta_swap "0 $msz error"
write4k $((40 * MIB))
tap_eq "a failed intent write puts the metadata in fail mode" fail \
	"$(dm_status_field ptb_int 3)"
restore_metadata
dmsetup remove ptb_int

# 5. A reload that attaches metadata (with a log left by a crash) to a live
#    device that already has a transient bitmap.
meta2=$(make_loop 4)
dm_create ptb_imeta2 "0 $msz linear $meta2 0"
dmsetup create ptb_int --table "0 $sz ptbackup $origin /dev/mapper/ptb_imeta2 128"
dm_msg ptb_int bitmap add p
# Region 9 is being written when the metadata's writes are cut.
hold_region /dev/mapper/ptb_imeta2 $((36 * MIB))
dmsetup reload ptb_imeta2 --table "0 $msz flakey $meta2 0 0 1000 1 drop_writes" &&
	dmsetup suspend ptb_imeta2 && dmsetup resume ptb_imeta2
release_region
dmsetup remove ptb_int
dmsetup reload ptb_imeta2 --table "0 $msz linear $meta2 0" &&
	dmsetup suspend ptb_imeta2 && dmsetup resume ptb_imeta2
dmsetup create ptb_int --table "0 $sz ptbackup $origin - 128"
dm_msg ptb_int bitmap add t
write4k $((50 * MIB))
dmesg_mark
dmsetup reload ptb_int --table "0 $sz ptbackup $origin /dev/mapper/ptb_imeta2 128" &&
	dmsetup resume ptb_int
tap_eq "metadata attached by a reload replays its log" 1 \
	"$(dmesg_since | grep -c 'unclean shutdown: 1 of 16')"
tap_eq "the transient bitmap is kept, the persistent one loaded" "t transient p persistent" \
	"$(dm_msg ptb_int bitmap list | awk '{ print $1, $4 }' | tr '\n' ' ' | sed 's/ $//')"
tap_eq "the persistent one has the logged region" "$((9 * REGION)) $REGION" \
	"$(dm_msg ptb_int bitmap dump p | tr '\n' ' ' | sed 's/ $//')"
dmsetup remove ptb_int

# 6. The device grows while its metadata holds no bitmap: a bitmap added
#    afterwards covers the new size.
meta3=$(make_loop 4)
big=$(make_loop 96)
dmsetup create ptb_int --table "0 $sz ptbackup $big $meta3 128"
dmsetup reload ptb_int --table "0 $((sz * 3 / 2)) ptbackup $big $meta3 128" &&
	dmsetup resume ptb_int
dm_msg ptb_int bitmap add g
write4k $((80 * MIB))
tap_eq "a bitmap added after the device grew covers it" "$((80 * MIB)) 65536" \
	"$(dm_msg ptb_int bitmap dump g | tr '\n' ' ' | sed 's/ $//')"
dmsetup remove ptb_int
tap_check "and the grown device is set up again" \
	dmsetup create ptb_int --table "0 $((sz * 3 / 2)) ptbackup $big $meta3 128"
dmsetup remove ptb_int
tap_done
