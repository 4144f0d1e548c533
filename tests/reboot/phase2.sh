#!/bin/bash
# Reboot persistence, second boot: the same image files give back the
# persistent bitmaps, their names, granularity, state and bits, plus the
# whole of intent region 1, which was being written when the first boot
# powered off (in every persistent bitmap, enabled or not).
. "$(dirname "$0")/../lib/tap.sh"
. "$(dirname "$0")/../lib/ptb.sh"
need_root
d=/out/reboot
MIB=$((1024 * 1024))
modprobe loop
tap_plan 6
[ -f $d/dump.clean ] || { not_ok "phase 1 left its images"; tap_done; }
ok "phase 1 left its images"
# Chunks 3-4, 17 and 250 of 64 KiB were written in phase 1.
exact="196608 131072
1114112 65536
16384000 65536"
tap_eq "a clean suspend left the exact bits" \
	"a 65536 enabled persistent idle 262144
b 1048576 disabled persistent idle 0
$exact" "$(cat $d/list.clean $d/dump.clean)"
o=$(losetup -f --show $d/origin.img) && m=$(losetup -f --show $d/meta.img)
tap_on_exit losetup -d "$o"
tap_on_exit losetup -d "$m"
dmesg_mark
dm_create ptb_rb "0 32768 ptbackup $o $m 128"
tap_eq "the unclean power-off is noticed: one region of four in the log" 1 \
	"$(dmesg_since | grep -c 'unclean shutdown: 1 of 4 intent regions (4096 KiB each)')"
tap_eq "bitmaps survive a reboot: names, granularity, state" \
	"$(printf '%s\n' "a 65536 enabled persistent idle $((262144 + 4 * MIB))" \
		"b 1048576 disabled persistent idle $((4 * MIB))")" \
	"$(dmsetup message ptb_rb 0 bitmap list)"
tap_eq "and their bits: the exact ones plus the logged region" \
	"$(echo "$exact" | sed "2a $((4 * MIB)) $((4 * MIB))")" \
	"$(dmsetup message ptb_rb 0 bitmap dump a)"
tap_eq "the disabled bitmap has the logged region only" "$((4 * MIB)) $((4 * MIB))" \
	"$(dmsetup message ptb_rb 0 bitmap dump b)"
tap_done
