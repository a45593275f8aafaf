"""C rung 3 against OpenBLAS and PyTorch, c-omp's large training step against torch-cpu's, and c-omp's small
steps, for one variant of the C library's AVX-512 register tile. The products and the large step are timed as
the sweep's ladder times products (``time_in_turn``: a 0.25 s pause before each turn, an untimed call, one
sample), the small steps back to back (``time_call``):
``MLPBENCH_NATIVE_DIR=<native copy> python time_tiles.py <label>``."""
import sys

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from mlpbench import load, native
from mlpbench.network import PRESETS
from mlpbench.timing import time_call, time_in_turn
from mlpbench.verify import FLOAT32_TOLERANCE, random_batch, relative_error

label = sys.argv[1]


def products(n, threads, repeats):
    rng = np.random.default_rng(n)
    A = rng.standard_normal((n, n), dtype=np.float32)
    B = rng.standard_normal((n, n), dtype=np.float32)
    reference = A.astype(np.float64) @ B.astype(np.float64)
    out = np.empty((n, n), dtype=np.float32)
    tA, tB, tout = torch.from_numpy(A), torch.from_numpy(B), torch.from_numpy(out)
    gemm = native.Gemm(n, n, threads=threads)
    torch.set_num_threads(threads)
    calls = {"openblas": lambda: np.matmul(A, B, out=out), "torch": lambda: torch.matmul(tA, tB, out=tout),
             "rung3": lambda: gemm(A, B, out, version=3)}
    with threadpool_limits(threads):
        for name, call in calls.items():
            call()
            error = relative_error(out.astype(np.float64), reference)
            assert error <= FLOAT32_TOLERANCE, (name, error)
        stats = time_in_turn(calls, repeats=repeats, settle_s=0.25)
    gemm.close()
    rate = {name: 2 * n**3 / s.median / 1e9 for name, s in stats.items()}
    print(f"{label} gemm n={n} threads={threads} " + " ".join(f"{k} {v:.0f}" for k, v in rate.items())
          + f" GFLOP/s  rung3/openblas {rate['rung3'] / rate['openblas']:.3f}"
          f" rung3/torch {rate['rung3'] / rate['torch']:.3f}", flush=True)


def large_step(network, batch, threads, repeats):
    net = PRESETS[network]
    X, y = random_batch(net, batch, np.random.default_rng(0))
    calls = {}
    for backend in ("c-omp", "torch-cpu"):
        model = load(backend, net, threads=threads)
        prepared = model.prepare(X, y)
        calls[backend] = lambda model=model, prepared=prepared: model.train_step(prepared, 1e-4, 0.0)
    stats = time_in_turn(calls, repeats=repeats, settle_s=0.25)
    c, t = stats["c-omp"], stats["torch-cpu"]
    print(f"{label} step {network}:{batch} threads={threads} c-omp {c.median * 1e6:.1f} us"
          f" (q1 {c.q1 * 1e6:.1f} q3 {c.q3 * 1e6:.1f}) torch-cpu {t.median * 1e6:.1f} us"
          f"  torch/c-omp {t.median / c.median:.3f}", flush=True)


def step(network, batch, threads, repeats):
    net = PRESETS[network]
    X, y = random_batch(net, batch, np.random.default_rng(0))
    model = load("c-omp", net, threads=threads)
    prepared = model.prepare(X, y)
    stats = time_call(lambda: model.train_step(prepared, 1e-4, 0.0), repeats=repeats, warmup=repeats // 10)
    print(f"{label} step {network}:{batch} threads={threads} c-omp {stats.median * 1e6:.1f} us"
          f" (q1 {stats.q1 * 1e6:.1f} q3 {stats.q3 * 1e6:.1f})", flush=True)


products(2048, 16, 5)
products(4096, 16, 3)
products(2048, 1, 3)
large_step("large", 1024, 16, 5)
for network, batch in (("digits", 32), ("moons-5h300", 32), ("mnist", 256)):
    step(network, batch, 16, 200)
step("moons-5h300", 32, 1, 100)
