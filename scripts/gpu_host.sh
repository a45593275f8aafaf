#!/usr/bin/env bash
# The project's GPU work in one call on a fresh GPU machine: install the wheels, build the C library,
# compile every kernel, run the GPU tests, compute-sanitizer and the benchmarks; logs and results under $OUT,
# packed into $OUT/gpu-host.tar.gz; a short summary printed last.
#
#   scripts/gpu_host.sh [steps]    steps: comma-separated from  setup,test,sanitize,bench,sweep
#                                  (default: setup,test,sanitize,bench)
#
# Steps run in the order setup, bench, test, sanitize, sweep. The sweep step runs (or resumes)
# `python -m mlpbench.sweep` into results/$RUN_ID for at most SWEEP_TIMEOUT seconds (a run stopped there
# resumes where it stopped when started again) and packs the run folder into $OUT/run.tar.gz.
# Environment: OUT (default ./gpu-host-out), WHEELS (default .whl: pycuda, cffi, ... for the host's Python),
# TEST_WHEELS (default .whl-test: pytest, where the host has none), PYTEST_ARGS, BENCH_ARGS, SANITIZE_TOOLS,
# SANITIZE_ARGS (options of scripts/gpu_sanitize.py),
# SANITIZE_TIMEOUT (seconds per tool), RUN_ID (default gpu-host), SWEEP_ARGS, SWEEP_TIMEOUT (seconds).
set -uo pipefail

STEPS=${1:-setup,test,sanitize,bench}
OUT=${OUT:-$PWD/gpu-host-out}
WHEELS=${WHEELS:-.whl}
TEST_WHEELS=${TEST_WHEELS:-.whl-test}
SANITIZE_TIMEOUT=${SANITIZE_TIMEOUT:-300}
mkdir -p "$OUT/logs"
LOGS=$OUT/logs
SUMMARY=$OUT/logs/summary.txt
: >"$SUMMARY"

note() { echo "$*" | tee -a "$SUMMARY"; }
has() { [[ ",$STEPS," == *",$1,"* ]]; }

python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$WHEELS"/*.whl \
    $(ls "$TEST_WHEELS"/*.whl 2>/dev/null) || { echo "wheel install failed"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD/src:$PWD/tests${PYTHONPATH:+:$PYTHONPATH}
export PATH=/tmp/site/bin:$PATH PYTHONUNBUFFERED=1
export MLPBENCH_KERNEL_CACHE=${MLPBENCH_KERNEL_CACHE:-/tmp/mlpbench-kernels}

if has setup; then
    nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw,memory.used \
        --format=csv >"$LOGS/nvidia-smi.csv" 2>&1
    note "gpu: $(tail -1 "$LOGS/nvidia-smi.csv")"
    start=$SECONDS
    make -C native -j16 >"$LOGS/native-build.log" 2>&1 && note "native library built" \
        || note "native library build FAILED (see native-build.log)"
    # c-blas needs the scipy-openblas32 wheel; without it every c-blas configuration is recorded as skipped
    test -f native/build/libmlp_blas.so \
        || note "c-blas library NOT built: $(grep -m1 scipy_openblas32 "$LOGS/native-build.log")"
    python3 -c "
from mlpbench import gpu
from mlpbench.backends import cuda
gpu.precompile(list(cuda.MODULE_SPECS.values()))
print(gpu.info())
" >"$LOGS/precompile.log" 2>&1 && note "kernels compiled in $((SECONDS - start)) s: $(tail -1 "$LOGS/precompile.log")" \
        || note "kernel compilation FAILED: $(tail -3 "$LOGS/precompile.log")"
fi

if has bench; then
    python3 scripts/gpu_bench.py --out "$OUT/bench" ${BENCH_ARGS:-} >"$LOGS/bench.log" 2>&1
    note "bench: exit $?"
fi

if has test; then
    start=$SECONDS
    python3 -m pytest -q -rs -p no:cacheprovider ${PYTEST_ARGS:-tests/test_gpu_backends.py tests/test_gpu_planning.py \
        tests/test_kernels_compile.py} >"$LOGS/pytest.log" 2>&1
    note "pytest ($((SECONDS - start)) s): $(tail -1 "$LOGS/pytest.log")"
    grep -E "^(FAILED|ERROR)" "$LOGS/pytest.log" | head -20 | tee -a "$SUMMARY"
fi

if has sanitize; then
    for tool in ${SANITIZE_TOOLS:-memcheck racecheck synccheck}; do
        start=$SECONDS
        timeout "$SANITIZE_TIMEOUT" compute-sanitizer --tool "$tool" --error-exitcode 9 \
            python3 scripts/gpu_sanitize.py ${SANITIZE_ARGS:-} >"$LOGS/sanitize-$tool.log" 2>&1
        status=$?
        note "compute-sanitizer $tool: exit $status ($((SECONDS - start)) s): $(grep -E "ERROR SUMMARY|RACECHECK SUMMARY" "$LOGS/sanitize-$tool.log" | tail -1)"
    done
fi

if has sweep; then
    RUN_ID=${RUN_ID:-gpu-host}
    start=$SECONDS
    timeout -s INT "${SWEEP_TIMEOUT:-540}" python3 -m mlpbench.sweep --results results --run-id "$RUN_ID" \
        --no-progress ${SWEEP_ARGS:-} >"$LOGS/sweep.log" 2>&1
    note "sweep $RUN_ID: exit $? ($((SECONDS - start)) s): $(tail -1 "$LOGS/sweep.log")"
    grep -i "warning" "$LOGS/sweep.log" | head -5 | tee -a "$SUMMARY"
    tar czf "$OUT/run.tar.gz" -C results "$RUN_ID"
fi

tar czf "$OUT/gpu-host.tar.gz" -C "$OUT" logs $(test -d "$OUT/bench" && echo bench) 2>/dev/null
echo "================ summary"
cat "$SUMMARY"
test -f "$OUT/bench/bench.txt" && cat "$OUT/bench/bench.txt"
# Only the archive comes back from the GPU machine.
rm -rf "$OUT/logs" "$OUT/bench"
exit 0
