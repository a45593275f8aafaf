#!/usr/bin/env bash
# Plans 8 and 16 of the C library's fused step on batches of a few rows, at 8 and 16 threads, five interleaved
# rounds (scripts/cpu_timeline.py --plans), on the GPU host's cores; the tables and logs packed into one archive.
set -u
OUT=${OUT:?}
WORK=/tmp/plans-few-rows
mkdir -p "$WORK"
{ date -u; uptime; } >"$WORK/uptime.txt"
OUT=$WORK bash scripts/gpu_host.sh setup >"$WORK/setup.log" 2>&1
export PYTHONPATH=/tmp/site:$PWD/src:$PWD/tests PATH=/tmp/site/bin:$PATH
sleep 30  # the build's load settles before the timings
uptime >>"$WORK/uptime.txt"
timeout 240 python3 scripts/cpu_timeline.py --cases moons-5h300:1,moons-5h300:4,moons-5h300:8 --threads 8,16 \
    --plans 8,16 --rounds 5 --budget-s 150 --out "$WORK" >"$WORK/timeline.log" 2>&1
echo "exit $?" >>"$WORK/uptime.txt"
uptime >>"$WORK/uptime.txt"
rm -f "$WORK/gpu-host.tar.gz"
tar czf "$OUT/plans-few-rows.tar.gz" -C "$WORK" .
