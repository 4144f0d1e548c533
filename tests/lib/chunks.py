#!/usr/bin/env python3
"""Chunk-level comparisons for the ptbackup tests.

  chunks.py nonzero DEV CHUNK_BYTES        indices of chunks that are not all zero
  chunks.py diff A B CHUNK_BYTES [BYTES]   indices of chunks where A and B differ
  chunks.py same A B CHUNK_BYTES [BYTES]   indices of chunks where A and B are equal
"""
import os
import sys


def chunks(path, size, limit=None):
    fd = os.open(path, os.O_RDONLY)
    try:
        done = 0
        while limit is None or done < limit:
            want = size if limit is None else min(size, limit - done)
            data = os.pread(fd, want, done)
            if not data:
                return
            yield data
            done += len(data)
    finally:
        os.close(fd)


def main(argv):
    if len(argv) >= 4 and argv[1] == "nonzero":
        size = int(argv[3])
        zero = bytes(size)
        out = [i for i, d in enumerate(chunks(argv[2], size)) if d != zero[:len(d)]]
    elif len(argv) >= 5 and argv[1] in ("diff", "same"):
        size = int(argv[4])
        limit = int(argv[5]) if len(argv) > 5 else None
        a, b = chunks(argv[2], size, limit), chunks(argv[3], size, limit)
        want_equal = argv[1] == "same"
        out = [i for i, (x, y) in enumerate(zip(a, b)) if (x == y) == want_equal]
    else:
        sys.stderr.write(__doc__)
        return 2
    print(" ".join(str(i) for i in out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
