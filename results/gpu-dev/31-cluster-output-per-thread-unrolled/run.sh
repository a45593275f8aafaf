#!/usr/bin/env bash
# The cluster probe's product and forward layer at 4 and 8 rows a cluster (C = 16 and 8): one output per thread
# with its k loop rolled and unrolled, beside the 4 x 1 tiles; logs into $OUT.
set -uo pipefail
OUT=$OUT bash scripts/gpu_host.sh setup >"$OUT/setup.log" 2>&1
export PYTHONPATH=/tmp/site:$PWD/src PATH=/tmp/site/bin:$PATH MLPBENCH_KERNEL_CACHE=/tmp/mlpbench-kernels
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv >"$OUT/gpu.txt" 2>&1
for batch in 4 8; do
    tiles=4x1,outputs,outputs-u20
    python3 scripts/cluster_probe.py --out "$OUT/b$batch" --batch $batch --clusters 16,8 \
        --modes compute,layer-bulk --tiles $tiles >"$OUT/cluster-b$batch.log" 2>&1
    tail -7 "$OUT/cluster-b$batch.log"
done
