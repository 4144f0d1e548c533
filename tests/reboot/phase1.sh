#!/bin/bash
# Reboot persistence, first boot: a ptbackup device whose origin and
# metadata live in image files on the host share (/out/reboot), some
# writes, a few bitmaps in different states; the expected state is saved
# and the guest then powers off without tearing anything down.
set -u
export DM_DISABLE_UDEV=1
d=/out/reboot
modprobe loop
rm -rf $d && mkdir -p $d || exit 1
truncate -s 16M $d/origin.img && truncate -s 1M $d/meta.img || exit 1
o=$(losetup -f --show $d/origin.img) && m=$(losetup -f --show $d/meta.img) || exit 1
dmsetup create ptb_rb --table "0 32768 ptbackup $o $m 128" || exit 1
dmsetup message ptb_rb 0 bitmap add a
dmsetup message ptb_rb 0 bitmap add b granularity=1M disabled
dmsetup message ptb_rb 0 bitmap add t transient
for c in 3 4 17 250; do
	dd if=/dev/urandom of=/dev/mapper/ptb_rb bs=64k seek=$c count=1 oflag=direct status=none
done
dmsetup message ptb_rb 0 bitmap list | grep -v '^t ' > $d/list.expected
dmsetup message ptb_rb 0 bitmap dump a > $d/dump.expected
sync
echo "phase1 done"
