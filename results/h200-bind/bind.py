"""c-omp's training step at 1 and 16 threads, with OpenMP's threads unbound (the runtime's default) or bound
to cores (OMP_PROC_BIND=close, OMP_PLACES=cores): each setting in its own process, since the runtime reads
them once, in interleaved rounds; every network is checked against the float64 reference before it is timed.

    python results/h200-bind/bind.py [--rounds 3] > results/h200-bind/bind.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

SETTINGS = {"unbound": {}, "bound": {"OMP_PROC_BIND": "close", "OMP_PLACES": "cores"}}
CASES = (("moons-5h300", 32), ("mnist", 256))

CHILD = """
import json, sys
import numpy as np
from mlpbench import load
from mlpbench.network import PRESETS
from mlpbench.timing import time_call
from mlpbench.verify import check_stages, random_batch
out = {}
for name, batch in json.loads(sys.argv[1]):
    net = PRESETS[name]
    for threads in (1, 16):
        check = check_stages("c-omp", net, batch, seed=batch, threads=threads)
        if not check.passed:
            raise SystemExit(f"c-omp {name} at {threads} threads failed its float64 check")
        model = load("c-omp", net, threads=threads)
        X, y = random_batch(net, batch, np.random.default_rng(0))
        data = model.prepare(X, y)
        stats = time_call(lambda: model.train_step(data, 0.01), repeats=300 if name == "moons-5h300" else 100,
                          warmup=20)
        out[f"{name}/t{threads}"] = {"median_us": stats.median * 1e6, "q1_us": stats.q1 * 1e6,
                                     "q3_us": stats.q3 * 1e6}
print(json.dumps(out))
"""


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rounds = []
    for number in range(args.rounds):
        for setting, extra in SETTINGS.items():
            env = {k: v for k, v in os.environ.items() if k not in ("OMP_PROC_BIND", "OMP_PLACES")}
            # NumPy's OpenBLAS (the float64 check) on one thread: a pool of 16 spinning after the check would
            # share the cores with the timed steps.
            env.update(extra, OPENBLAS_NUM_THREADS="1")
            load_before = os.getloadavg()[0]
            done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(CASES)], env=env, check=True,
                                  capture_output=True, text=True)
            rounds.append({"round": number, "setting": setting, "env": extra, "load_before": load_before,
                           "steps": json.loads(done.stdout)})
            print(json.dumps(rounds[-1]), file=sys.stderr, flush=True)
    print(json.dumps({"cpu_count": os.cpu_count(), "rounds": rounds}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
