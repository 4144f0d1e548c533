#!/bin/bash
# Crash safety: cut the metadata device's writes (dm-flakey drop_writes)
# at random moments while fio writes, "crash" the device, bring it back,
# and check that every write completed before the cut is in the bitmap,
# and that nothing outside the intent regions fio wrote to is.  fio writes
# to [8 MiB, 16 MiB) of a 64 MiB device: intent regions 2 and 3 of 16.
. "$(dirname "$0")/lib/tap.sh"
. "$(dirname "$0")/lib/ptb.sh"
need_root
need_cmd dmsetup fio python3

ROUNDS=4
tap_plan $((ROUNDS * 3))
origin=$(make_loop 64)
mdisk=$(make_loop 4)
sz=$(dev_sectors "$origin")
msz=$(dev_sectors "$mdisk")
dm_create ptb_cmeta "0 $msz linear $mdisk 0"
table="0 $sz ptbackup $origin /dev/mapper/ptb_cmeta 128"
meta_swap() {
	dmsetup reload ptb_cmeta --table "$1" && dmsetup suspend ptb_cmeta &&
		dmsetup resume ptb_cmeta
}

for r in $(seq 1 $ROUNDS); do
	meta_swap "0 $msz linear $mdisk 0"
	dmsetup create ptb_crash --table "$table" || break
	dm_msg ptb_crash bitmap add c 2>/dev/null
	dm_msg ptb_crash bitmap clear c
	rm -f /tmp/crash_clat.*.log
	fio --output=/dev/null --filename=/dev/mapper/ptb_crash --direct=1 \
		--name=w --ioengine=libaio --iodepth=4 --rw=randwrite --bs=4k \
		--offset=8M --size=8M \
		--time_based --runtime=60 --write_lat_log=/tmp/crash --log_offset=1 \
		--log_unix_epoch=1 &
	fio_pid=$!
	# Let fio get going (slow on a debug kernel), then cut at a random moment.
	for ((i = 0; i < 600; i++)); do
		[ "$(dm_msg ptb_crash bitmap list | awk '{ print $6 }')" != 0 ] && break
		sleep 0.1
	done
	sleep "$((RANDOM % 3)).$((RANDOM % 10))"
	cut=$(date +%s%3N)
	meta_swap "0 $msz flakey $mdisk 0 0 1000 1 drop_writes"
	sleep 1
	kill $fio_pid; wait $fio_pid 2>/dev/null
	# The crash: the device goes away; its last metadata writes are lost.
	dmsetup remove ptb_crash
	meta_swap "0 $msz linear $mdisk 0"
	dmsetup create ptb_crash --table "$table"
	dm_msg ptb_crash bitmap dump c > /tmp/crash_dump
	result=$(python3 - "$cut" /tmp/crash_clat.1.log /tmp/crash_dump <<'PY'
import sys
cut = int(sys.argv[1])
chunk = 65536
done = set()
n = 0
for line in open(sys.argv[2]):
    t, _lat, ddir, bs, off = [int(x) for x in line.split(",")[:5]]
    if ddir == 1 and t < cut:
        n += 1
        for c in range(off // chunk, (off + bs - 1) // chunk + 1):
            done.add(c)
marked = set()
for line in open(sys.argv[3]):
    off, length = [int(x) for x in line.split()]
    marked.update(range(off // chunk, (off + length - 1) // chunk + 1))
missing = sorted(done - marked)
# Intent regions 2 and 3 (4 MiB each) are all a crash may add.
outside = sorted(c for c in marked if not 128 <= c < 256)
print(n, len(done), len(marked), len(missing), len(outside), missing[:5], outside[:5])
PY
)
	read -r n want marked missing outside _ <<< "$result"
	tap_diag "round $r: $n writes before the cut over $want chunks, $marked chunks marked"
	tap_eq "round $r: writes happened before the cut" 1 $((n > 0))
	tap_eq "round $r: no completed write is missing from the bitmap" 0 "$missing"
	tap_eq "round $r: nothing outside the written regions is marked" 0 "$outside"
	dmsetup remove ptb_crash
done
tap_done
