#!/usr/bin/env bash
# Run 39 on the GPU host: cuda-fused's tests (the fused selection of the GPU test files, the planning and
# kernel-compile tests), compute-sanitizer's three tools on cuda-fused's kernels, the bench's host, profile and
# steps sections for cuda-fused on digits and moons-5h300; from take 2 also ab_probe.py (the two plans in turn).
set -u
OUT=${OUT:?}
HERE=$(dirname "$0")
{ date -u; uptime; nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv; } >"$OUT/machine.txt" 2>&1
export PYTHONFAULTHANDLER=1
PYTEST_ARGS="tests/test_gpu_planning.py tests/test_kernels_compile.py tests/test_gpu_backends.py tests/test_gpu_special_values.py tests/test_gpu_distributed.py -k fused" \
    SANITIZE_ARGS=--fused-only SANITIZE_TIMEOUT=120 \
    BENCH_ARGS="--sections host,profile,steps --cases digits,moons-5h300 --backends cuda-fused,cuda-fused:grid" \
    OUT=$OUT timeout 420 bash scripts/gpu_host.sh setup,test,sanitize,bench >"$OUT/host.log" 2>&1
echo "exit $?" >>"$OUT/machine.txt"
if [[ "${TAKE:-1}" != 1 ]]; then
    export PYTHONPATH=/tmp/site:$PWD/src:$PWD/tests PATH=/tmp/site/bin:$PATH MLPBENCH_KERNEL_CACHE=/tmp/mlpbench-kernels
    timeout 150 python3 "$HERE/ab_probe.py" "$OUT" >"$OUT/ab.log" 2>&1
    echo "ab exit $?" >>"$OUT/machine.txt"
fi
uptime >>"$OUT/machine.txt"
