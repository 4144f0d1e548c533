#!/usr/bin/env python3
"""Craft ptbackup metadata superblocks with valid checksums (tests only).

  craft_md.py set DEV FIELD VALUE [SLOT]
      Rewrite FIELD of the current superblock copy (the valid one with the
      higher generation) and recompute its checksum.  FIELD is one of
      dev_sectors, region_shift (superblock) or nr_bits, nr_blocks,
      first_block, granularity_shift (bitmap SLOT, default 0).  VALUE may be
      an expression such as 'old*64' ('old' is the current value).
  craft_md.py get DEV FIELD [SLOT]
      Print the field of the current copy.

Layout (dm-ptbackup/ptb-metadata.c): 4 KiB blocks 0 and 1 are superblock
copies: csum u32, magic u32, version u32, block_size u32, generation u64,
dev_sectors u64, nr_bitmaps u32, flags u32, region_shift u32, 20 reserved
bytes, then 16 bitmaps of 64 bytes: name[32], first_block u64, nr_blocks
u64, nr_bits u64, granularity_shift u32, flags u32.  The checksum is crc32c
(seed ~0, no final inversion) of bytes 4..4095, xor 0x70746231.
"""
import os
import struct
import sys

BLOCK = 4096
CSUM_XOR = 0x70746231
SB_FIELDS = {"generation": (16, "<Q"), "dev_sectors": (24, "<Q"),
             "region_shift": (40, "<I")}
BM_FIELDS = {"first_block": (32, "<Q"), "nr_blocks": (40, "<Q"),
             "nr_bits": (48, "<Q"), "granularity_shift": (56, "<I")}


def crc32c_table():
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


TABLE = crc32c_table()


def csum(block):
    c = 0xFFFFFFFF
    for b in block[4:]:
        c = TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ CSUM_XOR


def current(fd):
    best = None
    for i in (0, 1):
        blk = bytearray(os.pread(fd, BLOCK, i * BLOCK))
        if struct.unpack_from("<I", blk, 0)[0] != csum(blk):
            continue
        gen = struct.unpack_from("<Q", blk, 16)[0]
        if best is None or gen > best[1]:
            best = (i, gen, blk)
    if best is None:
        sys.exit("craft_md: no valid superblock copy")
    return best[0], best[2]


def where(field, slot):
    if field in SB_FIELDS:
        return SB_FIELDS[field]
    off, fmt = BM_FIELDS[field]
    return 64 + slot * 64 + off, fmt


def main(argv):
    op, dev, field = argv[1], argv[2], argv[3]
    fd = os.open(dev, os.O_RDWR)
    idx, blk = current(fd)
    if op == "get":
        off, fmt = where(field, int(argv[4]) if len(argv) > 4 else 0)
        print(struct.unpack_from(fmt, blk, off)[0])
        return 0
    off, fmt = where(field, int(argv[5]) if len(argv) > 5 else 0)
    old = struct.unpack_from(fmt, blk, off)[0]
    struct.pack_into(fmt, blk, off, int(eval(argv[4], {"old": old})))
    struct.pack_into("<I", blk, 0, csum(blk))
    os.pwrite(fd, bytes(blk), idx * BLOCK)
    os.fsync(fd)
    os.close(fd)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
