#!/bin/bash
# In-guest runner: runs tests/ptb_*.sh as kselftest-style subtests, then
# unloads the module and checks dmesg. Prints TAP and a final
# "N passed, N failed[, N skipped]" line; exits 1 if anything failed.
#   TESTS="ptb_00_smoke ptb_foo"  run a subset     TEST_TIMEOUT=SECS  per test (600)
set -u

dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
cd "$dir/.." || exit 1
export DM_DISABLE_UDEV=1
timeout_s=${TEST_TIMEOUT:-600}
dmesg_re='BUG:|WARNING:|Oops|general protection|Call Trace|KASAN|UBSAN|kernel BUG|possible circular locking|possible recursive locking|blocked for more than|INFO: task|Kernel panic|refcount_t:|list_(add|del) corruption|kmemleak'

tests=()
for t in tests/ptb_*.sh; do
	if [ ! -f "$t" ] || [ ! -x "$t" ]; then
		continue
	fi
	name=${t##*/}
	if [ -n "${TESTS:-}" ]; then
		case " $TESTS " in *" $name "*|*" ${name%.sh} "*) ;; *) continue ;; esac
	fi
	tests+=("$t")
done

pass=0 fail=0 skip=0 num=0
result() {	# result STATUS NAME [DIRECTIVE]
	num=$((num + 1))
	case $1 in
	ok) pass=$((pass + 1)); echo "ok $num $2" ;;
	skip) skip=$((skip + 1)); echo "ok $num $2 # SKIP${3:+ $3}" ;;
	*) fail=$((fail + 1)); echo "not ok $num $2${3:+ # $3}" ;;
	esac
}

# run_test TEST: its TAP on stderr as comments, then its exit status.  The
# test runs in a session of its own with its output in a file (no pipe that
# a process it left behind could hold open); once it has ended, what it left
# running is killed.  "hung" if it has not ended (stuck in the kernel,
# unkillable) hang_s seconds after its timeout: then the blocked tasks go
# to the kernel log, its tail is shown, and the suite goes on without it.
hang_s=${TEST_HANG_GRACE:-60}
run_test() {
	local out pid tailer waited=0 limit rc
	out=$(mktemp)
	setsid bash -c 'exec timeout -k 10 "$0" "$1" < /dev/null > "$2" 2>&1' \
		"$timeout_s" "$1" "$out" &
	pid=$!
	tail -n +1 -f --pid=$pid "$out" 2>/dev/null | sed -u 's/^/# /' >&2 &
	tailer=$!
	limit=$(((timeout_s + hang_s) * 5))
	while kill -0 $pid 2>/dev/null; do
		if [ $waited -ge $limit ]; then
			{ echo w > /proc/sysrq-trigger; } 2>/dev/null
			sleep 1
			dmesg | tail -n 120 | sed 's/^/# hung: /' >&2
			kill $tailer 2>/dev/null
			echo hung
			return
		fi
		sleep 0.2
		waited=$((waited + 1))
	done
	wait $pid
	rc=$?
	kill -KILL -- -$pid 2>/dev/null && echo "# (killed what the test left running)" >&2
	wait $tailer 2>/dev/null
	rm -f "$out"
	echo $rc
}

echo "TAP version 13"
echo "1..$((${#tests[@]} + 2))"
[ -n "${TESTS:-}" ] && [ ${#tests[@]} = 0 ] && echo "# no test matches TESTS='$TESTS'"

modprobe dm-mod 2>/dev/null
marker="ptbackup-suite-start-$$-$(date +%s)"
echo "$marker" > /dev/kmsg 2>/dev/null

for t in "${tests[@]}"; do
	name=${t##*/}
	echo "# selftests: ptbackup: $name"
	start=$(date +%s)
	rc=$(run_test "$t")
	echo "# $name: exit $rc in $(($(date +%s) - start))s"
	case $rc in
	hung) result fail "$name" "HUNG (not ended ${hang_s}s after its timeout)" ;;
	0) result ok "$name" ;;
	4) result skip "$name" ;;
	124|137) result fail "$name" "TIMEOUT ${timeout_s}s" ;;
	*) result fail "$name" "exit=$rc" ;;
	esac
done

echo "# selftests: ptbackup: module unload"
if [ -d /sys/module/dm_ptbackup ]; then
	rmmod dm_ptbackup 2>&1 | sed 's/^/# /'
	if [ "${PIPESTATUS[0]}" = 0 ]; then
		result ok "module unload"
	else
		dmsetup table 2>&1 | sed 's/^/# dmsetup table: /'
		result fail "module unload"
	fi
else
	result skip "module unload" "dm_ptbackup not loaded"
fi

echo "# selftests: ptbackup: dmesg clean"
if dmesg > /dev/null 2>&1; then
	bad=$(dmesg | awk -v m="$marker" 'found; index($0, m) { found = 1 }' |
		grep -E "$dmesg_re")
	if [ -n "$bad" ]; then
		echo "$bad" | head -n 200 | sed 's/^/# /'
		result fail "dmesg clean"
	else
		result ok "dmesg clean"
	fi
else
	result skip "dmesg clean" "dmesg not readable"
fi

if [ "$skip" -gt 0 ]; then
	echo "$pass passed, $fail failed, $skip skipped"
else
	echo "$pass passed, $fail failed"
fi
[ "$fail" = 0 ]
