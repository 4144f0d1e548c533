#!/bin/bash
# Remote replication: a mirror job whose target is on an NBD server
# (qemu-nbd on loopback, attached with the kernel's nbd client through
# nbd-client).  The server stops answering mid-mirror under fio writes, with
# writes in flight to it, then dies: the nbd client's timeout fails what was
# in flight, the job is degraded and the user's writes go on.  The server comes back, a new
# connection is swapped in under the mirror's target (a dm-linear over
# /dev/nbdN), `job resume' copies only the chunks it missed, and after
# `job complete' the server's disk equals the origin.
. "$(dirname "$0")/lib/tap.sh"
. "$(dirname "$0")/lib/ptb.sh"
need_root
need_cmd dmsetup fio qemu-nbd nbd-client ip
modprobe nbd nbds_max=4 2>/dev/null || tap_skip_all "the nbd module is not available"

tap_plan 13
MB=24
mapfile -t devs < <(make_brd 2 $MB)
origin=${devs[0]} remote=${devs[1]}
sz=$(dev_sectors "$origin")
dev=/dev/mapper/ptb_r rt=/dev/mapper/ptb_rt
fill_random "$origin"
dd if=/dev/zero of="$remote" bs=1M count=$MB oflag=direct status=none
ip link set lo up
PORT=10811 PIDF=/tmp/ptb27-nbd.pid

serve() {	# the remote disk, exported by qemu-nbd
	qemu-nbd --fork --persistent --pid-file="$PIDF" -b 127.0.0.1 -p $PORT -x disk \
		-f raw --cache=none --aio=native "$remote"
}
unserve() {	# the server hangs for a second (writes in flight), then dies
	[ -f "$PIDF" ] || return 0
	kill -STOP "$(cat "$PIDF")" 2>/dev/null && sleep 1
	kill -9 "$(cat "$PIDF")" 2>/dev/null
	rm -f "$PIDF"
	sleep 0.5
}
# Without a timeout (-t), the kernel's nbd client keeps a request that was
# in flight when the connection died until the device is disconnected, and
# the mirrored write that waits for it hangs with it.
attach() {	# attach /dev/nbdN
	nbd-client -t 5 -N disk 127.0.0.1 $PORT "$1" >/dev/null 2>&1 || return 1
	tap_on_exit nbd-client -d "$1"
}
tap_on_exit unserve
rmmod_nbd() { for n in 0 1; do nbd-client -d /dev/nbd$n >/dev/null 2>&1; done; rmmod nbd; }
tap_on_exit rmmod_nbd

serve
tap_check "the remote disk is attached over NBD" attach /dev/nbd0
dm_create ptb_rt "0 $sz linear /dev/nbd0 0"
dm_create ptb_r "0 $sz ptbackup $origin - 128"
tap_check "mirror start to the NBD device" dm_msg ptb_r mirror start rm "$rt"
tap_check "ready" ptb_wait_state ptb_r rm ready 120
fio --output=/dev/null --filename="$dev" --direct=1 --ioengine=psync --time_based \
	--runtime=600 --name=w --rw=randwrite --bsrange=4k-64k --rate_iops=100 &
FIO=$!
tap_on_exit kill $FIO
sleep 1
unserve
head -c 1M /dev/urandom > /tmp/ptb27.data
tap_on_exit rm -f /tmp/ptb27.data
tap_check "with the server gone, user writes go on" \
	dd if=/tmp/ptb27.data of="$dev" bs=1M seek=2 oflag=direct status=none
tap_check "the job is degraded" ptb_wait_state ptb_r rm degraded 30
sleep 1
# fio stops at its first I/O error: still running means it saw none.
tap_check "fio writes on without an error" kill $FIO
wait $FIO 2>/dev/null

serve
tap_check "the server is back; a new connection" attach /dev/nbd1
dmsetup suspend ptb_rt && dmsetup reload ptb_rt --table "0 $sz linear /dev/nbd1 0" &&
	dmsetup resume ptb_rt
nbd-client -d /dev/nbd0 >/dev/null 2>&1
before=$(ptb_job_info ptb_r rm copied) out=$(ptb_job_info ptb_r rm out_of_sync)
tap_check "what was missed is recorded ($out bytes), not the whole device" \
	test "$out" -gt 0 -a "$out" -lt $((MB << 20))
tap_check "job resume" dm_msg ptb_r job resume rm
tap_check "ready again" ptb_wait_state ptb_r rm ready 120
tap_eq "resume copied only the missed chunks" "$out" \
	$(($(ptb_job_info ptb_r rm copied) - before))
tap_check "job complete" dm_msg ptb_r job complete rm
tap_eq "the server's disk equals the origin" "$(sha_sectors "$dev" "$sz")" \
	"$(sha_sectors "$remote" "$sz")"
tap_done
