#!/bin/bash
# Dirty bitmaps: exact dumps at several granularities (partial last chunk,
# writes, discards, write-zeroes), paging, list, refusals, persistence
# across reload, remove/create and module reload.
. "$(dirname "$0")/lib/tap.sh"
. "$(dirname "$0")/lib/ptb.sh"
need_root
need_cmd dmsetup fio blkdiscard

tap_plan 53
origin=$(make_loop 16)
meta=$(make_loop 4)
len=$((16 * 2048 - 7))		# the last 64 KiB chunk is partial
dev=ptb_b
table="0 $len ptbackup $origin $meta 128"
dm_create $dev "$table"
dump() { dm_msg $dev bitmap dump "$@" | tr '\n' ' ' | sed 's/ $//'; }
blist() { dm_msg $dev bitmap list; }

tap_check "add g64 (default granularity)" dm_msg $dev bitmap add g64
tap_check "add g256, transient" dm_msg $dev bitmap add g256 granularity=256K transient
tap_check "add g1m" dm_msg $dev bitmap add g1m granularity=1M
tap_check "add off, disabled" dm_msg $dev bitmap add off disabled
tap_eq "status counts the bitmaps" 4 "$(dm_status_field $dev 4)"

w() { dd if=/dev/urandom of=/dev/mapper/$dev oflag=direct status=none "$@"; }
w bs=4k count=1 seek=0
w bs=512 count=8 seek=136
w bs=4k count=2 seek=$((5 * 16 - 1))
w bs=512 count=1 seek=$((len - 1))
blkdiscard -o $((8 << 20)) -l 65536 /dev/mapper/$dev
blkdiscard -z -o $((9 << 20)) -l 4096 /dev/mapper/$dev

tap_eq "g64 dump" "0 131072 262144 131072 8388608 65536 9437184 65536 16711680 61952" "$(dump g64)"
tap_eq "g256 dump" "0 524288 8388608 262144 9437184 262144 16515072 258560" "$(dump g256)"
tap_eq "g1m dump" "0 1048576 8388608 2097152 15728640 1044992" "$(dump g1m)"
tap_eq "a disabled bitmap records nothing" "" "$(dump off)"
tap_eq "dump from a start byte" "262145 131071 8388608 65536 9437184 65536 16711680 61952" \
	"$(dump g64 262145)"
tap_eq "list" "g64 65536 enabled persistent idle 455168
g256 262144 enabled transient idle 1307136
g1m 1048576 enabled persistent idle 4190720
off 65536 disabled persistent idle 0" "$(blist)"

# Persistence.
dmsetup reload $dev --table "$table" && dmsetup suspend $dev && dmsetup resume $dev
tap_eq "g64 survives a reload" "0 131072 262144 131072 8388608 65536 9437184 65536 16711680 61952" "$(dump g64)"
dmsetup remove $dev
dmsetup create $dev --table "$table"
tap_eq "persistent bitmaps survive remove and create; transient ones do not" \
	"g64 65536 enabled persistent idle 455168
g1m 1048576 enabled persistent idle 4190720
off 65536 disabled persistent idle 0" "$(blist)"
dmsetup remove $dev
rmmod dm_ptbackup
dmsetup create $dev --table "$table"
tap_eq "g1m survives a module reload" "0 1048576 8388608 2097152 15728640 1044992" "$(dump g1m)"

# clear, enable, disable, merge, remove.
tap_check "enable" dm_msg $dev bitmap enable off
w bs=4k count=1 seek=$((200 * 16))
tap_eq "an enabled bitmap records" "13107200 65536" "$(dump off)"
tap_check "disable" dm_msg $dev bitmap disable off
w bs=4k count=1 seek=$((201 * 16))
tap_eq "a disabled bitmap stops recording" "13107200 65536" "$(dump off)"
tap_check "merge g1m into off" dm_msg $dev bitmap merge g1m off
tap_eq "merge across granularities" \
	"0 1048576 8388608 2097152 12582912 1048576 15728640 1044992" "$(dump off)"
tap_check "clear" dm_msg $dev bitmap clear g64
tap_eq "cleared" "" "$(dump g64)"
tap_check "remove" dm_msg $dev bitmap remove off
tap_eq "removed" "g64 g1m" "$(blist | cut -d' ' -f1 | tr '\n' ' ' | sed 's/ $//')"

# Refusals change nothing.
before=$(blist)
brefuse() {	# brefuse DESC TEXT MESSAGE...
	local desc=$1 text=$2 now
	shift 2
	expect_refused "$desc" "$text" dm_msg $dev "$@" || return
	now=$(blist)
	[ "$now" = "$before" ] || tap_diag "bitmap list changed: $now"
}
brefuse "duplicate name" "already exists" bitmap add g64
brefuse "invalid name" "invalid bitmap name" bitmap add 'a/b'
brefuse "granularity not a power of two" "must be a power of two" bitmap add x granularity=3000
brefuse "granularity below the chunk size" "must be a power of two" bitmap add x granularity=4K
brefuse "malformed granularity" "invalid granularity" bitmap add x granularity=1Q
brefuse "unknown option" "unknown or repeated option" bitmap add x colour=red
brefuse "repeated option" "unknown or repeated option" bitmap add x transient transient
brefuse "remove unknown" "no bitmap \`nope'" bitmap remove nope
brefuse "clear unknown" "no bitmap" bitmap clear nope
brefuse "enable unknown" "no bitmap" bitmap enable nope
brefuse "dump unknown" "no bitmap" bitmap dump nope
brefuse "merge into itself" "are both" bitmap merge g64 g64
brefuse "merge unknown" "no bitmap" bitmap merge nope g64
brefuse "dump with a bad start" "invalid start byte" bitmap dump g64 12x

# Busy bitmaps.
target=$(make_loop 16)
dm_msg $dev backup start busy "$target" bitmap=g64 speed=64K
before=$(blist)
tap_eq "list shows busy" "busy" "$(blist | awk '$1 == "g64" { print $5 }')"
brefuse "remove a busy bitmap" "in use by job busy" bitmap remove g64
brefuse "clear a busy bitmap" "in use by job busy" bitmap clear g64
brefuse "disable a busy bitmap" "in use by job busy" bitmap disable g64
brefuse "merge into a busy bitmap" "in use by job busy" bitmap merge g1m g64
t2=$(make_loop 16)
brefuse "a second job on a busy bitmap" "is in use by job busy" backup start b2 "$t2" bitmap=g64
brefuse "incremental without bitmap" "needs bitmap=" backup start b2 "$t2" sync=incremental
brefuse "bitmap with sync=none" "needs sync=full or sync=incremental" backup start b2 "$t2" sync=none bitmap=g1m
brefuse "bitmap_mode without bitmap" "bitmap_mode needs bitmap" backup start b2 "$t2" bitmap_mode=always
brefuse "unknown bitmap" "no bitmap \`nope'" backup start b2 "$t2" sync=incremental bitmap=nope
dm_msg $dev job cancel busy
tap_eq "idle again after cancel" "idle" "$(blist | awk '$1 == "g64" { print $5 }')"
dm_msg $dev job dismiss busy

# Paging through a dump bigger than one reply: every other 4 KiB block.
dmsetup remove $dev
dd if=/dev/zero of="$meta" bs=1M oflag=direct status=none 2>/dev/null
dm_create ptb_p "0 32768 ptbackup $origin $meta 8"
dm_msg ptb_p bitmap add p
fio --output=/dev/null --name=holes --filename=/dev/mapper/ptb_p --direct=1 \
	--rw=write:4k --bs=4k --size=16M
pages=0 start=0 got=
while :; do
	out=$(dm_msg ptb_p bitmap dump p $start)
	pages=$((pages + 1))
	last=$(tail -n 1 <<< "$out")
	case $last in
	next\ *) start=${last#next }; got+=$(head -n -1 <<< "$out")$'\n' ;;
	*) got+=$out; break ;;
	esac
	[ $pages -gt 100 ] && break
done
want=$(for ((i = 0; i < 2048; i++)); do echo "$((i * 8192)) 4096"; done)
tap_eq "dump pages" 1 $((pages > 1))
tap_eq "the pages together are exact" "$(sha256sum <<< "$want")" \
	"$(grep -v '^$' <<< "$got" | sha256sum)"

# Room on the metadata device: 16 persistent bitmaps at most.
for i in $(seq 2 16); do dm_msg ptb_p bitmap add "q$i" granularity=1M >/dev/null; done
expect_refused "a 17th persistent bitmap is refused" "no room on the metadata device" \
	dm_msg ptb_p bitmap add q17
tap_check "a transient one still fits" dm_msg ptb_p bitmap add t17 transient
tap_done
