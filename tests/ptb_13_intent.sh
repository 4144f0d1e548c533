#!/bin/bash
# The write-intent log behind persistent bitmaps: a clean shutdown (remove,
# or suspend) leaves exact bitmaps; after an unclean one exactly the
# regions still in the log are marked dirty, regions idle for a whole
# commit period have left it, and their bits were committed.
. "$(dirname "$0")/lib/tap.sh"
. "$(dirname "$0")/lib/ptb.sh"
need_root
need_cmd dmsetup

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
recreate() {	# recreate: create again; echoes how many unclean-shutdown lines it logged
	dmesg_mark
	dmsetup create ptb_int --table "$table" >&2 || return 1
	dmesg_since | grep -c 'unclean shutdown'
}
dump() { dm_msg ptb_int bitmap dump b | tr '\n' ' ' | sed 's/ $//'; }

dmsetup create ptb_int --table "$table"
tap_on_exit dmsetup remove --retry ptb_int
dm_msg ptb_int bitmap add b

# 1. Clean shutdown by remove: the bitmap is exact.
write4k $((12 * MIB))
dmsetup remove ptb_int
tap_eq "remove is a clean shutdown" 0 "$(recreate)"
tap_eq "and leaves the exact bitmap" "$((12 * MIB)) 65536" "$(dump)"

# 2. Unclean shutdown.  Region 5 is written, then idle for more than two
#    commit periods: it leaves the log, its bit is committed.  Region 1 is
#    being written when the metadata's writes are cut.
write4k $((20 * MIB))
sleep 5
rm -f /tmp/ptb_int.stop
( while [ ! -e /tmp/ptb_int.stop ]; do write4k $((5 * MIB + 8192)); done ) &
writer=$!
sleep 1
cut_metadata
touch /tmp/ptb_int.stop; wait $writer
dmsetup remove ptb_int
restore_metadata
tap_eq "an unclean shutdown is noticed" 1 "$(recreate)"
tap_eq "the region in the log is marked whole, the idle one is exact" \
	"$REGION $REGION $((12 * MIB)) 65536 $((20 * MIB)) 65536" "$(dump)"
tap_eq "one region of 16 was in the log" 1 \
	"$(dmesg_since | grep -c 'unclean shutdown: 1 of 16 intent regions (4096 KiB each)')"

# Replayed: a second start is clean and changes nothing.
dmsetup remove ptb_int
tap_eq "the replayed log is empty" 0 "$(recreate)"
tap_eq "and the bitmap is unchanged" \
	"$REGION $REGION $((12 * MIB)) 65536 $((20 * MIB)) 65536" "$(dump)"

# 3. Suspend is a clean point too: metadata writes lost after it cost nothing.
write4k $((30 * MIB))
dmsetup suspend ptb_int
cut_metadata
dmsetup remove ptb_int
restore_metadata
tap_eq "a suspended device is clean" 0 "$(recreate)"
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
write4k $((36 * MIB))
dmsetup reload ptb_imeta2 --table "0 $msz flakey $meta2 0 0 1000 1 drop_writes" &&
	dmsetup suspend ptb_imeta2 && dmsetup resume ptb_imeta2
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
