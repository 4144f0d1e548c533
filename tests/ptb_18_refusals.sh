#!/bin/bash
# A resume refused because its table no longer fits the persistent
# bitmaps, with the log line that tells the administrator why; and the
# constructor's metadata load, which must not block other devices' table
# loads or this device's messages while it reads.  (Pause refused during
# the final flush and cancel refused during the hand-over: ptb_14.)
. "$(dirname "$0")/lib/tap.sh"
. "$(dirname "$0")/lib/ptb.sh"
need_root
need_cmd dmsetup timeout
need_module dm-delay

tap_plan 13

# 1. A grown table loaded while no persistent bitmap existed (so its
# constructor accepted it), then a persistent bitmap added: the resume is
# refused, the device stays suspended, and the old table resumes fine.
o1=$(make_loop 32) m1=$(make_loop 4)
dm_create ptb_r "0 32768 ptbackup $o1 $m1 128"
dmsetup load ptb_r --table "0 65536 ptbackup $o1 $m1 128"
dm_msg ptb_r bitmap add pg
dmesg_mark
tap_expect_fail "resume of a table larger than the persistent bitmaps cover is refused" \
	dmsetup resume ptb_r
tap_check "and the log says why" grep -q \
	"resume: the device is larger than its persistent bitmaps cover" <(dmesg_since)
tap_eq "the device stays suspended" "Suspended" \
	"$(dmsetup info -c --noheadings -o suspended ptb_r)"
dmsetup load ptb_r --table "0 32768 ptbackup $o1 $m1 128"
tap_check "the table of the old size resumes" dmsetup resume ptb_r
tap_eq "at the old size" "32768" "$(dev_sectors /dev/mapper/ptb_r)"
dd if=/dev/urandom of=/dev/mapper/ptb_r bs=64k count=1 seek=5 oflag=direct status=none
tap_eq "the bitmap added meanwhile records writes" "327680 65536" "$(ptb_dump ptb_r pg)"
dm_rm ptb_r

# 2. The constructor reads a new metadata device holding only the lock of
# metadata loads: while one table's metadata is read slowly (reads take
# 2 s each), other devices load tables (without metadata) and the device
# itself answers messages, at once.
o4=$(make_loop 16) m4=$(make_loop 4) o5=$(make_loop 16)
s4=$(dev_sectors "$o4")
sm=$(dev_sectors "$m4")
dm_create ptb_c "0 $s4 ptbackup $o4 $m4 128"
dm_msg ptb_c bitmap add cb
dm_rm ptb_c
dm_create ptb_m4 "0 $sm delay $m4 0 2000"
dm_create ptb_c "0 $s4 ptbackup $o4 - 128"
start=$(date +%s%N)
dmsetup load ptb_c --table "0 $s4 ptbackup $o4 /dev/mapper/ptb_m4 128" &
loadpid=$!
sleep 1
timeout 8 dmsetup message ptb_c 0 bitmap list >/dev/null &
msgpid=$!
timeout 8 dmsetup create ptb_o --table "0 $s4 ptbackup $o5 - 128" &
createpid=$!
wait $msgpid
tap_eq "a message to the device answers during its metadata load" "0" "$?"
wait $createpid
tap_eq "another device's table loads meanwhile" "0" "$?"
wait $loadpid
took=$((($(date +%s%N) - start) / 1000000))
tap_diag "the slow load took ${took} ms"
tap_check "the slow load took longer than those two (else this case proves nothing)" \
	test "$took" -gt 6000
dmsetup resume ptb_c
tap_eq "the slowly loaded metadata is attached with its bitmap" "rw 1" \
	"$(dm_status_field ptb_c 3) $(dm_status_field ptb_c 4)"
dm_rm ptb_o ptb_c ptb_m4

# 3. A device with more chunks than the kernel's bitmap helpers can count
# (2^32 chunks of 4 KiB over a 16 TiB dm-zero origin) is refused, and
# nothing is created; with 64 KiB chunks the same origin is accepted.
dm_create ptb_z "0 $((1 << 35)) zero"
expect_refused "a table with more than 2^31 - 1 chunks is refused" \
	"Too many chunks for a device this large: use a larger chunk size" \
	dmsetup create ptb_zc --table "0 $((1 << 35)) ptbackup /dev/mapper/ptb_z - 8"
tap_eq "and no device is left" "" "$(dmsetup ls | awk '$1 == "ptb_zc"')"
tap_check "with 64 KiB chunks it is accepted" \
	dmsetup create ptb_zc --table "0 $((1 << 35)) ptbackup /dev/mapper/ptb_z - 128"
dm_rm ptb_zc ptb_z
tap_done
