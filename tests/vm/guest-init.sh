#!/bin/bash
# Second-stage init, run as PID 1 by the initramfs of run-vm.sh after
# switch_root into the host's root (9p, read-only, tmpfs overlay on top).
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root TERM=dumb LANG=C.UTF-8 DM_DISABLE_UDEV=1 OUT=/out

mountpoint -q /proc || mount -t proc proc /proc
mountpoint -q /sys || mount -t sysfs sysfs /sys
mountpoint -q /dev || mount -t devtmpfs devtmpfs /dev
repo='' conlevel=1
read -ra args < /proc/cmdline
for a in "${args[@]}"; do
	case $a in
	ptb.repo=*) repo=${a#ptb.repo=} ;;
	ptb.conlevel=*) conlevel=${a#ptb.conlevel=} ;;
	esac
done
# Keep kernel errors (expected ones, too) off the TAP stream; an oops or a
# panic raises the console level itself. Everything is in /out/dmesg*.txt.
dmesg -n "$conlevel" 2>/dev/null
# The tmpfs mounts below would hide a repo that lives under /tmp or /run.
mkdir -p /dev/pts /dev/shm /out /.ptb-repo
[ -n "$repo" ] && mount --bind "$repo" /.ptb-repo
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs -o mode=755 tmpfs /run
mkdir -p /run/lock /run/lvm /run/lock/lvm
mountpoint -q /var/tmp || mount -t tmpfs -o mode=1777 tmpfs /var/tmp
if mountpoint -q /.ptb-repo; then
	mkdir -p "$repo" && mount --move /.ptb-repo "$repo"
fi
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mount -t configfs configfs /sys/kernel/config 2>/dev/null
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 ptbout /out ||
	echo "guest-init: cannot mount /out" >&2
hostname ptbackup-vm 2>/dev/null
ln -sf /proc/self/fd /dev/fd 2>/dev/null
ln -sf /proc/self/fd/0 /dev/stdin 2>/dev/null
ln -sf /proc/self/fd/1 /dev/stdout 2>/dev/null
ln -sf /proc/self/fd/2 /dev/stderr 2>/dev/null

stdbuf -oL dmesg --follow --nopager > /out/dmesg-live.txt 2>/dev/null &
follower=$!

bash /out/guest-cmd.sh < /dev/null
rc=$?
sync
dmesg --nopager > /out/dmesg.txt 2>&1
echo "$rc" > /out/rc
kill "$follower" 2>/dev/null
sync
umount /out 2>/dev/null
busybox poweroff -f
echo o > /proc/sysrq-trigger
sleep 10
