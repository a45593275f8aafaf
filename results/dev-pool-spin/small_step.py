"""One train_step of a network at a batch size on the C backends, one and two threads, interleaved round by
round: ``python small_step.py digits 32``."""
import sys

import numpy as np

from mlpbench import load
from mlpbench.network import PRESETS
from mlpbench.timing import time_call
from mlpbench.verify import random_batch

net, batch = PRESETS[sys.argv[1]], int(sys.argv[2])
X, y = random_batch(net, batch, np.random.default_rng(0))
models = {"c-serial": load("c-serial", net), "c-blas-1": load("c-blas", net, threads=1),
          "c-omp-1": load("c-omp", net, threads=1), "c-omp-2": load("c-omp", net, threads=2),
          "c-blas-2": load("c-blas", net, threads=2)}
prepared = {name: model.prepare(X, y) for name, model in models.items()}
medians: dict[str, list[float]] = {name: [] for name in models}
for _ in range(7):
    for name, model in models.items():
        stats = time_call(lambda m=model, b=prepared[name]: m.train_step(b, 1e-4, 0.0), repeats=200, warmup=20)
        medians[name].append(stats.median * 1e6)
for name, values in medians.items():
    print(f"{name:10s} median of rounds {np.median(values):7.2f} us  range {min(values):.2f}-{max(values):.2f}")
