#!/bin/bash
# The metadata device: formatting, refusal of foreign, corrupt, too small
# and newer metadata, and fail mode on metadata I/O errors.
. "$(dirname "$0")/lib/tap.sh"
. "$(dirname "$0")/lib/ptb.sh"
need_root
need_cmd dmsetup python3

tap_plan 16
origin=$(make_loop 16)
mdisk=$(make_loop 4)
sz=$(dev_sectors "$origin")
msz=$(dev_sectors "$mdisk")

mrefuse() {	# mrefuse DESC TEXT METADATA-DEV
	expect_refused "$1" "$2" dmsetup create ptb_md --table "0 $sz ptbackup $origin $3 128"
	dmsetup remove ptb_md >/dev/null 2>&1
}

head -c 8192 /dev/urandom | dd iflag=fullblock of="$mdisk" bs=4k oflag=direct status=none
mrefuse "foreign metadata is refused" "holds something else" "$mdisk"
dd if=/dev/zero of="$mdisk" bs=1M oflag=direct status=none 2>/dev/null
tap_check "a zeroed device is formatted" \
	dmsetup create ptb_md --table "0 $sz ptbackup $origin $mdisk 128"
dm_msg ptb_md bitmap add keep
dmsetup remove ptb_md
tap_eq "superblock magic" "PTBK" "$(dd if="$mdisk" bs=1 skip=4 count=4 status=none)"

cp_meta=/tmp/meta.img
dd if="$mdisk" of=$cp_meta bs=1M status=none
# Flip a byte inside both superblock copies: the checksums no longer match.
python3 - "$mdisk" <<'PY'
import os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
for blk in (0, 1):
    b = bytearray(os.pread(fd, 1, blk * 4096 + 100))
    b[0] ^= 0xff
    os.pwrite(fd, bytes(b), blk * 4096 + 100)
os.close(fd)
PY
mrefuse "corrupt metadata is refused" "corrupt (bad checksum)" "$mdisk"
# One good copy is enough (here the newer one, written by `bitmap add').
python3 - "$mdisk" <<'PY'
import os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
b = bytearray(os.pread(fd, 1, 4096 + 100))
b[0] ^= 0xff
os.pwrite(fd, bytes(b), 4096 + 100)
os.close(fd)
PY
tap_check "one valid superblock copy is enough" \
	dmsetup create ptb_md --table "0 $sz ptbackup $origin $mdisk 128"
tap_eq "and the bitmap is there" keep "$(dm_msg ptb_md bitmap list | cut -d' ' -f1)"
dmsetup remove ptb_md

# A newer, then an older version in both copies (the version is at byte 8).
set_version() {
	dd if=$cp_meta of="$mdisk" bs=1M oflag=direct status=none
	python3 - "$mdisk" "$1" <<'PY'
import os, struct, sys
fd = os.open(sys.argv[1], os.O_RDWR)
for blk in (0, 1):
    os.pwrite(fd, struct.pack("<I", int(sys.argv[2])), blk * 4096 + 8)
os.close(fd)
PY
}
set_version 3
mrefuse "newer metadata is refused" "newer dm-ptbackup" "$mdisk"
set_version 1
mrefuse "metadata of the version-1 development format is refused" "older development format" "$mdisk"

small=$(make_loop 1)
truncate -s 12K "$(losetup -nO BACK-FILE "$small")" && losetup -c "$small"
mrefuse "a too small metadata device is refused" "too small" "$small"

# Growing the device beyond what persistent bitmaps cover.
dd if=$cp_meta of="$mdisk" bs=1M oflag=direct status=none
big=$(make_loop 32)
expect_refused "a device larger than its bitmaps is refused" "larger than its persistent bitmaps cover" \
	dmsetup create ptb_md --table "0 $(dev_sectors "$big") ptbackup $big $mdisk 128"
dmsetup remove ptb_md >/dev/null 2>&1

# Fail mode: metadata writes start failing.
dm_create ptb_mlin "0 $msz linear $mdisk 0"
dm_create ptb_md "0 $sz ptbackup $origin /dev/mapper/ptb_mlin 128"
tap_eq "metadata mode rw" rw "$(dm_status_field ptb_md 3)"
ev=$(dmsetup info ptb_md | sed -n 's/^Event number: *//p')
dmesg_mark
dmsetup reload ptb_mlin --table "0 $msz error" && dmsetup suspend ptb_mlin && dmsetup resume ptb_mlin
tap_check "writes go on after a metadata failure" \
	dd if=/dev/urandom of=/dev/mapper/ptb_md bs=64k count=1 seek=3 oflag=direct status=none
tap_eq "metadata mode fail" fail "$(dm_status_field ptb_md 3)"
# Only log lines written since the metadata was cut count: an earlier
# test's failure must not satisfy this.
tap_eq "the failure was logged and an event raised" "1 1" \
	"$(dmesg_since | grep -c 'metadata failed: persistent bitmaps no longer track writes') \
$(($(dmsetup info ptb_md | sed -n 's/^Event number: *//p') > ev))"
tap_eq "the bitmap is flagged" "keep 65536 enabled persistent idle 65536 inconsistent" \
	"$(dm_msg ptb_md bitmap list)"
t=$(make_loop 16)
expect_refused "incremental from a bitmap that lost track is refused" "lost track of writes" \
	dm_msg ptb_md backup start i "$t" sync=incremental bitmap=keep
tap_done
