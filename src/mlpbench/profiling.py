"""Line-by-line profile of the Python that drives one training step, per backend.

On a small network most of a step can be Python: argument checks, wrappers, per-layer loops, launches.
:func:`profile_backend` runs ``model.step(X, y, lr)`` (prepare + forward + backprop + update) under
:class:`line_profiler.LineProfiler`, with every stage method of the backend's class hierarchy and the shared
input checks registered, and writes

* ``lineprofile/<backend>.txt``: the profiler's line-by-line listing (``%lprun`` output would be lost under
  papermill, so the API writes to a file);
* one row per profiled function: calls and inclusive time per step, and its share of the whole step.

The driver synchronises the device inside the profiled code, so GPU work is billed to the step.
"""

from __future__ import annotations

import inspect
import time
from pathlib import Path
from typing import Any

import numpy as np
from line_profiler import LineProfiler

from mlpbench import checks
from mlpbench.backends import BackendUnavailable, load
from mlpbench.backends.base import Model
from mlpbench.machine import now_utc
from mlpbench.network import Network, resolve
from mlpbench.thread_policy import pinned_threads, usable_cores
from mlpbench.timing import thread_option
from mlpbench.verify import random_batch

PROFILE_COLUMNS = (
    "key", "block_rows", "backend", "network", "batch", "threads", "steps", "status", "reason", "function",
    "calls_per_step", "seconds_per_step", "share_of_step", "plain_step_s", "profiled_step_s", "finished_at",
)
#: Methods of a backend's classes that a training step runs through.
STEP_METHODS = ("step", "train_step", "prepare", "forward", "backprop", "update", "synchronize", "loss",
                "_check_batch")
#: Shared checks every step runs: pure Python overhead of the interface.
CHECK_FUNCTIONS = (checks.check_inputs, checks.check_float32_matrix, checks.check_targets,
                   checks.check_step_size)


def driver(model: Model, X: np.ndarray, y: np.ndarray, lr: float) -> float:
    """One step as a training loop runs it, the device drained before it returns."""
    loss = model.step(X, y, lr)
    model.synchronize()
    return loss


def step_functions(model: Model) -> list[Any]:
    """The functions a step of ``model`` runs through: :func:`driver`, every :data:`STEP_METHODS` defined
    by a class of the model's hierarchy, and :data:`CHECK_FUNCTIONS`."""
    functions: list[Any] = [driver]
    for cls in type(model).__mro__:
        for name in STEP_METHODS:
            member = cls.__dict__.get(name)
            if inspect.isfunction(member):
                functions.append(member)
    return functions + list(CHECK_FUNCTIONS)


def _name(code_key: tuple[str, int, str]) -> str:
    filename, _, function = code_key
    return f"{Path(filename).stem}.{function}"


def profile_backend(backend: str, network: str, batch: int, steps: int, run_dir: Path, *, seed: int = 0,
                    lr: float = 0.01, warmup: int = 5, threads: int | None = None) -> list[dict[str, Any]]:
    """Profile ``steps`` training steps of ``backend`` on ``threads`` threads (``None``: a GPU backend, host
    side on all cores); writes ``run_dir/lineprofile/<backend>.txt`` and returns one row per profiled
    function, or one row saying why nothing was profiled."""
    net = resolve(network)
    base = {"backend": backend, "network": network, "batch": batch, "threads": threads, "steps": steps}
    try:
        rows = _profile_rows(backend, net, steps, run_dir, seed, lr, warmup, threads, base)
    except BackendUnavailable as error:
        rows = [{**base, "status": "skipped", "reason": f"{type(error).__name__}: {error}"}]
    except Exception as error:  # recorded with its reason; the other backends are still profiled
        rows = [{**base, "status": "failed", "reason": f"{type(error).__name__}: {error}"}]
    finished = now_utc()
    return [{**row, "finished_at": finished} for row in rows]


def _profile_rows(backend: str, net: Network, steps: int, run_dir: Path, seed: int, lr: float, warmup: int,
                  threads: int | None, base: dict[str, Any]) -> list[dict[str, Any]]:
    rng = np.random.Generator(np.random.PCG64(seed))
    inputs = [random_batch(net, base["batch"], rng) for _ in range(4)]
    with pinned_threads(threads or usable_cores()):
        model = load(backend, net, seed=seed, **thread_option(backend, threads))
        try:
            return _profile(model, inputs, steps, lr, warmup, Path(run_dir), base)
        finally:
            model.close()


def _profile(model: Model, inputs: list[tuple[np.ndarray, np.ndarray]], steps: int, lr: float, warmup: int,
             run_dir: Path, base: dict[str, Any]) -> list[dict[str, Any]]:
    for index in range(warmup):
        driver(model, *inputs[index % len(inputs)], lr)
    started = time.perf_counter()
    for index in range(steps):
        driver(model, *inputs[index % len(inputs)], lr)
    plain = (time.perf_counter() - started) / steps

    profiler = LineProfiler()
    for function in step_functions(model):
        profiler.add_function(function)
    started = time.perf_counter()
    profiler.enable_by_count()
    try:
        for index in range(steps):
            driver(model, *inputs[index % len(inputs)], lr)
    finally:
        profiler.disable_by_count()
    profiled = (time.perf_counter() - started) / steps

    out = run_dir / "lineprofile" / f"{base['backend']}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as handle:
        handle.write(f"# {base['backend']} on {base['network']}, batch {base['batch']}, threads "
                     f"{base['threads']}: {steps} steps; {plain * 1e6:.1f} us per step unprofiled, "
                     f"{profiled * 1e6:.1f} us profiled\n")
        profiler.print_stats(stream=handle, output_unit=1e-6, stripzeros=True)

    stats = profiler.get_stats()
    totals = {}
    for code_key, lines in stats.timings.items():
        if lines:
            # The first line of a function body is hit once per call.
            calls = min(hits for _, hits, _ in lines)
            totals[_name(code_key)] = (calls, sum(t for _, _, t in lines) * stats.unit)
    step_total = totals[_name(_code_key(driver))][1]
    return [{**base, "status": "ok", "reason": "", "function": name, "calls_per_step": calls / steps,
             "seconds_per_step": seconds / steps, "share_of_step": seconds / step_total,
             "plain_step_s": plain, "profiled_step_s": profiled}
            for name, (calls, seconds) in sorted(totals.items(), key=lambda item: -item[1][1])]


def _code_key(function: Any) -> tuple[str, int, str]:
    code = function.__code__
    return code.co_filename, code.co_firstlineno, code.co_name
