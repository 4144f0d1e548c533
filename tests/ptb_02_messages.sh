#!/bin/bash
# Messages: every refusal logs why, returns an error and changes nothing.
. "$(dirname "$0")/lib/tap.sh"
. "$(dirname "$0")/lib/ptb.sh"
need_root
need_cmd dmsetup blockdev

mapfile -t devs < <(make_brd 5 8)
origin=${devs[0]} meta=${devs[1]} tgt=${devs[2]} tgt2=${devs[3]} busy=${devs[4]}
small=$(make_loop 4)
sz=$(dev_sectors "$origin")
dm_create ptb_m "0 $sz ptbackup $origin $meta 128"
dev=ptb_m
self=/dev/$(dmsetup info -c --noheadings -o blkdevname $dev)
# A running sync=none job, to check that refusals leave it alone.
dm_msg $dev backup start keep "$tgt2" sync=none
dm_create ptb_holder "0 $(dev_sectors "$busy") linear $busy 0"

before=$(status_of $dev)
unchanged() {	# after each refusal: status exactly as before
	local now
	now=$(status_of $dev)
	if [ "$now" != "$before" ]; then
		tap_diag "status changed: '$before' -> '$now'"
		return 1
	fi
}

refuse() {	# refuse DESC TEXT MESSAGE-WORDS...
	local desc=$1 text=$2
	shift 2
	expect_refused "$desc" "$text" dm_msg $dev "$@" && unchanged
}

refuse "empty verb" "message needs a verb" backup
refuse "unknown message" "unsupported message" backup stop x
refuse "unknown job verb" "unsupported message" job frobnicate x
refuse "backup start without target" "takes 2 to 10 arguments" backup start j1
refuse "invalid job id" "invalid job id" backup start 'a/b' "$tgt"
refuse "job id too long" "invalid job id" backup start \
	abcdefghijabcdefghijabcdefghijabc "$tgt"
refuse "job id starting with -" "invalid job id" "backup start -x $tgt"
refuse "duplicate job id" "already exists" backup start keep "$tgt"
refuse "unknown option" "unknown option \`colour'" backup start j1 "$tgt" colour=red
refuse "option without value" "not of the form key=value" backup start j1 "$tgt" sync
refuse "option given twice" "given twice" backup start j1 "$tgt" sync=full sync=none
refuse "bad sync mode" "invalid value \`differential' for sync" \
	backup start j1 "$tgt" sync=differential
refuse "bad on_source_error" "invalid value" backup start j1 "$tgt" on_source_error=panic
refuse "bad on_target_error" "invalid value" backup start j1 "$tgt" on_target_error=
refuse "bad on_cbw_error" "invalid value" backup start j1 "$tgt" on_cbw_error=report
for s in 12Q -1 1.5M M 99999999999999999999 20000000000G; do
	refuse "malformed speed '$s'" "invalid value" backup start j1 "$tgt" "speed=$s"
done
refuse "missing target" "cannot find target block device" backup start j1 /dev/nonexistent
refuse "target is a regular file" "cannot find target block device" backup start j1 /etc/hostname
refuse "target is the origin" "is the origin device" backup start j1 "$origin"
refuse "target is the metadata device" "is the metadata device" backup start j1 "$meta"
refuse "target is the device itself" "is this device itself" backup start j1 "$self"
refuse "target smaller than the device" "fewer than the device" backup start j1 "$small"
refuse "target busy" "is busy" backup start j1 "$busy"
refuse "target used by another job" "is busy" backup start j1 "$tgt2"
refuse "cancel unknown job" "no job \`nope'" job cancel nope
refuse "pause unknown job" "no job" job pause nope
refuse "resume unknown job" "no job" job resume nope
refuse "dismiss unknown job" "no job" job dismiss nope
refuse "set_speed unknown job" "no job" job set_speed nope 1M
refuse "set_speed malformed" "invalid speed" job set_speed keep 1X
refuse "set_speed missing value" "takes 2 to 2 arguments" job set_speed keep
refuse "resume a running job" "job is running" job resume keep
refuse "dismiss a running job" "job is running" job dismiss keep
refuse "job list with an argument" "takes 0 to 0 arguments" job list x

tap_eq "job list names the running job" "keep type=backup sync=none state=running" \
	"$(dm_msg $dev job list | cut -d' ' -f1-4)"

# Refusals of finished jobs.
dm_msg $dev job cancel keep
before=$(status_of $dev)
refuse "pause a cancelled job" "job is cancelled" job pause keep
refuse "cancel a cancelled job" "job is cancelled" job cancel keep
tap_check "dismiss a cancelled job" dm_msg $dev job dismiss keep
tap_eq "no job left" "128 $((sz / 128)) rw 0 0" "$(status_of $dev)"

# At most 16 jobs.
loops=()
for i in $(seq 1 16); do loops+=("$(make_loop 8)"); done
for i in $(seq 1 16); do
	dm_msg $dev backup start "n$i" "${loops[i - 1]}" sync=none || break
done
tap_eq "16 jobs run at once" 16 "$(dm_status_field $dev 5)"
before=$(status_of $dev)
refuse "a 17th job is refused" "too many jobs" backup start n17 "$tgt"
for i in $(seq 1 16); do dm_msg $dev job cancel "n$i"; dm_msg $dev job dismiss "n$i"; done
tap_eq "all jobs dismissed" 0 "$(dm_status_field $dev 5)"

tap_done
