#!/usr/bin/python3
# SPDX-License-Identifier: GPL-2.0-only
"""A pull-mode reader over NBD, the way a backup tool reads a view: copy
ranges of the export to the same offsets of OUT; with --discard, trim each
range on the export once it is read, so that a small store suffices.

  nbdpull.py URI OUT [--discard] [--step BYTES] [--extents FILE] [--each CMD]

Without --extents the whole export is read in steps; with it only the
"<offset> <length>" lines of FILE (a bitmap dump), applied onto OUT.
With --each, the bash command CMD runs after each range, with OFF and
LEN of that range in its environment (a test writes ahead of the reader).
Prints the bytes read.  Exit 1 with a message if a read or trim fails.
"""
import argparse
import os
import subprocess
import sys

import nbd


def ranges(size, step, extents):
    if extents is None:
        for off in range(0, size, step):
            yield off, min(step, size - off)
        return
    with open(extents) as f:
        for line in f:
            off, length = (int(w) for w in line.split())
            end = off + length
            while off < end:
                n = min(step, end - off)
                yield off, n
                off += n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("uri")
    ap.add_argument("out")
    ap.add_argument("--discard", action="store_true")
    ap.add_argument("--step", type=int, default=1 << 20)
    ap.add_argument("--extents")
    ap.add_argument("--each")
    a = ap.parse_args()

    h = nbd.NBD()
    h.connect_uri(a.uri)
    if a.discard and not h.can_trim():
        sys.exit("nbdpull: the export does not take trims")
    fd = os.open(a.out, os.O_WRONLY)
    total = 0
    try:
        for off, n in ranges(h.get_size(), a.step, a.extents):
            try:
                data = h.pread(n, off)
            except nbd.Error as e:
                sys.exit(f"nbdpull: read of {n} bytes at {off} failed: {e}")
            os.pwrite(fd, data, off)
            total += n
            if a.discard:
                try:
                    h.trim(n, off)
                except nbd.Error as e:
                    sys.exit(f"nbdpull: trim of {n} bytes at {off} failed: {e}")
            if a.each and subprocess.run(["bash", "-c", a.each],
                                         env=dict(os.environ, OFF=str(off), LEN=str(n))).returncode:
                sys.exit(f"nbdpull: --each command failed after the range at {off}")
        os.fsync(fd)
    finally:
        os.close(fd)
        h.shutdown()
    print(total)


if __name__ == "__main__":
    main()
