#!/usr/bin/env bash
# Run 40 on the GPU host: the tree's whole GPU suite (every GPU test file and the kernel-compile tests),
# compute-sanitizer's three tools on every kernel (scripts/gpu_sanitize.py without options), the bench's steps
# section for cuda-fused on digits and moons-5h300, then scripts/fused_step_parts.py into $OUT/step-parts.
set -u
OUT=${OUT:?}
{ date -u; uptime; nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv; } >"$OUT/machine.txt" 2>&1
export PYTHONFAULTHANDLER=1
PYTEST_ARGS="tests/test_gpu_planning.py tests/test_kernels_compile.py tests/test_gpu_backends.py tests/test_gpu_special_values.py tests/test_gpu_distributed.py" \
    SANITIZE_TIMEOUT=150 \
    BENCH_ARGS="--sections host,steps --cases digits,moons-5h300 --backends cuda-fused,cuda-fused:grid" \
    OUT=$OUT timeout 500 bash scripts/gpu_host.sh setup,test,sanitize,bench >"$OUT/host.log" 2>&1
echo "exit $?" >>"$OUT/machine.txt"
uptime >>"$OUT/machine.txt"
export PYTHONPATH=/tmp/site:$PWD/src:$PWD/tests PATH=/tmp/site/bin:$PATH MLPBENCH_KERNEL_CACHE=/tmp/mlpbench-kernels
mkdir -p "$OUT/step-parts"
timeout 80 python3 scripts/fused_step_parts.py --out "$OUT/step-parts" >"$OUT/step-parts/probe.log" 2>&1
echo "step parts exit $?" >>"$OUT/machine.txt"
uptime >>"$OUT/machine.txt"
