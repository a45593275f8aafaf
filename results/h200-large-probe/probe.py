"""The large network's training step on the host's cores, c-omp against torch-cpu (and c-blas), 16 and 8 threads,
in rounds that rotate which backend runs first; and digits at 16 threads, c-omp against c-blas. Each
configuration in its own model, threads pinned as the sweep pins them, a 0.25 s pause before it (the other
runtime's threads stop spinning), warm-up, then the median and quartiles of its steps (the package's timing).
``python probe.py [rounds]``."""
import os
import sys
import time

import numpy as np

import mlpbench
from mlpbench.network import PRESETS
from mlpbench.sweep.planning import thread_option
from mlpbench.thread_policy import pinned_threads
from mlpbench.timing import CpuClock, time_call

ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 3
CASES = [("large", 1024, ("c-omp", "torch-cpu", "c-blas"), (16, 8), 15),
         ("digits", 32, ("c-omp", "c-blas"), (16,), 3000)]


def time_step(backend, network, batch, threads, repeats):
    net = PRESETS[network]
    rng = np.random.default_rng(0)
    X = rng.standard_normal((batch, net.sizes[0])).astype(np.float32)
    y = rng.integers(0, net.sizes[-1], batch)
    with pinned_threads(threads):
        model = mlpbench.load(backend, net, seed=0, **thread_option(backend, threads))
        try:
            prepared = model.prepare(X, y)
            time.sleep(0.25)
            stats = time_call(lambda: model.train_step(prepared, 1e-4), repeats=repeats, warmup=3,
                              clock=CpuClock(sync=model.synchronize))
        finally:
            model.close()
    return stats


for round_ in range(ROUNDS):
    for network, batch, backends, thread_counts, repeats in CASES:
        order = backends[round_ % len(backends):] + backends[:round_ % len(backends)]
        for threads in thread_counts:
            for backend in order:
                s = time_step(backend, network, batch, threads, repeats)
                print(f"round {round_} {network} b{batch} {backend:9s} {threads:2d} thr:"
                      f" median {s.median * 1e6:10.1f} us  q1 {s.q1 * 1e6:10.1f}  q3 {s.q3 * 1e6:10.1f}"
                      f"  n {s.n}  load {os.getloadavg()[0]:.2f}",
                      flush=True)
