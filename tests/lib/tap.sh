# shellcheck shell=bash
# Small TAP (kselftest-style) helpers for the ptbackup shell tests.
# Source it:  . "$(dirname "$0")/lib/tap.sh"
#
# Results:  tap_plan N | ok DESC | not_ok DESC | tap_skip DESC [REASON]
#           tap_check DESC CMD... | tap_expect_fail DESC CMD... | tap_eq DESC EXP ACT
#           tap_diag MSG... | tap_skip_all REASON | tap_done
# Guards:   need_root | need_cmd CMD... | need_module MOD...
# Cleanup:  tap_on_exit CMD...   (run LIFO at exit, also from $(...) subshells)
# Devices:  make_brd COUNT SIZE_MB | make_loop SIZE_MB | sha_dev DEV [BYTES]
#           dev_sectors DEV | dm_create NAME TABLE | dm_msg DEV ARGS...
#           dm_status_field DEV N | dm_table_field DEV N
# Low level: _tap_run CMD...  runs CMD, sets TAP_RC and TAP_OUT (stdout+stderr).
# Exit codes of tap_done: 0 all passed, 1 a failure, 4 (KSFT_SKIP) all skipped.
set -u

TAP_NUM=0
TAP_PASS=0
TAP_FAIL=0
TAP_SKIPPED=0
TAP_PLANNED=
TAP_HEADER=

export DM_DISABLE_UDEV=1
TAP_CLEANUP_FILE=$(mktemp "${TMPDIR:-/tmp}/tap-cleanup.XXXXXX") || exit 1

_tap_header() {
	[ -n "$TAP_HEADER" ] && return
	TAP_HEADER=1
	echo "TAP version 13"
}

tap_plan() {
	_tap_header
	TAP_PLANNED=$1
	echo "1..$1"
}

tap_diag() {
	local line
	printf '%s\n' "$*" | while IFS= read -r line; do echo "# $line"; done
}

ok() {
	_tap_header
	TAP_NUM=$((TAP_NUM + 1))
	TAP_PASS=$((TAP_PASS + 1))
	echo "ok $TAP_NUM ${1:-}"
}

not_ok() {
	_tap_header
	TAP_NUM=$((TAP_NUM + 1))
	TAP_FAIL=$((TAP_FAIL + 1))
	echo "not ok $TAP_NUM ${1:-}"
}

tap_skip() {
	_tap_header
	TAP_NUM=$((TAP_NUM + 1))
	TAP_SKIPPED=$((TAP_SKIPPED + 1))
	echo "ok $TAP_NUM ${1:-} # SKIP${2:+ $2}"
}

# Run CMD, capturing its output; print it as diagnostics on failure.
# Sets TAP_OUT (the output) and TAP_RC (the exit status).
_tap_run() {
	local f
	f=$(mktemp "${TMPDIR:-/tmp}/tap-out.XXXXXX") || return 1
	"$@" > "$f" 2>&1
	TAP_RC=$?
	TAP_OUT=$(cat "$f")
	rm -f "$f"
}

_tap_cmd_diag() {
	tap_diag "cmd: $*"
	tap_diag "exit status: $TAP_RC"
	[ -n "$TAP_OUT" ] && tap_diag "$TAP_OUT"
	return 0
}

tap_check() {
	local desc=$1
	shift
	_tap_run "$@"
	if [ "$TAP_RC" = 0 ]; then
		ok "$desc"
	else
		not_ok "$desc"
		_tap_cmd_diag "$@"
		return 1
	fi
}

tap_expect_fail() {
	local desc=$1
	shift
	_tap_run "$@"
	if [ "$TAP_RC" != 0 ]; then
		ok "$desc"
	else
		not_ok "$desc"
		tap_diag "expected failure, but it succeeded"
		_tap_cmd_diag "$@"
		return 1
	fi
}

tap_eq() {
	if [ "$2" = "$3" ]; then
		ok "$1"
	else
		not_ok "$1"
		tap_diag "expected: '$2'"
		tap_diag "actual:   '$3'"
		return 1
	fi
}

# Exit: 0 all passed, 1 any failed (or wrong count), 4 all skipped.
tap_done() {
	_tap_header
	if [ -z "$TAP_PLANNED" ]; then
		echo "1..$TAP_NUM"
	elif [ "$TAP_PLANNED" != "$TAP_NUM" ]; then
		tap_diag "planned $TAP_PLANNED tests but ran $TAP_NUM"
		TAP_FAIL=$((TAP_FAIL + 1))
	fi
	tap_diag "pass:$TAP_PASS fail:$TAP_FAIL skip:$TAP_SKIPPED"
	if [ "$TAP_FAIL" -gt 0 ]; then
		exit 1
	elif [ "$TAP_PASS" = 0 ] && [ "$TAP_SKIPPED" -gt 0 ]; then
		exit 4
	fi
	exit 0
}

tap_skip_all() {
	_tap_header
	echo "1..0 # SKIP ${1:-}"
	exit 4
}

need_root() {
	[ "$(id -u)" = 0 ] || tap_skip_all "must be run as root"
}

need_cmd() {
	local c
	for c in "$@"; do
		command -v "$c" >/dev/null 2>&1 || tap_skip_all "$c not found"
	done
}

need_module() {
	local m
	for m in "$@"; do
		modprobe "$m" >/dev/null 2>&1 || tap_skip_all "cannot load module $m"
	done
}

# --- cleanup -------------------------------------------------------------
# Commands are stored in a file so that registrations made inside $(...)
# reach the main shell's EXIT trap. They run last-registered first.
_tap_cleanup() {
	local rc=$? cmds i
	trap - EXIT
	if [ -f "$TAP_CLEANUP_FILE" ]; then
		mapfile -t cmds < "$TAP_CLEANUP_FILE"
		for ((i = ${#cmds[@]} - 1; i >= 0; i--)); do
			eval "${cmds[i]}" >/dev/null 2>&1 </dev/null
		done
		rm -f "$TAP_CLEANUP_FILE"
	fi
	exit "$rc"
}
trap _tap_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

tap_on_exit() {
	local q
	q=$(printf '%q ' "$@")
	echo "$q" >> "$TAP_CLEANUP_FILE"
}

# --- devices -------------------------------------------------------------
# make_brd COUNT SIZE_MB: echoes /dev/ram0 .. /dev/ram<COUNT-1>.
# brd takes its parameters only at load time: an unused loaded brd is
# reloaded; brd is unloaded again at exit.
make_brd() {
	local n=$1 mb=$2 i
	if [ -d /sys/module/brd ]; then
		rmmod brd 2>/dev/null || {
			echo "make_brd: brd is loaded and busy" >&2
			return 1
		}
	fi
	modprobe brd rd_nr="$n" rd_size=$((mb * 1024)) max_part=0 || return 1
	tap_on_exit rmmod brd
	for ((i = 0; i < n; i++)); do
		[ -b "/dev/ram$i" ] || { echo "make_brd: /dev/ram$i missing" >&2; return 1; }
		echo "/dev/ram$i"
	done
}

# make_loop SIZE_MB: echoes the /dev/loopN over a sparse file in /tmp.
# Loop devices support discard (brd in 6.1 does not).
make_loop() {
	local mb=$1 f dev
	modprobe loop 2>/dev/null
	f=$(mktemp "${TMPDIR:-/tmp}/ptb-loop.XXXXXX") || return 1
	tap_on_exit rm -f "$f"
	truncate -s "${mb}M" "$f" || return 1
	dev=$(losetup -f --show "$f") || return 1
	tap_on_exit losetup -d "$dev"
	echo "$dev"
}

# sha_dev DEV [BYTES]: sha256 of the device (or its first BYTES, a multiple
# of 512), read with O_DIRECT so no stale page cache is hashed.
sha_dev() {
	local dev=$1 sum
	if [ $# -gt 1 ]; then
		sum=$(dd if="$dev" bs=1M iflag=direct,count_bytes count="$2" status=none | sha256sum)
	else
		sum=$(dd if="$dev" bs=1M iflag=direct status=none | sha256sum)
	fi || return 1
	echo "${sum%% *}"
}

dev_sectors() {
	blockdev --getsz "$1"
}

# dm_create NAME TABLE: create a device, removed again at exit.
dm_create() {
	dmsetup create "$1" --table "$2" || return 1
	tap_on_exit dmsetup remove --retry "$1"
}

dm_msg() {
	local dev=$1
	shift
	dmsetup message "$dev" 0 "$@"
}

# dm_status_field DEV N: the Nth (1-based) target-specific word of
# `dmsetup status DEV`, i.e. after "<start> <length> <target>".
dm_status_field() {
	local words
	read -ra words < <(dmsetup status "$1") || return 1
	[ "${#words[@]}" -ge $(($2 + 3)) ] || return 1
	echo "${words[$2 + 2]}"
}

# dm_table_field DEV N: the same for `dmsetup table DEV`.
dm_table_field() {
	local words
	read -ra words < <(dmsetup table "$1") || return 1
	[ "${#words[@]}" -ge $(($2 + 3)) ] || return 1
	echo "${words[$2 + 2]}"
}
