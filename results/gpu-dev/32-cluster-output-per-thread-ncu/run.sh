#!/usr/bin/env bash
# An Nsight Compute profile of the cluster probe's unrolled one-output-per-thread product at 4 rows a cluster
# (C = 16, compute mode, one launch of 1000 layers) and its SASS, into $OUT.
set -uo pipefail
OUT=$OUT bash scripts/gpu_host.sh setup >"$OUT/setup.log" 2>&1
export PYTHONPATH=/tmp/site:$PWD/src PATH=/tmp/site/bin:$PATH MLPBENCH_KERNEL_CACHE=/tmp/mlpbench-kernels
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv >"$OUT/gpu.txt" 2>&1
nvcc --cubin -arch=sm_90 -DBATCH=4 -o /tmp/probe4.cubin scripts/cluster_probe.cu \
    && cuobjdump -sass /tmp/probe4.cubin | gzip >"$OUT/sass-batch4.txt.gz"
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
"$NCU" --version >"$OUT/ncu.log" 2>&1
# launches: warm-up, timed; the timed one profiled
timeout 150 "$NCU" --clock-control none --set full --kernel-name cluster_probe --launch-skip 1 --launch-count 1 \
    -o /tmp/product python3 scripts/cluster_probe.py --out /tmp/probe --batch 4 --clusters 16 \
    --modes compute --tiles outputs-u20 --launches 1 >>"$OUT/ncu.log" 2>&1
"$NCU" --import /tmp/product.ncu-rep --page details >"$OUT/details.txt" 2>&1
"$NCU" --import /tmp/product.ncu-rep --page raw --csv 2>&1 | gzip >"$OUT/raw.csv.gz"
grep -E "Duration|Issue Slots Busy|Executed Ipc|Warp Cycles Per Issued|No Eligible|Stall|Shared|Bank|Wavefronts" \
    "$OUT/details.txt" | head -60
