#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-only
"""Turn the records of tests/bench/bench.sh into a table and results.json.

Records are "group<TAB>config<TAB>metric<TAB>value" lines, one per
measurement and round.  Every figure is the median of its rounds; the
ratios compare figures measured in the same run.
"""
import argparse
import json
import statistics
import sys
from collections import defaultdict

# (name, numerator, denominator, goal, kind): kind "min" means the ratio
# must be at least the goal, "max" at most.
GOALS = [
    ("one persistent bitmap vs dm-linear, 4k random IOPS",
     ("write", "bitmap", "rand4k_qd16_iops"),
     ("write", "linear", "rand4k_qd16_iops"), 0.99, "min"),
    ("first writes to uncopied chunks: sync=none vs fresh dm-snapshot 64k",
     ("cbw", "sync-none", "iops"), ("cbw", "snapshot-64k", "iops"), 2.0, "min"),
    ("full backup speed vs dd",
     ("backup", "dd", "full_ns"), ("backup", "ptbackup", "full_ns"), 0.9, "min"),
]


def load(path):
    values = defaultdict(list)
    with open(path) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 4:
                continue
            try:
                values[tuple(parts[:3])].append(float(parts[3]))
            except ValueError:
                continue
    return values


def summarise(values):
    figures = {}
    for key, vals in values.items():
        med = statistics.median(vals)
        spread = (max(vals) - min(vals)) / med if med else 0.0
        figures[key] = {"median": med, "values": vals, "spread": round(spread, 4)}
    return figures


def ratio(figures, num, den):
    n, d = figures.get(num), figures.get(den)
    if not n or not d or not d["median"]:
        return None
    return n["median"] / d["median"]


def goal_rows(figures):
    rows = []
    for name, num, den, goal, kind in GOALS:
        r = ratio(figures, num, den)
        rows.append({"name": name, "ratio": r, "goal": goal, "kind": kind,
                     "met": r is not None and (r >= goal if kind == "min" else r <= goal)})
    full = figures.get(("backup", "ptbackup", "full_ns"))
    for pct in (1, 10, 50):
        inc = figures.get(("backup", "ptbackup", f"inc{pct}_ns"))
        r = None
        if full and inc and full["median"]:
            budget = full["median"] * (pct / 100 + 0.05)
            r = inc["median"] / budget
        rows.append({"name": f"incremental, {pct}% dirty: time vs ({pct}% + 5%) of the full backup",
                     "ratio": r, "goal": 1.0, "kind": "max",
                     "met": r is not None and r <= 1.0})
    return rows


WRITE_CONFIGS = ["linear", "era", "snapshot-4k", "snapshot-64k", "ptbackup",
                 "bitmap", "sync-none", "sync-full", "raid1", "mirror"]

# A mirror job against dm-raid1 on the same two devices: (label, metric).
MIRROR_METRICS = [("4k qd16 IOPS", "rand4k_qd16_iops"), ("4k qd16 p99 us", "rand4k_qd16_p99_us"),
                  ("4k qd1 IOPS", "rand4k_qd1_iops"), ("4k qd1 p50 us", "rand4k_qd1_p50_us"),
                  ("1M seq KiB/s", "seq1m_kib_s")]


def mirror_rows(figures):
    rows = []
    for label, m in MIRROR_METRICS:
        rows.append({"name": label, "mirror": figures.get(("write", "mirror", m), {}).get("median"),
                     "raid1": figures.get(("write", "raid1", m), {}).get("median"),
                     "ratio": ratio(figures, ("write", "mirror", m), ("write", "raid1", m))})
    return rows


def cell(figures, key, base_key):
    """A median, and its ratio to the baseline's, as a fixed-width cell."""
    f = figures.get(key)
    text = f"{f['median']:.0f}" if f else "-"
    r = ratio(figures, key, base_key)
    return f"{text:>14}" + (f" ({r:5.3f})" if r is not None else " " * 8)


def print_tables(figures, rows):
    configs = [c for c in WRITE_CONFIGS
               if any(k[0] == "write" and k[1] == c for k in figures)]
    cols = [("rand4k_qd16_iops", "4k qd16 IOPS"), ("rand4k_qd16_p99_us", "p99 us"),
            ("rand4k_qd1_iops", "4k qd1 IOPS"), ("rand4k_qd1_p50_us", "p50 us"),
            ("seq1m_kib_s", "1M KiB/s")]
    print("write path (ratio to dm-linear in brackets)")
    print(f"{'config':<14}" + "".join(f"{h:>22}" for _, h in cols))
    for c in configs:
        print(f"{c:<14}" + "".join(cell(figures, ("write", c, m), ("write", "linear", m))
                                    for m, _ in cols))
    job = figures.get(("write", "sync-full", "rand4k_qd16_job_kib_s"))
    if job:
        print(f"sync=full job throughput during the 4k qd16 run: {job['median']:.0f} KiB/s")
    print()
    print("goals")
    for r in rows:
        val = "-" if r["ratio"] is None else f"{r['ratio']:.3f}"
        sign = ">=" if r["kind"] == "min" else "<="
        print(f"  {'met ' if r['met'] else 'MISS'} {val:>7} (goal {sign} {r['goal']})  {r['name']}")
    mrows = [r for r in mirror_rows(figures) if r["ratio"] is not None]
    if mrows:
        print()
        print("mirror job vs dm-raid1 on the same devices (latency: lower is better)")
        for r in mrows:
            print(f"  {r['name']:<16} mirror {r['mirror']:>10.0f}  dm-raid1 {r['raid1']:>10.0f}"
                  f"  ratio {r['ratio']:.3f}")
    print()
    print("memory per TiB of origin (KiB)")
    for c in ("bitmap-64K", "bitmap-1M", "job"):
        m = figures.get(("memory", c, "measured_kib"))
        k = figures.get(("memory", c, "computed_kib"))
        if m or k:
            print(f"  {c:<12} computed {k['median'] if k else 0:>8.0f}"
                  f"  measured {m['median'] if m else 0:>8.0f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("records")
    ap.add_argument("output")
    ap.add_argument("--icount", default="1")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--mb", type=int, default=512)
    ap.add_argument("--secs", type=int, default=8)
    ap.add_argument("--jobs", type=int, default=1)
    a = ap.parse_args()
    figures = summarise(load(a.records))
    if not figures:
        print("bench_report: no measurements recorded", file=sys.stderr)
        return 1
    rows = goal_rows(figures)
    print_tables(figures, rows)
    result = {
        "meta": {"icount": a.icount != "0", "rounds": a.rounds, "ram_disk_mib": a.mb,
                 "seconds_per_run": a.secs, "fio_jobs": a.jobs},
        "figures": [{"group": g, "config": c, "metric": m, **v}
                    for (g, c, m), v in sorted(figures.items())],
        "goals": rows,
        "mirror_vs_raid1": mirror_rows(figures),
    }
    try:
        with open(a.output, "w") as f:
            json.dump(result, f, indent=1)
    except OSError as e:
        print(f"bench_report: cannot write {a.output}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
