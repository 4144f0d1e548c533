#!/bin/bash
# Host-side entry of `make check`: boots the VM, runs tests/run-suite.sh and
# ends with the suite's "N passed, N failed" line. The module must already
# be built and installed under /lib/modules/KVER (the Makefile does that).
#   usage: tests/vm/check.sh [--kver KVER] [--outdir DIR] [--timeout SECS]
#   env:   KVER, TESTS, TEST_TIMEOUT, VM_TIMEOUT, CHECK_OUTDIR
# Logs go to OUTDIR (default: a new /tmp/ptbackup-check-KVER.XXXXXX).
set -u

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
kver=${KVER:-}
outdir=${CHECK_OUTDIR:-}
vm_args=()

while [ $# -gt 0 ]; do
	case $1 in
	--kver) kver=${2:?}; shift 2 ;;
	--kver=*) kver=${1#*=}; shift ;;
	--outdir) outdir=${2:?}; shift 2 ;;
	--outdir=*) outdir=${1#*=}; shift ;;
	--timeout) vm_args+=(--timeout "${2:?}"); shift 2 ;;
	--timeout=*) vm_args+=(--timeout "${1#*=}"); shift ;;
	-h|--help) sed -n '2,7s/^# \{0,1\}//p' "$0"; exit 0 ;;
	*) echo "check.sh: unknown argument '$1'" >&2; exit 2 ;;
	esac
done

[ -n "$kver" ] && vm_args+=(--kver "$kver")
if [ -z "$outdir" ]; then
	outdir=$(mktemp -d "${TMPDIR:-/tmp}/ptbackup-check${kver:+-$kver}.XXXXXX") || exit 1
fi
mkdir -p "$outdir" || exit 1
log=$outdir/check.log
for v in TESTS TEST_TIMEOUT; do
	[ -n "${!v:-}" ] && vm_args+=(--env "$v=${!v}")
done

"$here/run-vm.sh" "${vm_args[@]}" --outdir "$outdir" -- tests/run-suite.sh 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}

summary=$(grep -E '^[0-9]+ passed, [0-9]+ failed(, [0-9]+ skipped)?$' "$log" | tail -n1)

# Persistence across a guest reboot: two boots sharing image files in the
# output directory.  Counted as one more test of the suite.
reboot_rc=skip
if [ -z "${TESTS:-}" ] && [ -n "$summary" ]; then
	echo "# reboot persistence: first boot"
	"$here/run-vm.sh" "${vm_args[@]}" --outdir "$outdir/reboot-1" -- tests/reboot/phase1.sh \
		> "$outdir/reboot-1.log" 2>&1
	mkdir -p "$outdir/reboot-2"
	mv "$outdir/reboot-1/reboot" "$outdir/reboot-2/" 2>/dev/null
	echo "# reboot persistence: second boot"
	"$here/run-vm.sh" "${vm_args[@]}" --outdir "$outdir/reboot-2" -- tests/reboot/phase2.sh \
		2>&1 | tee "$outdir/reboot-2.log" | grep -E '^(not )?ok|^#' | sed 's/^/# /'
	reboot_rc=${PIPESTATUS[0]}
	if [ "$reboot_rc" = 0 ]; then
		echo "ok - reboot persistence"
	else
		echo "not ok - reboot persistence (see $outdir/reboot-*.log)"
	fi
fi
if [ "$reboot_rc" != skip ] &&
   [[ $summary =~ ^([0-9]+)\ passed,\ ([0-9]+)\ failed(.*)$ ]]; then
	if [ "$reboot_rc" = 0 ]; then
		summary="$((BASH_REMATCH[1] + 1)) passed, ${BASH_REMATCH[2]} failed${BASH_REMATCH[3]}"
	else
		summary="${BASH_REMATCH[1]} passed, $((BASH_REMATCH[2] + 1)) failed${BASH_REMATCH[3]}"
		rc=1
	fi
fi
echo "# log: $log, dmesg: $outdir/dmesg.txt"
if [ -z "$summary" ]; then
	echo "# no summary from the guest (run-vm exit $rc): crash or timeout"
	if [ -s "$outdir/dmesg.txt" ]; then
		echo "# last kernel messages:"
		tail -n 40 "$outdir/dmesg.txt" | sed 's/^/#   /'
	fi
	echo "0 passed, 1 failed"
	exit 1
fi
if [ "$rc" != 0 ] && [[ $summary =~ ^([0-9]+)\ passed,\ 0\ failed(.*)$ ]]; then
	summary="${BASH_REMATCH[1]} passed, 1 failed${BASH_REMATCH[2]}"
fi
echo "$summary"
[ "$rc" = 0 ]
