"""Run 36: the GPU's own work to start a launch. Device-only events (``CudaEventClock(device_only=True)``) around
launches of an empty kernel (empty.cu) of 128 blocks of 256 threads with 0, 48 KiB and cuda-fused's 136 KiB of
dynamic shared memory (each 1 KiB more: the kernel's own), one launch and two back to back (the second pays no
change of the SMs' shared-memory split), and around cuda-fused's digits train_step (grid kernel), alone and
followed by the empty 136 KiB launch, in turn, 300 rounds.

Usage: launch_work.py OUT_DIR
"""

from __future__ import annotations

import ctypes
import json
import sys
from pathlib import Path

import numpy as np

from mlpbench import gpu, load
from mlpbench.backends.cuda_fused import FUSED_SHARED_BYTES, FUSED_THREADS
from mlpbench.network import PRESETS
from mlpbench.timing import CudaEventClock, time_in_turn
from mlpbench.verify import random_batch


class EmptyArgs(ctypes.Structure):
    _fields_ = [("sink", ctypes.c_uint64)]


def main() -> None:
    out = Path(sys.argv[1])
    net = PRESETS["digits"]
    model = load("cuda-fused", net, kernel="grid")
    batch = model.prepare(*random_batch(net, 32, np.random.default_rng(0)))
    _, _, grid = model._plan("step", batch.size)
    empty = gpu.DriverKernel(gpu.ModuleSpec(str(Path(__file__).with_name("empty.cu"))), "empty_kernel", EmptyArgs())
    empty.set_attribute(gpu.DriverKernel.MAX_DYNAMIC_SHARED_SIZE_BYTES, FUSED_SHARED_BYTES + 1024)
    calls = {}
    for shared in (0, 48 * 1024, FUSED_SHARED_BYTES):
        calls[f"empty x1, {grid} blocks, {shared} B"] = lambda s=shared: empty.launch(grid, FUSED_THREADS, s + 1024)
        calls[f"empty x2, {grid} blocks, {shared} B"] = lambda s=shared: (empty.launch(grid, FUSED_THREADS, s + 1024),
                                                                         empty.launch(grid, FUSED_THREADS, s + 1024))
    calls["empty x1, 1 block, 0 B"] = lambda: empty.launch(1, FUSED_THREADS, 1024)
    calls["cuda-fused digits train_step"] = lambda: model.train_step(batch, 1e-4)
    calls["cuda-fused digits train_step + empty 136 KiB"] = lambda: (
        model.train_step(batch, 1e-4), empty.launch(grid, FUSED_THREADS, FUSED_SHARED_BYTES))
    timed = time_in_turn(calls, repeats=300, warmup=2, clock=CudaEventClock(device_only=True))
    rows = []
    for label, stats in timed.items():
        row = {"call": label}
        row.update({"error": repr(stats)} if isinstance(stats, Exception) else
                   {"median_us": stats.median * 1e6, "q1_us": stats.q1 * 1e6, "q3_us": stats.q3 * 1e6})
        rows.append(row)
        print(row, flush=True)
    (out / "launch_work.json").write_text(json.dumps(rows, indent=1))
    model.close()


if __name__ == "__main__":
    main()
