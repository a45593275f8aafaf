#!/usr/bin/env bash
# native/SCALING.md change 27 on the GPU host's cores: the library before it (this tree with change.diff
# reversed, built in /tmp/before) and after it, in turn, three times each (scripts/cpu_timeline.py, three
# interleaved rounds a call, 1, 8 and 16 threads; MLPBENCH_NATIVE_DIR picks the library); everything packed
# into one archive.
set -u
OUT=${OUT:?}
WORK=/tmp/dot-forward
mkdir -p "$WORK"
{ date -u; uptime; } >"$WORK/uptime.txt"
OUT=$WORK bash scripts/gpu_host.sh setup >"$WORK/setup.log" 2>&1
export PYTHONPATH=/tmp/site:$PWD/src:$PWD/tests PATH=/tmp/site/bin:$PATH
rm -rf /tmp/before && mkdir -p /tmp/before && cp -r native /tmp/before/ && rm -rf /tmp/before/native/build
(cd /tmp/before && patch -R -p1 <"$OLDPWD/results/h200-dot-forward/change.diff" && make -C native -j16 PYTHON=python3) \
    >"$WORK/build-before.log" 2>&1
sleep 20  # the builds' load settles before the timings
for take in 1 2 3; do
    for lib in before after; do
        dir=$([[ $lib == before ]] && echo /tmp/before/native || echo "$PWD/native")
        uptime >>"$WORK/uptime.txt"
        MLPBENCH_NATIVE_DIR=$dir timeout 90 python3 scripts/cpu_timeline.py \
            --cases moons-5h300:1,moons-5h300:4,digits:1 --threads 1,8,16 --rounds 3 --budget-s 25 \
            --out "$WORK/$lib-$take" >"$WORK/$lib-$take.log" 2>&1
        echo "$lib-$take exit $?" >>"$WORK/uptime.txt"
    done
done
uptime >>"$WORK/uptime.txt"
rm -f "$WORK/gpu-host.tar.gz"
tar czf "$OUT/dot-forward.tar.gz" -C "$WORK" .
