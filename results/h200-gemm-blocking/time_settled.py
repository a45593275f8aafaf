"""C rung 3 against OpenBLAS, as the sweep's ladder times them (``mlpbench.timing.time_in_turn``: a 0.25 s
pause before each turn, so the other runtime's threads have stopped spinning, an untimed call, one sample),
and c-omp's training step of each network on 16 threads, for one variant of the C library:
``MLPBENCH_NATIVE_DIR=<native copy> python time_settled.py <label>``."""
import sys

import numpy as np
from threadpoolctl import threadpool_limits

from mlpbench import load, native
from mlpbench.network import PRESETS
from mlpbench.timing import time_call, time_in_turn
from mlpbench.verify import FLOAT32_TOLERANCE, random_batch, relative_error

THREADS = 16
label = sys.argv[1]


def products(n):
    rng = np.random.default_rng(n)
    A = rng.standard_normal((n, n), dtype=np.float32)
    B = rng.standard_normal((n, n), dtype=np.float32)
    reference = A.astype(np.float64) @ B.astype(np.float64)
    out = np.empty((n, n), dtype=np.float32)
    gemm = native.Gemm(n, n, threads=THREADS)
    calls = {"openblas": lambda: np.matmul(A, B, out=out), "rung3": lambda: gemm(A, B, out, version=3)}
    with threadpool_limits(THREADS):
        for name, call in calls.items():
            call()
            error = relative_error(out.astype(np.float64), reference)
            assert error <= FLOAT32_TOLERANCE, (name, error)
        stats = time_in_turn(calls, repeats=5, settle_s=0.25)
    gemm.close()
    blas, rung3 = stats["openblas"].median, stats["rung3"].median
    print(f"{label} n={n} openblas {2 * n**3 / blas / 1e9:.0f} GFLOP/s rung3 {2 * n**3 / rung3 / 1e9:.0f} GFLOP/s"
          f"  rung3/openblas {blas / rung3:.3f}", flush=True)


def step(network, batch):
    net = PRESETS[network]
    X, y = random_batch(net, batch, np.random.default_rng(0))
    model = load("c-omp", net, threads=THREADS)
    prepared = model.prepare(X, y)
    repeats = 5 if network == "large" else 50
    stats = time_call(lambda: model.train_step(prepared, 1e-4, 0.0), repeats=repeats, warmup=2)
    print(f"{label} c-omp {network}:{batch} step {stats.median * 1e6:.1f} us", flush=True)


for n in (2048, 4096):
    products(n)
for network, batch in (("digits", 32), ("moons-5h300", 32), ("mnist", 256), ("large", 1024)):
    step(network, batch)
