#!/usr/bin/env bash
# C library variants that differ only in the AVX-512 register tile (internal.h's MR_AVX512 x NR_AVX512), each
# timed by time_tiles.py in its own process, in interleaved rounds; logs into $OUT.
set -uo pipefail
HERE=results/h200-gemm-tile
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD/src PATH=/tmp/site/bin:$PATH PYTHONUNBUFFERED=1
{ uptime; lscpu | grep -E "Model name|MHz|L1d|L2|L3|NUMA node"; } >"$OUT/machine.txt"
variants=${VARIANTS:-"8x32 12x32 6x64"}
ROUNDS=${ROUNDS:-3}
for v in $variants; do
    IFS=x read -r mr nr <<<"$v"
    d=/tmp/nv-$v
    rm -rf "$d" && cp -r native "$d" && rm -rf "$d/build"
    sed -i "s/MR_AVX512 = 8, NR_AVX512 = 32, MR_MAX = 8, NR_MAX = 32/MR_AVX512 = $mr, NR_AVX512 = $nr, MR_MAX = $((mr > 8 ? mr : 8)), NR_MAX = $((nr > 32 ? nr : 32))/" \
        "$d/src/internal.h"
    grep -q "MR_AVX512 = $mr, NR_AVX512 = $nr," "$d/src/internal.h" || echo "sed failed: $v"
    make -C "$d" -j16 PYTHON=python3 >"$OUT/build-$v.log" 2>&1 || echo "build failed: $v"
done
for round in $(seq "$ROUNDS"); do
    for v in $variants; do
        MLPBENCH_NATIVE_DIR=/tmp/nv-$v python3 "$HERE/time_tiles.py" "$v" 2>&1 | sed "s/^/round $round /"
    done
done | tee "$OUT/timing.txt"
uptime >>"$OUT/machine.txt"
