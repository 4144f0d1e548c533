#!/bin/bash
# How a job ends: the target is flushed after its last data write
# (dm-log-writes records the order), and bitmap_mode=always leaves in the
# bitmap exactly what was not copied plus what was written since.
. "$(dirname "$0")/lib/tap.sh"
. "$(dirname "$0")/lib/ptb.sh"
need_root
need_cmd dmsetup python3
need_module dm-log-writes dm-flakey

tap_plan 13
lib=$(cd "$(dirname "$0")/lib" && pwd)

# 1. The flush at completion comes after the last chunk's write.
o=$(make_loop 8) t=$(make_loop 8) l=$(make_loop 64)
fill_random "$o"
s=$(dev_sectors "$o")
dm_create ptb_lw "0 $s log-writes $t $l"
dm_create ptb_k "0 $s ptbackup $o - 128"
dm_msg ptb_k backup start c /dev/mapper/ptb_lw
tap_check "the job completes" ptb_wait_state ptb_k c completed 120
dmsetup message ptb_lw 0 mark done
read -r n w f ds < <(python3 "$lib/logwrites.py" order "$l")
tap_diag "log: $n entries, last data write $w, last flush $f, $ds data sectors"
tap_eq "the log's data writes cover the device once" "$s" "$ds"
tap_check "the target's last flush follows its last data write" test "${f:--1}" -gt "${w:-0}"
tap_eq "the backup is exact" "$(sha_dev "$o")" "$(sha_dev "$t")"
dmsetup remove ptb_k ptb_lw

# 2. A target whose flush fails (past the backup's end, a segment that
# fails every write, flushes included: dm-flakey, always down, with
# error_writes): report fails the job, ignore retries the flush until the
# target is repaired, stop pauses it until `job resume'.
o3=$(make_loop 4) t3=$(make_loop 5)
s3=$(dev_sectors "$o3")
fill_random "$o3"
dm_create ptb_fe "0 8 flakey $t3 $s3 0 1 1 error_writes"
dm_create ptb_fl "0 $s3 linear $t3 0
$s3 8 linear /dev/mapper/ptb_fe 0"
dm_create ptb_f3 "0 $s3 ptbackup $o3 - 128"
swap_fe() { dmsetup reload ptb_fe --table "$1" && dmsetup suspend ptb_fe && dmsetup resume ptb_fe; }
fix() { swap_fe "0 8 linear $t3 $s3"; }
break_flush() { swap_fe "0 8 flakey $t3 $s3 0 1 1 error_writes"; }
dm_msg ptb_f3 backup start r /dev/mapper/ptb_fl
ptb_wait_state ptb_f3 r failed 60 >/dev/null 2>&1
tap_eq "flush error, report: the job fails at the flush" "failed flush:-5" \
	"$(ptb_job_field ptb_f3 r state) $(ptb_job_field ptb_f3 r error)"
dm_msg ptb_f3 job dismiss r
dm_msg ptb_f3 backup start i /dev/mapper/ptb_fl on_target_error=ignore
sleep 2
st=$(ptb_job_field ptb_f3 i state)
fix
tap_eq "flush error, ignore: the job keeps running while the flush fails" running "$st"
ptb_wait_state ptb_f3 i completed 30 >/dev/null 2>&1
tap_eq "flush error, ignore: completed after the repair" completed "$(ptb_job_field ptb_f3 i state)"
dm_msg ptb_f3 job dismiss i
break_flush
dm_msg ptb_f3 backup start s /dev/mapper/ptb_fl on_target_error=stop
ptb_wait_state ptb_f3 s paused 60 >/dev/null 2>&1
tap_eq "flush error, stop: the job pauses" paused "$(ptb_job_field ptb_f3 s state)"
fix
dm_msg ptb_f3 job resume s
tap_check "flush error, stop: resume after the repair completes it" ptb_wait_state ptb_f3 s completed 30
tap_eq "and the backup is exact" "$(sha_dev "$o3")" "$(sha_dev "$t3" $((s3 * 512)))"
dmsetup remove ptb_f3 ptb_fl ptb_fe

# 3. bitmap_mode=always, cancelled half way: the uncopied dirty chunks and
# the writes since the start stay dirty, the copied ones do not.
o2=$(make_loop 16) t2=$(make_loop 16)
fill_random "$o2"
s2=$(dev_sectors "$o2")
dm_create ptb_al "0 $s2 ptbackup $o2 - 128"
dm_msg ptb_al bitmap add a
dirty=(10 50 90 130 170 210)
for c in "${dirty[@]}"; do
	dd if=/dev/urandom of=/dev/mapper/ptb_al bs=64k count=1 seek="$c" oflag=direct status=none
done
dm_msg ptb_al backup start i "$t2" sync=incremental bitmap=a bitmap_mode=always speed=48K
sleep 3
dd if=/dev/urandom of=/dev/mapper/ptb_al bs=64k count=1 seek=250 oflag=direct status=none
dm_msg ptb_al job cancel i
k=$(($(ptb_job_field ptb_al i done) / 65536))
tap_diag "copied $k of ${#dirty[@]} dirty chunks before the cancel"
tap_check "some but not all dirty chunks were copied" test "$k" -gt 0 -a "$k" -lt ${#dirty[@]}
want=
for c in "${dirty[@]:$k}" 250; do
	want="$want $((c * 65536)) 65536"
done
tap_eq "always, cancelled: not copied plus written since" "${want# }" "$(ptb_dump ptb_al a)"
dm_msg ptb_al job dismiss i

# 4. bitmap_mode=always, completed: only the writes since the start.
dm_msg ptb_al backup start j "$t2" sync=incremental bitmap=a bitmap_mode=always speed=48K
dd if=/dev/urandom of=/dev/mapper/ptb_al bs=64k count=1 seek=240 oflag=direct status=none
dm_msg ptb_al job set_speed j 0
ptb_wait_state ptb_al j completed 60
tap_eq "always, completed: the bitmap holds the writes since the start" \
	"$((240 * 65536)) 65536" "$(ptb_dump ptb_al a)"
dmsetup remove ptb_al
tap_done
