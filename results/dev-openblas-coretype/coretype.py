"""c-blas's training step with OpenBLAS on the kernel set the environment names against the one it would pick,
each in its own process (OpenBLAS reads OPENBLAS_CORETYPE once, when it loads), in interleaved rounds; each
checked against the float64 reference first.

    python results/dev-openblas-coretype/coretype.py [--rounds 3] [--cores Haswell,SkylakeX] > coretype.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CHILD = """
import ctypes, json, sys
import numpy as np
from mlpbench import native
from mlpbench.backends import load
from mlpbench.network import PRESETS
from mlpbench.timing import time_call
from mlpbench.verify import check_stages, random_batch
network = PRESETS["moons-5h300"]
out = {}
for threads in (1, 2):
    if not check_stages("c-blas", network, 32, seed=32, threads=threads).passed:
        raise SystemExit(f"c-blas at {threads} threads failed its float64 check")
    for batch in (1, 32):
        model = load("c-blas", network, threads=threads)
        data = model.prepare(*random_batch(network, batch, np.random.default_rng(0)))
        stats = time_call(lambda: model.train_step(data, 0.0), repeats=300, warmup=20)
        out[f"b{batch}/t{threads}"] = {"median_us": stats.median * 1e6, "q1_us": stats.q1 * 1e6,
                                       "q3_us": stats.q3 * 1e6}
from threadpoolctl import threadpool_info
cores = sorted({pool["architecture"] for pool in threadpool_info() if pool.get("internal_api") == "openblas"})
print(json.dumps({"architecture": cores, "steps": out}))
"""


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cores", default="Haswell,SkylakeX")
    args = parser.parse_args()
    rounds = []
    for number in range(args.rounds):
        for core in args.cores.split(","):
            env = dict(os.environ, OPENBLAS_CORETYPE=core)
            load_before = os.getloadavg()[0]
            done = subprocess.run([sys.executable, "-c", CHILD], env=env, check=True, capture_output=True, text=True)
            rounds.append({"round": number, "coretype": core, "load_before": load_before, **json.loads(done.stdout)})
            print(json.dumps(rounds[-1]), file=sys.stderr, flush=True)
    print(json.dumps({"cpu_count": os.cpu_count(), "rounds": rounds}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
