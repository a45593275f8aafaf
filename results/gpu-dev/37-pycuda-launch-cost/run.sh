#!/usr/bin/env bash
# Run 37 on the GPU host: pycuda_probe.py (host time of a launch through PyCUDA against the C launch record).
set -u
OUT=${OUT:?}
{ date -u; uptime; } >"$OUT/machine.txt"
OUT=$OUT bash scripts/gpu_host.sh setup >/dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD/src:$PWD/tests PATH=/tmp/site/bin:$PATH MLPBENCH_KERNEL_CACHE=/tmp/mlpbench-kernels
timeout 120 python3 results/gpu-dev/37-pycuda-launch-cost/pycuda_probe.py "$OUT" >"$OUT/pycuda.txt" 2>&1
echo "probe: exit $?" | tee -a "$OUT/machine.txt"
uptime >>"$OUT/machine.txt"
