#!/bin/bash
# Mirror jobs: every write, discard and write-zeroes goes to the origin and
# the mirror's target.  sync=full copies the device under fio writes and
# trims; sync=none keeps identical devices identical; the target failing
# (dm-error, dm-flakey) under each on_target_error policy; degraded then
# `job resume' copies only the missed chunks; a mirror and a backup at
# once; suspend, reload and removal mid-mirror; the switch-over to the
# target (complete on the suspended device); refusals.  The check is
# always the same: after `job complete', target == origin, byte for byte.
. "$(dirname "$0")/lib/tap.sh"
. "$(dirname "$0")/lib/ptb.sh"
need_root
need_cmd dmsetup fio

tap_plan 57
MB=24
mapfile -t devs < <(make_brd 4 $MB)
origin=${devs[0]} tgt=${devs[1]} bkp=${devs[2]} spare=${devs[3]}
sz=$(dev_sectors "$origin")
dev=/dev/mapper/ptb_m mt=/dev/mapper/ptb_mt
fill_random "$origin"
dd if=/dev/zero of="$tgt" bs=1M count=$MB oflag=direct status=none
dm_create ptb_m "0 $sz ptbackup $origin - 128"
# The mirror's target, through a device whose table the test swaps.
dm_create ptb_mt "0 $sz linear $tgt 0"

FIO=
fio_run() {	# fio_run DEV [trims]: random writes (and trims) until fio_stop
	local trim=()
	[ "${2:-}" = trims ] && trim=(--name=t --rw=randtrim --bsrange=4k-256k --rate_iops=40)
	fio --output=/dev/null --filename="$1" --direct=1 --ioengine=psync --time_based \
		--runtime=600 --name=w --rw=randwrite --bsrange=512-128k --rate_iops=200 \
		"${trim[@]}" &
	FIO=$!
	tap_on_exit kill $FIO
	sleep 0.5
}
fio_stop() {
	kill "$FIO" 2>/dev/null
	wait "$FIO" 2>/dev/null
	FIO=
}
same() {	# same A B: the two devices hold the same first sz sectors
	[ "$(sha_sectors "$1" "$sz")" = "$(sha_sectors "$2" "$sz")" ]
}
info() {	# info JOB KEY
	ptb_job_info ptb_m "$1" "$2"
}
set_target() {	# set_target TABLE-TAIL: swap what the mirror's target does
	dmsetup suspend --noflush ptb_mt && dmsetup reload ptb_mt --table "0 $sz $1" &&
		dmsetup resume ptb_mt
}
write_at() {	# write_at MIB: 1 MiB of new data through the ptbackup device
	head -c 1M /dev/urandom | dd of="$dev" bs=1M seek="$1" oflag=direct iflag=fullblock \
		status=none
}

# --- refusals -------------------------------------------------------
expect_refused "mirror start to the origin is refused" "is the origin device" \
	dm_msg ptb_m mirror start m0 "$origin"
dm_create ptb_small "0 $((sz - 8)) linear $spare 0"
expect_refused "a target smaller than the device is refused" "fewer than the device" \
	dm_msg ptb_m mirror start m0 /dev/mapper/ptb_small
expect_refused "an unknown option is refused" "unknown option" \
	dm_msg ptb_m mirror start m0 "$mt" colour=blue
expect_refused "sync=incremental is no mirror mode" "invalid value" \
	dm_msg ptb_m mirror start m0 "$mt" sync=incremental
expect_refused "job complete of no job" "no job" dm_msg ptb_m job complete nosuch

# --- sync=full under writes, then complete ---------------------------
# Slow enough to be still syncing after the refusals below, on any kernel.
tap_check "mirror start sync=full speed=128K" \
	dm_msg ptb_m mirror start m1 "$mt" sync=full speed=128K
tap_eq "it syncs" syncing "$(ptb_job_field ptb_m m1 state)"
expect_refused "job complete before ready is refused" "completes only when ready" \
	dm_msg ptb_m job complete m1
expect_refused "a second mirror at once is refused" "one mirror at a time" \
	dm_msg ptb_m mirror start m2 "$spare"
expect_refused "its id is taken for a backup too" "already exists" \
	dm_msg ptb_m backup start m1 "$bkp"
expect_refused "a mirror cannot be paused" "cannot be paused" dm_msg ptb_m job pause m1
tap_eq "still syncing, at the speed limit" syncing "$(ptb_job_field ptb_m m1 state)"
dm_msg ptb_m job set_speed m1 0
fio_run "$dev"
# A sequential overwrite of the whole device races the copy cursor.
dd if=/dev/urandom of="$dev" bs=256k oflag=direct status=none 2>/dev/null
tap_check "ready while fio writes" ptb_wait_state ptb_m m1 ready 60
fio_stop
tap_eq "ready: nothing out of sync" 0 "$(info m1 out_of_sync)"
tap_check "target == origin once ready" same "$dev" "$mt"
tap_check "job complete" dm_msg ptb_m job complete m1
tap_eq "completed" completed "$(ptb_job_field ptb_m m1 state)"
write_at 3
tap_check "writes after complete no longer reach the target" \
	test "$(sha_sectors "$dev" "$sz")" != "$(sha_sectors "$mt" "$sz")"
tap_check "dismiss" dm_msg ptb_m job dismiss m1

# --- sync=none on identical devices, with trims (loop devices) -------
lo=$(make_loop $MB) lt=$(make_loop $MB)
fill_random "$lo"
dd if="$lo" of="$lt" bs=1M iflag=direct oflag=direct status=none
dm_create ptb_l "0 $sz ptbackup $lo - 128"
tap_check "sync=none on identical devices starts ready" \
	dm_msg ptb_l mirror start n1 "$lt" sync=none
tap_eq "ready at once" ready "$(ptb_job_field ptb_l n1 state)"
fio_run /dev/mapper/ptb_l trims
sleep 4
fio_stop
tap_check "writes and trims keep them identical" same /dev/mapper/ptb_l "$lt"
tap_check "complete" dm_msg ptb_l job complete n1
dm_rm ptb_l

# --- the target fails: report ---------------------------------------
dd if="$dev" of="$tgt" bs=1M iflag=direct oflag=direct status=none
dm_msg ptb_m mirror start r1 "$mt" sync=none
fio_run "$dev"
set_target "error"
write_at 5
tap_check "report: user writes go on while the target fails" write_at 6
tap_eq "the job is degraded" degraded "$(ptb_job_field ptb_m r1 state)"
tap_eq "with the target's error" target:-5 "$(ptb_job_field ptb_m r1 error)"
sleep 1
set_target "linear $tgt 0"
sleep 1
fio_stop
out=$(info r1 out_of_sync)
tap_check "the missed writes are recorded ($out bytes), not the whole device" \
	test "$out" -gt 0 -a "$out" -lt $((MB << 20))
tap_check "job resume" dm_msg ptb_m job resume r1
tap_check "ready again" ptb_wait_state ptb_m r1 ready 60
tap_eq "resume copied only the missed chunks" "$out" "$(info r1 copied)"
tap_check "target == origin after resume" same "$dev" "$mt"
dm_msg ptb_m job complete r1
dm_msg ptb_m job dismiss r1

# --- stop: a write the target cannot take fails ----------------------
dm_msg ptb_m mirror start s1 "$mt" sync=none on_target_error=stop
set_target "error"
tap_expect_fail "stop: a write the target fails, fails" write_at 2
tap_eq "degraded" degraded "$(ptb_job_field ptb_m s1 state)"
tap_expect_fail "and so do writes while degraded" write_at 7
set_target "linear $tgt 0"
tap_check "resume" dm_msg ptb_m job resume s1
tap_check "ready" ptb_wait_state ptb_m s1 ready 60
tap_check "writes succeed again" write_at 7
tap_check "target == origin" same "$dev" "$mt"
dm_msg ptb_m job complete s1
dm_msg ptb_m job dismiss s1

# --- ignore, under dm-flakey: no degraded state, it heals by itself ---
dm_msg ptb_m mirror start i1 "$mt" sync=none on_target_error=ignore
fio_run "$dev"
set_target "flakey $tgt 0 1 1 1 error_writes"
sleep 3
tap_check "ignore: the job never degrades under a flaky target" \
	test "$(ptb_job_field ptb_m i1 state)" != degraded
set_target "linear $tgt 0"
fio_stop
tap_check "ignore: ready again by itself" ptb_wait_state ptb_m i1 ready 60
tap_check "target == origin" same "$dev" "$mt"
dm_msg ptb_m job complete i1
dm_msg ptb_m job dismiss i1

# --- a mirror and a backup at once; suspend, reload mid-mirror ---------
dd if=/dev/zero of="$tgt" bs=1M count=$MB oflag=direct status=none
ref=$(sha_sectors "$dev" "$sz")
dm_msg ptb_m mirror start b1 "$mt" speed=2M
tap_check "a backup starts beside the mirror" \
	dm_msg ptb_m backup start b2 "$bkp" speed=8M
fio_run "$dev"
sleep 1
dmsetup suspend ptb_m
c1=$(info b1 copied)
sleep 1
tap_eq "suspended: the mirror copies nothing" "$c1" "$(info b1 copied)"
dmsetup reload ptb_m --table "0 $sz ptbackup $origin - 128"
tap_check "resume with a reloaded table" dmsetup resume ptb_m
tap_check "the backup completes" ptb_wait_state ptb_m b2 completed 60
tap_check "the mirror gets ready" ptb_wait_state ptb_m b1 ready 60
fio_stop
tap_eq "the backup holds the point in time" "$ref" "$(sha_sectors "$bkp" "$sz")"
tap_check "target == origin" same "$dev" "$mt"

# --- switch over to the target: complete while suspended --------------
fio_run "$dev"
sleep 1
dmsetup suspend ptb_m
tap_check "job complete on the suspended device" dm_msg ptb_m job complete b1
tap_check "with writes held, the target equals the origin" same "$origin" "$mt"
dm_msg ptb_m job dismiss b1
dm_msg ptb_m job dismiss b2
dmsetup reload ptb_m --table "0 $sz ptbackup $mt - 128"
tap_check "resume on the new disk" dmsetup resume ptb_m
sleep 1
fio_stop
region() {	# region DEV: the 1 MiB at 3 MiB
	dd if="$1" bs=1M skip=3 count=1 iflag=direct status=none | sha256sum
}
write_at 3
tap_check "a write after the switch reaches the new disk, not the old one" \
	test "$(region "$mt")" = "$(region "$dev")" -a "$(region "$origin")" != "$(region "$dev")"
dmsetup suspend ptb_m && dmsetup reload ptb_m --table "0 $sz ptbackup $origin - 128" &&
	dmsetup resume ptb_m

# --- cancel and removal mid-mirror ---------------------------------
dm_msg ptb_m mirror start c1 "$mt" speed=1M
tap_check "cancel while syncing" dm_msg ptb_m job cancel c1
tap_eq "cancelled" cancelled "$(ptb_job_field ptb_m c1 state)"
tap_check "the target is free after cancel" \
	dmsetup create ptb_probe --table "0 8 linear $mt 0"
dm_rm ptb_probe
dm_msg ptb_m mirror start c2 "$mt" speed=1M
fio_run "$dev"
sleep 1
fio_stop
tap_check "remove mid-mirror" dmsetup remove ptb_m
tap_check "the target is free after removal" \
	dmsetup create ptb_probe --table "0 8 linear $mt 0"
dm_rm ptb_probe
tap_done
