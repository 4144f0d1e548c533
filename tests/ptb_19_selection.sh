#!/bin/bash
# Which chunks an incremental backup copies, when the bitmap's granule is
# larger than the chunk (one dirty granule selects several chunks) and
# when it is smaller (a chunk is dirty if any of its granules is), with a
# short last chunk; the backups are the image at their instant.
. "$(dirname "$0")/lib/tap.sh"
. "$(dirname "$0")/lib/ptb.sh"
need_root
need_cmd dmsetup

tap_plan 7
o=$(make_loop 16) t=$(make_loop 16)
fill_random "$o"
# 16 MiB less 64 KiB: with 256 KiB chunks the last one is 192 KiB.
sz=$(($(dev_sectors "$o") - 128))
dev=ptb_sel
dm_create $dev "0 $sz ptbackup $o - 128"
dm_msg $dev bitmap add g256 granularity=256K
dm_msg $dev bitmap add g64
wr() {	# wr OFFSET-BYTES LENGTH-BYTES: random data, direct
	head -c "$2" /dev/urandom | dd iflag=fullblock of=/dev/mapper/$dev bs="$2" seek="$1" \
		oflag=direct,seek_bytes iflag=fullblock status=none
}
image() { sha_dev /dev/mapper/$dev; }

dm_msg $dev backup start f0 "$t"
ptb_wait_state $dev f0 completed 120 || tap_diag "the first full backup did not complete"
dm_msg $dev job dismiss f0

# Three writes in granules 0, 4 and 20 of 256 KiB.
wr $((100 * 1024)) 4096
wr $((1024 * 1024 + 8192)) 4096
wr $((5 * 1024 * 1024)) 65536
incremental() {	# incremental JOB BITMAP TOTAL DESC: its total, its image
	local want
	want=$(image)
	dm_msg $dev backup start "$1" "$t" sync=incremental bitmap="$2"
	tap_eq "$4" "$3" "$(ptb_job_field $dev "$1" total)"
	tap_check "that incremental completes" ptb_wait_state $dev "$1" completed 120
	tap_eq "and the target is the image at its instant" "$want" "$(sha_dev "$t" $((sz * 512)))"
	dm_msg $dev job dismiss "$1"
}
incremental i1 g256 $((3 * 262144)) \
	"granule 256K over 64K chunks: 3 dirty granules select 12 chunks"

# 256 KiB chunks now, over the 64 KiB bitmap, which holds the three writes
# above (64 KiB granules 1, 16, 80: chunks 0, 4, 20); two more writes in
# chunk 1 and in the short last chunk.
dmsetup load $dev --table "0 $sz ptbackup $o - 512"
dmsetup suspend $dev && dmsetup resume $dev
tap_eq "the table has 256 KiB chunks" "512" "$(dm_status_field $dev 1)"
wr $((300 * 1024)) 4096
wr $((sz * 512 - 4096)) 4096
incremental i2 g64 $((4 * 262144 + 196608)) \
	"granule 64K under 256K chunks: 5 dirty chunks, the last one short"
tap_done
