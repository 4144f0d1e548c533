#!/usr/bin/env python3
"""Read a dm-log-writes log device (tests only).

  logwrites.py order LOGDEV
      Print "<entries> <last data write index> <last flush index>
      <data sectors>": the index (from 0) of the last entry that writes
      data and of the last entry that carries a flush (REQ_PREFLUSH), -1 if
      none, and the sectors all data writes cover together.

Log layout (the kernel's dm-log-writes): block 0 holds the super (magic
u64, version u64, nr_entries u64, sectorsize u32); entries follow from
block 1, each a block with (sector u64, nr_sectors u64, flags u64,
data_len u64), then its data: nr_sectors * 512 bytes for a write rounded
up to blocks, or data_len bytes for a mark.  Flags: 1 flush, 2 FUA,
4 discard, 8 mark.
"""
import os
import struct
import sys

MAGIC = 0x6a736677736872
FLUSH, FUA, DISCARD, MARK = 1, 2, 4, 8


def blocks(nbytes, bs):
    return (nbytes + bs - 1) // bs


def order(path):
    fd = os.open(path, os.O_RDONLY)
    magic, _version, nr, bs = struct.unpack_from("<QQQI", os.pread(fd, 28, 0))
    if magic != MAGIC:
        sys.exit("logwrites: %s: bad magic %#x" % (path, magic))
    pos, last_write, last_flush, sectors = bs, -1, -1, 0
    for i in range(nr):
        sector, nr_sectors, flags, data_len = struct.unpack_from(
            "<QQQQ", os.pread(fd, 32, pos))
        pos += bs
        if flags & FLUSH:
            last_flush = i
        if flags & MARK:
            pos += blocks(data_len, bs) * bs
        elif nr_sectors and not flags & DISCARD:
            last_write = i
            sectors += nr_sectors
            pos += blocks(nr_sectors * 512, bs) * bs
    os.close(fd)
    print(nr, last_write, last_flush, sectors)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "order":
        order(sys.argv[2])
    else:
        sys.exit(__doc__)
