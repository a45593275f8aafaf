"""Run 39, take 2: cuda-fused's digits step on the grid kernel with the layer under the output head in a phase of
its own (three phases, the plan before FLAG_HEAD_HIDDEN) and computed by the head (two phases), on one instance,
in turn: the events around a ``train_step`` (as the sweep times a step), device-only events around it, block
0's clock of one step and of a step of a 32-step launch. Writes ab.json and prints a table.

Usage: ab_probe.py OUT_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from mlpbench import load
from mlpbench.backends import cuda_fused
from mlpbench.network import PRESETS
from mlpbench.timing import EPOCH_STEPS, CudaEventClock, time_in_turn
from mlpbench.verify import random_batch

HEAD_COMPUTES = cuda_fused.head_computes_the_layer_below


def model_with(head_hidden: bool):
    """A digits model on the grid kernel whose plans (made at first use, then kept) have or lack the merged head."""
    cuda_fused.head_computes_the_layer_below = HEAD_COMPUTES if head_hidden else (lambda network: False)
    cuda_fused.fused_plan.cache_clear()
    net = PRESETS["digits"]
    model = load("cuda-fused", net, kernel="grid")
    batch = model.prepare(*random_batch(net, 32, np.random.default_rng(0)))
    epoch = model.prepare(*random_batch(net, 32 * EPOCH_STEPS, np.random.default_rng(1)))
    model.train_step(batch, 1e-4)
    model.train_steps(epoch, 32, 1e-4)
    phases = len(cuda_fused.FusedProfiler(model).plan("step", 32).phases)
    cuda_fused.head_computes_the_layer_below = HEAD_COMPUTES
    cuda_fused.fused_plan.cache_clear()
    return model, batch, epoch, phases


def main() -> None:
    out = Path(sys.argv[1])
    arms = {"three phases": model_with(False), "two phases": model_with(True)}
    result = {name: {"phases": arm[3]} for name, arm in arms.items()}

    def step(arm):
        model, batch, _, _ = arm
        return lambda: model.train_step(batch, 1e-4)

    for label, clock in (("events_us", CudaEventClock()), ("device_only_us", CudaEventClock(device_only=True))):
        timed = time_in_turn({name: step(arm) for name, arm in arms.items()}, repeats=300, warmup=3, clock=clock)
        for name, stats in timed.items():
            result[name][label] = [stats.q1 * 1e6, stats.median * 1e6, stats.q3 * 1e6]
    clocks = {name: ([], []) for name in arms}
    for _ in range(60):  # block 0's clock, the two in turn
        for name, (model, batch, epoch, _) in arms.items():
            profiler = cuda_fused.FusedProfiler(model)
            clocks[name][0].append(profiler.phase_times(batch, 32, 1e-4).sum())
            clocks[name][1].append(profiler.step_times(epoch, 32, 1e-4).sum() / EPOCH_STEPS)
    for name, (single, per_step) in clocks.items():
        result[name]["clock_step_us"] = float(np.median(single))
        result[name]["clock_epoch_step_us"] = float(np.median(per_step))
    (out / "ab.json").write_text(json.dumps(result, indent=1))
    for name, row in result.items():
        print(name, *(f"{key} {value}" for key, value in row.items()), sep=" | ", flush=True)


if __name__ == "__main__":
    main()
