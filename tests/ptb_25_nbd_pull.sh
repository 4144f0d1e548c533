#!/bin/bash
# Pull backups over a real NBD server: the view of a sync=none job whose
# store is 10% of the origin, exported by qemu-nbd on loopback while fio
# writes to the ptbackup device; a libnbd client (tests/lib/nbdpull.py)
# reads it and trims each range once read.  Then an incremental pull: only
# the extents of `bitmap dump' are read and applied onto the full copy.
# Then a reader that does not trim, so that the store fills.  References:
# copies of the idle origin at each point in time.
. "$(dirname "$0")/lib/tap.sh"
. "$(dirname "$0")/lib/ptb.sh"
need_root
need_cmd dmsetup qemu-nbd nbdcopy fio ip
/usr/bin/python3 -c 'import nbd' 2>/dev/null || tap_skip_all "python3-libnbd is not installed"

tap_plan 19
mapfile -t devs < <(make_brd 4 32)
origin=${devs[0]} base=${devs[1]} ref=${devs[2]} copy=${devs[3]}
fill_random "$origin"
sz=$(dev_sectors "$origin")
CH=65536 NCH=$((sz / 128))
dm_create ptb_n "0 $sz ptbackup $origin - 128"
dm_create ptb_ns "0 $((sz / 10)) linear $base 0"
dev=/dev/mapper/ptb_n store=/dev/mapper/ptb_ns view=/dev/mapper/ptb_nv
SLOTS=$((sz / 10 / 128))
ip link set lo up
URI=nbd://127.0.0.1:10809/pull
NBD_PID=/tmp/ptb25-nbd.pid

# The view is created read-write and exported writable: NBD's read-only
# flag forbids trims too.  The view itself refuses writes.
serve() {	# serve JOB: the job's view, exported by qemu-nbd
	dmsetup create ptb_nv --table "0 $sz ptbackup-view $dev $1" || return 1
	qemu-nbd --fork --persistent --pid-file="$NBD_PID" -b 127.0.0.1 -p 10809 -x pull \
		-f raw --cache=none --aio=native --discard=unmap "$view"
}
unserve() {
	[ -f "$NBD_PID" ] && kill "$(cat "$NBD_PID")" 2>/dev/null
	for _ in $(seq 50); do dm_rm ptb_nv && break; sleep 0.1; done
	rm -f "$NBD_PID"
}
tap_on_exit dmsetup remove --retry ptb_nv
tap_on_exit unserve
pull() {	# pull ARGS...: nbdpull.py URI COPY ARGS
	/usr/bin/python3 tests/lib/nbdpull.py "$URI" "$copy" "$@"
}
nbd_write() {	# a 4 KiB write at 0 through NBD: "written" or "refused"
	/usr/bin/python3 - "$URI" <<'PY'
import sys
import nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
try:
    h.pwrite(b"x" * 4096, 0)
    print("written")
except nbd.Error:
    print("refused")
PY
}
fio_start() {	# at most 30 writes: at most 30 store chunks, whatever the reader's speed
	fio --output=/dev/null --filename="$dev" --direct=1 --number_ios=30 \
		--name=w --ioengine=psync --rw=randwrite --bs=4k --rate_iops=4 &
	FIO_PID=$!
	tap_on_exit kill $FIO_PID
}
fio_stop() {
	kill $FIO_PID 2>/dev/null
	wait $FIO_PID 2>/dev/null
}
# After each MiB the reader has read and trimmed: 3 random 4 KiB writes into
# the next MiB (more chunks in all than the store holds, few at once).
export DEV=$dev
AHEAD='[ $((OFF + 2 * LEN)) -le $(blockdev --getsize64 $DEV) ] || exit 0
for k in 1 2 3; do
	head -c 4096 /dev/urandom | dd iflag=fullblock of=$DEV bs=4096 oflag=direct status=none \
		seek=$(((OFF + LEN) / 4096 + RANDOM % (LEN / 4096))) || exit 1
done'

new_ref() {
	dd if="$origin" of="$ref" bs=1M iflag=direct oflag=direct status=none
}
dump_all() {	# dump_all BITMAP: every extent, following `next'
	local start=0 line
	while :; do
		next=
		while read -r a b; do
			if [ "$a" = next ]; then next=$b; else echo "$a $b"; fi
		done < <(dm_msg ptb_n bitmap dump "$1" "$start")
		[ -n "$next" ] || break
		start=$next
	done
}
job_end() {
	unserve
	dm_msg ptb_n job cancel "$1" 2>/dev/null
	dm_msg ptb_n job dismiss "$1"
}

# --- a full pull, the reader trimming -------------------------------------
new_ref
want0=$(sha_dev "$ref")
tap_check "one instant for the change bitmap and the job" \
	dm_msg ptb_n transaction bitmap add b \; backup start full "$store" sync=none
tap_check "qemu-nbd exports the view" serve full
tap_check "the export takes trims" /usr/bin/nbdinfo --can trim "$URI"
tap_eq "nbdcopy, which does not trim, reads the point in time" "$want0" \
	"$(nbdcopy "$URI" - | sha256sum | cut -d' ' -f1)"
fio_start
tap_eq "the client read the whole export, trimming each range, under writes" \
	$((sz * 512)) "$(pull --discard --each "$AHEAD")"
tap_eq "a write through NBD is refused by the server (the view's EIO)" refused "$(nbd_write)"
fio_stop
tap_eq "the copy equals the point in time" "$want0" "$(sha_dev "$copy")"
tap_eq "the job ran throughout, the store of 10% sufficed" running \
	"$(ptb_job_field ptb_n full state)"
tap_check "the store served more chunks than it holds" \
	test "$(ptb_job_info ptb_n full saved)" -gt "$SLOTS"
tap_eq "every chunk released, nothing held" "$NCH 0" \
	"$(ptb_job_info ptb_n full released) $(ptb_job_info ptb_n full held)"
job_end full

# --- an incremental pull: only the changed extents --------------------------
new_ref
want1=$(sha_dev "$ref")
tap_check "the origin changed since the full pull" test "$want1" != "$want0"
tap_check "one instant: freeze the bitmap, add the next one, start the job" \
	dm_msg ptb_n transaction bitmap disable b \; bitmap add b2 \; backup start inc "$store" sync=none
serve inc
fio_start
dump_all b > /tmp/ptb25.extents
tap_on_exit rm -f /tmp/ptb25.extents
dirty=$(awk '{ n += $2 } END { print n + 0 }' /tmp/ptb25.extents)
tap_check "the bitmap has changed extents, fewer than the whole device" \
	test "$dirty" -gt 0 -a "$dirty" -lt $((sz * 512))
tap_eq "the client read exactly the changed extents" "$dirty" \
	"$(pull --extents /tmp/ptb25.extents --discard)"
fio_stop
tap_eq "applied onto the full copy they give the new point in time" "$want1" "$(sha_dev "$copy")"
job_end inc
dm_msg ptb_n bitmap remove b

# --- a reader that does not trim: the store fills ---------------------------
new_ref
dm_msg ptb_n backup start fill "$store" sync=none
serve fill
for ((i = 0; i < SLOTS + 8; i++)); do
	head -c $CH /dev/urandom | dd iflag=fullblock of="$dev" bs=$CH seek=$i oflag=direct status=none || break
done
tap_eq "break-snapshot: every write to the device succeeded" $((SLOTS + 8)) "$i"
tap_eq "the job failed on the full store" "failed cbw:-28" \
	"$(ptb_job_field ptb_n fill state) $(ptb_job_field ptb_n fill error)"
tap_expect_fail "the NBD reads fail, never returning wrong data" pull
tap_check "the device keeps working" \
	dd if="$dev" of=/dev/null bs=1M count=4 iflag=direct status=none
job_end fill
tap_done
