#!/bin/bash
# A transaction's undo racing a job it started: the job has nothing to
# copy, so its bitmap hand-over starts while the transaction still holds
# writes (a slow metadata commit in a later element keeps it holding, a
# second job keeps the worker busy); then the last element fails and the
# undo must remove the job without waiting for a hand-over that waits for
# the transaction.
. "$(dirname "$0")/lib/tap.sh"
. "$(dirname "$0")/lib/ptb.sh"
need_root
need_cmd dmsetup
need_module dm-delay

tap_plan 7
origin=$(make_loop 16) meta=$(make_loop 4)
t1=$(make_loop 16) t2=$(make_loop 16) busy=$(make_loop 16)
sz=$(dev_sectors "$origin") msz=$(dev_sectors "$meta")
dev=ptb_ux
dm_create ptb_ux_md "0 $msz linear $meta 0"
dm_create $dev "0 $sz ptbackup $origin /dev/mapper/ptb_ux_md 128"
dm_create ptb_ux_holder "0 $sz linear $busy 0"
dm_msg $dev bitmap add b
dd if=/dev/urandom of=/dev/mapper/$dev bs=64k count=1 seek=7 oflag=direct status=none
# Slow enough to outlive the test even on the debug kernel under load.
dm_msg $dev backup start bg "$t2" speed=64K
dmsetup suspend ptb_ux_md
dmsetup reload ptb_ux_md --table "0 $msz delay $meta 0 0 $meta 0 1000"
dmsetup resume ptb_ux_md
bits=$(dm_msg $dev bitmap dump b)

rcf=$(mktemp /tmp/ptb-ux.XXXXXX)
dmesg_mark
( dm_msg $dev transaction backup start j "$t1" sync=incremental bitmap=b \; \
	bitmap add x \; backup start k "$busy" >/dev/null 2>&1; echo $? > "$rcf" ) &
for ((i = 0; i < 600; i++)); do
	[ -s "$rcf" ] && break
	sleep 0.1
done
if [ ! -s "$rcf" ]; then
	not_ok "the transaction returns (no deadlock in its undo)"
	tap_diag "still waiting after 60 s: $(dmesg_since | tail -n 3)"
	tap_done
fi
ok "the transaction returns (no deadlock in its undo)"
tap_check "it is refused" test "$(cat "$rcf")" != 0
tap_check "the log says it was undone" grep -q "undoing the earlier ones" <(dmesg_since)
tap_expect_fail "the job it started is gone" ptb_job_field $dev j state
tap_eq "its bitmap is idle and unchanged" "idle $bits" \
	"$(dm_msg $dev bitmap list | awk '$1 == "b" { print $5 }') $(dm_msg $dev bitmap dump b)"
tap_eq "the bitmap it added is gone" "b" "$(dm_msg $dev bitmap list | cut -d' ' -f1 | tr '\n' ' ' | sed 's/ $//')"
tap_eq "the other job still runs" running "$(ptb_job_field $dev bg state)"
dm_msg $dev job cancel bg
rm -f "$rcf"
tap_done
