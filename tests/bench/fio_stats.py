#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-only
"""Print "IOPS P50_US P99_US KIB_PER_S" of the writes of a fio JSON report."""
import json
import sys


def main():
    try:
        report = json.load(sys.stdin)
        w = report["jobs"][0]["write"]
    except (ValueError, KeyError, IndexError) as e:
        print(f"fio_stats: cannot read the fio report: {e}", file=sys.stderr)
        print("0 0 0 0")
        return 1
    pct = w.get("clat_ns", {}).get("percentile", {})
    p50 = pct.get("50.000000", 0) / 1000
    p99 = pct.get("99.000000", 0) / 1000
    print(f"{round(w['iops'])} {p50:.0f} {p99:.0f} {w['bw']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
