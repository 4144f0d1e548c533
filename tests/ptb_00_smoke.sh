#!/bin/bash
# Smoke test of the VM lane: device-mapper, brd and loop work in the guest.
# shellcheck source-path=SCRIPTDIR source=lib/tap.sh
. "$(dirname "$0")/lib/tap.sh"

need_root
need_cmd dmsetup blockdev losetup
tap_plan 8

tap_check "dm-mod loads" modprobe dm-mod
tap_check "dmsetup version" dmsetup version
tap_check "dmsetup targets" dmsetup targets

mapfile -t rams < <(make_brd 2 64)
tap_eq "brd gives 2 ram disks" 2 "${#rams[@]}"
tap_eq "ram disk is 64 MiB" $((64 * 2048)) "$(dev_sectors "${rams[0]:-/dev/null}" 2>/dev/null)"

loop=$(make_loop 32)
if [ -n "$loop" ] && dm_create ptb-smoke "0 $(dev_sectors "$loop") linear $loop 0"; then
	dd if=/dev/urandom of=/dev/mapper/ptb-smoke bs=1M count=4 oflag=direct status=none
	tap_eq "dm-linear over loop keeps data" "$(sha_dev "$loop" $((4 << 20)))" \
		"$(sha_dev /dev/mapper/ptb-smoke $((4 << 20)))"
	tap_eq "dm_status_field on linear (no fields)" "" "$(dm_status_field ptb-smoke 1)"
	majmin=$(printf '%d:%d' "0x$(stat -c %t "$loop")" "0x$(stat -c %T "$loop")")
	tap_eq "dm_table_field on linear" "$majmin" "$(dm_table_field ptb-smoke 1)"
else
	not_ok "dm-linear over loop"
	tap_skip "dm_status_field"
	tap_skip "dm_table_field"
fi

tap_done
