#!/bin/bash
# Defects found by a review of the kernel code (issue 8), one case each:
# an aborted reload naming a metadata device, a reload that changes the
# origin racing `backup start', a reload with another chunk size mid-job,
# transient bitmaps on a grown device, cancel and pause racing the final
# flush and the bitmap hand-over, quiescing on suspend, a target that
# rejects write-zeroes, and crafted metadata images.
. "$(dirname "$0")/lib/tap.sh"
. "$(dirname "$0")/lib/ptb.sh"
need_root
need_cmd dmsetup python3
need_module dm-delay

tap_plan 44
lib=$(cd "$(dirname "$0")/lib" && pwd)
t1=$(make_loop 32)

# 1. `dmsetup load' of a table naming a metadata device, then `clear': the
# live device must never have used it.
o1=$(make_loop 16) m1=$(make_loop 4)
sz=$(dev_sectors "$o1")
dm_create ptb_a "0 $sz ptbackup $o1 $m1 128"
dm_msg ptb_a bitmap add pm
dm_rm ptb_a
dm_create ptb_a "0 $sz ptbackup $o1 - 128"
msum=$(sha_dev "$m1")
dmsetup load ptb_a --table "0 $sz ptbackup $o1 $m1 128"
tap_eq "load naming metadata: the live device still has none" "- 0" \
	"$(dm_status_field ptb_a 3) $(dm_status_field ptb_a 4)"
dmsetup clear ptb_a
dd if=/dev/urandom of=/dev/mapper/ptb_a bs=64k count=4 seek=20 oflag=direct status=none
dmsetup suspend ptb_a && dmsetup resume ptb_a
tap_eq "after clear: still no metadata, no bitmap" "- 0" \
	"$(dm_status_field ptb_a 3) $(dm_status_field ptb_a 4)"
tap_eq "after clear: nothing was written to the metadata device" "$msum" "$(sha_dev "$m1")"
dmsetup load ptb_a --table "0 $sz ptbackup $o1 $m1 128"
dmsetup suspend ptb_a && dmsetup resume ptb_a
tap_eq "load and resume attach it: its bitmap appears" "rw 1" \
	"$(dm_status_field ptb_a 3) $(dm_status_field ptb_a 4)"
dm_msg ptb_a bitmap clear pm
dd if=/dev/urandom of=/dev/mapper/ptb_a bs=64k count=1 seek=30 oflag=direct status=none
tap_eq "the attached bitmap records writes" "1966080 65536" "$(ptb_dump ptb_a pm)"
dm_rm ptb_a

# What the constructor checked no longer holds at resume (a transient
# bitmap added since takes the name of a persistent one): refused there.
dm_create ptb_j "0 $sz ptbackup $o1 - 128"
dmsetup load ptb_j --table "0 $sz ptbackup $o1 $m1 128"
dm_msg ptb_j bitmap add pm
dmesg_mark
tap_expect_fail "resume attaching metadata with a clashing bitmap name is refused" \
	dmsetup resume ptb_j
tap_check "and the log says why" grep -q \
	"cannot attach the metadata device: A persistent bitmap has the name of a transient one" \
	<(dmesg_since)
tap_eq "and nothing was attached" "- 1" "$(dm_status_field ptb_j 3) $(dm_status_field ptb_j 4)"
dmsetup load ptb_j --table "0 $sz ptbackup $o1 - 128"
dmsetup resume ptb_j
dm_rm ptb_j

# 2. A loaded table that changes the origin: no job may start until it is
# resumed or cleared; a reload changing the origin under a job is refused.
o2=$(make_loop 16)
dm_create ptb_b "0 $sz ptbackup $o1 - 128"
dmsetup load ptb_b --table "0 $sz ptbackup $o2 - 128"
expect_refused "backup start while a loaded table changes the origin" \
	"loaded table changes the origin" dm_msg ptb_b backup start j "$t1" sync=none
dmsetup resume ptb_b
tap_check "after the resume a job starts" dm_msg ptb_b backup start j "$t1" sync=none
expect_refused "a reload changing the origin under a job is refused" \
	"Cannot change the origin" dmsetup load ptb_b --table "0 $sz ptbackup $o1 - 128"
dm_msg ptb_b job cancel j
dm_msg ptb_b job dismiss j
dmsetup load ptb_b --table "0 $sz ptbackup $o1 - 128"
dmsetup clear ptb_b
tap_check "after clear of a loaded origin change, a job starts" \
	dm_msg ptb_b backup start k "$t1" sync=none
dm_msg ptb_b job cancel k
dm_rm ptb_b

# 3. A reload with another chunk size while a full backup runs, with
# writes meanwhile: the backup is the image at its start.
fill_random "$o1"
dm_create ptb_c "0 $sz ptbackup $o1 - 128"
want=$(sha_dev /dev/mapper/ptb_c)
dm_msg ptb_c backup start c "$t1" speed=2M
sleep 1
dmsetup load ptb_c --table "0 $sz ptbackup $o1 - 256 2 copy_slots 4"
dmsetup suspend ptb_c && dmsetup resume ptb_c
for s in 3 40 77 121 200 250; do
	dd if=/dev/urandom of=/dev/mapper/ptb_c bs=64k count=2 seek="$s" oflag=direct status=none
done
dm_msg ptb_c job set_speed c 0
tap_check "chunk size reloaded mid-job: the job completes" ptb_wait_state ptb_c c completed 120
tap_eq "chunk size reloaded mid-job: the backup is the image at its start" "$want" \
	"$(sha_dev "$t1" $((sz * 512)))"
dm_rm ptb_c

# 4. A transient bitmap grows with the device: the new area is dirty (it
# was never backed up) and writes there are recorded.
o4=$(make_loop 32)
dm_create ptb_d "0 32768 ptbackup $o4 - 128"
dm_msg ptb_d bitmap add tb
dmsetup load ptb_d --table "0 65536 ptbackup $o4 - 128"
dmsetup suspend ptb_d && dmsetup resume ptb_d
tap_eq "grown device: the new area is dirty in a transient bitmap" "16777216 16777216" \
	"$(ptb_dump ptb_d tb)"
dm_msg ptb_d bitmap clear tb
dd if=/dev/urandom of=/dev/mapper/ptb_d bs=64k count=1 seek=400 oflag=direct status=none
tap_eq "grown device: a write past the old size is recorded" "26214400 65536" "$(ptb_dump ptb_d tb)"
resize() { dmsetup load ptb_d --table "0 $1 ptbackup $o4 - 128" &&
	dmsetup suspend ptb_d && dmsetup resume ptb_d; }
dm_msg ptb_d bitmap add tg granularity=1M
resize 41984
dm_msg ptb_d bitmap clear tg
resize 49152
tap_eq "grown from inside a granule: that granule is dirty too" "20971520 4194304" \
	"$(ptb_dump ptb_d tg)"
resize 16384
dm_msg ptb_d bitmap clear tg
resize 32768
tap_eq "shrunk, cleared, grown back: the regrown area is dirty" "8388608 8388608" \
	"$(ptb_dump ptb_d tg)"
dm_rm ptb_d

# 5. Cancel during the final flush: the job ends cancelled, so its bitmap
# must keep what it had (the next incremental copies it again).
o5=$(make_loop 4) t5=$(make_loop 4)
fill_random "$o5"
s5=$(dev_sectors "$o5")
# Flushes of the target take 15 s: wide windows for the cases below, even
# on a loaded machine.
dm_create ptb_t5 "0 $s5 delay $t5 0 0 $t5 0 0 $t5 0 15000"
dm_create ptb_e "0 $s5 ptbackup $o5 - 2048 2 copy_slots 8"
dm_msg ptb_e bitmap add b5
dd if=/dev/urandom of=/dev/mapper/ptb_e bs=64k count=1 seek=16 oflag=direct status=none
dm_msg ptb_e backup start f /dev/mapper/ptb_t5 sync=full bitmap=b5
ptb_wait_copied ptb_e f
_tap_run dm_msg ptb_e job cancel f
tap_eq "cancel during the final flush is accepted" "0" "$TAP_RC"
tap_eq "cancelled during the final flush: the job is cancelled, the bitmap kept" \
	"cancelled 1048576 1048576" "$(ptb_job_field ptb_e f state) $(ptb_dump ptb_e b5)"
dm_msg ptb_e job dismiss f

# Cancel of a job with a bitmap while the device is suspended: its hand-over
# still runs, so the cancel returns (and resume is not blocked by it).
dm_msg ptb_e backup start fs /dev/mapper/ptb_t5 sync=full bitmap=b5 speed=64K
dmsetup suspend ptb_e
timeout 60 dmsetup message ptb_e 0 job cancel fs
tap_eq "cancel while suspended returns, the bitmap kept" "0 cancelled 1048576 1048576" \
	"$? $(ptb_job_field ptb_e fs state) $(ptb_dump ptb_e b5)"
dmsetup resume ptb_e
dm_msg ptb_e job dismiss fs

# Pause during the final flush: nothing is left to copy, so the pause is
# refused (with the reason in the log) and the job completes.
dm_msg ptb_e backup start p /dev/mapper/ptb_t5 sync=full
ptb_wait_copied ptb_e p
sleep 0.5
expect_refused "pause during the final flush is refused" \
	"job pause p: job is flushing its target" dm_msg ptb_e job pause p
tap_check "paused during the final flush: the job completes" ptb_wait_state ptb_e p completed 60
dm_msg ptb_e job dismiss p
dm_rm ptb_e ptb_t5

# Cancel during the bitmap hand-over (metadata writes take 6 s, so the
# hand-over's commit does): the backup is complete, so the cancel is
# refused with the reason in the log, and the bitmap is reset.
o6=$(make_loop 4) m6=$(make_loop 4) t6=$(make_loop 4)
fill_random "$o6"
s6=$(dev_sectors "$m6")
dm_create ptb_m6 "0 $s6 linear $m6 0"
dm_create ptb_f "0 $s5 ptbackup $o6 /dev/mapper/ptb_m6 2048"
dm_msg ptb_f bitmap add pb
dd if=/dev/urandom of=/dev/mapper/ptb_f bs=64k count=1 seek=16 oflag=direct status=none
dmsetup suspend ptb_f && dmsetup resume ptb_f
dmsetup reload ptb_m6 --table "0 $s6 delay $m6 0 0 $m6 0 6000"
dmsetup suspend ptb_m6 && dmsetup resume ptb_m6
dm_msg ptb_f backup start h "$t6" sync=full bitmap=pb
ptb_wait_copied ptb_f h
sleep 1.5
expect_refused "cancel during the bitmap hand-over is refused" \
	"job cancel h: job is completing (handing its bitmap over)" dm_msg ptb_f job cancel h
tap_check "cancel refused during the hand-over: the job completes" \
	ptb_wait_state ptb_f h completed 60
tap_eq "cancel refused during the hand-over: the bitmap is reset" "" "$(ptb_dump ptb_f pb)"
dm_msg ptb_f job dismiss h
dm_rm ptb_f ptb_m6

# 6. Suspend stops the background copy; it stays quick with a slow target;
# the job goes on after resume and is exact.
o7=$(make_loop 8) t7=$(make_loop 8)
fill_random "$o7"
s7=$(dev_sectors "$o7")
dm_create ptb_t7 "0 $s7 delay $t7 0 0 $t7 0 100"
dm_create ptb_g "0 $s7 ptbackup $o7 - 128 2 copy_slots 4"
want=$(sha_dev "$o7")
dm_msg ptb_g backup start s /dev/mapper/ptb_t7
sleep 0.5
start=$(date +%s)
dmsetup suspend ptb_g
tap_check "suspend with a slow target returns" test $(($(date +%s) - start)) -lt 20
d1=$(ptb_job_field ptb_g s done)
sleep 2
d2=$(ptb_job_field ptb_g s done)
tap_eq "no background copy while suspended" "$d1" "$d2"
tsum=$(sha_dev "$t7")
sleep 1
tap_eq "no target write while suspended" "$tsum" "$(sha_dev "$t7")"
dmsetup resume ptb_g
tap_check "after resume the job completes" ptb_wait_state ptb_g s completed 120
tap_eq "after resume the backup is exact" "$want" "$(sha_dev "$t7")"
dm_msg ptb_g job dismiss s

# A write waiting on a copy to a slow target does not hang suspend.
dmsetup reload ptb_t7 --table "0 $s7 delay $t7 0 0 $t7 0 1500"
dmsetup suspend ptb_t7 && dmsetup resume ptb_t7
old=$(dd if=/dev/mapper/ptb_g bs=64k count=1 skip=9 iflag=direct status=none | sha256sum)
dm_msg ptb_g backup start n /dev/mapper/ptb_t7 sync=none
dd if=/dev/urandom of=/dev/mapper/ptb_g bs=64k count=1 seek=9 oflag=direct status=none &
ddpid=$!
sleep 0.3
start=$(date +%s)
dmsetup suspend ptb_g
tap_check "suspend with a write waiting on a slow copy returns" test $(($(date +%s) - start)) -lt 20
tap_check "the waiting write completes" wait $ddpid
dmsetup resume ptb_g
tap_eq "the waiting write's old data reached the target" "$old" \
	"$(dd if="$t7" bs=64k count=1 skip=9 iflag=direct status=none | sha256sum)"
dm_msg ptb_g job cancel n
dm_rm ptb_g ptb_t7

# 7. A target that advertises write-zeroes but rejects it (a loop device
# over a file on vfat, which has no zero-range or hole punching).
if modprobe vfat 2>/dev/null && command -v mkfs.vfat >/dev/null; then
	vd=$(make_loop 24)
	mkfs.vfat "$vd" >/dev/null
	mkdir -p /tmp/ptb-vfat
	mount "$vd" /tmp/ptb-vfat
	tap_on_exit umount /tmp/ptb-vfat
	truncate -s 4M /tmp/ptb-vfat/t.img
	tz=$(losetup -f --show /tmp/ptb-vfat/t.img)
	tap_on_exit losetup -d "$tz"
	o9=$(make_loop 4)
	dd if=/dev/urandom of="$o9" bs=1M count=2 seek=2 oflag=direct status=none
	s9=$(dev_sectors "$o9")
	tap_diag "write_zeroes_max_bytes of the vfat loop: $(cat /sys/block/${tz#/dev/}/queue/write_zeroes_max_bytes)"
	dm_create ptb_h "0 $s9 ptbackup $o9 - 128"
	dm_msg ptb_h backup start z "$tz"
	tap_check "write-zeroes rejected by the target: the job completes" \
		ptb_wait_state ptb_h z completed 60
	tap_eq "write-zeroes rejected by the target: the backup is exact" \
		"$(sha_dev "$o9")" "$(sha_dev "$tz")"
	dm_rm ptb_h
else
	tap_skip "write-zeroes rejected by the target: the job completes" "no vfat"
	tap_skip "write-zeroes rejected by the target: the backup is exact" "no vfat"
fi

# 8. Crafted metadata images with valid checksums are refused, never
# trusted (last: before the fix these overflowed a kernel allocation).
o8=$(make_loop 16) m8=$(make_loop 8)
dm_create ptb_i "0 $sz ptbackup $o8 $m8 128"
dm_msg ptb_i bitmap add cb
dm_msg ptb_i bitmap add cc
dm_rm ptb_i
img=$(mktemp /tmp/ptb-md.XXXXXX)
tap_on_exit rm -f "$img"
dd if="$m8" of="$img" bs=1M status=none
craft() { python3 "$lib/craft_md.py" "$@"; }
restore() { dd if="$img" of="$m8" bs=1M oflag=direct status=none; }
mrefuse() {	# mrefuse DESC
	expect_refused "$1" "impossible" dmsetup create ptb_i --table "0 $sz ptbackup $o8 $m8 128"
	dm_rm ptb_i
	restore
}
first=$(craft get "$m8" first_block)
craft set "$m8" nr_bits 'old*1024'
craft set "$m8" nr_blocks "$(( ($(craft get "$m8" nr_bits) + 32767) / 32768 ))"
# Set bits in every block of the enlarged area.
head -c $((8 * 4096)) /dev/zero | tr '\0' '\377' |
	dd iflag=fullblock of="$m8" bs=4k seek="$first" oflag=direct status=none
mrefuse "a bitmap larger than the device it covers is refused"
craft set "$m8" nr_bits 'old-1'
mrefuse "a bitmap smaller than the device it covers is refused"
craft set "$m8" dev_sectors '1<<55'
craft set "$m8" region_shift 40
mrefuse "a device size whose byte count wraps is refused"
craft set "$m8" dev_sectors 0
mrefuse "a device size of zero is refused"
craft set "$m8" first_block '(1<<64)-2'
mrefuse "an area whose end wraps is refused"
craft set "$m8" first_block "$(craft get "$m8" first_block 1)" 0
mrefuse "two bitmaps sharing an area are refused"
tap_check "the untouched image still loads" \
	dmsetup create ptb_i --table "0 $sz ptbackup $o8 $m8 128"
tap_eq "with its bitmaps" "2" "$(dm_status_field ptb_i 4)"
dm_rm ptb_i
tap_done
