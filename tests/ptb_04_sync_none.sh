#!/bin/bash
# sync=none: only the old data of overwritten blocks goes to the target
# (4 KiB blocks for a chunk's first write if it is smaller than the chunk,
# the rest of the chunk at its second), once, until the job is cancelled.  All-zero chunks are sent as
# write-zeroes and leave a sparse target sparse.
. "$(dirname "$0")/lib/tap.sh"
. "$(dirname "$0")/lib/ptb.sh"
need_root
need_cmd dmsetup

CH=64k			# chunk: 128 sectors
tap_plan 11

mapfile -t devs < <(make_brd 3 16)
origin=${devs[0]} target=${devs[1]} scratch=${devs[2]}
fill_random "$origin"
dd if=/dev/zero of="$target" bs=1M count=16 oflag=direct status=none
sz=$(dev_sectors "$origin")
dm_create ptb_n "0 $sz ptbackup $origin - 128"
cp_chunk() {	# cp_chunk DEV N OUT
	dd if="$1" of="$3" bs=$CH skip="$2" count=1 iflag=direct status=none
}
cp_block() {	# cp_block DEV N OUT: 4 KiB block N
	dd if="$1" of="$3" bs=4k skip="$2" count=1 iflag=direct status=none
}
for c in 3 10 200 255; do cp_chunk "$origin" $c /tmp/old.$c; done
for b in 176 177; do cp_block "$origin" $b /tmp/oldb.$b; done

tap_check "start sync=none" dm_msg ptb_n backup start snap "$target" sync=none
# Overwrite: all of chunk 3; 4 KiB inside 10; a write straddling 10/11;
# a discard-free zeroing write of 200; chunk 255 twice.
head -c 64k /dev/urandom > /tmp/new
dd if=/tmp/new of=/dev/mapper/ptb_n bs=$CH seek=3 oflag=direct status=none
dd if=/tmp/new of=/dev/mapper/ptb_n bs=4k seek=$((10 * 16 + 5)) count=1 oflag=direct status=none
dd if=/tmp/new of=/dev/mapper/ptb_n bs=16k count=1 seek=$(((11 * 16 - 2) * 4096)) \
	oflag=direct,seek_bytes status=none
dd if=/dev/zero of=/dev/mapper/ptb_n bs=$CH seek=200 count=1 oflag=direct status=none
dd if=/tmp/new of=/dev/mapper/ptb_n bs=$CH seek=255 oflag=direct status=none
head -c 64k /dev/urandom | dd iflag=fullblock of=/dev/mapper/ptb_n bs=$CH seek=255 oflag=direct status=none
tap_eq "4 chunks and 2 blocks copied" $((4 * 65536 + 2 * 4096)) \
	"$(ptb_job_field ptb_n snap done)"
tap_eq "sync=none stays running" running "$(ptb_job_field ptb_n snap state)"
tap_check "cancel" dm_msg ptb_n job cancel snap
tap_eq "state cancelled" cancelled "$(ptb_job_field ptb_n snap state)"

same=1
for c in 3 10 200 255; do
	cp_chunk "$target" $c /tmp/got.$c
	cmp -s /tmp/old.$c /tmp/got.$c || { tap_diag "chunk $c differs"; same=0; }
done
for b in 176 177; do
	cp_block "$target" $b /tmp/gotb.$b
	cmp -s /tmp/oldb.$b /tmp/gotb.$b || { tap_diag "block $b differs"; same=0; }
done
tap_eq "target holds the old data of the overwritten blocks" 1 "$same"
# Every other 4 KiB block is untouched (still zero).
tap_eq "no other block was written" \
	"$(seq -s ' ' 48 63) $(seq -s ' ' 160 177) $(seq -s ' ' 3200 3215) $(seq -s ' ' 4080 4095)" \
	"$(python3 tests/lib/chunks.py nonzero "$target" 4096)"
tap_check "target is free after cancel" \
	dmsetup create ptb_n_probe --table "0 8 linear $target 0"
dmsetup remove ptb_n_probe

# Zero chunks: a sparse loop target stays sparse.
dm_msg ptb_n job dismiss snap
zorigin=$(make_loop 32) ztarget=$(make_loop 32)
dm_create ptb_z "0 $(dev_sectors "$zorigin") ptbackup $zorigin - 128"
zfile=$(losetup -nO BACK-FILE "$ztarget")
dm_msg ptb_z backup start z "$ztarget"
tap_check "all-zero backup completes" ptb_wait_state ptb_z z completed 120
tap_eq "all bytes counted as zero" "zero=$((32 << 20))" \
	"$(dm_msg ptb_z job list | tr ' ' '\n' | grep '^zero=')"
tap_eq "target file stays sparse" 0 "$(du -k "$zfile" | cut -f1)"
tap_done
