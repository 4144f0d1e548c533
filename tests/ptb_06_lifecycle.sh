#!/bin/bash
# What users do to a device mid-job: suspend/resume, table reload, two jobs
# at once, fio --verify on the device, and remove (jobs are cancelled).
. "$(dirname "$0")/lib/tap.sh"
. "$(dirname "$0")/lib/ptb.sh"
need_root
need_cmd dmsetup fio

tap_plan 15
mapfile -t devs < <(make_brd 4 32)
origin=${devs[0]} t1=${devs[1]} t2=${devs[2]} t3=${devs[3]}
fill_random "$origin"
sz=$(dev_sectors "$origin")
dev=ptb_l
dm_create $dev "0 $sz ptbackup $origin - 128"
scribble() {	# scribble N: N random 64 KiB writes at random chunks
	local i
	for ((i = 0; i < $1; i++)); do
		head -c 64k /dev/urandom |
			dd iflag=fullblock of=/dev/mapper/$dev bs=64k seek=$((RANDOM % (sz / 128))) oflag=direct status=none
	done
}

# Two jobs with different points in time, across suspend/resume and reload.
want1=$(sha_dev "$origin")
dm_msg $dev backup start one "$t1" speed=256K
scribble 8
want2=$(sha_dev "$origin")
dm_msg $dev backup start two "$t2" speed=256K
tap_eq "two jobs run at once" "running running" \
	"$(ptb_job_field $dev one state) $(ptb_job_field $dev two state)"
scribble 5
tap_check "suspend mid-job" dmsetup suspend $dev
tap_eq "jobs survive suspend" "running running" \
	"$(ptb_job_field $dev one state) $(ptb_job_field $dev two state)"
tap_check "resume" dmsetup resume $dev
scribble 5
tap_check "reload with another table (copy_slots 4) mid-job" \
	dmsetup reload $dev --table "0 $sz ptbackup $origin - 128 2 copy_slots 4"
dmsetup suspend $dev && dmsetup resume $dev
tap_eq "the new table is live" "2 copy_slots 4" "$(dmsetup table $dev | cut -d' ' -f7-)"
tap_eq "jobs survive the reload" "running running" \
	"$(ptb_job_field $dev one state) $(ptb_job_field $dev two state)"
scribble 5
dm_msg $dev job set_speed one 0
dm_msg $dev job set_speed two 0
tap_check "job one completes" ptb_wait_state $dev one completed 120
tap_check "job two completes" ptb_wait_state $dev two completed 120
tap_eq "job one holds its point in time" "$want1" "$(sha_dev "$t1")"
tap_eq "job two holds its point in time" "$want2" "$(sha_dev "$t2")"
dm_msg $dev job dismiss one
dm_msg $dev job dismiss two

# fio --verify on the device while a job copies it.
dm_msg $dev backup start three "$t3" speed=128K
tap_check "fio --verify while a job runs" fio --output=/tmp/fio.out --name=v \
	--filename=/dev/mapper/$dev --direct=1 --ioengine=libaio --iodepth=8 \
	--rw=randwrite --bsrange=4k-256k --size=24M --verify=crc32c --verify_fatal=1 \
	--do_verify=1
tap_eq "job still running during fio" running "$(ptb_job_field $dev three state)"

# Remove mid-job: the job is cancelled and its target released.
tap_check "remove mid-job" dmsetup remove $dev
tap_check "target released after remove" \
	dmsetup create ptb_l_probe --table "0 8 linear $t3 0"
dmsetup remove ptb_l_probe
tap_done
