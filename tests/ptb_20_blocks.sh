#!/bin/bash
# Copy-before-write saves the blocks the first write to a chunk covers, not
# the whole chunk, and the rest at the chunk's second write: a sync=none
# target holds exactly the old data of those blocks; no block is saved
# twice;
# past 4096 partly saved chunks a write saves its whole chunk; and a
# sync=full sweep fills in the rest of partly saved chunks without
# overwriting the blocks writes saved.
. "$(dirname "$0")/lib/tap.sh"
. "$(dirname "$0")/lib/ptb.sh"
need_root
need_cmd dmsetup fio

tap_plan 18

mapfile -t devs < <(make_brd 2 48)
origin=${devs[0]} target=${devs[1]}
fill_random "$origin"
dm=/dev/mapper

zero_target() {
	dd if=/dev/zero of="$target" bs=1M count=48 oflag=direct status=none
}
wr4k() {	# wr4k DEV BLOCK [COUNT]: write COUNT 4 KiB blocks in one write
	head -c $((4096 * ${3:-1})) /dev/urandom |
		dd iflag=fullblock of="$1" bs=$((4096 * ${3:-1})) count=1 seek=$(($2 * 4096)) \
			oflag=direct,seek_bytes iflag=fullblock status=none
}
# The 4 KiB blocks where the target holds the origin's old data (the
# target starts zeroed and the origin's data is random).
saved_blocks() {	# saved_blocks OLD_IMAGE BYTES
	python3 "$(dirname "$0")/lib/chunks.py" same "$1" "$target" 4096 "$2"
}

# --- 1: 64 KiB chunks, 16 blocks each; sync=none keeps what it saved -----
zero_target
dd if="$origin" of=/tmp/old1 bs=1M count=16 iflag=direct status=none
dm_create ptb_b "0 32768 ptbackup $origin - 128"
tap_check "sync=none job starts" dm_msg ptb_b backup start n "$target" sync=none
wr4k $dm/ptb_b $((10 * 16 + 5))
tap_eq "a first 4 KiB write to a chunk saves 4 KiB" 4096 "$(ptb_job_field ptb_b n done)"
# A second write to chunk 10 (512 bytes inside block 7) saves the rest of
# it: 15 blocks, not block 5 again.
head -c 512 /dev/urandom | dd iflag=fullblock of=$dm/ptb_b bs=512 seek=$(((10 * 16 + 7) * 8 + 3)) \
	oflag=direct status=none
tap_eq "a second write to a partly saved chunk saves the rest of it" 65536 \
	"$(ptb_job_field ptb_b n done)"
wr4k $dm/ptb_b $((10 * 16 + 5))
tap_eq "a chunk saved once is not saved again" 65536 "$(ptb_job_field ptb_b n done)"
# 512 bytes inside block 7 of chunk 12, its first write: one 4 KiB block.
head -c 512 /dev/urandom | dd iflag=fullblock of=$dm/ptb_b bs=512 seek=$(((12 * 16 + 7) * 8 + 3)) \
	oflag=direct status=none
tap_eq "a first 512-byte write saves its 4 KiB block" $((65536 + 4096)) \
	"$(ptb_job_field ptb_b n done)"
# Blocks 1 and 3 of chunk 20 (the second saves the other 15 blocks, in
# two pieces around block 1), then all of it: nothing more.
wr4k $dm/ptb_b $((20 * 16 + 1))
wr4k $dm/ptb_b $((20 * 16 + 3))
wr4k $dm/ptb_b $((20 * 16)) 16
tap_eq "chunk 20 is saved once, in two copies" $((2 * 65536 + 4096)) \
	"$(ptb_job_field ptb_b n done)"
# Across chunks 30 and 31, the first write to each: two blocks of each.
wr4k $dm/ptb_b $((31 * 16 - 2)) 4
tap_eq "a write across two chunks saves its four blocks" \
	$((2 * 65536 + 4096 + 16384)) "$(ptb_job_field ptb_b n done)"
tap_check "cancel" dm_msg ptb_b job cancel n
want="$(seq -s ' ' 160 175) 199 $(seq -s ' ' 320 335) 494 495 496 497"
tap_eq "the target holds the old data of exactly the written blocks" \
	"$want" "$(saved_blocks /tmp/old1 $((16 << 20)))"
dm_msg ptb_b job dismiss n
dm_rm ptb_b

# --- 2: 8 KiB chunks (two blocks), 5120 of them: the table fills up ------
zero_target
dd if="$origin" of=/tmp/old2 bs=1M count=40 iflag=direct status=none
dm_create ptb_o "0 81920 ptbackup $origin - 16"
tap_check "sync=none job over 5120 chunks starts" \
	dm_msg ptb_o backup start o "$target" sync=none
every_other_block() {	# every_other_block DEV FIRST: blocks FIRST, FIRST+2, ...
	fio --output=/dev/null --name=b --filename="$1" --direct=1 --ioengine=psync \
		--rw=write:4k --bs=4k --offset=$(($2 * 4096)) --size=$((40 * 1048576 - $2 * 4096))
}
every_other_block $dm/ptb_o 0
# 4096 chunks saved in part (4 KiB each), the other 1024 whole (8 KiB).
tap_eq "past 4096 partly saved chunks a write saves its whole chunk" \
	$((4096 * 4096 + 1024 * 8192)) "$(ptb_job_field ptb_o o done)"
every_other_block $dm/ptb_o 1
tap_eq "the second blocks complete the partly saved chunks" \
	$((40 << 20)) "$(ptb_job_field ptb_o o done)"
dm_msg ptb_o job cancel o
tap_eq "the target holds the old data of every block" \
	"$(sha256sum < /tmp/old2 | cut -d" " -f1)" "$(sha_dev "$target" $((40 << 20)))"
dm_msg ptb_o job dismiss o

# --- 3: sync=full sweeps through partly saved chunks ---------------------
zero_target
want=$(sha_dev "$origin" $((40 << 20)))
tap_check "slow sync=full job starts" \
	dm_msg ptb_o backup start f "$target" sync=full speed=64K
every_other_block $dm/ptb_o 1
tap_check "unlimited again" dm_msg ptb_o job set_speed f 0
tap_check "the job completes" ptb_wait_state ptb_o f completed 300
tap_eq "the backup equals the point-in-time image" "$want" \
	"$(sha_dev "$target" $((40 << 20)))"
tap_eq "done = total = device size" "$((40 << 20)) $((40 << 20))" \
	"$(ptb_job_field ptb_o f done) $(ptb_job_field ptb_o f total)"
tap_done
