"""How often the sweep's neighbour probe (mlpbench.sweep.neighbours.step_probe) runs over SLOWDOWN_LIMIT times
its fastest on a quiet machine: the probe on 1, 2, 4, ... threads in turn for ``seconds``, then per thread count
the quantiles of each probe over the fastest and the share over the limit (each would make the sweep wait)."""
import sys
import time

import numpy as np

from mlpbench.sweep.neighbours import SLOWDOWN_LIMIT, step_probe
from mlpbench.thread_policy import usable_cores

probe = step_probe()
counts = [t for t in (1, 2, 4, 8, 16, 32) if t <= usable_cores()]
seconds: dict[int, list[float]] = {t: [] for t in counts}
start = time.perf_counter()
while time.perf_counter() - start < float(sys.argv[1]):
    for threads in counts:
        seconds[threads].append(probe(threads))
print(f"{usable_cores()} cores, {len(seconds[1])} rounds, limit {SLOWDOWN_LIMIT}")
for threads, values in seconds.items():
    ratio = np.array(values) / min(values)
    q50, q90, q99 = np.percentile(ratio, [50, 90, 99])
    over = np.mean(ratio > SLOWDOWN_LIMIT)
    print(f"{threads:3d} threads: fastest {min(values) * 1e6:8.1f} us; over the fastest median {q50:.2f}, "
          f"90 % {q90:.2f}, 99 % {q99:.2f}, max {ratio.max():.2f}; over the limit {over:.1%}")
