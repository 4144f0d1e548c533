#!/bin/bash
# Job control: speed limit, set_speed, pause, resume, cancel, dismiss, and
# an event on every state change.
. "$(dirname "$0")/lib/tap.sh"
. "$(dirname "$0")/lib/ptb.sh"
need_root
need_cmd dmsetup

tap_plan 16
mapfile -t devs < <(make_brd 3 64)
origin=${devs[0]} target=${devs[1]} target2=${devs[2]}
fill_random "$origin"
sz=$(dev_sectors "$origin")
dev=ptb_c
dm_create $dev "0 $sz ptbackup $origin - 128"
events() { dmsetup info $dev | sed -n 's/^Event number: *//p'; }
done_bytes() { ptb_job_field $dev j done; }
now() { date +%s.%N; }

ev0=$(events)
dm_msg $dev backup start j "$target" speed=512K
ev1=$(events)
tap_eq "an event when the job starts" 1 $((ev1 > ev0))

# check_rate DESC LIMIT SECS: the rate from the status counters over SECS
# (after a second to settle) is within 25% of LIMIT bytes/s.
check_rate() {
	local t0 t1 b0 b1 rate
	sleep 1
	t0=$(now) b0=$(done_bytes)
	sleep "$3"
	t1=$(now) b1=$(done_bytes)
	rate=$(echo "($b1 - $b0) / ($t1 - $t0)" | bc)
	tap_diag "measured $rate bytes/s, limit $2"
	tap_eq "$1" 1 "$(echo "r = $rate; r >= $2 * 0.75 && r <= $2 * 1.25" | bc)"
}

# Rates low enough for a debug kernel on a busy machine to reach them, and
# for the job to be far from its end when the checks below run, however
# slowly the guest runs the commands in between.
check_rate "speed=512K limits the rate to within 25%" 524288 4
tap_check "set_speed 1M" dm_msg $dev job set_speed j 1M
tap_eq "status shows the new speed" 1048576 "$(ptb_job_field $dev j speed)"
check_rate "set_speed 1M limits the rate to within 25%" 1048576 3
# Slow down so that the job is still running for the rest of the test.
dm_msg $dev job set_speed j 256K

ev0=$(events)
tap_check "pause" dm_msg $dev job pause j
tap_eq "state paused" paused "$(ptb_job_field $dev j state)"
tap_eq "an event when the job pauses" 1 $(($(events) > ev0))
sleep 0.5
b0=$(done_bytes)
sleep 2
tap_eq "no progress while paused" "$b0" "$(done_bytes)"

# A paused job still protects its chunks (chunk 1000 is not copied yet).
dd if="$origin" of=/tmp/old bs=64k skip=1000 count=1 iflag=direct status=none
head -c 64k /dev/urandom | dd iflag=fullblock of=/dev/mapper/$dev bs=64k seek=1000 oflag=direct status=none
tap_eq "a paused job still copies before write" "$(sha256sum < /tmp/old)" \
	"$(dd if="$target" bs=64k skip=1000 count=1 iflag=direct status=none | sha256sum)"

ev0=$(events)
tap_check "resume" dm_msg $dev job resume j
tap_check "set_speed 0 (unlimited)" dm_msg $dev job set_speed j 0
tap_check "job completes" ptb_wait_state $dev j completed 120
tap_eq "events for resume and completion" 1 $(($(events) >= ev0 + 2))

# dmsetup wait wakes on a state change.
dm_msg $dev backup start k "$target2" speed=1M
ev=$(events)
(sleep 1; dm_msg $dev job cancel k) &
tap_check "dmsetup wait wakes on cancel" timeout 30 dmsetup wait $dev "$ev"
wait
tap_eq "state cancelled" cancelled "$(ptb_job_field $dev k state)"
tap_done
