#!/bin/bash
# SPDX-License-Identifier: GPL-2.0-only
#
# dm-ptbackup demo: a live, point-in-time full backup of a mounted ext4
# filesystem while it keeps being written, then proof that the backup is
# exactly the point in time (e2fsck and a sha256 of every file).
#
# Runs inside the test VM as root from the repo root (`make demo' boots the
# VM and calls it).  Needs dmsetup, mkfs.ext4, e2fsck, fsfreeze, fio and the
# brd module.  Knobs (environment):
#   DEMO_SIZE_MB  size of the origin and of the backup target   (256)
#   DEMO_DATA_MB  data written into files before the backup      (100)
#   DEMO_FILES    number of files                                (300)
#   DEMO_SPEED    backup speed limit, bytes/s with K/M/G         (20M)
#   DEMO_CHUNK    chunk size in 512-byte sectors                 (128)
#   DEMO_TIMEOUT  give up if the backup takes longer, seconds    (150)
set -u
export DM_DISABLE_UDEV=1 LC_ALL=C

size_mb=${DEMO_SIZE_MB:-256}
data_mb=${DEMO_DATA_MB:-100}
nfiles=${DEMO_FILES:-300}
speed=${DEMO_SPEED:-20M}
chunk=${DEMO_CHUNK:-128}
timeout_s=${DEMO_TIMEOUT:-150}
fio_mb=32

name=ptb-demo
dev=/dev/mapper/$name
origin=/dev/ram0
target=/dev/ram1

work=
frozen=0
brd_loaded=0
fio_pid=

say() { printf '%s\n' "$*"; }
fail() {
	printf 'demo: FAILED: %s\n' "$*" >&2
	exit 1
}

# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
	local rc=$?

	trap - EXIT
	set +e
	if [ -n "$fio_pid" ]; then
		kill "$fio_pid" 2>/dev/null
		wait "$fio_pid" 2>/dev/null
	fi
	[ "$frozen" = 1 ] && fsfreeze -u "$work/live" 2>/dev/null
	if [ -n "$work" ]; then
		mountpoint -q "$work/backup" && umount "$work/backup"
		mountpoint -q "$work/live" && umount "$work/live"
	fi
	dmsetup info "$name" >/dev/null 2>&1 && dmsetup remove --retry "$name" >/dev/null
	[ "$brd_loaded" = 1 ] && rmmod brd 2>/dev/null
	[ -n "$work" ] && rm -rf "$work"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Microseconds since the epoch, without starting a process.
now_us() { echo $((${EPOCHREALTIME/./})); }
# tenths VAR N: store N/10 with one decimal ("123" -> "12.3") in VAR.
tenths() { printf -v "$1" '%d.%d' $(($2 / 10)) $(($2 % 10)); }
# calc EXPR: floating point arithmetic, printed with one decimal.
calc() { awk "BEGIN { printf \"%.1f\", $1 }"; }
# secs US: microseconds as seconds with one decimal.
secs() { calc "$1 / 1000000"; }

# Read job "demo" out of `dmsetup status': sets st_state, st_done,
# st_total, st_error.  After the device's own fields (see
# Documentation/ptbackup.rst) the line has 8 words per job:
#   <id> backup <sync> <state> <bytes_done> <bytes_total> <speed> <last_error>
read_job() {
	local w i

	read -r -a w < <(dmsetup status "$name") || return 1
	[ "${w[2]:-}" = ptbackup ] || return 1
	for ((i = 3; i + 7 < ${#w[@]}; i++)); do
		if [ "${w[i]}" != demo ] || [ "${w[i + 1]}" != backup ]; then
			continue
		fi
		st_state=${w[i + 3]}
		st_done=${w[i + 4]}
		st_total=${w[i + 5]}
		st_error=${w[i + 7]}
		return 0
	done
	return 1
}

# --- checks and devices ---------------------------------------------------
[ "$(id -u)" = 0 ] || fail "must run as root (inside the VM: make demo)"
for c in dmsetup mkfs.ext4 e2fsck fsfreeze fio sha256sum blockdev modprobe awk; do
	command -v "$c" >/dev/null || fail "$c not found"
done
work=$(mktemp -d /tmp/ptb-demo.XXXXXX) || fail "mktemp"
mkdir -p "$work/live" "$work/backup"

say "== dm-ptbackup demo: live point-in-time backup ($(uname -r))"
modprobe dm-mod 2>/dev/null
if [ -d /sys/module/brd ]; then
	rmmod brd 2>/dev/null || fail "brd is loaded and in use"
fi
modprobe brd rd_nr=2 rd_size=$((size_mb * 1024)) max_part=0 || fail "cannot load brd"
brd_loaded=1
{ [ -b "$origin" ] && [ -b "$target" ]; } || fail "$origin or $target missing"
sectors=$(blockdev --getsz "$origin")

dmsetup create "$name" --table "0 $sectors ptbackup $origin - $chunk" ||
	fail "dmsetup create (is dm-ptbackup.ko installed? make install-module)"
say "device:  $dev = ptbackup over $origin, chunk $chunk sectors, $size_mb MiB"
say "target:  $target, $size_mb MiB ram disk"

mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$dev" ||
	fail "mkfs.ext4"
mount -o noatime "$dev" "$work/live" || fail "mount $dev"

# --- fill it ----------------------------------------------------------------
# Starting a process costs a lot under TCG, so each directory is filled by
# one stream of random data split into files: directory d gets files of
# (d + 1) * 2/11 of the average size, which averages out over the ten.
avg=$((data_mb * 1048576 / nfiles))
per_dir=$(((nfiles + 9) / 10))
bytes=0
made=0
t=$(now_us)
for ((d = 0; d < 10 && made < nfiles; d++)); do
	n=$((nfiles - made < per_dir ? nfiles - made : per_dir))
	sz=$((avg * (d + 1) * 2 / 11 / 4096 * 4096 + 1000))
	mkdir "$work/live/dir$d" || fail "mkdir"
	head -c $((n * sz)) /dev/urandom |
		split -b "$sz" -a 3 -d - "$work/live/dir$d/file" || fail "writing dir$d"
	bytes=$((bytes + n * sz))
	made=$((made + n))
done
head -c $((fio_mb * 1048576)) /dev/urandom > "$work/live/fio.dat" || fail "writing fio.dat"
sync
say "filled:  $nfiles files, $(calc "$bytes / 1048576") MiB, plus a $fio_mb MiB file for fio ($(secs $(($(now_us) - t))) s)"

# --- the point in time -------------------------------------------------------
# Freeze the filesystem so that it is consistent on disk, hash every file,
# start the backup, thaw.  The backup holds what the device held when
# `backup start' was accepted.
fsfreeze -f "$work/live" || fail "fsfreeze -f"
frozen=1
t=$(now_us)
(cd "$work/live" && find . -type f -print0 | sort -z | xargs -0 sha256sum) \
	> "$work/sums" || fail "hashing the files"
nsums=$(wc -l < "$work/sums")
dmsetup message "$name" 0 backup start demo "$target" sync=full speed="$speed" ||
	fail "backup start (see dmesg)"
start_us=$(now_us)
fsfreeze -u "$work/live" || fail "fsfreeze -u"
frozen=0
say "instant: fs frozen $(secs $((start_us - t))) s: $nsums files hashed, then" \
	"'backup start demo $target sync=full speed=$speed'"

# --- the workload, while the backup runs --------------------------------------
fio --name=churn --filename="$work/live/fio.dat" --size=${fio_mb}M \
	--rw=randwrite --bs=4k --direct=1 --ioengine=libaio --iodepth=16 \
	--time_based --runtime=$((timeout_s + 60)) \
	--output-format=json --output="$work/fio.json" > "$work/fio.log" 2>&1 &
fio_pid=$!

mapfile -t files < <(cd "$work/live" && find . -path './dir*' -type f | sort)
overwritten=0
deleted=0
say "backup running; fio writes 4 KiB blocks at random into fio.dat, and every"
say "second one file is overwritten and another deleted:"
say "   time  state         done                 avg rate"
next_us=$((start_us + 1000000))
t_el='' t_pct='' t_done='' t_total='' t_rate=''
while :; do
	sleep 0.2
	read_job || fail "job demo not found in: $(dmsetup status "$name")"
	now=$(now_us)
	case $st_state in
	running|paused) ;;
	completed) break ;;
	*) fail "job ended $st_state, last error $st_error" ;;
	esac
	[ $((now - start_us)) -lt $((timeout_s * 1000000)) ] ||
		fail "backup not completed after ${timeout_s}s (state $st_state)"
	kill -0 "$fio_pid" 2>/dev/null || fail "fio stopped early: $(tail -n 3 "$work/fio.log")"
	[ "$now" -ge "$next_us" ] || continue

	# once a second: a line of progress, and churn on the files
	next_us=$((next_us + 1000000))
	[ "$now" -ge "$next_us" ] && next_us=$((now + 1000000))
	el=$(((now - start_us) / 100000))
	tenths t_el "$el"
	tenths t_pct $((st_done * 1000 / st_total))
	tenths t_done $((st_done * 10 / 1048576))
	tenths t_total $((st_total * 10 / 1048576))
	tenths t_rate $((st_done * 100 / (el > 0 ? el : 1) / 1048576))
	printf '%6s s  %-9s %5s%%  %6s/%s MiB  %5s MiB/s\n' "$t_el" "$st_state" \
		"$t_pct" "$t_done" "$t_total" "$t_rate"
	if [ $((2 * deleted + 1)) -lt ${#files[@]} ]; then
		# overwrite the first 64 KiB of one file, delete another
		dd if=/dev/urandom of="$work/live/${files[2 * deleted]}" bs=64k count=1 \
			conv=notrunc status=none && overwritten=$((overwritten + 1))
		rm -f "$work/live/${files[2 * deleted + 1]}" && deleted=$((deleted + 1))
	fi
done
end_us=$now
duration=$(secs $((end_us - start_us)))
tenths t_done $((st_done * 10 / 1048576))
tenths t_total $((st_total * 10 / 1048576))
printf '%6s s  %-9s %5s%%  %6s/%s MiB\n' "$duration" "$st_state" 100.0 "$t_done" "$t_total"

kill -TERM "$fio_pid" 2>/dev/null
wait "$fio_pid" 2>/dev/null
fio_pid=
iops=n/a
fio_mib=n/a
if command -v jq >/dev/null && [ -s "$work/fio.json" ]; then
	# fio may print a line or two before the JSON
	json=$(sed -n '/^{/,$p' "$work/fio.json")
	iops=$(jq -r '.jobs[0].write.iops | floor' <<< "$json" 2>/dev/null) || iops=n/a
	fio_mib=$(jq -r '.jobs[0].write.io_bytes / 1048576 | floor' <<< "$json" 2>/dev/null) ||
		fio_mib=n/a
fi
sync

say "job:     $(dmsetup message "$name" 0 job list)"
# Dismissing waits until the job has let go of its target.
dmsetup message "$name" 0 job dismiss demo || fail "job dismiss"

# --- check the backup ----------------------------------------------------------
if ! e2fsck -fn "$target" > "$work/fsck.log" 2>&1; then
	tail -n 20 "$work/fsck.log" >&2
	fail "e2fsck -fn $target found problems"
fi
say "e2fsck:  -fn on $target: clean"

mount -o ro,noatime "$target" "$work/backup" || fail "mount -o ro $target"
if ! (cd "$work/backup" && sha256sum -c --quiet "$work/sums") > "$work/verify.log" 2>&1; then
	head -n 10 "$work/verify.log" >&2
	fail "$(grep -c -v ': OK$' "$work/verify.log") of $nsums files in the backup differ from the point in time"
fi
say "verify:  $nsums/$nsums files in the backup match their sha256 at the point in time"

# The live filesystem really moved on: the same check there must fail.
changed=$( (cd "$work/live" && sha256sum -c --quiet "$work/sums" 2>/dev/null) | wc -l)
[ "$changed" -gt 0 ] || fail "the live filesystem did not change during the backup"

say "== summary"
say "  backed up       $t_total MiB device ($(calc "$bytes / 1048576") MiB in $nfiles files, plus fio.dat)"
say "  job duration    $duration s at speed=$speed"
say "  throughput      $(calc "$st_total / 1048576 / ($end_us - $start_us) * 1000000") MiB/s"
say "  files verified  $nsums (the live copies of $changed of them changed meanwhile)"
say "  during backup   fio $iops write IOPS (4 KiB random, $fio_mib MiB written)," \
	"$overwritten files overwritten, $deleted deleted"
say "PASS"
exit 0
