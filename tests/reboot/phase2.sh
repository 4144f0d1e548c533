#!/bin/bash
# Reboot persistence, second boot: the same image files give back the
# persistent bitmaps, their names, granularity, state and bits.
. "$(dirname "$0")/../lib/tap.sh"
need_root
d=/out/reboot
modprobe loop
tap_plan 3
[ -f $d/dump.expected ] || { not_ok "phase 1 left its images"; tap_done; }
ok "phase 1 left its images"
o=$(losetup -f --show $d/origin.img) && m=$(losetup -f --show $d/meta.img)
tap_on_exit losetup -d "$o"
tap_on_exit losetup -d "$m"
dm_create ptb_rb "0 32768 ptbackup $o $m 128"
tap_eq "bitmaps survive a reboot: names, granularity, state" \
	"$(cat $d/list.expected)" "$(dmsetup message ptb_rb 0 bitmap list)"
tap_eq "and their bits" "$(cat $d/dump.expected)" "$(dmsetup message ptb_rb 0 bitmap dump a)"
tap_done
