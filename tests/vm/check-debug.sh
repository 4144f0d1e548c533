#!/bin/bash
# Host-side entry of `make check-debug': builds (or reuses) the debug kernel
# (tests/vm/build-debug-kernel.sh: KASAN, lockdep, kmemleak, UBSAN, debug
# objects, hung-task detector), builds the module against that kernel's tree,
# boots it with run-vm.sh and runs tests/vm/debug-guest.sh there: the whole
# suite, then a kmemleak scan and a check of the kernel log. Ends with
# "N passed, N failed[, N skipped]"; exits non-zero if anything failed.
#
#   usage: tests/vm/check-debug.sh [--fault leak|lock-order] [--outdir DIR]
#                                  [--timeout SECS] [--mem MB] [--selftest]
#   --fault F     build the module with the test-only fault PTB_TEST_FAULT=F
#   --selftest    prove the lane fails: one run per fault (TESTS defaults to
#                 "ptb_00_smoke ptb_04_sync_none": tables are resumed, and a
#                 backup is started, whose message takes the two locks in
#                 the other order); passes only if the leak is reported by
#                 kmemleak and the lock inversion by lockdep
#   --timeout     whole VM run (default $VM_TIMEOUT or 4800)
#   --mem         guest memory in MiB (default 4096: KASAN needs room)
#   env: TESTS, TEST_TIMEOUT (per test, default 1800 here), VM_TIMEOUT,
#        CHECK_OUTDIR, PTB_DEBUG_CACHE (kernel cache, see build-debug-kernel.sh)
# Logs go to OUTDIR (default: a new /tmp/ptbackup-check-debug.XXXXXX):
# check.log, dmesg.txt, console.log, kmemleak.txt, module-build.log.
set -u
set -o pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
repo=$(cd "$here/../.." && pwd -P)
cache=${PTB_DEBUG_CACHE:-${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/ptbackup-debug}
outdir=${CHECK_OUTDIR:-}
fault=
selftest=
vm_timeout=${VM_TIMEOUT:-4800}
test_timeout=${TEST_TIMEOUT:-1800}
mem=4096

while [ $# -gt 0 ]; do
	case $1 in
	--fault) fault=${2?}; shift 2 ;;
	--fault=*) fault=${1#*=}; shift ;;
	--outdir) outdir=${2:?}; shift 2 ;;
	--outdir=*) outdir=${1#*=}; shift ;;
	--timeout) vm_timeout=${2:?}; shift 2 ;;
	--timeout=*) vm_timeout=${1#*=}; shift ;;
	--mem) mem=${2:?}; shift 2 ;;
	--mem=*) mem=${1#*=}; shift ;;
	--selftest) selftest=1; shift ;;
	-h|--help) sed -n '2,23s/^# \{0,1\}//p' "$0"; exit 0 ;;
	*) echo "check-debug: unknown argument '$1'" >&2; exit 2 ;;
	esac
done
case $fault in ''|leak|lock-order) ;; *) echo "check-debug: --fault must be leak or lock-order" >&2; exit 2 ;; esac

# A make above us must not pass its variables (PTB_TEST_FAULT among them)
# or its jobserver to the builds below: the fault comes from --fault only.
unset MAKEFLAGS MFLAGS MAKELEVEL MAKEOVERRIDES PTB_TEST_FAULT

give_up() {	# give_up MESSAGE: one failed check, and out
	echo "check-debug: $*" >&2
	echo "0 passed, 1 failed"
	exit 1
}

# --- selftest: each fault must make the lane fail, with the right report ----
if [ -n "$selftest" ]; then
	[ -n "$fault" ] && { echo "check-debug: --selftest takes no --fault" >&2; exit 2; }
	if [ -z "$outdir" ]; then
		outdir=$(mktemp -d "${TMPDIR:-/tmp}/ptbackup-check-debug-selftest.XXXXXX") || exit 1
	fi
	export TESTS=${TESTS:-ptb_00_smoke ptb_04_sync_none}
	pass=0 fail=0
	for f in leak lock-order; do
		case $f in
		leak) want='unreferenced object' ;;
		lock-order) want='possible circular locking dependency' ;;
		esac
		echo "# selftest: PTB_TEST_FAULT=$f must be caught ($want), TESTS=$TESTS"
		bash "$here/check-debug.sh" --fault "$f" --outdir "$outdir/$f" --timeout "$vm_timeout" --mem "$mem" |
			sed -u 's/^/# /'
		rc=${PIPESTATUS[0]}
		if [ "$rc" != 0 ] && grep -qF "$want" "$outdir/$f/check.log"; then
			pass=$((pass + 1))
			echo "ok: PTB_TEST_FAULT=$f caught (run exit $rc)"
		else
			fail=$((fail + 1))
			echo "not ok: PTB_TEST_FAULT=$f not caught (run exit $rc, no '$want' in $outdir/$f/check.log)"
		fi
	done
	echo "$pass passed, $fail failed"
	[ "$fail" = 0 ]
	exit
fi

case $vm_timeout$mem in *[!0-9]*) echo "check-debug: bad --timeout or --mem" >&2; exit 2 ;; esac
if [ -z "$outdir" ]; then
	outdir=$(mktemp -d "${TMPDIR:-/tmp}/ptbackup-check-debug.XXXXXX") || exit 1
fi
mkdir -p "$outdir" || exit 1
outdir=$(cd "$outdir" && pwd -P)
log=$outdir/check.log
: > "$log"

# --- the kernel ------------------------------------------------------------
bash "$here/build-debug-kernel.sh" --cache "$cache" || give_up "debug kernel build failed"
cache=$(cd "$cache" && pwd -P)
exec 9< "$cache/.lock" || give_up "cannot open $cache/.lock"
flock -s 9 || give_up "flock failed"	# no rebuild while we read the tree
# shellcheck source=/dev/null
. "$cache/kernel.env" || give_up "no $cache/kernel.env"
kver=$PTB_DEBUG_KVER

# --- the module, built from a copy of the sources: the repo's objects stay --
# those of the normal lane, and concurrent builds there are left alone.
src=$outdir/module
mlog=$outdir/module-build.log
if ! { rm -rf "$src" && mkdir -p "$src" &&
	cp -a "$repo/Kbuild" "$repo/dm-ptbackup" "$repo/scripts" "$src/"; }; then
	give_up "cannot copy the module sources to $src"
fi
find "$src" \( -name '*.o' -o -name '*.ko' -o -name '*.mod' -o -name '*.mod.c' \
	-o -name '.*.cmd' -o -name '*.a' -o -name compat-gen.h -o -name modules.order \
	-o -name Module.symvers \) -delete
echo "check-debug: building dm-ptbackup for $kver${fault:+ with PTB_TEST_FAULT=$fault} (log $mlog)" >&2
if ! make -C "$PTB_DEBUG_KDIR" M="$src" -j"$(nproc)" PTB_TEST_FAULT="$fault" \
	KCFLAGS=-g modules > "$mlog" 2>&1; then
	tail -n 30 "$mlog" >&2
	give_up "module build failed (log $mlog)"
fi
grep -E 'warning:' "$mlog" >&2

modroot=$outdir/modroot
if ! { rm -rf "$modroot" && mkdir -p "$modroot/lib/modules" &&
	cp -a "$PTB_DEBUG_MODROOT/lib/modules/$kver" "$modroot/lib/modules/" &&
	install -D -m 0644 "$src/dm-ptbackup.ko" \
		"$modroot/lib/modules/$kver/updates/dm-ptbackup/dm-ptbackup.ko" &&
	depmod -b "$modroot" "$kver"; }; then
	give_up "cannot install the module in $modroot"
fi
flock -u 9
vermagic=$(modinfo -F vermagic "$src/dm-ptbackup.ko")
[ "${vermagic%% *}" = "$kver" ] || give_up "module vermagic '$vermagic' is not $kver"
modprobe -d "$modroot" -S "$kver" -n dm-ptbackup ||
	give_up "modprobe cannot resolve dm-ptbackup in $modroot"

# --- the run ---------------------------------------------------------------
# pci=noacpi: under TCG this kernel's ACPI interpreter is too slow for
# QEMU's _PRT method (AE_AML_LOOP_TIMEOUT, then no virtio interrupts).
vm_args=(--kernel "$PTB_DEBUG_KERNEL" --kver "$kver" --modules "$modroot"
	--mem "$mem" --timeout "$vm_timeout" --outdir "$outdir"
	--append "pci=noacpi rcupdate.rcu_cpu_stall_timeout=60 kasan_multi_shot"
	--env "TEST_TIMEOUT=$test_timeout")
[ -n "${TESTS:-}" ] && vm_args+=(--env "TESTS=$TESTS")
[ -n "$fault" ] && vm_args+=(--env "PTB_TEST_FAULT=$fault")

echo "check-debug: booting $kver (mem ${mem} MiB, VM timeout ${vm_timeout}s, TEST_TIMEOUT ${test_timeout}s), outdir $outdir" >&2
start=$(date +%s)
"$here/run-vm.sh" "${vm_args[@]}" -- tests/vm/debug-guest.sh 2>&1 | tee -a "$log"
rc=${PIPESTATUS[0]}
secs=$(($(date +%s) - start))

summary=$(grep -E '^[0-9]+ passed, [0-9]+ failed(, [0-9]+ skipped)?$' "$log" | tail -n1)
echo "# log: $log, dmesg: $outdir/dmesg.txt, VM run ${secs}s"
if [ -z "$summary" ]; then
	echo "# no summary from the guest (run-vm exit $rc): crash, hang or timeout"
	for f in "$outdir/dmesg.txt" "$outdir/dmesg-live.txt" "$outdir/console.log"; do
		[ -s "$f" ] || continue
		echo "# last kernel messages ($f):"
		tail -n 80 "$f" | sed 's/^/#   /'
		break
	done
	echo "0 passed, 1 failed"
	exit 1
fi
if [ "$rc" != 0 ] && [[ $summary =~ ^([0-9]+)\ passed,\ 0\ failed(.*)$ ]]; then
	summary="${BASH_REMATCH[1]} passed, 1 failed${BASH_REMATCH[2]}"
fi
echo "$summary"
[ "$rc" = 0 ]
