#!/bin/bash
# Discards to a view: the reader is done with the chunks a discard covers
# whole.  They stop being protected (writes there copy nothing), their
# reads fail, the view's status counts them; a discard of part of a chunk
# releases nothing; the rest of the view still equals the point in time.
. "$(dirname "$0")/lib/tap.sh"
. "$(dirname "$0")/lib/ptb.sh"
need_root
need_cmd dmsetup
need_cmd blkdiscard

tap_plan 13
mapfile -t devs < <(make_brd 3 16)
origin=${devs[0]} store=${devs[1]} ref=${devs[2]}
fill_random "$origin"
sz=$(dev_sectors "$origin")
dm_create ptb_d "0 $sz ptbackup $origin - 128"
dev=/dev/mapper/ptb_d view=/dev/mapper/ptb_dv
dd if="$origin" of="$ref" bs=1M iflag=direct oflag=direct status=none
CH=65536

chunk_of() {	# chunk_of DEV N: sha256 of 64 KiB chunk N, or "error"
	dd if="$1" bs=$CH skip="$2" count=1 iflag=direct status=none 2>/dev/null | sha256sum |
		cut -d' ' -f1
}
read_ok() {	# read_ok N: chunk N of the view can be read
	dd if="$view" of=/dev/null bs=$CH skip="$1" count=1 iflag=direct status=none 2>/dev/null
}
write_chunk() {	# write_chunk N: new data over chunk N of the ptbackup device
	head -c $CH /dev/urandom | dd iflag=fullblock of="$dev" bs=$CH seek="$1" count=1 oflag=direct status=none
}

dm_msg ptb_d backup start pull "$store" sync=none
# Read-write, so that the reader's discards reach the target; its writes
# fail.  blkdiscard -f: its probe of the first sectors fails once they are
# released.
dmsetup create ptb_dv --table "0 $sz ptbackup-view $dev pull"
tap_on_exit dmsetup remove --retry ptb_dv
tap_eq "a new view has released nothing" "running 0" \
	"$(dmsetup status ptb_dv | cut -d' ' -f4-)"

tap_check "discard chunks 0-9 of the view" blkdiscard -f -o 0 -l $((10 * CH)) "$view"
tap_eq "the view's status counts 10 released chunks" 10 "$(dm_status_field ptb_dv 2)"
tap_expect_fail "a read of a released chunk fails" read_ok 3
tap_check "a read of the chunk after them works" read_ok 10
tap_check "a discard of part of a chunk" blkdiscard -f -o $((20 * CH + 4096)) -l 8192 "$view"
tap_eq "releases nothing" 10 "$(dm_status_field ptb_dv 2)"
tap_eq "and that chunk still reads as at the point in time" \
	"$(chunk_of "$ref" 20)" "$(chunk_of "$view" 20)"

before=$(ptb_job_field ptb_d pull done)
write_chunk 5
tap_eq "a write to a released chunk copies nothing" "$before" "$(ptb_job_field ptb_d pull done)"
write_chunk 30
tap_eq "a write to a chunk not released copies it" $((before + CH)) \
	"$(ptb_job_field ptb_d pull done)"
tap_eq "the chunks not released read as at the point in time" \
	"$(dd if="$ref" bs=$CH skip=10 iflag=direct status=none | sha256sum)" \
	"$(dd if="$view" bs=$CH skip=10 iflag=direct status=none | sha256sum)"

dm_msg ptb_d job cancel pull
tap_expect_fail "a discard fails once the job is cancelled" \
	blkdiscard -f -o $((40 * CH)) -l $CH "$view"
# A sync=full job's view takes no discards: its target must get every chunk.
dmsetup remove ptb_dv
dm_msg ptb_d job dismiss pull
dm_msg ptb_d backup start full "$store" speed=64K
dmsetup create ptb_dv --table "0 $sz ptbackup-view $dev full"
tap_expect_fail "a discard to the view of a sync=full job fails" \
	blkdiscard -f -o 0 -l $CH "$view"
dmsetup remove ptb_dv
dm_msg ptb_d job cancel full
tap_done
