#!/bin/bash
# Boot a Debian kernel under QEMU (TCG), run one command in the guest as root
# over the host's root filesystem (9p, read-only, with a tmpfs overlay), and
# exit with that command's exit status.
set -u

usage() {
	cat <<USAGE
usage: $0 [--kver KVER] [--outdir DIR] [--timeout SECS] [--env NAME=VALUE]...
          [--console-loglevel N] [--mem MB] [--smp N] [--icount SHIFT] [--kernel PATH]
          [--modules DIR] [--append ARGS] -- CMD [ARGS...]

  --kver KVER     kernel to boot (default: \$KVER or newest /lib/modules/*-amd64
                  that has /boot/vmlinuz-KVER)
  --outdir DIR    host directory mounted read-write at /out in the guest
                  (default: a new mktemp dir); rc, dmesg.txt and console.log land here
  --timeout SECS  kill the guest after SECS seconds (default: \$VM_TIMEOUT or 3000)
  --env N=V       set an environment variable for the guest command (repeatable)
  --console-loglevel N  kernel messages below level N reach the console once
                  the command runs (default 1: only panics and oopses)
  --mem MB        guest memory (default 2048)    --smp N   guest CPUs (default 2)
  --icount SHIFT  deterministic timing: the guest clock advances 2^SHIFT ns per
                  guest instruction (single-threaded TCG; for benchmarks)
  --kernel PATH   boot this image instead of /boot/vmlinuz-KVER (needs --kver)
  --modules DIR   DIR/lib/modules/KVER becomes the guest's /lib/modules/KVER
                  (default: the host's /lib/modules/KVER)
  --append ARGS   more kernel command-line arguments

The command runs in the repo's root directory with DM_DISABLE_UDEV=1.
Exit status: the command's, 124 on timeout, 125 if the guest died without a result.
USAGE
}

die() { echo "run-vm: $*" >&2; exit 125; }

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
repo=$(cd "$here/../.." && pwd -P)
kver=${KVER:-}
outdir=
timeout_s=${VM_TIMEOUT:-3000}
mem=2048
smp=2
icount=
envs=()
conlevel=1
kernel=
moddir=
append=

while [ $# -gt 0 ]; do
	case $1 in
	--kver) kver=${2:?}; shift 2 ;;
	--kver=*) kver=${1#*=}; shift ;;
	--outdir) outdir=${2:?}; shift 2 ;;
	--outdir=*) outdir=${1#*=}; shift ;;
	--timeout) timeout_s=${2:?}; shift 2 ;;
	--timeout=*) timeout_s=${1#*=}; shift ;;
	--env) envs+=("${2:?}"); shift 2 ;;
	--env=*) envs+=("${1#*=}"); shift ;;
	--console-loglevel) conlevel=${2:?}; shift 2 ;;
	--mem) mem=${2:?}; shift 2 ;;
	--smp) smp=${2:?}; shift 2 ;;
	--icount) icount=${2:?}; shift 2 ;;
	--kernel) kernel=${2:?}; shift 2 ;;
	--kernel=*) kernel=${1#*=}; shift ;;
	--modules) moddir=${2:?}; shift 2 ;;
	--modules=*) moddir=${1#*=}; shift ;;
	--append) append=${2:?}; shift 2 ;;
	--append=*) append=${1#*=}; shift ;;
	-h|--help) usage; exit 0 ;;
	--) shift; break ;;
	*) usage >&2; exit 125 ;;
	esac
done
[ $# -gt 0 ] || { usage >&2; exit 125; }

if [ -n "$kernel" ]; then
	[ -n "$kver" ] || die "--kernel needs --kver"
	kernel=$(realpath -e "$kernel") || die "kernel $kernel not found"
fi
if [ -n "$moddir" ]; then
	moddir=$(realpath -e "$moddir") || die "--modules $moddir not found"
	case $moddir in *[[:space:]]*) die "--modules path must not contain whitespace" ;; esac
fi
if [ -z "$kver" ]; then
	kver=$(for d in /lib/modules/*-amd64; do
		k=${d##*/}
		[ -f "/boot/vmlinuz-$k" ] && echo "$k"
	done | sort -V | tail -n1)
	[ -n "$kver" ] || die "no /lib/modules/*-amd64 with a /boot/vmlinuz found"
fi
[ -n "$kernel" ] || kernel=/boot/vmlinuz-$kver
[ -r "$kernel" ] || die "$kernel not found"
[ -d "$moddir/lib/modules/$kver" ] || die "$moddir/lib/modules/$kver not found"
case $timeout_s in ''|*[!0-9]*) die "bad --timeout '$timeout_s'" ;; esac
case $conlevel in [1-8]) ;; *) die "bad --console-loglevel '$conlevel'" ;; esac

for t in qemu-system-x86_64 cpio gzip timeout modprobe; do
	command -v "$t" >/dev/null || die "$t not found (run scripts/install-deps.sh)"
done
busybox=
for b in /bin/busybox /usr/bin/busybox; do
	[ -x "$b" ] && { busybox=$b; break; }
done
[ -n "$busybox" ] || die "busybox not found (apt-get install busybox-static)"
case $repo$here in *[[:space:]]*) die "repo path must not contain whitespace: $repo" ;; esac

if [ -z "$outdir" ]; then
	outdir=$(mktemp -d "${TMPDIR:-/tmp}/ptbackup-vm.XXXXXX") || die "mktemp failed"
fi
mkdir -p "$outdir" || die "cannot create $outdir"
outdir=$(cd "$outdir" && pwd -P)
case $outdir in *,*) die "outdir must not contain a comma: $outdir" ;; esac
rm -f "$outdir/rc" "$outdir/dmesg.txt" "$outdir/dmesg-live.txt" "$outdir/guest-cmd.sh"

# --- initramfs: busybox + the modules needed to mount a 9p root -------------
cache=${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/ptbackup-vm/$kver
initrd=$cache/initrd.cpio.gz
mkdir -p "$cache" || die "cannot create $cache"

modprobe_args=(-S "$kver")
[ -n "$moddir" ] && modprobe_args+=(-d "$moddir")
modlist=$(for m in virtio_pci 9pnet_virtio 9p overlay; do
	modprobe "${modprobe_args[@]}" -D "$m" || exit 1
done | awk '$1 == "insmod" && !seen[$2]++ { print $2 }') ||
	die "cannot resolve 9p/virtio modules for $kver"

key=$( {
	sha256sum "${BASH_SOURCE[0]}"
	echo "$kver"
	# shellcheck disable=SC2086
	ls -lL "$busybox" $modlist
} | sha256sum | cut -d' ' -f1)

build_initrd() {
	local tmp m base
	tmp=$(mktemp -d "$cache/build.XXXXXX") || return 1
	mkdir -p "$tmp"/{bin,dev,proc,sys,newroot,lower,upper,mods} &&
	cp "$busybox" "$tmp/bin/busybox" || return 1
	: > "$tmp/mods/order"
	for m in $modlist; do
		base=${m##*/}
		case $m in
		*.ko.xz) base=${base%.xz}; xz -dc "$m" > "$tmp/mods/$base" ;;
		*.ko.zst) base=${base%.zst}; zstd -qdc "$m" > "$tmp/mods/$base" ;;
		*.ko.gz) base=${base%.gz}; gzip -dc "$m" > "$tmp/mods/$base" ;;
		*) cp "$m" "$tmp/mods/$base" ;;
		esac || return 1
		echo "$base" >> "$tmp/mods/order"
	done
	cat > "$tmp/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /mods/order); do insmod /mods/$m || echo "initramfs: insmod $m failed"; done
ptb_init= ptb_moddir=
for a in $(cat /proc/cmdline); do
	case $a in
	ptb.init=*) ptb_init=${a#ptb.init=} ;;
	ptb.moddir=*) ptb_moddir=${a#ptb.moddir=} ;;
	esac
done
fail() { echo "initramfs: $*"; echo o > /proc/sysrq-trigger; sleep 5; poweroff -f; }
mount -t 9p -o ro,trans=virtio,version=9p2000.L,msize=262144,cache=loose hostroot /lower ||
	fail "cannot mount the host root over 9p"
mount -t tmpfs -o mode=0755 tmpfs /upper && mkdir -p /upper/u /upper/w ||
	fail "cannot mount tmpfs"
if ! mount -t overlay -o lowerdir=/lower,upperdir=/upper/u,workdir=/upper/w overlay /newroot; then
	echo "initramfs: overlay failed, using the read-only root"
	mount --move /lower /newroot || fail "cannot move root"
fi
[ -n "$ptb_init" ] && [ -f "/newroot$ptb_init" ] || fail "ptb.init '$ptb_init' not found"
if [ -n "$ptb_moddir" ]; then
	kmods=/lib/modules/$(uname -r)
	mkdir -p "/newroot$kmods" && mount --bind "/newroot$ptb_moddir$kmods" "/newroot$kmods" ||
		fail "cannot bind $ptb_moddir$kmods on $kmods"
fi
umount /proc /sys
mount --move /dev /newroot/dev 2>/dev/null || umount /dev
exec switch_root /newroot /bin/bash "$ptb_init"
INIT
	chmod 755 "$tmp/init" &&
	(cd "$tmp" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --quiet | gzip -9) \
		> "$tmp.cpio.gz" &&
	mv -f "$tmp.cpio.gz" "$initrd" &&
	echo "$key" > "$cache/initrd.key"
	local rc=$?
	rm -rf "$tmp" "$tmp.cpio.gz"
	return $rc
}

(
	flock 9
	if [ ! -s "$initrd" ] || [ "$(cat "$cache/initrd.key" 2>/dev/null)" != "$key" ]; then
		echo "run-vm: building $initrd" >&2
		build_initrd || exit 1
	fi
) 9> "$cache/.lock" || die "initramfs build failed"

# --- the guest command ----------------------------------------------------
{
	for e in "${envs[@]}"; do
		[[ $e =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "bad --env '$e'"
		printf 'export %s=%q\n' "${e%%=*}" "${e#*=}"
	done
	printf 'cd %q || exit 125\n' "$repo"
	printf 'exec'
	printf ' %q' "$@"
	printf '\n'
} > "$outdir/guest-cmd.sh"

cmdline="console=ttyS0 edd=off loglevel=4 log_buf_len=8M panic=-1 printk.devkmsg=on"
cmdline="$cmdline ptb.init=$here/guest-init.sh ptb.repo=$repo ptb.conlevel=$conlevel"
[ -n "$moddir" ] && cmdline="$cmdline ptb.moddir=$moddir"
[ -n "$append" ] && cmdline="$cmdline $append"

# A guest kernel that dies while booting, before guest-init has mounted the
# output directory (it then starts dmesg-live.txt), never ran the command:
# nothing of ours was loaded.  TCG has been seen to hit a spurious int3 Oops
# there (6.12, patching kernel text at boot); such a boot is tried once more.
start=$(date +%s)
for attempt in 1 2; do
	timeout -k 15 "$timeout_s" qemu-system-x86_64 \
		-accel tcg -machine pc -cpu qemu64 -m "$mem" -smp "$smp" \
		${icount:+-icount "shift=$icount"} \
		-display none -nodefaults -serial stdio -no-reboot \
		-kernel "$kernel" -initrd "$initrd" -append "$cmdline" \
		-virtfs "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap,id=hostroot" \
		-virtfs "local,path=$outdir,mount_tag=ptbout,security_model=none,multidevs=remap,id=ptbout" \
		< /dev/null 2>&1 | sed -u 's/\r$//' | tee "$outdir/console.log"
	qrc=${PIPESTATUS[0]}
	[ -e "$outdir/dmesg-live.txt" ] || [ "$qrc" = 124 ] || [ "$qrc" = 137 ] && break
	[ "$attempt" = 1 ] && echo "run-vm: the guest kernel died while booting; booting again" >&2
done
end=$(date +%s)

if [ ! -s "$outdir/dmesg.txt" ] && [ -s "$outdir/dmesg-live.txt" ]; then
	cp "$outdir/dmesg-live.txt" "$outdir/dmesg.txt"
fi
if [ "$qrc" = 124 ] || [ "$qrc" = 137 ]; then
	echo "run-vm: guest timed out after ${timeout_s}s (outdir $outdir)" >&2
	exit 124
fi
rc=$(cat "$outdir/rc" 2>/dev/null)
case $rc in
''|*[!0-9]*)
	echo "run-vm: guest ended without a result (qemu rc $qrc, outdir $outdir)" >&2
	exit 125 ;;
esac
echo "run-vm: $kver, command exited $rc after $((end - start))s (outdir $outdir)" >&2
exit "$rc"
