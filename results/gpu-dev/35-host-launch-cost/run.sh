#!/usr/bin/env bash
# Run 35 on the GPU host: the fused test selection four times, watching each exit (run 34's fix: a fault at
# exit in about half the runs before it), then launch_probe.py (where the host time of a fused train_step goes,
# and what one launch from C leaves of it); logs packed into logs.tar.gz. take2 and take3: see below.
set -u
OUT=${OUT:?}
HERE=results/gpu-dev/35-host-launch-cost
{ date -u; uptime; nproc; nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv; } \
    >"$OUT/machine.txt" 2>&1
OUT=$OUT bash scripts/gpu_host.sh setup
mkdir -p "$OUT/logs"
export PYTHONPATH=/tmp/site:$PWD/src:$PWD/tests PATH=/tmp/site/bin:$PATH MLPBENCH_KERNEL_CACHE=/tmp/mlpbench-kernels
if [[ "${1:-}" == take3 ]]; then
    # the C launch against the ctypes one it replaced, in turn on one instance (ab_probe.py)
    timeout 300 python3 $HERE/ab_probe.py "$OUT" >"$OUT/ab.txt" 2>"$OUT/logs/ab.err"
    echo "ab probe: exit $?" | tee -a "$OUT/machine.txt"
    uptime >>"$OUT/machine.txt"
    tar czf "$OUT/logs.tar.gz" -C "$OUT" logs && rm -rf "$OUT/logs"
    exit
fi
if [[ "${1:-}" == take2 ]]; then
    # the launch from C in the package: the probe again (the ctypes launch beside it on the same instance), the
    # bench's host, profile and steps sections, the whole GPU test suite
    gcc -Wall -Wextra -shared -fPIC -O2 -o /tmp/launch_helper.so $HERE/launch_helper.c
    timeout 240 python3 $HERE/launch_probe.py /tmp/launch_helper.so "$OUT" >"$OUT/launch.txt" 2>"$OUT/logs/probe.err"
    echo "probe: exit $?" | tee -a "$OUT/machine.txt"
    BENCH_ARGS="--sections host,profile,steps --cases digits,moons-5h300 --backends cuda-fused,cuda-fused:grid,torch-gpu-graph" \
        PYTEST_ARGS="tests/test_gpu_planning.py tests/test_kernels_compile.py tests/test_gpu_backends.py tests/test_gpu_special_values.py tests/test_gpu_distributed.py tests/test_native_launch.py" \
        PYTHONFAULTHANDLER=1 timeout 420 bash scripts/gpu_host.sh bench,test
    uptime >>"$OUT/machine.txt"
    exit
fi
for i in 1 2 3 4; do
    timeout 120 python3 -m pytest -q -rs -p no:cacheprovider tests/test_gpu_backends.py -k fused \
        >"$OUT/logs/fused-$i.log" 2>&1
    echo "fused selection $i: exit $? $(grep -E 'passed|failed' "$OUT/logs/fused-$i.log" | tail -1)" \
        | tee -a "$OUT/machine.txt"
done
gcc -Wall -Wextra -shared -fPIC -O2 -o /tmp/launch_helper.so $HERE/launch_helper.c
uptime >>"$OUT/machine.txt"
timeout 240 python3 $HERE/launch_probe.py /tmp/launch_helper.so "$OUT" >"$OUT/launch.txt" 2>"$OUT/logs/probe.err"
echo "probe: exit $?" | tee -a "$OUT/machine.txt"
uptime >>"$OUT/machine.txt"
tar czf "$OUT/logs.tar.gz" -C "$OUT" logs && rm -rf "$OUT/logs"
