#!/usr/bin/env bash
# c-omp and c-blas at every team size from 1 to 16 threads on the sweep's small configurations, five
# interleaved rounds (scripts/cpu_timeline.py), on the GPU host's 16 cores: the data behind the library's team
# rule (native/SCALING.md, "Teams for small steps").
set -u
OUT=${OUT:?}
{ date -u; uptime; } >"$OUT/uptime.txt"
OUT=$OUT bash scripts/gpu_host.sh setup >"$OUT/setup.log" 2>&1
cp native/build/*.log "$OUT/" 2>/dev/null
export PYTHONPATH=/tmp/site:$PWD/src:$PWD/tests PATH=/tmp/site/bin:$PATH
timeout 330 python3 scripts/cpu_timeline.py --cases "${CASES:-digits:32,moons-5h300:1,moons-5h300:16,64-64-64-64:256}" \
    --threads "${THREADS:-1,2,3,4,6,8,12,16}" --blas --rounds 5 --budget-s "${BUDGET_S:-260}" --out "$OUT" \
    >"$OUT/timeline.log" 2>&1
echo "exit $?" >>"$OUT/uptime.txt"
uptime >>"$OUT/uptime.txt"
