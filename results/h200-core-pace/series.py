"""Whether the GPU host's slow moments strike one core or all at once: one process per core on a few cores at the
same time, each pinned before it allocates, checked against the float64 reference, then timing every c-serial
moons-5h300 step at batch 32 (learning rate 0) from one shared start for a few seconds. Slow stretches at the
same moments on every core are the host's; on one core at a time, that core's neighbour's.

    python results/h200-core-pace/series.py [--cores 0,5,10,15] [--seconds 6] > results/h200-core-pace/series.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

CHILD = """
import json, os, sys, time
core, start, seconds = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
os.sched_setaffinity(0, {core})
import numpy as np
from mlpbench.backends import load
from mlpbench.network import PRESETS
from mlpbench.verify import check_stages, random_batch
network = PRESETS["moons-5h300"]
if not check_stages("c-serial", network, 32, seed=32).passed:
    raise SystemExit("c-serial moons-5h300 at batch 32 failed its float64 check")
model = load("c-serial", network, seed=0)
X, y = random_batch(network, 32, np.random.default_rng(0))
data = model.prepare(X, y)
for _ in range(10):
    model.train_step(data, 0.0)
while time.time() < start:
    time.sleep(0.001)
at, took = [], []
end = start + seconds
while (now := time.time()) < end:
    begin = time.perf_counter_ns()
    model.train_step(data, 0.0)
    took.append((time.perf_counter_ns() - begin) // 1000)
    at.append(round((now - start) * 1e6))
print(json.dumps({"core": core, "at_us": at, "step_us": took}))
"""


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cores", default="0,5,10,15")
    parser.add_argument("--seconds", type=float, default=6.0)
    args = parser.parse_args()
    start = time.time() + 8.0  # time for every child to import, check and warm up
    children = [subprocess.Popen([sys.executable, "-c", CHILD, core, str(start), str(args.seconds)],
                                 stdout=subprocess.PIPE, text=True) for core in args.cores.split(",")]
    series = []
    for child in children:
        out, _ = child.communicate()
        if child.returncode:
            raise SystemExit(f"a child failed with {child.returncode}")
        series.append(json.loads(out))
    print(json.dumps({"start": start, "series": series}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
