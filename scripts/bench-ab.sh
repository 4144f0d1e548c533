#!/bin/bash
# SPDX-License-Identifier: GPL-2.0-only
# Wall-clock A/B of the write path: the module of commit A (default: the
# last one with a shared atomic write counter, 9b6a842) against the
# working tree's build, on two guest CPUs, rounds interleaved
# (tests/bench/write-ab.sh).  Results: bench/write-ab.json.
#   usage: scripts/bench-ab.sh [COMMIT]      env: KVER, BENCH_ROUNDS, BENCH_SECS
set -eu
cd "$(dirname "$0")/.."
old=${1:-9b6a842}
kver=${KVER:-$(ls -d /lib/modules/*-amd64 | sort -V | tail -n 1 | xargs basename)}
work=$(mktemp -d "$PWD/.bench-ab.XXXXXX")
trap 'git worktree remove --force "$work/src" >/dev/null 2>&1; rm -rf "$work"' EXIT
git worktree add -f --detach "$work/src" "$old" >/dev/null
make -C "$work/src" module KVER="$kver" >"$work/build-a.log" 2>&1 ||
	{ echo "bench-ab: cannot build $old (see $work/build-a.log)" >&2; exit 1; }
make module KVER="$kver" >"$work/build-b.log" 2>&1 ||
	{ echo "bench-ab: cannot build the working tree" >&2; exit 1; }
mkdir -p "$work/ko" bench/out-ab
cp "$work/src/dm-ptbackup.ko" "$work/ko/a.ko"
cp dm-ptbackup.ko "$work/ko/b.ko"
bash tests/vm/run-vm.sh --kver "$kver" --timeout 3600 --mem 2048 --smp 2 --outdir bench/out-ab \
	--env AB_A_KO="$work/ko/a.ko" --env AB_B_KO="$work/ko/b.ko" \
	--env AB_A_NAME="$old (atomic counter)" \
	--env AB_B_NAME="$(git describe --always --dirty) (per-CPU counters)" \
	--env BENCH_ROUNDS="${BENCH_ROUNDS:-5}" --env BENCH_SECS="${BENCH_SECS:-8}" \
	-- tests/bench/write-ab.sh
cp bench/out-ab/write-ab.json bench/write-ab.json
