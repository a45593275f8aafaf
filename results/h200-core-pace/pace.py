"""What sets the pace of a one-thread training step on the GPU host: the core it runs on, the process (where its
memory lies), or the moment. Several fresh processes each pin themselves to a starting core before the library
allocates anything, check c-serial's moons-5h300 step at batch 32 against the float64 reference, then time the
same model with the thread pinned to every core in turn, in several passes. A pace that follows the core within
a process points at the core; one that follows the process across cores, at its memory; neither, at time.

    python results/h200-core-pace/pace.py [--processes 8] [--passes 3] > results/h200-core-pace/pace.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

CHILD = """
import json, os, sys
start, passes, cores = int(sys.argv[1]), int(sys.argv[2]), json.loads(sys.argv[3])
os.sched_setaffinity(0, {start})
import numpy as np
from mlpbench.backends import load
from mlpbench.network import PRESETS
from mlpbench.timing import time_call
from mlpbench.verify import check_stages, random_batch
network = PRESETS["moons-5h300"]
check = check_stages("c-serial", network, 32, seed=32)
if not check.passed:
    raise SystemExit("c-serial moons-5h300 at batch 32 failed its float64 check")
model = load("c-serial", network, seed=0)
X, y = random_batch(network, 32, np.random.default_rng(0))
data = model.prepare(X, y)
order = cores[cores.index(start):] + cores[:cores.index(start)]
for number in range(passes):
    for core in order:
        os.sched_setaffinity(0, {core})
        # A learning rate of zero: every step works on the same weights.
        stats = time_call(lambda: model.train_step(data, 0.0), repeats=100, warmup=10)
        print(json.dumps({"start": start, "pass": number, "core": core, "median_us": stats.median * 1e6,
                          "q1_us": stats.q1 * 1e6, "q3_us": stats.q3 * 1e6, "load": os.getloadavg()[0]}),
              flush=True)
"""


def topology() -> dict[str, dict[str, str]]:
    """Each CPU's package, core and hyperthread siblings as the kernel reports them."""
    out = {}
    for cpu in sorted(Path("/sys/devices/system/cpu").glob("cpu[0-9]*"), key=lambda p: int(p.name[3:])):
        found = cpu / "topology"
        out[cpu.name] = {name: (found / name).read_text().strip() for name in
                         ("physical_package_id", "core_id", "thread_siblings_list") if (found / name).exists()}
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument("--passes", type=int, default=3)
    args = parser.parse_args()
    cores = sorted(os.sched_getaffinity(0))
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    steps = []
    for number in range(args.processes):
        start = cores[(number * 5) % len(cores)]  # starting cores spread over the machine
        done = subprocess.run([sys.executable, "-c", CHILD, str(start), str(args.passes), json.dumps(cores)],
                              env=env, check=True, capture_output=True, text=True)
        for line in done.stdout.splitlines():
            steps.append({"process": number, **json.loads(line)})
            print(line, file=sys.stderr, flush=True)
    huge_pages = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    print(json.dumps({"cores": cores, "topology": topology(), "steps": steps,
                      "transparent_hugepage": huge_pages.read_text().strip() if huge_pages.exists() else None},
                     indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
