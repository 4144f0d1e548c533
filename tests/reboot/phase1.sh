#!/bin/bash
# Reboot persistence, first boot: a ptbackup device whose origin and
# metadata live in image files on the host share (/out/reboot), some
# writes, a few bitmaps in different states.  A suspend and resume (what a
# clean shutdown does) commits their exact bits; the expected state is
# saved.  Then a writer keeps writing into intent region 1 (4-8 MiB), the
# metadata's writes are cut, and the guest powers off without tearing
# anything down: an unclean shutdown that the second boot must notice.
set -u
export DM_DISABLE_UDEV=1
d=/out/reboot
modprobe loop
rm -rf $d && mkdir -p $d || exit 1
truncate -s 16M $d/origin.img && truncate -s 1M $d/meta.img || exit 1
o=$(losetup -f --show $d/origin.img) && m=$(losetup -f --show $d/meta.img) || exit 1
msz=$(blockdev --getsz "$m")
dmsetup create ptb_rb_meta --table "0 $msz linear $m 0" || exit 1
dmsetup create ptb_rb --table "0 32768 ptbackup $o /dev/mapper/ptb_rb_meta 128" || exit 1
dmsetup message ptb_rb 0 bitmap add a
dmsetup message ptb_rb 0 bitmap add b granularity=1M disabled
dmsetup message ptb_rb 0 bitmap add t transient
for c in 3 4 17 250; do
	dd if=/dev/urandom of=/dev/mapper/ptb_rb bs=64k seek=$c count=1 oflag=direct status=none
done
dmsetup suspend ptb_rb && dmsetup resume ptb_rb || exit 1
dmsetup message ptb_rb 0 bitmap list | grep -v '^t ' > $d/list.clean
dmsetup message ptb_rb 0 bitmap dump a > $d/dump.clean
sync
w() { dd if=/dev/zero of=/dev/mapper/ptb_rb bs=64k seek=100 count=1 oflag=direct status=none; }
w || exit 1
(for _ in $(seq 1000); do w; sleep 0.05; done) &
# Cut the metadata's writes while region 1 is being written: nothing the
# marker commits from now on reaches the image, so the region stays in the
# on-disk log whatever the machine's load (a commit takes a region out only
# after a whole second without writes to it).
dmsetup reload ptb_rb_meta --table "0 $msz flakey $m 0 0 1000 1 drop_writes" &&
	dmsetup suspend ptb_rb_meta && dmsetup resume ptb_rb_meta || exit 1
echo "phase1 done"
