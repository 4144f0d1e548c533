# shellcheck shell=bash
# Helpers for the ptbackup tests, on top of tap.sh.
#
#   ptb_job_field DEV JOB FIELD    one field of a job in `dmsetup status`
#                                  (sync state done total speed error)
#   ptb_job_info DEV JOB KEY       the value of KEY=... in the job's line of
#                                  `job list' (store saved held released ...)
#   ptb_wait_state DEV JOB STATE [SECS]   poll until the job is in STATE
#   dmesg_mark / dmesg_since       kernel log lines since the mark
#   expect_refused DESC TEXT CMD...  CMD fails and the log says TEXT
#   status_of DEV                  the target part of `dmsetup status`
#   ptb_dump DEV BITMAP            the bitmap's dirty extents, on one line
#   ptb_wait_copied DEV JOB        poll (30 s) until done equals total
#   dm_rm NAME...                  remove devices, quietly

status_of() {
	dmsetup status "$1" | cut -d' ' -f4-
}

ptb_job_field() {
	local dev=$1 job=$2 field=$3 words i n idx
	read -ra words < <(dmsetup status "$dev") || return 1
	case $field in
	sync) idx=2 ;; state) idx=3 ;; done) idx=4 ;; total) idx=5 ;;
	speed) idx=6 ;; error) idx=7 ;; *) return 1 ;;
	esac
	n=${words[7]}
	for ((i = 0; i < n; i++)); do
		if [ "${words[8 + i * 8]}" = "$job" ]; then
			echo "${words[8 + i * 8 + idx]}"
			return 0
		fi
	done
	return 1
}

ptb_job_info() {
	dm_msg "$1" job list | awk -v job="$2" -v key="$3" '
		$1 == job { for (i = 2; i <= NF; i++) if (index($i, key "=") == 1) {
			print substr($i, length(key) + 2); exit } }'
}

ptb_wait_state() {
	local dev=$1 job=$2 want=$3 secs=${4:-120} s i
	for ((i = 0; i < secs * 10; i++)); do
		s=$(ptb_job_field "$dev" "$job" state) || return 1
		[ "$s" = "$want" ] && return 0
		case $s in completed|cancelled|failed)
			[ "$s" != "$want" ] && { echo "job $job is $s, wanted $want" >&2; return 1; } ;;
		esac
		sleep 0.1
	done
	echo "job $job still $s after ${secs}s, wanted $want" >&2
	return 1
}

ptb_dump() {
	dm_msg "$1" bitmap dump "$2" | tr '\n' ' ' | sed 's/ $//'
}

ptb_wait_copied() {
	local i
	for ((i = 0; i < 600; i++)); do
		[ "$(ptb_job_field "$1" "$2" done)" = "$(ptb_job_field "$1" "$2" total)" ] && return 0
		sleep 0.05
	done
	return 1
}

dm_rm() {
	dmsetup remove "$@" >/dev/null 2>&1
}

DMESG_MARK=0
dmesg_mark() {
	DMESG_MARK=$(dmesg | wc -l)
}

dmesg_since() {
	dmesg | tail -n +$((DMESG_MARK + 1))
}

# expect_refused DESC TEXT CMD...: CMD fails, and a kernel log line written
# meanwhile contains TEXT.
expect_refused() {
	local desc=$1 text=$2
	shift 2
	dmesg_mark
	_tap_run "$@"
	if [ "$TAP_RC" = 0 ]; then
		not_ok "$desc"
		tap_diag "expected failure, but it succeeded: $*"
		return 1
	fi
	if ! dmesg_since | grep -qF -- "$text"; then
		not_ok "$desc"
		tap_diag "kernel log lacks '$text'; it says:"
		tap_diag "$(dmesg_since | tail -n 5)"
		return 1
	fi
	ok "$desc"
}

# fill_random DEV [MB]: random data over the device (or its first MB).
fill_random() {
	local dev=$1 mb=${2:-}
	if [ -n "$mb" ]; then
		head -c "${mb}M" /dev/urandom | dd of="$dev" bs=1M oflag=direct iflag=fullblock status=none
	else
		head -c "$(blockdev --getsize64 "$dev")" /dev/urandom |
			dd of="$dev" bs=1M oflag=direct iflag=fullblock status=none
	fi
}

# sha_sectors DEV SECTORS: sha256 of the first SECTORS sectors.
sha_sectors() {
	sha_dev "$1" $(($2 * 512))
}

# start_fio DEV: fio in the background, random writes of mixed sizes plus
# random trims, for 15 minutes or until killed (FIO_PID; killed at exit).
FIO_PID=
start_fio() {
	fio --output=/dev/null --filename="$1" --direct=1 --time_based --runtime=900 \
		--name=w --ioengine=psync --rw=randwrite --bsrange=512-192k \
		--name=t --ioengine=psync --rw=randtrim --bsrange=4k-512k --rate_iops=50 &
	FIO_PID=$!
	tap_on_exit kill $FIO_PID
	sleep 1
}
