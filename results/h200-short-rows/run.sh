#!/usr/bin/env bash
# native/SCALING.md change 26 on the GPU host's cores: the library before it (this tree with change.diff
# reversed, built in /tmp/before) and after it, in turn, three times each (scripts/cpu_timeline.py, five
# interleaved rounds a call; MLPBENCH_NATIVE_DIR picks the library).
set -u
OUT=${OUT:?}
{ date -u; uptime; } >"$OUT/uptime.txt"
OUT=$OUT bash scripts/gpu_host.sh setup >"$OUT/setup.log" 2>&1
export PYTHONPATH=/tmp/site:$PWD/src:$PWD/tests PATH=/tmp/site/bin:$PATH
rm -rf /tmp/before && mkdir -p /tmp/before && cp -r native /tmp/before/ && rm -rf /tmp/before/native/build
(cd /tmp/before && patch -R -p1 <"$OLDPWD/results/h200-short-rows/change.diff" && make -C native -j16 PYTHON=python3) \
    >"$OUT/build-before.log" 2>&1
CASES=moons-5h300:1,moons-5h300:8,digits:32
for take in 1 2 3; do
    for lib in before after; do
        dir=$([[ $lib == before ]] && echo /tmp/before/native || echo "$PWD/native")
        uptime >>"$OUT/uptime.txt"
        MLPBENCH_NATIVE_DIR=$dir timeout 90 python3 scripts/cpu_timeline.py --cases $CASES --threads 1,16 \
            --rounds 5 --budget-s 25 --out "$OUT/$lib-$take" >"$OUT/$lib-$take.log" 2>&1
        echo "$lib-$take exit $?" >>"$OUT/uptime.txt"
    done
done
uptime >>"$OUT/uptime.txt"
