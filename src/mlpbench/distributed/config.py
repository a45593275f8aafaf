"""One data-parallel configuration, its checks (run before any process starts or any process group exists), and
the columns of the two result tables. Imports nothing heavy, so the launcher stays cheap."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

from mlpbench.backends import Model, model_class
from mlpbench.backends.base import BackendUnavailable, check_threads, gradient_buffer_missing
from mlpbench.network import Network, resolve
from mlpbench.thread_policy import usable_cores

RUNGS = ("after-backprop", "overlapped")
SCALINGS = ("strong", "weak")
#: Stages of a data-parallel step, in the order of tables and figures.
STAGES = ("forward", "backprop", "allreduce", "update", "step")

RANKS_COLUMNS = (
    "key", "block_rows", "backend", "device", "network", "sizes", "scaling", "world_size", "pg_backend", "rung",
    "round", "threads_per_rank", "batch_per_rank", "global_batch", "stage", "status", "reason", "repeats", "median_s",
    "q1_s", "q3_s", "bytes", "algbw_gbps", "busbw_gbps", "err_params", "load_before", "load_after",
    "finished_at",
)
ALLREDUCE_COLUMNS = (
    "key", "block_rows", "device", "pg_backend", "world_size", "bytes", "repeats", "median_s", "algbw_gbps",
    "busbw_gbps", "status", "reason", "finished_at",
)
#: NVLink multicast (NVLS) stays off in every process: set in the environment of every rank.
NVLINK_MULTICAST_OFF = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
                        "NVSHMEM_DISABLE_NVLS": "1"}
#: Message sizes (bytes) of the plain all-reduce benchmark, unless given; the gradient buffer's is added.
DEFAULT_ALLREDUCE_SIZES = (4 << 10, 64 << 10, 1 << 20, 16 << 20)


def _positive(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an integer, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name}: must be >= 1, got {value}")
    return value


@dataclass(frozen=True)
class RankConfig:
    """What every rank trains and how. ``steps`` timed passes follow ``warmup`` untimed ones; before them,
    ``check_steps`` steps are compared with one process training on the global batch (``err_params``).
    ``round``: which launch of the same configuration this is, where a sweep launches each several times."""

    backend: str
    network: str
    world_size: int
    global_batch: int
    threads: int = 1
    steps: int = 20
    warmup: int = 2
    check_steps: int = 2
    rung: str = "after-backprop"
    scaling: str = "strong"
    lr: float = 0.01
    seed: int = 0
    timeout_s: float = 120.0
    force: bool = False
    allreduce_sizes: tuple[int, ...] = DEFAULT_ALLREDUCE_SIZES
    allreduce_repeats: int = 20
    round: int = 1

    @property
    def key(self) -> str:
        """Identity of the configuration in ``ranks.csv`` (the plain all-reduce block adds ``|allreduce``)."""
        return (f"{self.backend}|{self.network}|{self.scaling}|ranks{self.world_size}|{self.rung}|"
                f"threads{self.threads}|batch{self.global_batch}" + (f"|round{self.round}" if self.round != 1 else ""))

    @property
    def batch_per_rank(self) -> int:
        return self.global_batch // self.world_size

    def resolved_network(self) -> Network:
        return resolve(self.network)

    def model_class(self) -> type[Model]:
        return model_class(self.backend)

    @property
    def pg_backend(self) -> str:
        """``nccl`` for backends that compute on a GPU, ``gloo`` for the CPU ones."""
        return "nccl" if self.model_class().device == "cuda" else "gloo"


def validate(config: RankConfig, local_ranks: int | None = None) -> RankConfig:
    """Every check that needs no process group: raises ``TypeError``/``ValueError`` for bad arguments and
    :class:`BackendUnavailable` for a backend that cannot train data-parallel here. ``local_ranks``: ranks on
    this machine (default: all of them)."""
    local_ranks = config.world_size if local_ranks is None else local_ranks
    for name in ("world_size", "global_batch", "steps", "allreduce_repeats", "round"):
        _positive(name, getattr(config, name))
    check_threads(config.threads)
    for name in ("warmup", "check_steps"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name}: expected an integer >= 0, got {value!r}")
    if config.rung not in RUNGS:
        raise ValueError(f"rung: expected one of {', '.join(RUNGS)}, got {config.rung!r}")
    if config.scaling not in SCALINGS:
        raise ValueError(f"scaling: expected one of {', '.join(SCALINGS)}, got {config.scaling!r}")
    if config.global_batch % config.world_size:
        raise ValueError(f"global batch {config.global_batch} is not divisible by the world size "
                         f"{config.world_size}: every rank needs a shard of the same size")
    if not config.timeout_s > 0:
        raise ValueError(f"timeout_s: must be > 0, got {config.timeout_s}")
    if any(isinstance(size, bool) or not isinstance(size, int) or size < 4 for size in config.allreduce_sizes):
        raise ValueError(f"allreduce_sizes: expected byte counts >= 4, got {config.allreduce_sizes}")
    network = config.resolved_network()
    cls = config.model_class()  # ValueError for unknown names, BackendUnavailable when it cannot import
    cls.check_network(network)  # ValueError for a network beyond the backend's kernels
    if cls.gradient_buffer is Model.gradient_buffer:
        raise gradient_buffer_missing(config.backend)
    if cls.device == "cuda":
        import torch

        gpus = torch.cuda.device_count()
        if gpus == 0:
            raise BackendUnavailable(f"{config.backend}: no CUDA GPU visible to PyTorch on this machine")
        if local_ranks > gpus:
            raise ValueError(f"{local_ranks} GPU ranks on this machine but only {gpus} GPUs: one GPU per rank")
    cores = usable_cores()
    if config.threads * local_ranks > cores and not config.force:
        raise ValueError(f"{local_ranks} ranks x {config.threads} threads exceed the {cores} cores of this "
                         f"machine (force to run anyway)")
    return config


def model_options(config: RankConfig, batch: int) -> dict[str, Any]:
    """Options for :func:`mlpbench.backends.load`: the thread count for backends that take one, and room for
    ``batch`` rows for backends that allocate their buffers once (``max_batch``)."""
    accepted = inspect.signature(config.model_class()).parameters
    options: dict[str, Any] = {}
    if "threads" in accepted:
        options["threads"] = config.threads
    if "max_batch" in accepted:
        options["max_batch"] = batch
    return options
