#!/usr/bin/env bash
# native/SCALING.md changes 28-29 on the GPU host's cores: the library before them (this tree with change.diff
# reversed, built in /tmp/before) and after them, in turn, three times each (scripts/cpu_timeline.py, three
# interleaved rounds a call, 1 and 16 threads; MLPBENCH_NATIVE_DIR picks the library); everything packed into
# one archive. TAKE=1: cpu_timeline's own number of steps a round (8 here); TAKE=2: 500 steps, five rounds.
set -u
OUT=${OUT:?}
TAKE=${TAKE:-1}
WORK=/tmp/update-in-backprop/take$TAKE
HERE=results/h200-update-in-backprop
mkdir -p "$WORK"
{ date -u; uptime; } >"$WORK/uptime.txt"
[[ -d /tmp/site ]] || OUT=$WORK bash scripts/gpu_host.sh setup >"$WORK/setup.log" 2>&1
export PYTHONPATH=/tmp/site:$PWD/src:$PWD/tests PATH=/tmp/site/bin:$PATH
rm -rf /tmp/before && mkdir -p /tmp/before && cp -r native /tmp/before/ && rm -rf /tmp/before/native/build
(cd /tmp/before && patch -R -p1 <"$OLDPWD/$HERE/change.diff" && make -C native -j16 PYTHON=python3) \
    >"$WORK/build-before.log" 2>&1
STEPS=$([[ $TAKE == 1 ]] && echo "--rounds 3" || echo "--rounds 5 --steps 500")
sleep 20  # the build's load settles before the timings
for take in 1 2 3; do
    for lib in before after; do
        dir=$([[ $lib == before ]] && echo /tmp/before/native || echo "$PWD/native")
        uptime >>"$WORK/uptime.txt"
        MLPBENCH_NATIVE_DIR=$dir timeout 90 python3 scripts/cpu_timeline.py \
            --cases moons-5h300:1,moons-5h300:32,digits:32 --threads 1,16 $STEPS --budget-s 25 \
            --out "$WORK/$lib-$take" >"$WORK/$lib-$take.log" 2>&1
        echo "$lib-$take exit $?" >>"$WORK/uptime.txt"
    done
done
uptime >>"$WORK/uptime.txt"
tar czf "$OUT/update-in-backprop-take$TAKE.tar.gz" -C "$WORK" .
