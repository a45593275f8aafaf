"""The ``ranks`` study: data-parallel training on 1, 2, 4, ... ranks of this machine under ``torchrun``
(:func:`mlpbench.distributed.run_ranks`), strong and weak scaling, both all-reduce rungs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Any

from mlpbench.backends import model_class
from mlpbench.sweep.params import SweepParams, split_network
from mlpbench.thread_policy import usable_cores


@dataclass(frozen=True)
class RankJob:
    """One data-parallel configuration: its key in ``ranks.csv`` and the call that runs and records it."""

    key: str
    identity: dict[str, Any]
    work: Callable[[], list[dict[str, Any]]]


def rank_counts(backend: str, params: SweepParams) -> tuple[int, ...]:
    """World sizes the study runs ``backend`` on: ``params.ranks``, or 1, 2, 4, ... up to what the machine
    holds (one GPU per rank on GPU backends, ``rank_threads`` cores per rank on CPU ones)."""
    if params.ranks:
        return params.ranks
    if model_class(backend).device == "cuda":
        import torch

        limit = torch.cuda.device_count()
    else:
        limit = usable_cores() // params.rank_threads
    return tuple(1 << k for k in range(max(limit, 1).bit_length()) if (1 << k) <= limit) or (1,)


def rank_jobs(params: SweepParams, run_dir: Path) -> list[RankJob]:
    """Every configuration of the ``ranks`` study, ``rank_rounds`` times over in rounds; each job appends its own
    rows (or why there are none) to ``run_dir/ranks.csv`` and ``run_dir/allreduce.csv``."""
    from mlpbench.distributed import RankConfig, run_ranks

    jobs = []
    for round_, spec, backend, scaling in product(range(1, params.rank_rounds + 1), params.rank_networks,
                                                  params.rank_backends, params.scaling):
        network, batch = split_network(spec)
        for world_size, rung in product(rank_counts(backend, params), params.rank_rungs):
            global_batch = batch * world_size if scaling == "weak" else batch
            options = {"threads": params.rank_threads, "steps": params.rank_steps, "rung": rung,
                       "scaling": scaling, "seed": params.seed, "round": round_}
            key = RankConfig(backend=backend, network=network, world_size=world_size, global_batch=global_batch,
                             **options).key
            jobs.append(RankJob(key, {"backend": backend, "network": network, "scaling": scaling,
                                      "world_size": world_size, "rung": rung, "round": round_},
                                lambda b=backend, n=network, w=world_size, g=global_batch, o=options:
                                run_ranks(b, n, w, global_batch=g, out_dir=run_dir, timeout_s=params.rank_timeout_s,
                                          record_invalid=True, **o)))
    return jobs
