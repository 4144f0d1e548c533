#!/bin/bash
# In-guest side of `make check-debug' (started by tests/vm/check-debug.sh
# through run-vm.sh, on the debug kernel): runs tests/run-suite.sh, then
# asks kmemleak for a scan and reads the kernel log written since the suite
# started. Any BUG, WARNING, KASAN, UBSAN, lockdep, debug-objects,
# kmemleak or hung-task report fails the run and is printed.
# The last line is "N passed, N failed[, N skipped]": the suite's tests plus
# three checks (detectors armed, kmemleak, kernel log).
#   env: TESTS, TEST_TIMEOUT (passed on to run-suite.sh)
#        KMEMLEAK_WAIT  seconds between the two final scans (default 10)
set -u

dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
cd "$dir/../.." || exit 1
export DM_DISABLE_UDEV=1

# What fails the run when it appears in the kernel log after the marker.
report_re='BUG:|WARNING:|KASAN|UBSAN|kernel BUG|Oops|general protection fault'
report_re+='|possible circular locking|possible recursive locking|inconsistent lock state'
report_re+='|suspicious RCU usage|circular locking dependency|lock held when returning'
report_re+='|DEBUG_LOCKS_WARN_ON|turning off the locking correctness validator'
report_re+='|ODEBUG:|list_(add|del) corruption|refcount_t:|scheduling while atomic'
report_re+='|sleeping function called from invalid context'
# kmemleak's own "N new suspected memory leaks" line is left to the kmemleak check.
report_re+='|unreferenced object|kmemleak: .*(disabled|error|failed)'
report_re+='|blocked for more than|INFO: task .* blocked|Kernel panic|Call Trace'
# Lines that start a report: printed with what follows them.
start_re='BUG:|WARNING:|UBSAN:|ODEBUG:|kernel BUG|Oops|general protection fault'
start_re+='|INFO: task|blocked for more than|Kernel panic'

kml=/sys/kernel/debug/kmemleak
wait_s=${KMEMLEAK_WAIT:-10}
pass=0 fail=0 skip=0

result() {	# result ok|fail NAME
	if [ "$1" = ok ]; then
		pass=$((pass + 1)); echo "# debug: ok: $2"
	else
		fail=$((fail + 1)); echo "# debug: FAIL: $2"
	fi
}

# kmemleak prints its backtraces when it is read, after the suite has
# unloaded the module: its frames are then bare addresses. While the suite
# runs, keep a copy of the module's symbols from each load to name them.
# It also puts the console log level back every second: a lockdep report
# raises it for good, and the tests' expected errors would then flood the
# TAP stream (every report is printed again at the end, from dmesg).
syms=/tmp/ptb-kallsyms.txt
conlevel=$(sed -n 's/.*ptb\.conlevel=\([1-8]\).*/\1/p' /proc/cmdline)
watch_module() {
	local last='' text
	while :; do
		dmesg -n "${conlevel:-1}" 2>/dev/null
		if text=$(cat /sys/module/dm_ptbackup/sections/.text 2>/dev/null) &&
			[ "$text" != "$last" ] &&
			grep -E ' [tT] .*\[dm_ptbackup\]$' /proc/kallsyms >> "$syms"; then
			last=$text
		fi
		sleep 1
	done
}

# symbolize: annotates bare 0xffffffff........ frames from the saved symbols.
symbolize() {
	awk -v symfile="$syms" '
		function hexval(h,   i, v) {
			v = 0; h = tolower(h)
			for (i = 1; i <= length(h); i++)
				v = v * 16 + index("0123456789abcdef", substr(h, i, 1)) - 1
			return v
		}
		BEGIN {
			while ((getline line < symfile) > 0) {
				split(line, f, " ")
				if (length(f[1]) != 16) continue
				n++; hi[n] = substr(f[1], 1, 8); lo[n] = hexval(substr(f[1], 9)); name[n] = f[3]
			}
		}
		match($0, /0xffffffff[0-9a-f]+$/) && n {
			a = substr($0, RSTART + 2); ahi = substr(a, 1, 8); alo = hexval(substr(a, 9))
			best = 0
			for (i = 1; i <= n; i++)
				if (hi[i] == ahi && lo[i] <= alo && (!best || lo[i] > lo[best]))
					best = i
			if (best && alo - lo[best] < 65536) {
				printf "%s (%s+0x%x [dm_ptbackup])\n", $0, name[best], alo - lo[best]
				next
			}
		}
		{ print }
	'
}

# print_reports FILE: each report in FILE with up to 80 lines of context.
print_reports() {
	awk -v re="$start_re" -v all="$report_re" '
		$0 ~ re { left = 80 }
		left > 0 || $0 ~ all { print; if (left > 0) left--; n++ }
		n >= 1500 { print "[... cut: see dmesg.txt]"; exit }
	' "$1" | sed 's/^/#   /'
}

mountpoint -q /sys/kernel/debug || mount -t debugfs debugfs /sys/kernel/debug
echo "# debug: kernel $(uname -r), $(nproc) CPUs, $(awk '/MemTotal/ { print int($2 / 1024) }' /proc/meminfo) MiB"
[ -n "${PTB_TEST_FAULT:-}" ] && echo "# debug: module built with PTB_TEST_FAULT=$PTB_TEST_FAULT"

# --- before the suite: detectors armed, boot-time leaks forgotten ---------
armed=1
if grep -q 'debug_locks: *1' /proc/lockdep_stats 2>/dev/null; then
	echo "# debug: lockdep is on"
else
	echo "# debug: lockdep is off before the suite (a boot-time report?)"
	armed=0
fi
if [ -w "$kml" ] && echo scan > "$kml" 2>/dev/null && echo clear > "$kml" 2>/dev/null; then
	echo "# debug: kmemleak is on (boot-time objects cleared)"
else
	echo "# debug: kmemleak is not available"
	armed=0
fi
f=/proc/sys/kernel/hung_task_timeout_secs
[ -r "$f" ] && echo "# debug: hung task timeout $(cat "$f")s"
dmesg > /tmp/debug-boot.txt 2>&1
if grep -qE "$report_re" /tmp/debug-boot.txt; then
	echo "# debug: reports in the kernel log before the suite (not the module's):"
	print_reports /tmp/debug-boot.txt
fi
if [ "$armed" = 1 ]; then result ok "detectors armed"; else result fail "detectors armed"; fi

marker="ptbackup-debug-start-$$-$(date +%s)"
echo "$marker" > /dev/kmsg
: > "$syms"
watch_module &
watcher=$!

# --- the suite -----------------------------------------------------------
start=$(date +%s)
bash tests/run-suite.sh 2>&1 | tee /tmp/suite.out |
	sed -u -E 's/^([0-9]+ passed, [0-9]+ failed(, [0-9]+ skipped)?)$/# suite: \1/'
suite_rc=${PIPESTATUS[0]}
suite_s=$(($(date +%s) - start))
kill "$watcher" 2>/dev/null
wait "$watcher" 2>/dev/null
summary=$(grep -E '^[0-9]+ passed, [0-9]+ failed(, [0-9]+ skipped)?$' /tmp/suite.out | tail -n1)
if [[ $summary =~ ^([0-9]+)\ passed,\ ([0-9]+)\ failed(,\ ([0-9]+)\ skipped)?$ ]]; then
	pass=$((pass + BASH_REMATCH[1]))
	fail=$((fail + BASH_REMATCH[2]))
	skip=$((skip + ${BASH_REMATCH[4]:-0}))
	[ "$suite_rc" != 0 ] && [ "${BASH_REMATCH[2]}" = 0 ] && result fail "suite exit status $suite_rc"
else
	result fail "suite summary (run-suite.sh exit $suite_rc)"
fi
echo "# debug: suite took ${suite_s}s"

# --- kmemleak: two scans (a fresh leak may still look referenced) -------
start=$(date +%s)
leaks=
if [ -w "$kml" ] && echo scan > "$kml" 2>/dev/null; then
	sleep "$wait_s"
	if echo scan > "$kml" 2>/dev/null; then
		leaks=$(symbolize < "$kml" 2>&1)
		if [ -n "$leaks" ]; then
			echo "# debug: kmemleak report:"
			printf '%s\n' "$leaks" | head -n 1500 | sed 's/^/#   /'
			printf '%s\n' "$leaks" > /out/kmemleak.txt 2>/dev/null
			result fail "kmemleak ($(grep -c 'unreferenced object' <<< "$leaks") unreferenced objects)"
		else
			result ok "kmemleak"
		fi
	else
		result fail "kmemleak (second scan failed)"
	fi
else
	result fail "kmemleak (scan failed)"
fi
echo "# debug: kmemleak scans took $(($(date +%s) - start))s"

# --- the kernel log since the marker ---------------------------------------
dmesg | awk -v m="$marker" 'found; index($0, m) { found = 1 }' > /tmp/debug-suite.txt
if grep -qE "$report_re" /tmp/debug-suite.txt; then
	echo "# debug: kernel log reports since the suite started:"
	print_reports /tmp/debug-suite.txt
	result fail "kernel log clean"
elif [ ! -s /tmp/debug-suite.txt ] && ! dmesg | grep -qF "$marker"; then
	result fail "kernel log clean (suite marker not found in dmesg)"
else
	result ok "kernel log clean"
fi

if [ "$skip" -gt 0 ]; then
	echo "$pass passed, $fail failed, $skip skipped"
else
	echo "$pass passed, $fail failed"
fi
[ "$fail" = 0 ]
