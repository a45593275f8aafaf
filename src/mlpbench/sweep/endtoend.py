"""End-to-end training: each backend trains each task of :data:`mlpbench.training.TASKS` with the data set
resident where it computes, ``task_repeats`` times; one row per timed run and epoch with its training time so
far."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from mlpbench import machine
from mlpbench.backends import BackendUnavailable, load, model_class
from mlpbench.data import load as load_dataset
from mlpbench.sweep.measuring import describe_error, release_memory
from mlpbench.sweep.params import SweepParams
from mlpbench.sweep.planning import backend_options, backend_threads
from mlpbench.thread_policy import pinned_threads, usable_cores
from mlpbench.training import TASKS, train_resident


def endtoend_rows(task_name: str, backend: str, params: SweepParams) -> list[dict[str, Any]]:
    """Train ``backend`` on one task from the seeded initialisation, ``params.task_repeats`` times; one row per
    run and epoch (or one row saying why it did not run)."""
    task = TASKS[task_name]
    if params.task_epochs:
        task = dataclasses.replace(task, epochs=min(task.epochs, params.task_epochs))
    threads = backend_threads(backend, params)
    base = {"task": task.name, "backend": backend, "network": task.network.name, "sizes": task.network.name,
            "activation": task.network.activation, "dataset": task.dataset, "threads": threads,
            "batch": task.batch, "lr": task.lr, "weight_decay": task.weight_decay, "epochs": task.epochs,
            "target_accuracy": task.target_accuracy, "load_before": os.getloadavg()[0]}

    def not_run(status: str, reason: str) -> list[dict[str, Any]]:
        return [{**base, "status": status, "reason": reason, "load_after": os.getloadavg()[0],
                 "finished_at": machine.now_utc()}]

    try:
        base["device"] = model_class(backend).device
        dataset = load_dataset(task.dataset, seed=params.seed)
        options = backend_options(backend, params, threads)
        with pinned_threads(threads or usable_cores()):
            run = train_resident(lambda: load(backend, task.network, seed=params.seed, **options), dataset,
                                 task, seed=params.seed, repeats=params.task_repeats)
    except BackendUnavailable as error:
        return not_run("skipped", describe_error(error))
    except Exception as error:  # recorded with its reason; the other backends still train
        return not_run("failed", describe_error(error))
    finally:
        release_memory()
    after, finished = os.getloadavg()[0], machine.now_utc()
    return [{**base, **epoch.as_dict(), "repeat": repeat, "status": "ok", "reason": "", "load_after": after,
             "finished_at": finished}
            for repeat, epochs in enumerate([run.epochs, *run.repeats]) for epoch in epochs]
