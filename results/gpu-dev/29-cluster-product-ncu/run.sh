#!/usr/bin/env bash
# SASS and an Nsight Compute profile of the cluster probe's product at 4 rows a cluster (C = 16): the 4 x 1
# thread tiles and eight lanes per row, one launch of 1000 layers each, into $OUT.
set -uo pipefail
export PYTHONPATH=/tmp/site:$PWD/src PATH=/tmp/site/bin:$PATH MLPBENCH_KERNEL_CACHE=/tmp/mlpbench-kernels
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv >"$OUT/nvidia-smi.csv" 2>&1
nvcc --cubin -arch=sm_90 -DBATCH=4 -o /tmp/probe4.cubin scripts/cluster_probe.cu \
    && cuobjdump -sass /tmp/probe4.cubin | gzip >"$OUT/sass-batch4.txt.gz"
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
"$NCU" --version >"$OUT/ncu.log" 2>&1
# launches: 4x1 warm-up, 4x1 timed, rows8 warm-up, rows8 timed; the two timed ones profiled
"$NCU" --clock-control none --set full --kernel-name cluster_probe --launch-skip 1 --launch-count 3 \
    -o "$OUT/product" python3 scripts/cluster_probe.py --out /tmp/probe --batch 4 --clusters 16 \
    --modes compute --tiles 4x1,rows8 --launches 1 >>"$OUT/ncu.log" 2>&1
"$NCU" --import "$OUT/product.ncu-rep" --page details >"$OUT/details.txt" 2>&1
"$NCU" --import "$OUT/product.ncu-rep" --page raw --csv 2>&1 | gzip >"$OUT/raw.csv.gz"
ls -la "$OUT"
