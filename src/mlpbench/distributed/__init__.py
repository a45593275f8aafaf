"""Data-parallel training over ``torch.distributed``: the study's level of parallelism beyond one process.

Every rank (one process; one GPU each on GPU backends) holds the whole network on one of the project's backends
and trains on its shard of every global batch; the ranks average their gradient buffers with an all-reduce
(``gloo`` for CPU backends, ``nccl`` for GPU ones) before each update. A step has a fourth stage,
``allreduce``, timed like the others.

* :mod:`mlpbench.distributed.ranks`: the program every rank runs (``torchrun ... -m mlpbench.distributed``);
* :func:`run_ranks`: starts one configuration under ``torchrun`` and records its rows, or why it failed;
* :mod:`mlpbench.distributed.config`: the configuration, its checks, and the columns of ``ranks.csv`` and
  ``allreduce.csv``.

Importing this package does not import ``torch.distributed``.
"""

from mlpbench.distributed.config import (
    ALLREDUCE_COLUMNS,
    NVLINK_MULTICAST_OFF,
    RANKS_COLUMNS,
    RUNGS,
    SCALINGS,
    STAGES,
    RankConfig,
    validate,
)
from mlpbench.distributed.launch import run_ranks

__all__ = ["ALLREDUCE_COLUMNS", "NVLINK_MULTICAST_OFF", "RANKS_COLUMNS", "RUNGS", "SCALINGS", "STAGES",
           "RankConfig", "run_ranks", "validate"]
