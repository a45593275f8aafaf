"""The sweep's parameters (:class:`SweepParams`), their presets and the studies they choose."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from mlpbench.backends import BACKENDS, check_backend, model_class
from mlpbench.distributed.config import RUNGS, SCALINGS
from mlpbench.network import resolve
from mlpbench.thread_policy import usable_cores
from mlpbench.timing import EPOCH_STEPS
from mlpbench.training import TASKS
from mlpbench.verify import FLOAT32_TOLERANCE, SCALED_TOLERANCE

SCHEMA_VERSION = 1
STUDIES = ("stages", "threads", "batch", "width", "ladder", "training", "endtoend", "ranks", "lineprofile")
#: Network each training data set is learnt with.
TRAINING_NETWORKS = {"digits": "digits", "moons": "moons-5h300"}


def default_thread_counts(cores: int | None = None) -> tuple[int, ...]:
    """1, 2, 4, ... below ``cores``, and ``cores`` itself."""
    cores = usable_cores() if cores is None else cores
    counts = [1 << k for k in range(cores.bit_length()) if (1 << k) < cores]
    return (*counts, cores)


def split_network(spec: str) -> tuple[str, int]:
    """``"large:1024"`` -> ``("large", 1024)``: a network (preset name or sizes) and its batch size."""
    name, _, batch = spec.partition(":")
    if not batch.isdigit() or int(batch) < 1:
        raise ValueError(f"network spec {spec!r} needs a positive batch size: name:batch, e.g. 'digits:32'")
    resolve(name)
    return name, int(batch)


@dataclass(frozen=True)
class SweepParams:
    """Everything a sweep run depends on; stored in ``meta.json``. ``threads=()`` means
    :func:`default_thread_counts` on the machine that runs the sweep."""

    backends: tuple[str, ...] = BACKENDS
    studies: tuple[str, ...] = STUDIES
    networks: tuple[str, ...] = ("moons-5h300:32", "digits:32", "large:1024")  # stages study: name:batch
    thread_networks: tuple[str, ...] = ("moons-5h300:32", "mnist:256")
    threads: tuple[int, ...] = ()
    thread_rounds: int = 3    # rounds of the threads study on thread_networks (every thread count once a round)
    batch_network: str = "moons-5h300"
    batch_sizes: tuple[int, ...] = (1, 4, 16, 64, 256, 512)
    widths: tuple[int, ...] = (64, 128, 256, 512, 1024)
    width_layers: int = 3
    width_batch: int = 256
    repeats: int = 20         # timed samples per stage
    warmup: int = 3           # untimed passes before timing
    min_repeats: int = 3      # never fewer samples, whatever the budget
    budget_s: float = 30.0    # timing seconds per configuration: fewer repeats, or skipped beyond min_repeats
    rotate: int = 4           # input batches cycled through while timing
    verify_batch: int = 64    # largest batch of the correctness check
    tolerance: float = FLOAT32_TOLERANCE  # relative error of the ladders' products
    scaled_tolerance: float = SCALED_TOLERANCE  # scaled error of every checked quantity (mlpbench.verify)
    lr: float = 0.01          # learning rate while timing (small: the weights must stay finite)
    weight_decay: float = 1e-3
    seed: int = 0
    dataset: str = "digits"   # training curves
    epochs: int = 10
    train_batch: int = 32
    train_lr: float = 1.0
    ladder_cpu_n: int = 1024
    ladder_gpu_n: int = 4096
    ladder_repeats: int = 5
    profile_network: str = "digits"
    profile_batch: int = 32
    profile_steps: int = 200
    epoch_steps: int = EPOCH_STEPS  # steps of one epoch_step sample (backends that run many steps per launch)
    tasks: tuple[str, ...] = tuple(TASKS)  # end-to-end training tasks (mlpbench.training.TASKS)
    compiled_studies: tuple[str, ...] = ("stages", "endtoend")  # the only studies of compiling backends
    compile_budget_s: float = 300.0  # the most seconds one compilation (one batch size) may take
    task_epochs: int = 0      # cap on each task's epochs; 0: the task's own (the original benchmark: 100)
    task_repeats: int = 3     # timed runs of each end-to-end task and backend (the median is the measure)
    neighbour_wait_s: float = 12.0  # the most seconds to wait for cores a neighbour shares (sweep.neighbours)
    deferrals: int = 1        # times a unit on cores still shared after the wait goes to the end of the queue
    retimes: int = 1          # tries at the session's end to time again a unit the probe flagged (sweep.runner)
    ranks: tuple[int, ...] = ()  # world sizes of the ranks study; empty: 1, 2, 4, ... what the machine holds
    scaling: tuple[str, ...] = ("strong", "weak")
    rank_networks: tuple[str, ...] = ("mnist:256",)  # strong: global batch; weak: batch per rank
    rank_backends: tuple[str, ...] = ("c-omp", "torch-cpu", "torch-gpu", "cuda-opt")
    rank_rungs: tuple[str, ...] = ("after-backprop", "overlapped")
    rank_threads: int = 1
    rank_steps: int = 20
    rank_rounds: int = 3      # launches of each rank configuration, every configuration once a round
    rank_timeout_s: float = 300.0

    def __post_init__(self) -> None:
        for name in ("backends", "studies", "networks", "thread_networks", "threads", "batch_sizes", "widths",
                     "tasks", "compiled_studies", "ranks", "scaling", "rank_networks", "rank_backends", "rank_rungs"):
            value = getattr(self, name)
            object.__setattr__(self, name, (value,) if isinstance(value, str | int) else tuple(value))
        for backend in (*self.backends, *self.rank_backends):
            check_backend(backend)
        unknown = set(self.studies) - set(STUDIES)
        if unknown:
            raise ValueError(f"unknown studies {sorted(unknown)}; choose from {STUDIES}")
        for spec in (*self.networks, *self.thread_networks, *self.rank_networks):
            split_network(spec)
        if self.dataset not in TRAINING_NETWORKS:
            raise ValueError(f"unknown training data set {self.dataset!r}; choose from {sorted(TRAINING_NETWORKS)}")
        if self.repeats < 1 or self.min_repeats < 1 or self.warmup < 0 or self.rotate < 1 or self.epoch_steps < 1:
            raise ValueError("repeats, min_repeats, rotate and epoch_steps must be >= 1, warmup >= 0")
        unknown = set(self.tasks) - set(TASKS)
        if unknown:
            raise ValueError(f"unknown end-to-end tasks {sorted(unknown)}; choose from {tuple(TASKS)}")
        for name, value, choices in (("scaling", self.scaling, SCALINGS), ("rank_rungs", self.rank_rungs, RUNGS)):
            if set(value) - set(choices):
                raise ValueError(f"{name}: choose from {', '.join(choices)}, got {value}")
        if any(n < 1 for n in self.ranks) or min(self.rank_threads, self.rank_steps, self.rank_rounds) < 1:
            raise ValueError("ranks, rank_threads, rank_steps and rank_rounds must be >= 1")
        if self.thread_rounds < 1:
            raise ValueError(f"thread_rounds must be >= 1, got {self.thread_rounds}")
        if self.task_repeats < 1:
            raise ValueError(f"task_repeats must be >= 1, got {self.task_repeats}")
        if self.task_epochs < 0:
            raise ValueError(f"task_epochs must be >= 0 (0: each task's own), got {self.task_epochs}")
        if not self.neighbour_wait_s >= 0:
            raise ValueError(f"neighbour_wait_s must be >= 0, got {self.neighbour_wait_s}")
        if self.deferrals < 0 or self.retimes < 0:
            raise ValueError(f"deferrals and retimes must be >= 0, got {self.deferrals} and {self.retimes}")
        if any(t < 1 for t in self.threads):
            raise ValueError(f"thread counts must be >= 1, got {self.threads}")

    def backends_in(self, study: str) -> tuple[str, ...]:
        """The run's backends that take part in ``study``: those compiling each batch size only in
        :attr:`compiled_studies`."""
        return tuple(b for b in self.backends
                     if study in self.compiled_studies or not model_class(b).compiles_per_shape)

    @property
    def thread_counts(self) -> tuple[int, ...]:
        return self.threads or default_thread_counts()

    @property
    def max_threads(self) -> int:
        return max(self.thread_counts)


#: What each parameter means: the command line's help and the sweep notebook's parameter comments.
HELP: dict[str, str] = {
    "backends": "backend names; empty: every registered backend (those unusable here are recorded as skipped)",
    "studies": f"studies to run, from {', '.join(STUDIES)}",
    "networks": "stages study: network:batch, e.g. digits:32 or 64-128-10:32",
    "thread_networks": "threads study: network:batch, besides the stages study's networks (threaded backends "
                       "at every thread count)",
    "threads": "thread counts of the threads study; empty: 1, 2, 4, ... and every usable core",
    "thread_rounds": "rounds of the threads study on thread_networks, one after another, every thread count "
                     "timed once a round: a speed-up over one thread is the median of the rounds' own",
    "batch_network": "network of the batch-size study",
    "batch_sizes": "batch sizes of the batch-size study",
    "widths": "widths of the square networks of the width study",
    "width_layers": "layers of the width study's networks",
    "width_batch": "batch size of the width study",
    "repeats": "timed samples per stage",
    "warmup": "untimed passes before timing",
    "min_repeats": "fewest samples a configuration is timed with, whatever the budget",
    "budget_s": "timing seconds per configuration: fewer repeats, or skipped beyond min_repeats",
    "rotate": "input batches cycled through while timing",
    "verify_batch": "largest batch of the correctness check against the float64 reference",
    "tolerance": "relative error a matrix-product ladder rung must stay under against the float64 product",
    "scaled_tolerance": "scaled error (in float32 rounding of the magnitudes each quantity is computed from) "
                        "every checked quantity of a configuration must stay under (mlpbench.verify)",
    "lr": "learning rate while timing (small: the weights must stay finite)",
    "weight_decay": "L2 weight decay while timing",
    "seed": "seed of the weights and of the input batches",
    "dataset": f"data set of the training curves, from {', '.join(TRAINING_NETWORKS)}",
    "epochs": "epochs of the training curves",
    "train_batch": "batch size of the training curves",
    "train_lr": "learning rate of the training curves",
    "ladder_cpu_n": "n of the CPU matrix-product ladder (n x n x n)",
    "ladder_gpu_n": "n of the GPU matrix-product ladder",
    "ladder_repeats": "timed samples per ladder rung, taken in turn with the other rungs",
    "profile_network": "network of the line profile",
    "profile_batch": "batch size of the line profile",
    "profile_steps": "training steps the line profile runs",
    "epoch_steps": "stages study: steps of one train_steps call timed as the epoch_step stage (backends that "
                   "run many steps per launch)",
    "tasks": "end-to-end training tasks, from " + ", ".join(TASKS),
    "compiled_studies": "the only studies in which backends that compile each batch size (torch-gpu-compile) "
                        "take part: elsewhere every new size would cost minutes of compilation",
    "compile_budget_s": "the most seconds one compilation of such a backend may take before it is skipped",
    "task_epochs": "cap on each end-to-end task's epochs; 0: the task's own (the original benchmark: 100)",
    "task_repeats": "timed runs of each end-to-end task and backend, back to back from the same initialisation "
                    "(the first evaluated after every epoch, the others after their last)",
    "neighbour_wait_s": "the most seconds to wait before a CPU measurement while a fixed probe says other work "
                        "shares the cores (invisible to the load average); 0: measure at once, only flag it",
    "deferrals": "times a unit whose cores the probe still finds shared after that wait is put back at the end of "
                 "the session's queue, in case the neighbour leaves meanwhile, before it is measured and flagged; "
                 "0: never",
    "retimes": "tries, at the end of a session, to time again on quiet cores each unit the probe flagged as timed "
               "on shared cores (as it was measured, or only at the session's end against all of its probes); its "
               "new rows replace the first timing's in the analysis, the table keeps both; 0: never",
    "ranks": "world sizes of the ranks study (data-parallel under torchrun); empty: 1, 2, 4, ... up to the "
             "cores (CPU backends) or GPUs (GPU backends) of this machine",
    "scaling": "ranks study: strong (fixed global batch) and/or weak (fixed batch per rank)",
    "rank_networks": "ranks study: network:batch; the batch is the global batch (strong) or per rank (weak)",
    "rank_backends": "backends of the ranks study",
    "rank_rungs": "all-reduce rungs of the ranks study: after-backprop (one call) and/or overlapped (per layer)",
    "rank_threads": "threads per rank (CPU backends)",
    "rank_steps": "timed steps per rank configuration",
    "rank_rounds": "launches of each rank configuration, in rounds (every configuration once a round, world sizes "
                   "side by side), so that a ratio between world sizes is read round by round: a launch's "
                   "processes keep a pace of their own",
    "rank_timeout_s": "seconds one rank configuration may take before its ranks are killed and it is failed",
}

PRESETS: dict[str, SweepParams] = {
    # CI: every study on tiny networks, in seconds.
    "quick": SweepParams(networks=("digits:32", "2-32-32-1:8"), thread_networks=("digits:32",), threads=(1, 2),
                    thread_rounds=2,
                    batch_network="digits", batch_sizes=(1, 8, 32), widths=(16, 64), width_layers=2,
                    width_batch=32, repeats=5, warmup=1, min_repeats=2, budget_s=2.0, epochs=2,
                    tasks=("moons-tanh", "digits-target"), task_epochs=2, task_repeats=2, ranks=(2,),
                    scaling=("strong",), rank_networks=("digits:32",), rank_backends=("c-serial",),
                    rank_rungs=("overlapped",),
                    rank_steps=3, rank_rounds=1, neighbour_wait_s=0.0,
                    ladder_cpu_n=128, ladder_gpu_n=256, ladder_repeats=3, profile_steps=20),
    # About fourteen minutes on the 2-core development machine (every study, the end-to-end and ranks ones included).
    "default": SweepParams(),
    # The GPU host: more samples, the original study's batch sizes, widths up to 4096.
    "full": SweepParams(networks=("moons-5h300:32", "digits:32", "mnist:256", "large:1024"),
                        batch_sizes=tuple(1 << k for k in range(10)), widths=tuple(1 << k for k in range(6, 13)),
                        repeats=50, warmup=5, budget_s=60.0, ladder_cpu_n=2048, ladder_repeats=10,
                        profile_steps=500),
    # A GPU host in about 25 minutes: every study, fewer sizes and samples (the committed H200 run); a budget
    # that times the 16-thread CPU backends on the large network, but not one thread there.
    "gpu-host": SweepParams(networks=("moons-5h300:32", "digits:32", "mnist:256", "large:1024"),
                            batch_sizes=(1, 16, 64, 256, 512), widths=(64, 256, 1024, 4096), repeats=20,
                            warmup=3, budget_s=5.0, epochs=5, ladder_cpu_n=2048, ladder_repeats=5,
                            profile_steps=200, scaling=("weak",), rank_networks=("mnist:256",),
                            rank_backends=("c-omp",), rank_threads=2, rank_steps=20, compile_budget_s=100.0),
}


def make_params(preset: str = "default", **overrides: Any) -> SweepParams:
    """A preset with some fields replaced; ``None`` values keep the preset's."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    fields = {f.name for f in dataclasses.fields(SweepParams)}
    unknown = set(overrides) - fields
    if unknown:
        raise TypeError(f"unknown sweep parameters {sorted(unknown)}")
    return dataclasses.replace(PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None})
