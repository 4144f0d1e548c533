#!/bin/bash
# Draw bench/results.json (written by `make bench') as a PNG chart: the
# write path of every configuration as a ratio to dm-linear, and every goal
# of the benchmark as its ratio beside the goal.
# usage: scripts/bench-chart.sh RESULTS.json OUTPUT.png
set -euo pipefail

[ $# = 2 ] || { echo "usage: $0 RESULTS.json OUTPUT.png" >&2; exit 2; }
in=$1 png=$2
command -v gnuplot >/dev/null ||
	{ echo "bench-chart: gnuplot not found: run scripts/install-deps.sh" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

python3 - "$in" "$tmp" <<'EOF'
import json, sys
res = json.load(open(sys.argv[1]))
fig = {(f["group"], f["config"], f["metric"]): f["median"] for f in res["figures"]}
order = ["linear", "era", "snapshot-4k", "snapshot-64k", "ptbackup", "bitmap",
         "sync-none", "sync-full", "raid1", "mirror"]
with open(sys.argv[2] + "/write.dat", "w") as out:
    out.write("config qd16 qd1 seq1m\n")
    for c in order:
        row = []
        for m in ("rand4k_qd16_iops", "rand4k_qd1_iops", "seq1m_kib_s"):
            base = fig.get(("write", "linear", m))
            v = fig.get(("write", c, m))
            row.append(f"{v / base:.3f}" if v is not None and base else "0")
        if any(x != "0" for x in row):
            out.write(f"{c} {' '.join(row)}\n")
with open(sys.argv[2] + "/goals.dat", "w") as out:
    out.write("goal ratio target\n")
    for i, g in enumerate(res["goals"]):
        r = g["ratio"] if g["ratio"] is not None else 0
        out.write(f"G{i + 1} {r:.3f} {g['goal']}\n")
with open(sys.argv[2] + "/goals.txt", "w") as out:
    for i, g in enumerate(res["goals"]):
        sign = ">=" if g["kind"] == "min" else "<="
        out.write(f"G{i + 1}: {g['name']} (goal {sign} {g['goal']})\\n")
mode = "-icount, 1 CPU (path length)" if res["meta"]["icount"] else \
    f"wall clock, median of {res['meta']['rounds']} rounds"
open(sys.argv[2] + "/mode.txt", "w").write(mode)
EOF

gnuplot <<EOF
set terminal pngcairo size 1100,900 font ",10"
set output "$png"
set multiplot layout 2,1 title "dm-ptbackup make bench: $(cat "$tmp/mode.txt")"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.8 border -1
set key below
set grid ytics
set yrange [0:*]
set ylabel "ratio to dm-linear (same run)"
set title "write path"
plot "$tmp/write.dat" using 2:xtic(1) title "4k random, qd16", \
     "" using 3 title "4k random, qd1", \
     "" using 4 title "1M sequential"
set title "goals: bars are the ratios, marks the goals"
set ylabel "ratio"
set label 1 "$(cat "$tmp/goals.txt")" at graph 0.01, graph 0.97 left front font ",8"
set offsets 0, 0, graph 0.5, 0
set yrange [0:*]
plot "$tmp/goals.dat" using 2:xtic(1) title "ratio", \
     "" using 0:3 with points pt 7 ps 1.5 lc rgb "red" title "goal"
unset multiplot
EOF
echo "bench-chart: wrote $png"
