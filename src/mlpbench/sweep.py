"""The benchmark sweep: every backend × network × batch size × thread count, checked, then timed stage by stage.

Studies (each one a list of units of work, each unit recorded as soon as it finishes):

``stages``       per-stage breakdown of every backend on the study's networks (``networks``: ``name:batch``);
``threads``      thread scaling of ``c-omp`` and ``torch-cpu`` on ``thread_networks`` over ``threads``;
``batch``        batch-size effect on ``batch_network`` (the original study's second experiment);
``width``        square networks ``w-w-...-w`` (``width_layers`` layers) over ``widths`` at ``width_batch``;
``ladder``       matrix-product kernel ladders as a fraction of the library ceiling measured in the same run;
``training``     loss and accuracy per epoch of every available backend on ``dataset``;
``lineprofile``  line-by-line profile of the Python driver of a training step (:mod:`mlpbench.profiling`).

Before a configuration is timed, :func:`mlpbench.verify.compare_stages` checks it against the float64
reference at the same network, on ``min(batch, verify_batch)`` samples (so huge networks are checked on a
reduced batch). Its worst relative errors go into every row; above ``tolerance`` the configuration is recorded
as ``failed`` and not timed. A backend that cannot run here (``BackendUnavailable``) is ``skipped``; any other
exception is ``failed``; the reason is recorded and the sweep goes on.

Thread counts are explicit and come from what each backend class declares: ``threaded`` backends (``c-omp``,
``torch-cpu``) get theirs as an option; around every configuration the shared OpenMP runtime (through PyTorch)
and NumPy's BLAS pool are pinned to the configuration's count (a single-threaded build such as ``c-serial``:
its ``fixed_threads``; the ``numpy`` reference: the largest count; GPU backends: all cores for the host side).

Results go to ``<results>/<run-id>/``:

``meta.json``        parameters, machine description (:func:`mlpbench.machine.describe`), sessions, times;
``rows.csv``         one row per configuration × stage (see :data:`ROW_COLUMNS`); a configuration that was
                     not timed has one row with an empty ``stage``;
``ladder.csv``       one row per matrix-product implementation (:data:`LADDER_COLUMNS`);
``training.csv``     one row per backend × epoch (:data:`TRAINING_COLUMNS`);
``lineprofile.csv``  one row per backend × profiled function (:data:`mlpbench.profiling.PROFILE_COLUMNS`),
                     with the full line-by-line listings in ``lineprofile/<backend>.txt``.

Crash safety: each table is append-only; a unit's rows are written in one ``write`` and ``fsync``-ed, each row
carrying its unit's ``key`` and row count ``block_rows``. On start the tables are read back, a torn last
line or an incomplete block is cut off, and units already present are skipped, so re-running with the same
run id resumes a killed sweep without losing or duplicating rows. ``attempts.log`` lists every unit started;
one that was started twice without finishing (it crashed the process) is recorded as ``failed`` on resume.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import gc
import io
import json
import math
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlpbench import machine, profiling
from mlpbench.backends import BACKENDS, BackendUnavailable, Model, check_backend, load, model_class
from mlpbench.network import PRESETS as NETWORKS
from mlpbench.network import Network, resolve
from mlpbench.thread_policy import pinned_threads, usable_cores
from mlpbench.timing import (
    OverBudget,
    Stats,
    probe_step,
    thread_option,
    time_call,
    time_stages,
)
from mlpbench.verify import FLOAT32_TOLERANCE, compare_stages, random_batch, relative_error

SCHEMA_VERSION = 1
STUDIES = ("stages", "threads", "batch", "width", "ladder", "training", "lineprofile")
#: Network each training data set is learnt with.
TRAINING_NETWORKS = {"digits": "digits", "moons": "moons-5h300"}
ERROR_QUANTITIES = ("activations", "loss", "grad_weights", "grad_biases", "params")
#: Largest batch of the step that estimates a configuration's cost before it is timed, and how many times
#: an estimate over budget is taken again before the configuration is skipped.
PROBE_BATCH = 64
PROBE_ROUNDS = 3
#: How far over budget a configuration's estimated cost may be before it is skipped unmeasured.
ESTIMATE_SLACK = 2

ROW_COLUMNS = (
    "key", "block_rows", "study", "backend", "device", "network", "sizes", "batch", "threads", "stage", "status",
    "reason", "repeats", "warmup", "median_s", "q1_s", "q3_s", "iqr_s", "min_s", "mean_s", "flops", "gflops",
    "samples_per_s", "bytes", "gb_per_s", "verify_batch", "tolerance",
    *(f"err_{name}" for name in ERROR_QUANTITIES), "err_max", "loss_after", "reused_from", "finished_at",
    "load_1min",
)
LADDER_COLUMNS = (
    "key", "block_rows", "device", "impl", "version", "rung", "n", "threads", "status", "reason", "repeats",
    "median_s", "iqr_s", "gflops", "rel_error", "ceiling_impl", "ceiling_gflops", "pct_of_ceiling",
    "finished_at",
)
TRAINING_COLUMNS = (
    "key", "block_rows", "backend", "network", "dataset", "threads", "epochs", "batch", "lr", "status",
    "reason", "epoch", "train_loss", "train_accuracy", "test_accuracy", "seconds", "finished_at",
)


# --- parameters and presets --------------------------------------------------------------------------------

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
class Params:
    """Everything a sweep run depends on; stored in ``meta.json``. ``threads=()`` means
    :func:`default_thread_counts` on the machine that runs the sweep."""

    backends: tuple[str, ...] = BACKENDS
    studies: tuple[str, ...] = STUDIES
    networks: tuple[str, ...] = ("moons-5h300:32", "digits:32", "large:1024")  # stages study: name:batch
    thread_networks: tuple[str, ...] = ("moons-5h300:32", "mnist:256")
    threads: tuple[int, ...] = ()
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
    tolerance: float = FLOAT32_TOLERANCE
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

    def __post_init__(self) -> None:
        for name in ("backends", "studies", "networks", "thread_networks", "threads", "batch_sizes", "widths"):
            value = getattr(self, name)
            object.__setattr__(self, name, (value,) if isinstance(value, str | int) else tuple(value))
        for backend in self.backends:
            check_backend(backend)
        unknown = set(self.studies) - set(STUDIES)
        if unknown:
            raise ValueError(f"unknown studies {sorted(unknown)}; choose from {STUDIES}")
        for spec in (*self.networks, *self.thread_networks):
            split_network(spec)
        if self.dataset not in TRAINING_NETWORKS:
            raise ValueError(f"unknown training data set {self.dataset!r}; choose from {sorted(TRAINING_NETWORKS)}")
        if self.repeats < 1 or self.min_repeats < 1 or self.warmup < 0 or self.rotate < 1:
            raise ValueError("repeats, min_repeats and rotate must be >= 1, warmup >= 0")
        if any(t < 1 for t in self.threads):
            raise ValueError(f"thread counts must be >= 1, got {self.threads}")

    @property
    def thread_counts(self) -> tuple[int, ...]:
        return self.threads or default_thread_counts()

    @property
    def max_threads(self) -> int:
        return max(self.thread_counts)


PRESETS: dict[str, Params] = {
    # CI: every study on tiny networks, in seconds.
    "quick": Params(networks=("digits:32", "2-32-32-1:8"), thread_networks=("digits:32",), threads=(1, 2),
                    batch_network="digits", batch_sizes=(1, 8, 32), widths=(16, 64), width_layers=2,
                    width_batch=32, repeats=5, warmup=1, min_repeats=2, budget_s=2.0, epochs=2,
                    ladder_cpu_n=128, ladder_gpu_n=256, ladder_repeats=3, profile_steps=20),
    # About five minutes on the 2-core development machine.
    "default": Params(),
    # The GPU host: more samples, the original study's batch sizes, widths up to 4096.
    "full": Params(networks=("moons-5h300:32", "digits:32", "mnist:256", "large:1024"),
                   batch_sizes=tuple(1 << k for k in range(10)), widths=tuple(1 << k for k in range(6, 13)),
                   repeats=50, warmup=5, budget_s=60.0, ladder_cpu_n=2048, ladder_repeats=10,
                   profile_steps=500),
}


def make_params(preset: str = "default", **overrides: Any) -> Params:
    """A preset with some fields replaced; ``None`` values keep the preset's."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    fields = {f.name for f in dataclasses.fields(Params)}
    unknown = set(overrides) - fields
    if unknown:
        raise TypeError(f"unknown sweep parameters {sorted(unknown)}")
    return dataclasses.replace(PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None})


# --- the plan ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Config:
    """One backend on one network, batch size and thread count, in one study."""

    study: str
    backend: str
    network: str
    batch: int
    threads: int | None  # None: not a CPU-threaded backend (GPU)

    @property
    def key(self) -> str:
        return f"{self.study}/{self.backend}/{self.network}/b{self.batch}/t{self.threads or '-'}"

    @property
    def measurement(self) -> tuple[str, str, int, int | None]:
        """What is measured, whatever the study: configurations of two studies that agree here share rows."""
        return self.backend, self.network, self.batch, self.threads

    @classmethod
    def from_key(cls, key: str) -> Config:
        """The configuration a ``rows.csv`` key was made from (inverse of :attr:`key`)."""
        study, backend, network, batch, threads = key.split("/")
        return cls(study, backend, network, int(batch[1:]), None if threads == "t-" else int(threads[1:]))


def backend_threads(backend: str, params: Params, threads: int | None = None) -> int | None:
    """The thread count a backend runs on, as its class declares: ``None`` (not applicable) on a GPU;
    ``threads`` for a threaded backend when given; a single-threaded build's fixed count; otherwise the
    most threads of the run (the thread pools the harness sets)."""
    cls = model_class(backend)
    if cls.device != "cpu":
        return None
    if cls.threaded and threads is not None:
        return threads
    if cls.fixed_threads is not None:
        return cls.fixed_threads
    return params.max_threads


def width_network(width: int, layers: int) -> str:
    return "-".join([str(width)] * (layers + 1))


def plan(params: Params) -> list[Config]:
    """Every timing configuration of the chosen studies, in run order (study by study)."""
    configs: list[Config] = []

    def add(study: str, network: str, batch: int, backends: Sequence[str] = params.backends,
            threads: Sequence[int | None] = (None,)) -> None:
        label = network if network in NETWORKS else resolve(network).name  # preset names stay readable
        for backend in backends:
            for count in threads:
                configs.append(Config(study, backend, label, batch, backend_threads(backend, params, count)))

    studies = set(params.studies)
    if "stages" in studies:
        for spec in params.networks:
            add("stages", *split_network(spec))
    if "threads" in studies:
        threaded = [b for b in params.backends if model_class(b).threaded]
        for spec in params.thread_networks:
            add("threads", *split_network(spec), backends=threaded, threads=params.thread_counts)
    if "batch" in studies:
        for batch in params.batch_sizes:
            add("batch", params.batch_network, batch)
    if "width" in studies:
        for width in params.widths:
            add("width", width_network(width, params.width_layers), params.width_batch)
    return configs


# --- crash-safe tables -------------------------------------------------------------------------------------

def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` by ``text`` so a reader sees the old or the new file, never a mix."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _one_line(text: object, limit: int = 500) -> str:
    """Reasons go into CSV cells: one line, bounded length."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


class BlockTable:
    """An append-only CSV file of blocks: all rows of one finished unit of work, written in one go.

    Every row carries its unit's ``key`` and the unit's row count ``block_rows``. :meth:`read` keeps only
    complete blocks (a SIGKILL can leave a torn last line or half a block) and cuts anything else off.
    """

    def __init__(self, path: Path, columns: Sequence[str]) -> None:
        self.path = Path(path)
        self.columns = tuple(columns)
        self._header = ",".join(self.columns) + "\n"

    def _format(self, rows: Sequence[dict[str, Any]]) -> str:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, self.columns, lineterminator="\n", extrasaction="raise")
        for row in rows:
            writer.writerow({k: _one_line(v, 2000) if isinstance(v, str) else v for k, v in row.items()})
        return buffer.getvalue()

    def read(self) -> list[dict[str, str]]:
        """The complete blocks, in file order; repairs the file in place when its tail is damaged."""
        if not self.path.exists():
            write_atomic(self.path, self._header)
            return []
        text = self.path.read_text(encoding="utf-8")
        if not text.startswith(self._header):
            if text and self._header.startswith(text):  # killed while the header was written
                write_atomic(self.path, self._header)
                return []
            raise ValueError(f"{self.path}: columns differ from this version's; use a new run id")
        body = text[len(self._header):]
        lines = body.splitlines(keepends=True)
        if lines and not lines[-1].endswith("\n"):
            lines.pop()  # torn last line
        rows = list(csv.DictReader(io.StringIO("".join(lines)), fieldnames=self.columns))
        kept: list[dict[str, str]] = []
        kept_lines: list[str] = []
        start = 0
        while start < len(rows):
            key, size = rows[start]["key"], int(rows[start]["block_rows"])
            block = rows[start:start + size]
            if len(block) < size or any(row["key"] != key for row in block):
                break  # an incomplete block can only be the last one written
            kept += block
            kept_lines += lines[start:start + size]
            start += size
        if start < len(rows) or len(lines) != len(body.splitlines(keepends=True)):
            write_atomic(self.path, self._header + "".join(kept_lines))
        return kept

    def keys(self) -> set[str]:
        return {row["key"] for row in self.read()}

    def append(self, key: str, rows: Sequence[dict[str, Any]]) -> None:
        """Write one unit's rows with one ``write`` call and flush them to disk."""
        if not rows:
            raise ValueError(f"{key}: a block needs at least one row")
        rows = [{**row, "key": key, "block_rows": len(rows)} for row in rows]
        data = self._format(rows).encode("utf-8")
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)


# --- one configuration -------------------------------------------------------------------------------------

def describe_error(error: BaseException) -> str:
    return _one_line(f"{type(error).__name__}: {error}")


def _release_memory() -> None:
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


def measure(config: Config, params: Params, unavailable: Unavailable) -> list[dict[str, Any]]:
    """Check one configuration against the reference, then time it; the rows to record (one per stage, or a
    single row saying why it was not timed)."""
    network = resolve(config.network)
    base: dict[str, Any] = {"study": config.study, "backend": config.backend, "network": config.network,
                            "sizes": network.name, "batch": config.batch, "threads": config.threads,
                            "tolerance": params.tolerance, "warmup": params.warmup}

    def not_timed(status: str, reason: str) -> list[dict[str, Any]]:
        return [{**base, "stage": "", "status": status, "reason": reason, **finish_stamp()}]

    known = unavailable.check(config.backend)
    if known:
        return not_timed("skipped", known)
    options = thread_option(config.backend, config.threads)
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
        _release_memory()


def _check_and_time(config: Config, network: Network, params: Params, base: dict[str, Any],
                    options: dict[str, Any], not_timed: Callable[[str, str], list[dict[str, Any]]]
                    ) -> list[dict[str, Any]]:
    verify_batch = min(config.batch, params.verify_batch)
    errors = compare_stages(config.backend, network, verify_batch, seed=params.seed, **options)
    base["verify_batch"] = verify_batch
    base.update({f"err_{name}": errors[name] for name in ERROR_QUANTITIES})
    worst = max(errors, key=lambda name: errors[name])
    base["err_max"] = errors[worst]
    if not errors[worst] <= params.tolerance:  # NaN fails too
        return not_timed("failed", f"verification failed: {worst} relative error {errors[worst]:.3g} "
                                   f"> tolerance {params.tolerance:.3g}")
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
                             budget_s=params.budget_s)
    finally:
        model.close()
    if not math.isfinite(result.loss_after):
        return not_timed("failed", f"loss became {result.loss_after} while timing: the timed arithmetic "
                                   "would not be a training step's")
    flops = network.flops(config.batch)
    # What prepare() copies: the inputs and the float32 targets made from the labels.
    transfer_bytes = 4 * config.batch * (network.n_inputs + network.n_outputs)
    finished = finish_stamp()
    return [{**base, **stage_columns(stage, stats, flops.get(stage), transfer_bytes, config.batch),
             "stage": stage, "status": "ok", "reason": "", "loss_after": result.loss_after, **finished}
            for stage, stats in result.stats.items()]


def finish_stamp() -> dict[str, Any]:
    """When a configuration finished, and the machine's 1-minute load average then: a load well above the
    thread count means other work shared the cores and the timings are suspect."""
    return {"finished_at": machine.now_utc(), "load_1min": os.getloadavg()[0]}


def estimate_step(model: Model, network: Network, batch: int, params: Params, rng: np.random.Generator) -> float:
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


# --- matrix-product ladders --------------------------------------------------------------------------------

class LadderUnavailable(RuntimeError):
    """A ladder's kernels are not built or not importable here."""


def native_gemm_hook(n: int, threads: int) -> tuple[Callable[..., np.ndarray], dict[int, str]]:
    """The C library's numbered matrix products, as ``mlpbench.native`` exposes them: a ``native.Gemm``
    workspace for ``n x n`` products on ``threads`` threads, called as ``gemm(A, B, out, version=v)``
    (``out = A @ B``, nothing allocated per call), and ``KERNELS``, a dict of rung number -> name."""
    try:
        from mlpbench import native

        return native.Gemm(n, n, threads=threads), dict(native.KERNELS)
    except (ImportError, AttributeError, OSError, BackendUnavailable) as error:
        raise LadderUnavailable(describe_error(error)) from error


def cuda_matmul_hook() -> tuple[Callable[..., Any], dict[int, str]]:
    """The CUDA backends' numbered matrix-product kernels, as ``mlpbench.backends.cuda`` exposes them:
    ``matmul(A, B, version: int, out=C) -> C`` on float32 contiguous CUDA tensors ``A (m, k)``, ``B (k, n)``,
    returning ``C = A @ B`` as a CUDA tensor, and ``VERSIONS``, whose integer keys are the rung numbers and
    values their names. Anything missing makes the GPU ladder's kernel rows ``skipped`` with the reason."""
    try:
        from mlpbench.backends import cuda

        rungs = {version: name for version, name in cuda.VERSIONS.items() if isinstance(version, int)}
        return cuda.matmul, rungs
    except (ImportError, AttributeError, OSError, BackendUnavailable) as error:
        raise LadderUnavailable(describe_error(error)) from error


def _ladder_row(device: str, impl: str, version: int | None, n: int, threads: int | None,
                fn: Callable[[], Any], result: Callable[[], np.ndarray], reference: np.ndarray,
                params: Params, clock: Any = None) -> dict[str, Any]:
    """Check one product against the float64 reference, then time it."""
    row: dict[str, Any] = {"device": device, "impl": impl, "version": version, "n": n, "threads": threads}
    try:
        error = relative_error(result(), reference)
        row["rel_error"] = error
        if not error <= params.tolerance:
            return {**row, "status": "failed",
                    "reason": f"verification failed: relative error {error:.3g} > {params.tolerance:.3g}"}
        stats = time_call(fn, repeats=params.ladder_repeats, warmup=2, clock=clock)
    except Exception as error:  # a rung that crashes is recorded, the ladder goes on
        return {**row, "status": "failed", "reason": describe_error(error)}
    return {**row, "status": "ok", "reason": "", "repeats": stats.n, "median_s": stats.median,
            "iqr_s": stats.iqr, "gflops": 2 * n**3 / stats.median / 1e9}


def _with_ceiling(rows: list[dict[str, Any]], ceiling_impl: str) -> list[dict[str, Any]]:
    ceiling = next((r.get("gflops") for r in rows if r["impl"] == ceiling_impl and r["status"] == "ok"), None)
    finished = machine.now_utc()
    for row in rows:
        row.update(ceiling_impl=ceiling_impl, ceiling_gflops=ceiling, finished_at=finished)
        if ceiling and row["status"] == "ok":
            row["pct_of_ceiling"] = 100.0 * row["gflops"] / ceiling
    return rows


def cpu_ladder(params: Params) -> list[dict[str, Any]]:
    """The C library's matrix products 1..k, NumPy (OpenBLAS, the ceiling) and PyTorch on ``ladder_cpu_n``³,
    all on ``max_threads`` threads."""
    import torch

    n, threads = params.ladder_cpu_n, params.max_threads
    rng = np.random.Generator(np.random.PCG64(params.seed))
    A = rng.standard_normal((n, n), dtype=np.float32)
    B = rng.standard_normal((n, n), dtype=np.float32)
    reference = A.astype(np.float64) @ B.astype(np.float64)
    At, Bt = torch.from_numpy(A), torch.from_numpy(B)
    # Every product writes into a buffer allocated once, so no call times page faults of a fresh result.
    out = np.empty((n, n), dtype=np.float32)
    out_t = torch.from_numpy(out)
    with pinned_threads(threads):
        rows = [
            _ladder_row("cpu", "numpy", None, n, threads, lambda: np.matmul(A, B, out=out),
                        lambda: np.matmul(A, B, out=out), reference, params),
            _ladder_row("cpu", "torch-cpu", None, n, threads, lambda: torch.matmul(At, Bt, out=out_t),
                        lambda: torch.matmul(At, Bt, out=out_t).numpy(), reference, params),
        ]
        try:
            gemm, kernels = native_gemm_hook(n, threads)
        except LadderUnavailable as error:
            rows.append({"device": "cpu", "impl": "c", "n": n, "threads": threads, "status": "skipped",
                         "reason": str(error)})
        else:
            for version, name in kernels.items():
                def call(version: int = version) -> np.ndarray:
                    return gemm(A, B, out, version=version)
                rows.append({**_ladder_row("cpu", f"c-v{version}", version, n, threads, call, call, reference,
                                           params), "rung": name})
            gemm.close()
    return _with_ceiling(rows, "numpy")


def gpu_ladder(params: Params) -> list[dict[str, Any]]:
    """The CUDA kernels' matrix products against PyTorch (cuBLAS, IEEE float32: the ceiling) on
    ``ladder_gpu_n``³, timed with CUDA events."""
    import torch

    from mlpbench.timing import CudaEventClock

    n = params.ladder_gpu_n
    if not torch.cuda.is_available():
        return [{"device": "gpu", "impl": "torch-gpu", "n": n, "status": "skipped",
                 "reason": "no CUDA GPU visible to PyTorch", "finished_at": machine.now_utc()}]
    torch.backends.cuda.matmul.fp32_precision = "ieee"
    rng = np.random.Generator(np.random.PCG64(params.seed))
    A = rng.standard_normal((n, n), dtype=np.float32)
    B = rng.standard_normal((n, n), dtype=np.float32)
    reference = A.astype(np.float64) @ B.astype(np.float64)
    Ad, Bd = torch.from_numpy(A).cuda(), torch.from_numpy(B).cuda()
    Cd = torch.empty_like(Ad)  # one result buffer for every product, as on the CPU
    clock = CudaEventClock()
    rows = [_ladder_row("gpu", "torch-gpu", None, n, None, lambda: torch.matmul(Ad, Bd, out=Cd),
                        lambda: torch.matmul(Ad, Bd, out=Cd).cpu().numpy(), reference, params, clock)]
    try:
        matmul, kernels = cuda_matmul_hook()
    except LadderUnavailable as error:
        rows.append({"device": "gpu", "impl": "cuda", "n": n, "status": "skipped", "reason": str(error)})
    else:
        for version, name in kernels.items():
            def call(version: int = version) -> Any:
                return matmul(Ad, Bd, version=version, out=Cd)
            rows.append({**_ladder_row("gpu", f"cuda-v{version}", version, n, None, call,
                                       lambda call=call: call().cpu().numpy(), reference, params, clock),
                         "rung": name})
    return _with_ceiling(rows, "torch-gpu")


# --- training curves ---------------------------------------------------------------------------------------

def training_curve(backend: str, params: Params) -> list[dict[str, Any]]:
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
            model = load(backend, network, seed=params.seed, **thread_option(backend, threads))
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
        _release_memory()
    finished = machine.now_utc()
    return [{**base, **epoch.as_dict(), "status": "ok", "reason": "", "seconds": seconds,
             "finished_at": finished} for epoch in history]


# --- the run -----------------------------------------------------------------------------------------------

def default_run_id() -> str:
    import socket

    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + socket.gethostname().split(".")[0]


@dataclass(frozen=True)
class Unit:
    """One piece of work of a run: its table, key, the function that produces its rows, the columns that
    identify it in a row saying why it produced none, and for timing units the configuration (whose rows
    another study's identical configuration reuses)."""

    table: str
    key: str
    work: Callable[[], list[dict[str, Any]]]
    identity: dict[str, Any]
    config: Config | None = None


class Attempts:
    """Append-only log of units started: a unit that was started ``MAX_ATTEMPTS`` times without finishing
    killed the process each time (a crash in native or GPU code), so a resumed run records it as failed
    instead of dying on it again."""

    MAX_ATTEMPTS = 2

    def __init__(self, path: Path) -> None:
        self.path = path
        lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
        self.counts = Counter(lines)

    def begin(self, unit: Unit) -> str | None:
        """Log a start of ``unit``; the reason to give up on it instead, if it has crashed too often."""
        name = f"{unit.table}:{unit.key}"
        if self.counts[name] >= self.MAX_ATTEMPTS:
            return f"the process died while measuring it, {self.counts[name]} times: not tried again"
        self.counts[name] += 1
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(name + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        return None


def _start_meta(run_dir: Path, run_id: str, preset: str, params: Params) -> dict[str, Any]:
    path = run_dir / "meta.json"
    meta = json.loads(path.read_text()) if path.exists() else None
    session = {"started_at": machine.now_utc(), "finished_at": None, "preset": preset,
               "parameters": dataclasses.asdict(params), "machine": machine.describe()}
    if meta is None:
        meta = {"schema": SCHEMA_VERSION, "run_id": run_id, "started_at": session["started_at"],
                "preset": preset, "parameters": session["parameters"], "machine": session["machine"],
                "sessions": []}
    meta.update(status="running", finished_at=None, preset=preset, parameters=session["parameters"],
                thread_counts=list(params.thread_counts))
    meta["sessions"].append(session)
    write_atomic(path, json.dumps(meta, indent=1, default=str) + "\n")
    return meta


def _finish_meta(run_dir: Path, meta: dict[str, Any], status: str) -> None:
    meta["finished_at"] = meta["sessions"][-1]["finished_at"] = machine.now_utc()
    meta["sessions"][-1]["load_average_end"] = list(os.getloadavg())
    meta["status"] = status
    write_atomic(run_dir / "meta.json", json.dumps(meta, indent=1, default=str) + "\n")


def _progress(total: int, enabled: bool) -> Any:
    from tqdm import tqdm

    # Under papermill or CI every refresh becomes an output line: refresh rarely unless told otherwise.
    options = {} if "TQDM_MININTERVAL" in os.environ else {"mininterval": 5.0}
    if not enabled:
        options["disable"] = True
    return tqdm(total=total, unit="config", file=sys.stderr, dynamic_ncols=False, ascii=True, **options)


def run(preset: str = "default", *, results_dir: str | Path = "results", run_id: str | None = None,
        progress: bool = True, **overrides: Any) -> Path:
    """Run (or resume) a sweep; returns ``<results_dir>/<run_id>``. ``overrides`` replace preset fields
    (see :class:`Params`); ``None`` keeps the preset's value."""
    params = make_params(preset, **overrides)
    run_id = run_id or default_run_id()
    run_dir = Path(results_dir) / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    meta = _start_meta(run_dir, run_id, preset, params)  # before any OpenMP work: it starts subprocesses

    tables = {"rows": BlockTable(run_dir / "rows.csv", ROW_COLUMNS),
              "ladder": BlockTable(run_dir / "ladder.csv", LADDER_COLUMNS),
              "training": BlockTable(run_dir / "training.csv", TRAINING_COLUMNS),
              "lineprofile": BlockTable(run_dir / "lineprofile.csv", profiling.PROFILE_COLUMNS)}
    done = {name: table.read() for name, table in tables.items()}
    finished = {name: {row["key"] for row in rows} for name, rows in done.items()}
    # Rows of each measurement already made in this run: a configuration another study shares is copied.
    measured: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for row in done["rows"]:
        if not row["reused_from"]:
            measured.setdefault(Config.from_key(row["key"]).measurement, []).append(row)

    unavailable = Unavailable()
    units = [Unit("rows", c.key, lambda c=c: measure(c, params, unavailable),
                  {"study": c.study, "backend": c.backend, "network": c.network, "batch": c.batch,
                   "threads": c.threads, "stage": ""}, c) for c in plan(params)]
    studies = set(params.studies)
    if "ladder" in studies:
        units += [Unit("ladder", "cpu", lambda: cpu_ladder(params), {"device": "cpu"}),
                  Unit("ladder", "gpu", lambda: gpu_ladder(params), {"device": "gpu"})]
    if "training" in studies:
        units += [Unit("training", backend, lambda b=backend: training_curve(b, params), {"backend": backend})
                  for backend in params.backends]
    if "lineprofile" in studies:
        units += [Unit("lineprofile", backend, lambda b=backend: profiling.profile_backend(
                       b, params.profile_network, params.profile_batch, params.profile_steps, run_dir,
                       seed=params.seed, threads=backend_threads(b, params)), {"backend": backend})
                  for backend in params.backends]
    attempts = Attempts(run_dir / "attempts.log")

    todo = [unit for unit in units if unit.key not in finished[unit.table]]
    status = "interrupted"
    with _progress(len(units), progress) as bar:
        bar.update(len(units) - len(todo))
        try:
            for unit in todo:
                bar.set_postfix_str(unit.key, refresh=False)
                config = unit.config
                if config is not None and config.measurement in measured:
                    rows = [{**row, "study": config.study, "reused_from": row["key"]}
                            for row in measured[config.measurement]]
                else:
                    crashed = attempts.begin(unit)
                    rows = unit.work() if crashed is None else [
                        {**unit.identity, "status": "failed", "reason": crashed, "finished_at": machine.now_utc()}]
                    if config is not None:
                        measured[config.measurement] = [{**row, "key": unit.key} for row in rows]
                tables[unit.table].append(unit.key, rows)
                bar.update()
            status = "complete"
        finally:
            _finish_meta(run_dir, meta, status)
    return run_dir


# --- command line ------------------------------------------------------------------------------------------

def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",") if part)


def _strs(text: str) -> tuple[str, ...]:
    return tuple(part for part in text.split(",") if part)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlpbench.sweep", description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="default", choices=sorted(PRESETS))
    parser.add_argument("--results", default="results", help="directory that holds one folder per run")
    parser.add_argument("--run-id", help="folder name; an existing run with this id is resumed")
    parser.add_argument("--backends", type=_strs, help="comma-separated backend names")
    parser.add_argument("--studies", type=_strs, help=f"comma-separated, from {','.join(STUDIES)}")
    parser.add_argument("--networks", type=_strs, help="stages study, comma-separated name:batch")
    parser.add_argument("--batch-sizes", type=_ints, help="batch study, comma-separated")
    parser.add_argument("--threads", type=_ints, help="thread study, comma-separated counts")
    parser.add_argument("--widths", type=_ints, help="width study, comma-separated")
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--warmup", type=int)
    parser.add_argument("--budget-s", type=float, help="timing seconds per configuration")
    parser.add_argument("--dataset", choices=sorted(TRAINING_NETWORKS))
    parser.add_argument("--seed", type=int)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    run_dir = run(args.preset, results_dir=args.results, run_id=args.run_id, progress=not args.no_progress,
                  backends=args.backends, studies=args.studies, networks=args.networks,
                  batch_sizes=args.batch_sizes, threads=args.threads, widths=args.widths, repeats=args.repeats,
                  warmup=args.warmup, budget_s=args.budget_s, dataset=args.dataset, seed=args.seed)
    print(run_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
