#!/usr/bin/env bash
# Run 41 on the GPU host: the fused selection of the GPU test files and compute-sanitizer's three tools on
# cuda-fused's kernels, after the head's layer-below row took its thread-to-output mapping from one function.
set -u
OUT=${OUT:?}
{ date -u; uptime; } >"$OUT/machine.txt" 2>&1
PYTEST_ARGS="tests/test_gpu_planning.py tests/test_kernels_compile.py tests/test_gpu_backends.py tests/test_gpu_special_values.py -k fused" \
    SANITIZE_ARGS=--fused-only SANITIZE_TIMEOUT=120 \
    OUT=$OUT timeout 420 bash scripts/gpu_host.sh setup,test,sanitize >"$OUT/host.log" 2>&1
echo "exit $?" >>"$OUT/machine.txt"
uptime >>"$OUT/machine.txt"
