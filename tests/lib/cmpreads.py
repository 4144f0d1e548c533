#!/usr/bin/env python3
"""cmpreads.py A B N [SEED]: N reads of A and B at the same random offsets,
512 B to 192 KiB long, 512-byte aligned, with O_DIRECT; prints how many
differ (or fail on A; a failed read of B is an error).  Exit 0."""
import mmap
import os
import random
import sys


def pread_direct(fd, buf, length, offset):
    view = memoryview(buf)[:length]
    try:
        return os.preadv(fd, [view], offset) == length and bytes(view)
    except OSError:
        return None


def main():
    a, b, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    rng = random.Random(int(sys.argv[4]) if len(sys.argv) > 4 else None)
    fa = os.open(a, os.O_RDONLY | os.O_DIRECT)
    fb = os.open(b, os.O_RDONLY | os.O_DIRECT)
    size = min(os.lseek(fa, 0, os.SEEK_END), os.lseek(fb, 0, os.SEEK_END))
    ba, bb = mmap.mmap(-1, 192 << 10), mmap.mmap(-1, 192 << 10)
    bad = 0
    for _ in range(n):
        length = rng.randint(1, 384) * 512
        offset = rng.randrange(0, (size - length) // 512 + 1) * 512
        want = pread_direct(fb, bb, length, offset)
        if want is None:
            sys.exit("cmpreads: cannot read %s at %d" % (b, offset))
        if pread_direct(fa, ba, length, offset) != want:
            bad += 1
    print(bad)


if __name__ == "__main__":
    main()
