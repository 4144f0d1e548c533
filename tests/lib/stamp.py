#!/usr/bin/env python3
"""Stamped 4 KiB writes around a point in time, and their checker.

  stamp.py init DEV
      write every 4 KiB block of DEV with its initial stamp (sequence 0)

  stamp.py write DEV LOG [--threads T] [--warmup S] [--after S] [--every K] -- CMD...
      from T threads (8), overwrite random blocks of DEV with O_DIRECT as
      fast as they go, each block's whole 4 KiB a stamp (block, sequence)
      repeated.  Thread t writes only the t-th, (t+T)-th, ... of the blocks
      written, so the writes to one block never overlap in time.  --every
      K: only every K-th 64 KiB group of blocks is written (default 1).
      After S seconds (2) the main thread takes T0, runs CMD (e.g.
      `dmsetup message DEV 0 backup start ...'), takes T1 when CMD has
      returned, lets the writers go on for --after seconds (2), stops them.
      LOG gets T0, T1 and every write's block, sequence, submit and
      completion time (CLOCK_MONOTONIC ns).  Exits 1 if a write or CMD
      failed.

  stamp.py check LOG DEV
      DEV must hold the image as it was at one instant between T0 and T1.
      Each block must hold the stamp of one of its writes i0..i1, i0 the
      last one completed before T0 (0: the initial stamp), i1 the last one
      submitted before T1; any other stamp, or a torn, zeroed or foreign
      block (counted as bad_stamp), is a failure.  Then one instant must
      fit every block at once: after the submission of each block's write,
      before the completion of the write that followed it (cut=ok|bad).
      Prints key=value counts (ambiguous: blocks with i1 > i0), the bounds
      of the instant, the first failures; exits 0 if nothing failed, else
      1.  final_mismatch counts the blocks that do not hold their last
      write (0 on the origin after the run).
"""
import mmap
import os
import random
import struct
import subprocess
import sys
import threading
import time

BLOCK = 4096
MAGIC = b"PTBSTAMP"
REC = struct.Struct("<8sQQQ")	# magic, block, seq, check
REPEAT = BLOCK // REC.size
CHECK_KEY = 0x5DEECE66D1234567
READ_CHUNK = 1 << 20


def stamp(block, seq):
    return REC.pack(MAGIC, block, seq, block ^ (seq * 0x9E3779B97F4A7C15 % (1 << 64)) ^ CHECK_KEY) * REPEAT


def decode(block, data):
    """The sequence number stamped in DATA for BLOCK, or a description."""
    magic, blk, seq, _ = REC.unpack_from(data, 0)
    if magic == MAGIC and data == stamp(blk, seq):
        if blk == block:
            return seq, None
        return None, "stamp of block %d seq %d" % (blk, seq)
    seqs = set()
    for off in range(0, BLOCK, REC.size):
        m, b, s, _ = REC.unpack_from(data, off)
        seqs.add("%d/%d" % (b, s) if m == MAGIC else "junk")
    return None, "torn or foreign: block/seq of its records: " + ",".join(sorted(seqs)[:8])


def dev_size(fd):
    return os.lseek(fd, 0, os.SEEK_END)


def cmd_init(dev):
    fd = os.open(dev, os.O_WRONLY | os.O_DIRECT)
    try:
        nblocks = dev_size(fd) // BLOCK
        buf = mmap.mmap(-1, READ_CHUNK)
        per = READ_CHUNK // BLOCK
        for first in range(0, nblocks, per):
            n = min(per, nblocks - first)
            for i in range(n):
                buf[i * BLOCK:(i + 1) * BLOCK] = stamp(first + i, 0)
            if os.pwritev(fd, [memoryview(buf)[:n * BLOCK]], first * BLOCK) != n * BLOCK:
                raise OSError("short write")
        os.fsync(fd)
    finally:
        os.close(fd)
    print("blocks=%d" % nblocks)
    return 0


GROUP = 16	# blocks in 64 KiB


def writer(fd, tid, nthreads, nblocks, every, seqs, log, stop, errors):
    buf = mmap.mmap(-1, BLOCK)	# page aligned, as O_DIRECT wants
    written = [b for b in range(nblocks) if b // GROUP % every == 0]
    mine = written[tid::nthreads]
    rnd = random.Random(tid * 7919 + os.getpid())
    now = time.monotonic_ns
    append = log.append
    try:
        while not stop.is_set():
            b = rnd.choice(mine)
            s = seqs[b] + 1
            buf[:] = stamp(b, s)
            t_sub = now()
            n = os.pwrite(fd, buf, b * BLOCK)
            t_done = now()
            if n != BLOCK:
                raise OSError("short write of block %d: %d bytes" % (b, n))
            seqs[b] = s
            append((b, s, t_sub, t_done))
    except Exception as e:	# reported by the main thread
        errors.append("thread %d: %r" % (tid, e))


def cmd_write(dev, logpath, nthreads, warmup, after, every, cmd):
    fd = os.open(dev, os.O_WRONLY | os.O_DIRECT)
    nblocks = dev_size(fd) // BLOCK
    seqs = [0] * nblocks
    stop = threading.Event()
    errors = []
    logs = [[] for _ in range(nthreads)]
    threads = [threading.Thread(target=writer,
                                args=(fd, t, nthreads, nblocks, every, seqs, logs[t], stop,
                                      errors))
               for t in range(nthreads)]
    for t in threads:
        t.start()
    time.sleep(warmup)
    t0 = time.monotonic_ns()
    res = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    t1 = time.monotonic_ns()
    time.sleep(after)
    stop.set()
    for t in threads:
        t.join()
    os.close(fd)
    with open(logpath, "w") as f:
        f.write("blocks %d\nthreads %d\nt0 %d\nt1 %d\ncmd_rc %d\n"
                % (nblocks, nthreads, t0, t1, res.returncode))
        for lg in logs:
            f.write("".join("w %d %d %d %d\n" % w for w in lg))
    nwrites = sum(len(lg) for lg in logs)
    print("writes=%d threads=%d cmd_rc=%d cmd_ms=%.1f"
          % (nwrites, nthreads, res.returncode, (t1 - t0) / 1e6))
    if res.returncode:
        sys.stderr.write("command failed: %s\n%s" % (" ".join(cmd), res.stdout.decode(errors="replace")))
    for e in errors:
        sys.stderr.write("write error: %s\n" % e)
    return 1 if errors or res.returncode else 0


def read_log(path):
    head = {}
    writes = {}
    with open(path) as f:
        for line in f:
            w = line.split()
            if w[0] == "w":
                b, s, sub, done = map(int, w[1:])
                writes.setdefault(b, []).append((s, sub, done))
            else:
                head[w[0]] = int(w[1])
    for b, lst in writes.items():
        lst.sort()
        if [s for s, _, _ in lst] != list(range(1, len(lst) + 1)):
            raise ValueError("log: block %d: sequence numbers not 1..%d" % (b, len(lst)))
        for (_, _, d), (_, s2, _) in zip(lst, lst[1:]):
            if s2 < d:
                raise ValueError("log: block %d: writes overlap in time" % b)
    return head, writes


def read_blocks(dev, nblocks):
    fd = os.open(dev, os.O_RDONLY | os.O_DIRECT)
    try:
        if dev_size(fd) < nblocks * BLOCK:
            raise ValueError("%s is smaller than %d blocks" % (dev, nblocks))
        buf = mmap.mmap(-1, READ_CHUNK)
        for first in range(0, nblocks * BLOCK, READ_CHUNK):
            want = min(READ_CHUNK, nblocks * BLOCK - first)
            if os.preadv(fd, [memoryview(buf)[:want]], first) != want:
                raise OSError("short read at %d" % first)
            for off in range(0, want, BLOCK):
                yield buf[off:off + BLOCK]
    finally:
        os.close(fd)


def cmd_check(logpath, dev):
    head, writes = read_log(logpath)
    nblocks, t0, t1 = head["blocks"], head["t0"], head["t1"]
    c = dict(blocks=0, written=len(writes), ambiguous=0, failures=0, bad_stamp=0,
             final_mismatch=0)
    allw = [w for lst in writes.values() for w in lst]
    c["writes"] = len(allw)
    c["before_t0"] = sum(1 for _, _, d in allw if d < t0)
    c["after_t1"] = sum(1 for _, s, _ in allw if s > t1)
    c["in_window"] = c["writes"] - c["before_t0"] - c["after_t1"]
    lo, hi = t0, t1	# the instant must lie in (lo, hi)
    lo_why = hi_why = "T0/T1"
    fails = []
    for b, data in enumerate(read_blocks(dev, nblocks)):
        c["blocks"] += 1
        lst = writes.get(b, [])
        i0 = sum(1 for _, _, d in lst if d < t0)
        i1 = sum(1 for _, s, _ in lst if s <= t1)
        if i1 > i0:
            c["ambiguous"] += 1
        seq, why = decode(b, data)
        if seq != len(lst):
            c["final_mismatch"] += 1
        if seq is None:
            c["failures"] += 1
            c["bad_stamp"] += 1
            fails.append("block %d: %s; allowed seq %d..%d" % (b, why, i0, i1))
            continue
        if not i0 <= seq <= i1:
            c["failures"] += 1
            show = sorted({i0, i1 + 1, seq} | set(range(i0 + 1, min(i1, i0 + 3) + 1)))
            times = " ".join("%d:[%+.3f,%+.3f]" % (s, (su - t0) / 1e6, (d - t0) / 1e6)
                             for s, su, d in (lst[i - 1] for i in show if 0 < i <= len(lst)))
            fails.append("block %d: holds seq %d, allowed %d..%d (seq:[submit,done] ms"
                         " vs T0, T1 at %+.3f: %s)" % (b, seq, i0, i1, (t1 - t0) / 1e6, times))
            continue
        # One instant for all blocks: after this block's write, before the next one completed.
        if seq and lst[seq - 1][1] > lo:
            lo, lo_why = lst[seq - 1][1], "block %d seq %d submitted" % (b, seq)
        if seq < len(lst) and lst[seq][2] < hi:
            hi, hi_why = lst[seq][2], "block %d seq %d completed" % (b, seq + 1)
    if c["blocks"] != nblocks:
        fails.append("read %d blocks of %d" % (c["blocks"], nblocks))
        c["failures"] += 1
    cut_ok = lo < hi
    c["cut"] = "ok" if cut_ok else "bad"
    c["window_ms"] = "%.1f" % ((t1 - t0) / 1e6)
    print(" ".join("%s=%s" % kv for kv in c.items()))
    print("instant: after %+.3fms (%s), before %+.3fms (%s), vs T0"
          % ((lo - t0) / 1e6, lo_why, (hi - t0) / 1e6, hi_why))
    for f in fails[:10]:
        print("fail: " + f)
    if len(fails) > 10:
        print("fail: ... %d more" % (len(fails) - 10))
    return 0 if not c["failures"] and cut_ok else 1


def main(argv):
    args = argv[1:]
    try:
        if len(args) == 2 and args[0] == "init":
            return cmd_init(args[1])
        if len(args) == 3 and args[0] == "check":
            return cmd_check(args[1], args[2])
        if len(args) >= 4 and args[0] == "write" and "--" in args:
            sep = args.index("--")
            opts, cmd = args[3:sep], args[sep + 1:]
            kw = dict(threads=8, warmup=2.0, after=2.0, every=1)
            for i in range(0, len(opts), 2):
                k = opts[i].lstrip("-")
                if k not in kw or i + 1 >= len(opts):
                    raise ValueError("bad option %s" % opts[i])
                kw[k] = type(kw[k])(opts[i + 1])
            if cmd:
                return cmd_write(args[1], args[2], kw["threads"], kw["warmup"], kw["after"],
                                 kw["every"], cmd)
    except (OSError, ValueError, KeyError) as e:
        sys.stderr.write("stamp.py: %s\n" % e)
        return 2
    sys.stderr.write(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
