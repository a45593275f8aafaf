"""One configuration: checked against the float64 reference, its cost estimated, then timed stage by stage."""

from __future__ import annotations

import gc
import math
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from mlpbench import machine
from mlpbench.backends import BackendUnavailable, Model, load, model_class
from mlpbench.network import Network, resolve
from mlpbench.sweep.params import SweepParams
from mlpbench.sweep.planning import Config, backend_options
from mlpbench.sweep.tables import ERROR_QUANTITIES, one_line
from mlpbench.thread_policy import pinned_threads, usable_cores
from mlpbench.timing import (
    OverBudget,
    Stats,
    probe_step,
    time_stages,
)
from mlpbench.verify import check_stages, passes, random_batch

#: Largest batch of the step that estimates a configuration's cost before it is timed, and how many times
#: an estimate over budget is taken again before the configuration is skipped.
PROBE_BATCH = 64
PROBE_ROUNDS = 3
#: How far over budget a configuration's estimated cost may be before it is skipped unmeasured.
ESTIMATE_SLACK = 2


def describe_error(error: BaseException) -> str:
    return one_line(f"{type(error).__name__}: {error}")


def release_memory() -> None:
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class Unavailable:
    """Remembers which backends cannot run here, so later configurations skip them without retrying."""

    def __init__(self) -> None:
        self.reasons: dict[str, str] = {}

    def check(self, backend: str) -> str | None:
        return self.reasons.get(backend)

    def note(self, backend: str, error: BackendUnavailable) -> str:
        self.reasons[backend] = describe_error(error)
        return self.reasons[backend]


def measure(config: Config, params: SweepParams, unavailable: Unavailable) -> list[dict[str, Any]]:
    """Check one configuration against the reference, then time it; the rows to record (one per stage, or a
    single row saying why it was not timed)."""
    network = resolve(config.network)
    base: dict[str, Any] = {"study": config.study, "backend": config.backend, "network": config.network,
                            "sizes": network.name, "batch": config.batch, "threads": config.threads,
                            "round": config.round, "tolerance": params.tolerance,
                            "scaled_tolerance": params.scaled_tolerance, "warmup": params.warmup,
                            "load_before": os.getloadavg()[0]}

    def not_timed(status: str, reason: str) -> list[dict[str, Any]]:
        return [{**base, "stage": "", "status": status, "reason": reason, **finish_stamp()}]

    known = unavailable.check(config.backend)
    if known:
        return not_timed("skipped", known)
    options = backend_options(config.backend, params, config.threads)
    host_threads = config.threads or usable_cores()
    try:
        base["device"] = model_class(config.backend).device
        with pinned_threads(host_threads):
            return _check_and_time(config, network, params, base, options, not_timed)
    except BackendUnavailable as error:
        return not_timed("skipped", unavailable.note(config.backend, error))
    except OverBudget as error:
        return not_timed("skipped", str(error))
    except Exception as error:  # recorded with its reason; the sweep goes on (GPU OOM included)
        return not_timed("failed", describe_error(error))
    finally:
        release_memory()


def _check_and_time(config: Config, network: Network, params: SweepParams, base: dict[str, Any],
                    options: dict[str, Any], not_timed: Callable[[str, str], list[dict[str, Any]]]
                    ) -> list[dict[str, Any]]:
    verify_batch = min(config.batch, params.verify_batch)
    check = check_stages(config.backend, network, verify_batch, seed=params.seed, **options)
    base["verify_batch"] = verify_batch
    base.update({f"err_{name}": check.relative[name] for name in ERROR_QUANTITIES})
    base["err_max"] = max(check.relative.values())
    worst = check.worst
    base["scaled_err_max"] = check.scaled[worst]
    if not passes(check.scaled, params.scaled_tolerance):  # NaN fails too
        return not_timed("failed", f"verification failed: {worst} error {check.scaled[worst]:.3g} x float32 "
                                   f"rounding of its magnitude > {params.scaled_tolerance:.3g} (relative error "
                                   f"{check.relative[worst]:.3g})")
    rng = np.random.Generator(np.random.PCG64(params.seed))
    inputs = [random_batch(network, config.batch, rng) for _ in range(params.rotate)]
    model = load(config.backend, network, seed=params.seed, **options)
    try:
        # A timed pass runs every stage and then the whole step: about two steps. The estimate is an upper
        # bound, so only a configuration estimated far over budget is skipped unmeasured; time_stages holds
        # the others to the budget after a real warm-up pass. A probe slowed by other work on the machine is
        # taken again before anything is skipped.
        step_estimate = math.inf
        for _ in range(PROBE_ROUNDS):
            step_estimate = min(step_estimate, estimate_step(model, network, config.batch, params, rng))
            needed = 2 * step_estimate * (1 + params.min_repeats)
            if needed <= ESTIMATE_SLACK * params.budget_s:
                break
        if needed > ESTIMATE_SLACK * params.budget_s:
            return not_timed("skipped", f"over budget: one step estimated at {step_estimate:.3g} s; "
                                        f"{params.min_repeats} repeats need about {needed:.0f} s, over "
                                        f"{ESTIMATE_SLACK}x budget_s {params.budget_s:g} s")
        # First-call costs are already paid by the estimate's steps: expensive configurations warm up once.
        cheap = 2 * step_estimate * (params.warmup + params.repeats) <= params.budget_s
        base["warmup"] = params.warmup if cheap else min(1, params.warmup)
        result = time_stages(model, inputs, lr=params.lr, weight_decay=params.weight_decay,
                             repeats=params.repeats, warmup=base["warmup"], min_repeats=params.min_repeats,
                             budget_s=params.budget_s, epoch_steps=params.epoch_steps)
        base["compile_s"] = model.compile_seconds
        # The kernel each stage ran where the backend chooses one (an epoch's steps run in one launch).
        kernels = {stage: model.kernel_choice(config.batch, params.epoch_steps if stage == "epoch_step" else 1)
                   for stage in result.stats}
    finally:
        model.close()
    base["loss_finite"] = math.isfinite(result.loss_after)  # a flag to filter on, beside the reason
    if not base["loss_finite"]:
        return not_timed("failed", f"loss became {result.loss_after} while timing: the timed arithmetic "
                                   "would not be a training step's")
    flops = network.flops(config.batch)
    # What prepare() copies: the inputs and the float32 targets made from the labels.
    transfer_bytes = 4 * config.batch * (network.n_inputs + network.n_outputs)
    finished = finish_stamp()
    flops["epoch_step"] = flops["step"]  # its samples are per step
    return [{**base, **stage_columns(stage, stats, flops.get(stage), transfer_bytes, config.batch),
             "stage": stage, "status": "ok", "reason": "", "loss_after": result.loss_after,
             "kernel_choice": kernels[stage][0] if kernels[stage] else "",
             "kernel_reason": kernels[stage][1] if kernels[stage] else "", **finished}
            for stage, stats in result.stats.items()]


def finish_stamp() -> dict[str, Any]:
    """When a configuration finished, and the machine's 1-minute load average then: a load well above the
    thread count means other work shared the cores and the timings are suspect."""
    return {"finished_at": machine.now_utc(), "load_1min": os.getloadavg()[0]}


def estimate_step(model: Model, network: Network, batch: int, params: SweepParams, rng: np.random.Generator) -> float:
    """Seconds of one step at ``batch``, scaled linearly from one step at ``min(batch, PROBE_BATCH)``: an
    upper bound where fixed costs matter, so a configuration's cost is known before any is spent on it."""
    probe = min(batch, PROBE_BATCH)
    seconds = probe_step(model, *random_batch(network, probe, rng), lr=params.lr, weight_decay=params.weight_decay)
    return seconds * batch / probe


def stage_columns(stage: str, stats: Stats, flops: int | None, transfer_bytes: int,
                  batch: int) -> dict[str, Any]:
    """Timing summary and derived rates of one stage: GFLOP/s from :meth:`Network.flops`, samples/s, and
    for ``transfer`` the bytes copied (float32 inputs and targets) and GB/s."""
    columns: dict[str, Any] = {"repeats": stats.n, "median_s": stats.median, "q1_s": stats.q1,
                               "q3_s": stats.q3, "iqr_s": stats.iqr, "min_s": stats.min, "mean_s": stats.mean,
                               "samples_per_s": batch / stats.median if stats.median > 0 else math.nan}
    if flops is not None:
        columns["flops"] = flops
        columns["gflops"] = flops / stats.median / 1e9 if stats.median > 0 else math.nan
    if stage == "transfer":
        columns["bytes"] = transfer_bytes
        columns["gb_per_s"] = transfer_bytes / stats.median / 1e9 if stats.median > 0 else math.nan
    return columns
