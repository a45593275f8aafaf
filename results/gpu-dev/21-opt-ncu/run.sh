#!/usr/bin/env bash
# Timing, Nsight Compute profiles and SASS of profile_opt.py's products, into $OUT.
set -uo pipefail
HERE=results/gpu-dev/21-opt-ncu
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD/src PATH=/tmp/site/bin:$PATH MLPBENCH_KERNEL_CACHE=/tmp/mlpbench-kernels
export PYTHONUNBUFFERED=1
git rev-parse HEAD >"$OUT/commit.txt" 2>/dev/null || echo "${MLPBENCH_GIT_COMMIT:-unknown}" >"$OUT/commit.txt"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw \
    --format=csv >"$OUT/nvidia-smi.csv" 2>&1
make -C native -j16 >"$OUT/native-build.log" 2>&1
python3 "$HERE/profile_opt.py" >"$OUT/timing.txt" 2>&1
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
"$NCU" --version >"$OUT/ncu.log" 2>&1
"$NCU" --clock-control none --profile-from-start off --set full -o "$OUT/opt" \
    python3 "$HERE/profile_opt.py" --once >>"$OUT/ncu.log" 2>&1
"$NCU" --import "$OUT/opt.ncu-rep" --page details >"$OUT/details.txt" 2>&1
"$NCU" --import "$OUT/opt.ncu-rep" --page raw --csv 2>&1 | gzip >"$OUT/raw.csv.gz"
"$NCU" --import "$OUT/opt.ncu-rep" --page source --csv --print-source sass 2>&1 | gzip >"$OUT/source-sass.csv.gz"
for config in 128x128k16s4t256dbt 128x256k16s3t256dbt; do
    options=$(python3 -c "from mlpbench.backends import cuda; print(' '.join(cuda.OPT_CONFIGS['$config'].options()))")
    nvcc --cubin -arch=sm_90 $options -Isrc/mlpbench/kernels -o "/tmp/$config.cubin" src/mlpbench/kernels/opt.cu \
        && cuobjdump -sass "/tmp/$config.cubin" | gzip >"$OUT/sass-$config.txt.gz"
done
ls -la "$OUT"
