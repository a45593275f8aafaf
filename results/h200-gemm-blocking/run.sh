#!/usr/bin/env bash
# C library variants with other cache blocks (internal.h's KC, MC, NC), each timed by $SCRIPT (time_gemm.py:
# against OpenBLAS without pauses; time_settled.py: as the sweep's ladder, and c-omp's steps) in its own process,
# in interleaved rounds; logs into $OUT.
set -uo pipefail
HERE=results/h200-gemm-blocking
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD/src PATH=/tmp/site/bin:$PATH PYTHONUNBUFFERED=1
uptime >"$OUT/uptime.txt"
variants=${VARIANTS:-"kc256-mc144-nc4080 kc384-mc144-nc4080 kc512-mc144-nc4080 kc256-mc144-nc512 kc256-mc288-nc4080"}
SCRIPT=${SCRIPT:-time_gemm.py}
LOG=${LOG:-timing.txt}
for v in $variants; do
    IFS=- read -r kc mc nc <<<"$v"
    rm -rf "/tmp/nv-$v" && cp -r native "/tmp/nv-$v" && rm -rf "/tmp/nv-$v/build"
    sed -i "s/enum { KC = 256, MC = 144, NC = 4080 };/enum { KC = ${kc#kc}, MC = ${mc#mc}, NC = ${nc#nc} };/" \
        "/tmp/nv-$v/src/internal.h"
    grep -q "KC = ${kc#kc}, MC = ${mc#mc}, NC = ${nc#nc}" "/tmp/nv-$v/src/internal.h" || echo "sed failed: $v"
    make -C "/tmp/nv-$v" -j16 PYTHON=python3 >"$OUT/build-$v.log" 2>&1 || echo "build failed: $v"
done
for round in 1 2 3; do
    for v in $variants; do
        MLPBENCH_NATIVE_DIR=/tmp/nv-$v python3 "$HERE/$SCRIPT" "$v" 2>&1 | sed "s/^/round $round /"
    done
done | tee "$OUT/$LOG"
uptime >>"$OUT/uptime.txt"
