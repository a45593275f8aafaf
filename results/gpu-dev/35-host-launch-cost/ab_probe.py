"""Run 35, take 3: the package's launch from C against the ctypes launch it replaced, on one instance, in turn.

``DriverKernel.launch`` is switched between the two for each call (the C library's ``mlp_launch_kernel``, and
the driver's ``cuLaunchKernel`` / ``cuLaunchKernelEx`` called through ctypes as before commit 40543a8); each
call is a ``train_step`` between events, as the sweep times a step, 300 rounds of the two in turn (three
untimed calls before each sample). cuda-fused on digits (grid kernel, one launch a step) and moons-5h300;
cuda-opt (several product launches a step, the rest PyCUDA's) on the same two. Writes ab.json and prints a
table.

Usage: ab_probe.py OUT_DIR
"""

from __future__ import annotations

import ctypes
import json
import sys
from pathlib import Path

import numpy as np

from mlpbench import gpu, load
from mlpbench.network import PRESETS
from mlpbench.timing import CudaEventClock, time_in_turn
from mlpbench.verify import random_batch

C_LAUNCH = gpu.DriverKernel.launch


def ctypes_launch(self, grid, block, shared_bytes, cluster=1):
    """The launch as it was before the C library took it: the driver through ctypes, every argument converted
    at each call (the cluster configuration built once per shape, as then)."""
    x, y, z = (grid, 1, 1) if isinstance(grid, int) else grid
    driver = gpu._driver()
    if cluster == 1:
        result = driver.cuLaunchKernel(self.function, x, y, z, block, 1, 1, shared_bytes, None, self._pointers, None)
    else:
        key = (grid, block, shared_bytes, cluster)
        if key not in self._records:
            self._records[key] = self._record(grid, block, shared_bytes, cluster)
        result = driver.cuLaunchKernelEx(ctypes.byref(self._records[key][1]), self.function, self._pointers, None)
    if result:
        gpu._check(result, f"launching {self.name}")


def step_with(launch, model, batch):
    def call():
        gpu.DriverKernel.launch = launch
        model.train_step(batch, 1e-4)
    return call


def main() -> None:
    out = Path(sys.argv[1])
    rows = []
    for backend, name, options in (("cuda-fused", "digits", {"kernel": "grid"}), ("cuda-fused", "moons-5h300", {}),
                                   ("cuda-opt", "digits", {}), ("cuda-opt", "moons-5h300", {})):
        net = PRESETS[name]
        model = load(backend, net, **options)
        batch = model.prepare(*random_batch(net, 32, np.random.default_rng(0)))
        timed = time_in_turn({"C": step_with(C_LAUNCH, model, batch), "ctypes": step_with(ctypes_launch, model, batch)},
                             repeats=300, warmup=3, clock=CudaEventClock())
        gpu.DriverKernel.launch = C_LAUNCH
        model.close()
        row = {"backend": backend, "network": name}
        for arm, stats in timed.items():
            row[arm] = ({"error": repr(stats)} if isinstance(stats, Exception) else
                        {"median_us": stats.median * 1e6, "q1_us": stats.q1 * 1e6, "q3_us": stats.q3 * 1e6})
        rows.append(row)
        print(backend, name, *(f"{arm} {value}" for arm, value in row.items() if arm in timed), sep=" | ", flush=True)
    (out / "ab.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
