#!/usr/bin/env bash
# Run 36 on the GPU host: launch_work.py (the GPU's own work to start a launch, device-only events).
set -u
OUT=${OUT:?}
HERE=results/gpu-dev/36-launch-device-work
{ date -u; uptime; nproc; nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv; } \
    >"$OUT/machine.txt" 2>&1
OUT=$OUT bash scripts/gpu_host.sh setup
export PYTHONPATH=/tmp/site:$PWD/src:$PWD/tests PATH=/tmp/site/bin:$PATH MLPBENCH_KERNEL_CACHE=/tmp/mlpbench-kernels
timeout 240 python3 $HERE/launch_work.py "$OUT" >"$OUT/launch_work.txt" 2>"$OUT/launch_work.err"
echo "probe: exit $?" | tee -a "$OUT/machine.txt"
uptime >>"$OUT/machine.txt"
