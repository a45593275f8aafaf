#!/usr/bin/env bash
# Run 33 on the GPU host: a smoke check of cuda-fused's cluster kernel, then the bench (host, profile and
# steps of digits and moons-5h300 on both fused kernels and torch-gpu-graph) and the fused GPU tests; with
# "sanitize", compute-sanitizer's three tools on the fused kernels instead.
set -u
OUT=${OUT:?}
mkdir -p "$OUT/logs"
{ date -u; uptime; nproc; nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv; } \
    >"$OUT/machine.txt" 2>&1
# commit.txt of each folder is written by hand: the host's copy of .git does not follow the working tree
if [[ "${1:-}" == sanitize ]]; then
    OUT=$OUT bash scripts/gpu_host.sh setup
    mkdir -p "$OUT/logs"
    # the fused GPU tests once more, with a Python traceback should the interpreter crash
    PYTHONPATH=/tmp/site:$PWD/src:$PWD/tests PATH=/tmp/site/bin:$PATH PYTHONFAULTHANDLER=1 timeout 150 \
        python3 -m pytest -q -p no:cacheprovider tests/test_gpu_backends.py -k fused >"$OUT/logs/pytest-fused.log" 2>&1
    echo "fused tests with faulthandler: exit $? $(tail -1 "$OUT/logs/pytest-fused.log")" | tee -a "$OUT/machine.txt"
    SANITIZE_ARGS=--fused-only SANITIZE_TIMEOUT=170 bash scripts/gpu_host.sh sanitize
    exit
fi
OUT=$OUT bash scripts/gpu_host.sh setup
mkdir -p "$OUT/logs"  # gpu_host.sh packs its logs away
export PYTHONPATH=/tmp/site:$PWD/src:$PWD/tests PATH=/tmp/site/bin:$PATH MLPBENCH_KERNEL_CACHE=/tmp/mlpbench-kernels
timeout 120 python3 - >"$OUT/logs/smoke.log" 2>&1 <<'PY'
from mlpbench import Network
from mlpbench.network import PRESETS
from mlpbench.verify import check_stages
for net, batch in [(PRESETS["digits"], 32), (Network((6, 20, 9, 4), "relu", "softmax-ce"), 13),
                   (Network((5, 12), "tanh", "softmax-ce"), 9)]:
    check = check_stages("cuda-fused", net, batch, seed=1, kernel="cluster")
    print(net.name, batch, "passed" if check.passed else "FAILED", check.scaled, flush=True)
PY
echo "smoke: exit $?" | tee -a "$OUT/logs/summary.txt"
cat "$OUT/logs/smoke.log"
grep -q FAILED "$OUT/logs/smoke.log" && exit 1
grep -c passed "$OUT/logs/smoke.log" | grep -q 3 || exit 1
# FULL=1: the whole GPU test suite (a Python traceback should the interpreter crash), not only the fused tests
TESTS="tests/test_gpu_planning.py tests/test_kernels_compile.py tests/test_gpu_backends.py"
[[ "${FULL:-0}" == 1 ]] && TESTS="$TESTS tests/test_gpu_special_values.py tests/test_gpu_distributed.py" || TESTS="$TESTS -k fused"
BENCH_ARGS="--sections host,profile,steps --cases digits,moons-5h300 --backends cuda-fused,cuda-fused:grid,torch-gpu-graph" \
    PYTEST_ARGS="$TESTS" PYTHONFAULTHANDLER=1 timeout 480 bash scripts/gpu_host.sh bench,test
uptime >>"$OUT/machine.txt"
