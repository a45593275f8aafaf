"""Training curves: loss and accuracy per epoch of one backend on the run's data set."""

from __future__ import annotations

import time
from typing import Any

from mlpbench import machine
from mlpbench.backends import BackendUnavailable, load
from mlpbench.network import PRESETS as NETWORKS
from mlpbench.sweep.measuring import describe_error, release_memory
from mlpbench.sweep.params import TRAINING_NETWORKS, SweepParams
from mlpbench.sweep.planning import backend_options, backend_threads
from mlpbench.thread_policy import pinned_threads, usable_cores


def training_curve(backend: str, params: SweepParams) -> list[dict[str, Any]]:
    """Train ``backend`` on ``params.dataset`` from the seeded initialisation; one row per epoch."""
    from mlpbench import data
    from mlpbench.training import train

    network = NETWORKS[TRAINING_NETWORKS[params.dataset]]
    threads = backend_threads(backend, params)
    base = {"backend": backend, "network": TRAINING_NETWORKS[params.dataset], "dataset": params.dataset,
            "threads": threads, "epochs": params.epochs, "batch": params.train_batch, "lr": params.train_lr}
    try:
        dataset = data.load(params.dataset, seed=params.seed)
        with pinned_threads(threads or usable_cores()):
            model = load(backend, network, seed=params.seed, **backend_options(backend, params, threads))
            try:
                started = time.perf_counter()
                history = train(model, dataset, params.epochs, params.train_batch, params.train_lr,
                                seed=params.seed)
                seconds = (time.perf_counter() - started) / params.epochs
            finally:
                model.close()
    except BackendUnavailable as error:
        return [{**base, "status": "skipped", "reason": describe_error(error), "finished_at": machine.now_utc()}]
    except Exception as error:  # recorded with its reason; the other backends still train
        return [{**base, "status": "failed", "reason": describe_error(error), "finished_at": machine.now_utc()}]
    finally:
        release_memory()
    finished = machine.now_utc()
    return [{**base, **epoch.as_dict(), "status": "ok", "reason": "", "seconds": seconds,
             "finished_at": finished} for epoch in history]
