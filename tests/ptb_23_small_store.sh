#!/bin/bash
# A sync=none job's store smaller than the origin (pull mode's scratch
# store): saved chunks are laid out in it as they come.  The `job list'
# figures (saved, held, released); a pull of the whole image through the
# view with a store of 10% of the origin while fio writes, the reader
# discarding what it has read; a full store under each on_cbw_error
# policy.  References: copies of the idle origin taken just before each
# job starts.
. "$(dirname "$0")/lib/tap.sh"
. "$(dirname "$0")/lib/ptb.sh"
need_root
need_cmd dmsetup
need_cmd fio
need_cmd blkdiscard

tap_plan 38
mapfile -t devs < <(make_brd 4 32)
origin=${devs[0]} base=${devs[1]} ref=${devs[2]} copy=${devs[3]}
fill_random "$origin"
sz=$(dev_sectors "$origin")
CH=65536 CS=128 NCH=$((sz / 128))
dm_create ptb_s "0 $sz ptbackup $origin - $CS"
dev=/dev/mapper/ptb_s view=/dev/mapper/ptb_sv
# The store: 10% of the origin, 51 chunks of 64 KiB.
dm_create ptb_ss "0 $((sz / 10)) linear $base 0"
store=/dev/mapper/ptb_ss
SLOTS=$((sz / 10 / CS))
dm_create ptb_st "0 64 linear $base $((sz / 2))"

chunk_of() {	# chunk_of DEV N: sha256 of chunk N
	dd if="$1" bs=$CH skip="$2" count=1 iflag=direct status=none 2>/dev/null | sha256sum |
		cut -d' ' -f1
}
chunks_of() {	# chunks_of DEV FIRST COUNT: sha256 of COUNT chunks
	dd if="$1" bs=$CH skip="$2" count="$3" iflag=direct status=none 2>/dev/null | sha256sum |
		cut -d' ' -f1
}
write_chunk() {	# write_chunk N [BYTES [OFFSET]]: new data into chunk N
	head -c "${2:-$CH}" /dev/urandom |
		dd iflag=fullblock of="$dev" bs="${2:-$CH}" seek=$(($1 * CH / ${2:-$CH} + ${3:-0})) count=1 \
			oflag=direct status=none 2>/dev/null
}
write_chunks() {	# write_chunks FIRST COUNT: whole chunks, one write each
	local i
	for ((i = $1; i < $1 + $2; i++)); do
		write_chunk "$i" || return 1
	done
}
new_ref() {	# the origin, idle, as the next job's point in time
	dd if="$origin" of="$ref" bs=1M iflag=direct oflag=direct status=none
}
view_open() {	# view_open JOB: read-write, so that discards reach the target
	dmsetup create ptb_sv --table "0 $sz ptbackup-view $dev $1"
}
view_discard() {	# view_discard FIRST COUNT: release chunks
	blkdiscard -f -o $(($1 * CH)) -l $(($2 * CH)) "$view"
}
info() {	# info JOB KEY
	ptb_job_info ptb_s "$1" "$2"
}
job_end() {	# job_end JOB: view, job gone
	dm_rm ptb_sv
	dm_msg ptb_s job cancel "$1" 2>/dev/null
	dm_msg ptb_s job dismiss "$1"
}
tap_on_exit dmsetup remove --retry ptb_sv

expect_refused "a store smaller than the origin is refused for sync=full" \
	"only a sync=none job takes a smaller store" \
	dm_msg ptb_s backup start f "$store" sync=full
expect_refused "a store smaller than one chunk is refused" "smaller than one chunk" \
	dm_msg ptb_s backup start t /dev/mapper/ptb_st sync=none

# --- layout and figures ------------------------------------------------
new_ref
dm_msg ptb_s backup start p1 "$store" sync=none
view_open p1
tap_eq "a store of 10% is mapped, $SLOTS chunks" "mapped/$SLOTS" "$(info p1 store)"
tap_eq "nothing saved yet" "0 0 0" "$(info p1 saved) $(info p1 held) $(info p1 released)"
write_chunks 100 10
write_chunk 200 4096 3
write_chunk 200 4096 9
tap_eq "10 whole chunks and one chunk written twice in part: 11 saved, 11 held" "11 11" \
	"$(info p1 saved) $(info p1 held)"
tap_eq "the chunks saved read as at the point in time from the store" \
	"$(chunks_of "$ref" 100 10)" "$(chunks_of "$view" 100 10)"
tap_eq "the chunk saved in part reads as at the point in time" \
	"$(chunk_of "$ref" 200)" "$(chunk_of "$view" 200)"
tap_eq "chunks not saved read as at the point in time from the origin" \
	"$(chunks_of "$ref" 110 10)" "$(chunks_of "$view" 110 10)"
tap_check "discard 5 saved chunks and 5 unsaved ones on the view" view_discard 105 10
tap_eq "held 6, released 10, saved still 11" "6 10 11" \
	"$(info p1 held) $(info p1 released) $(info p1 saved)"
tap_eq "the view's status counts 10 released chunks" 10 "$(dm_status_field ptb_sv 2)"
tap_expect_fail "a released chunk's read fails" \
	dd if="$view" of=/dev/null bs=$CH skip=107 count=1 iflag=direct status=none
write_chunks 300 5
tap_eq "the released space serves new chunks: held 11" 11 "$(info p1 held)"
tap_eq "the old chunks still read as at the point in time" \
	"$(chunks_of "$ref" 100 5)" "$(chunks_of "$view" 100 5)"
tap_eq "and the new ones" "$(chunks_of "$ref" 300 5)" "$(chunks_of "$view" 300 5)"
job_end p1

# --- a whole pull through a store of 10%, under writes ------------------
new_ref
dm_msg ptb_s backup start p2 "$store" sync=none
view_open p2
# Concurrent random writes, at most 30 (each takes at most one store
# chunk, whatever the speed of the reader), and after each step of the
# reader 3 writes into the chunks it reads next: more chunks in all than
# the store holds, never more than it holds at once.
fio --output=/dev/null --filename="$dev" --direct=1 --number_ios=30 \
	--name=w --ioengine=psync --rw=randwrite --bs=4k --rate_iops=4 &
FIO_PID=$!
tap_on_exit kill $FIO_PID
write_ahead() {	# write_ahead FIRST: 3 random 4 KiB writes into chunks FIRST..FIRST+15
	local k
	for k in 1 2 3; do
		head -c 4096 /dev/urandom | dd iflag=fullblock of="$dev" bs=4096 \
			seek=$((($1 + RANDOM % 16) * CH / 4096 + RANDOM % (CH / 4096))) \
			oflag=direct status=none || return 1
	done
}
pull_ok=0
for ((i = 0; i < NCH; i += 16)); do
	dd if="$view" of="$copy" bs=$CH skip=$i seek=$i count=16 iflag=direct oflag=direct \
		status=none && view_discard "$i" 16 || { pull_ok=1; break; }
	[ $((i + 16)) -lt "$NCH" ] && { write_ahead $((i + 16)) || { pull_ok=2; break; }; }
done
kill $FIO_PID 2>/dev/null
wait $FIO_PID 2>/dev/null
tap_eq "the pull read and discarded the whole view" 0 "$pull_ok"
tap_eq "the copy equals the point in time" "$(sha_dev "$ref")" "$(sha_dev "$copy")"
tap_eq "the job is still running" running "$(ptb_job_field ptb_s p2 state)"
tap_check "the store served more chunks than it holds" test "$(info p2 saved)" -gt "$SLOTS"
tap_eq "every chunk is released" "$NCH" "$(info p2 released)"
tap_eq "and the store holds nothing" 0 "$(info p2 held)"
tap_check "the origin did change" test "$(sha_dev "$origin")" != "$(sha_dev "$ref")"
job_end p2

# --- full store, break-snapshot (the default) ------------------------------
new_ref
dm_msg ptb_s backup start p3 "$store" sync=none
view_open p3
tap_check "break-snapshot: writes beyond a full store succeed" write_chunks 0 $((SLOTS + 5))
tap_eq "the job failed" failed "$(ptb_job_field ptb_s p3 state)"
tap_eq "with the store full as its error" cbw:-28 "$(ptb_job_field ptb_s p3 error)"
tap_expect_fail "the view's reads fail" \
	dd if="$view" of=/dev/null bs=$CH count=1 iflag=direct status=none
head -c $CH /dev/urandom > /tmp/ptb23.chunk
tap_on_exit rm -f /tmp/ptb23.chunk
dd if=/tmp/ptb23.chunk of="$dev" bs=$CH seek=$((SLOTS + 9)) oflag=direct status=none
tap_eq "the device keeps a write's data beyond the full store" \
	"$(sha256sum < /tmp/ptb23.chunk | cut -d' ' -f1)" "$(chunk_of "$dev" $((SLOTS + 9)))"
job_end p3

# --- full store, break-guest-write -----------------------------------------
new_ref
dm_msg ptb_s backup start p4 "$store" sync=none on_cbw_error=break-guest-write
view_open p4
tap_check "break-guest-write: writes that fill the store succeed" write_chunks 0 "$SLOTS"
tap_expect_fail "the next write to an unsaved chunk fails" write_chunk "$SLOTS"
tap_check "a write to a saved chunk succeeds" write_chunk 7
tap_eq "the job is still running" running "$(ptb_job_field ptb_s p4 state)"
tap_eq "with the store full as its error" cbw:-28 "$(ptb_job_field ptb_s p4 error)"
tap_eq "the image stays valid: the view equals the point in time" \
	"$(sha_dev "$ref")" "$(sha_dev "$view")"
view_discard 0 2
tap_check "once the reader released chunks, the write succeeds" write_chunk "$SLOTS"
tap_eq "and its chunk reads as at the point in time" \
	"$(chunk_of "$ref" "$SLOTS")" "$(chunk_of "$view" "$SLOTS")"
job_end p4

# --- a store the origin's size keeps the linear layout ------------------
dm_msg ptb_s backup start p5 "$copy" sync=none
tap_eq "a store the origin's size is linear" "linear/$NCH" "$(info p5 store)"
old=$(chunk_of "$origin" 9)
write_chunks 9 1
tap_eq "its chunk is saved at its own offset" "$old" "$(chunk_of "$copy" 9)"
job_end p5
dm_rm ptb_sv
tap_check "the device is removed" dmsetup remove ptb_s
tap_done
