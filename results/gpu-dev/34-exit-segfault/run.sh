#!/usr/bin/env bash
# Run 34 on the GPU host. take1 (no argument): cuda-fused's GPU tests with the planning and kernel-compile tests
# (the tree's check), then the fused test selection under cuda-gdb, run again until one run dies, with the
# native backtrace of the crash; runs without the debugger count how often it happens. take2 ("trace"): the
# timing and fused tests, then the fused selection with segv_trace.so preloaded (the native stack of a crash),
# and the selection without the cluster kernel's tests; logs packed into logs.tar.gz.
set -u
OUT=${OUT:?}
mkdir -p "$OUT/logs"
{ date -u; uptime; nproc; nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv; } \
    >"$OUT/machine.txt" 2>&1
# commit.txt is written by hand: the host's copy of .git does not follow the working tree
OUT=$OUT bash scripts/gpu_host.sh setup
mkdir -p "$OUT/logs"  # gpu_host.sh packs its logs away
export PYTHONPATH=/tmp/site:$PWD/src:$PWD/tests PATH=/tmp/site/bin:$PATH MLPBENCH_KERNEL_CACHE=/tmp/mlpbench-kernels
FUSED=(python3 -m pytest -q -p no:cacheprovider tests/test_gpu_backends.py -k fused)
if [[ "${1:-}" == trace ]]; then
    HERE=results/gpu-dev/34-exit-segfault
    gcc -shared -fPIC -O1 -o /tmp/segv_trace.so $HERE/segv_trace.c
    timeout 240 python3 -m pytest -q -rs -p no:cacheprovider tests/test_timing.py tests/test_gpu_backends.py \
        -k "fused or cuda_events" >"$OUT/logs/pytest.log" 2>&1
    echo "tests: exit $? $(grep -E 'passed|failed' "$OUT/logs/pytest.log" | tail -1)" | tee -a "$OUT/machine.txt"
    for i in 1 2 3 4; do
        LD_PRELOAD=/tmp/segv_trace.so timeout 90 "${FUSED[@]}" -p no:faulthandler >"$OUT/logs/trace-$i.log" 2>&1
        echo "traced run $i: exit $?" | tee -a "$OUT/machine.txt"
    done
    for i in 1 2 3; do
        timeout 90 python3 -m pytest -q -p no:cacheprovider -p no:faulthandler tests/test_gpu_backends.py -k "fused and not cluster and not train_steps and not epoch" >"$OUT/logs/grid-only-$i.log" 2>&1
        echo "run without the cluster tests $i: exit $?" | tee -a "$OUT/machine.txt"
    done
    uptime >>"$OUT/machine.txt"
    tar czf "$OUT/logs.tar.gz" -C "$OUT" logs && rm -rf "$OUT/logs"
    exit
fi
PYTHONFAULTHANDLER=1 timeout 240 python3 -m pytest -q -rs -p no:cacheprovider tests/test_gpu_planning.py \
    tests/test_kernels_compile.py tests/test_gpu_backends.py -k fused >"$OUT/logs/pytest.log" 2>&1
echo "tests: exit $? $(grep -E 'passed|failed' "$OUT/logs/pytest.log" | tail -1)" | tee -a "$OUT/machine.txt"
# Symbols of the shared libraries are loaded only once the program has stopped (torch's take minutes).
for i in 1 2 3; do
    timeout 100 cuda-gdb -batch -ex "set pagination off" -ex "set auto-solib-add off" -ex run \
        -ex "info sharedlibrary" -ex "bt 30" -ex "sharedlibrary" -ex "bt 30" --args "${FUSED[@]}" \
        >"$OUT/logs/gdb-$i.log" 2>&1
    echo "cuda-gdb run $i: exit $? $(grep -m1 -E 'SIGSEGV|exited (normally|with code)' "$OUT/logs/gdb-$i.log")" \
        | tee -a "$OUT/machine.txt"
    grep -q SIGSEGV "$OUT/logs/gdb-$i.log" && break
done
for i in 1 2 3 4; do
    PYTHONFAULTHANDLER=1 timeout 90 "${FUSED[@]}" >"$OUT/logs/plain-$i.log" 2>&1
    echo "plain run $i: exit $?" | tee -a "$OUT/machine.txt"
done
uptime >>"$OUT/machine.txt"
