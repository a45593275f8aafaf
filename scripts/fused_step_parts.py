"""Where one cuda-fused training step goes when it is timed between events, as the sweep times a step.

For every case (``--cases name:batch,...``; cuda-fused's grid kernel, which runs one step a launch), after a
check of the step against the float64 reference: the host's time per call of ``train_step`` and of its parts
(:meth:`FusedProfiler.host_costs`), and, in turn, the events around a ``train_step``, device-only events
around it, device-only events around a launch of the same kernel with no phases, and the kernel's own span
by its first block's clock (:meth:`FusedProfiler.step_parts`). The events around a step are its device-only
time plus the host's time until the launch is queued; the device-only time is the GPU's start and end of a
launch plus the kernel.

Writes ``step_parts.json`` and ``step_parts.txt`` (the table, also printed) under ``--out``.

    python scripts/fused_step_parts.py --cases digits:32,moons-5h300:32 --out results/h200-step-parts
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

# cpu_timeline.py beside this file: its case parsing.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from cpu_timeline import parse_cases

from mlpbench import gpu, load
from mlpbench.backends.cuda_fused import FusedProfiler
from mlpbench.checks import BackendUnavailable
from mlpbench.machine import git_info, now_utc
from mlpbench.network import resolve
from mlpbench.verify import check_stages, random_batch

LR = 1e-4


def measure(name: str, batch_size: int, repeats: int, seed: int) -> dict[str, Any]:
    network = resolve(name)
    check = check_stages("cuda-fused", network, batch_size, seed=seed)
    if not check.passed:
        raise SystemExit(f"cuda-fused fails the float64 check on {name} at batch {batch_size}: {check}")
    model = load("cuda-fused", network, seed=seed)
    batch = model.prepare(*random_batch(network, batch_size, np.random.default_rng(seed)))
    profiler = FusedProfiler(model)
    plan = profiler.plan("step", batch_size)
    host = profiler.host_costs(batch, LR)
    load_before = os.getloadavg()[0]
    parts = profiler.step_parts(batch, LR, repeats=repeats)
    model.close()
    return {"case": f"{name}:{batch_size}", "kernel": plan.kernel, "blocks": plan.blocks, "phases": len(plan.phases),
            "scaled_errors": check.scaled, "host_us": host, "load_before": load_before,
            "load_after": os.getloadavg()[0], "parts": {part: stats.as_dict() for part, stats in parts.items()}}


def table(results: list[dict[str, Any]]) -> str:
    lines = ["case | kernel | events | device only | start (no phases) | kernel clock | host train_step | "
             "host launch alone (us, medians)"]
    for r in results:
        us = {part: stats["median"] * 1e6 for part, stats in r["parts"].items()}
        lines.append(f"{r['case']} | {r['kernel']} ({r['blocks']} blocks) | {us['events']:.2f} | {us['device']:.2f} | "
                     f"{us['start']:.2f} | {us['kernel']:.2f} | {r['host_us']['train_step']:.2f} | "
                     f"{r['host_us']['launch alone']:.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=parse_cases, default="digits:32,moons-5h300:32")
    parser.add_argument("--repeats", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        raise SystemExit("--repeats: need at least 1")
    started, clock = now_utc(), time.perf_counter()
    try:
        gpu.ensure_available()
    except BackendUnavailable as error:
        raise SystemExit(f"fused_step_parts.py times cuda-fused on a GPU: {error}") from error
    results = [measure(name, batch, args.repeats, args.seed) for name, batch in args.cases]
    text = table(results)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"argv": sys.argv if argv is None else ["scripts/fused_step_parts.py", *argv], "started": started,
            "seconds": round(time.perf_counter() - clock, 1), "gpu": gpu.info().name, "git": git_info(),
            "repeats": args.repeats, "lr": LR}
    (args.out / "step_parts.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n")
    (args.out / "step_parts.txt").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
