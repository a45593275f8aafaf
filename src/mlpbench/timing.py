"""Stage-by-stage timing of one model: input checks, transfer, forward, backprop, update, and the whole step.

How a stage is timed:

* the model first runs ``warmup`` untimed steps (both the separate stages and ``train_step``), so first-call
  costs — library initialisation, kernel compilation, CUDA-graph capture, page faults — stay out of the samples;
* inputs rotate over several batches prepared in advance from random data (never zeros), so a large network
  is not timed on an input that sits in cache from the previous repeat;
* every sample is one call of one stage. On a CPU model it is read with :func:`time.perf_counter_ns` around
  the call (after :meth:`Model.synchronize`); on a CUDA model with a pair of CUDA events on the default
  stream, recorded after the device went idle, so the sample is the time from the call until the device
  finished its work;
* ``checks`` is the host-side validation every ``prepare(X, y)`` runs (:func:`mlpbench.checks.check_inputs`),
  timed on the host for every model; ``transfer`` is the host-to-device copy of an already checked batch
  (:func:`mlpbench.backends.transfer.tensor_batch`, the copy every GPU backend's ``prepare`` makes), a stage
  on CUDA models only. Neither is part of ``step``, which takes a prepared batch: a training loop over a data
  set resident on the device pays neither per step;
* ``step`` is ``train_step`` timed on its own, so a backend that fuses the step (one kernel, one CUDA graph) is
  measured as it runs, not as the sum of its stages.

Each stage's samples are summarised by :class:`Stats` (median, quartiles, IQR, number of samples).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TypeVar

import numpy as np

from mlpbench.backends import model_class
from mlpbench.backends.base import Model
from mlpbench.checks import check_inputs
from mlpbench.thread_policy import pinned_threads

K = TypeVar("K")

__all__ = ["EPOCH_STEPS", "STAGES", "CpuClock", "CudaEventClock", "OverBudget", "StageTimes", "Stats", "clock_for",
           "pinned_threads", "probe_step", "stages_for", "thread_option", "time_call", "time_in_turn", "time_stages"]

#: The study's stages, in the order of tables and figures. ``transfer`` exists on CUDA models only;
#: ``epoch_step`` (seconds per step of ``epoch_steps`` steps, by default :data:`EPOCH_STEPS`, in one
#: ``train_steps`` call over batches already where the model computes) on models that run many steps per launch
#: (``fuses_steps``) only.
STAGES = ("checks", "transfer", "forward", "backprop", "update", "step", "epoch_step")
#: Steps of one ``epoch_step`` sample: an epoch of the original benchmark (1000 samples at batch 32).
EPOCH_STEPS = 32


@dataclass(frozen=True)
class Stats:
    """Summary of one stage's samples, in seconds. Quartiles use linear interpolation (NumPy's default)."""

    n: int
    median: float
    q1: float
    q3: float
    min: float
    mean: float

    @property
    def iqr(self) -> float:
        return self.q3 - self.q1

    @classmethod
    def from_ns(cls, samples_ns: Sequence[int]) -> Stats:
        if len(samples_ns) == 0:
            raise ValueError("no samples to summarise")
        seconds = np.asarray(samples_ns, dtype=np.float64) * 1e-9
        q1, median, q3 = np.percentile(seconds, [25, 50, 75])
        return cls(n=len(seconds), median=float(median), q1=float(q1), q3=float(q3),
                   min=float(seconds.min()), mean=float(seconds.mean()))

    def as_dict(self) -> dict[str, float]:
        return {**asdict(self), "iqr": self.iqr}


class CpuClock:
    """Host wall-clock samples: ``now()`` (default :func:`time.perf_counter_ns`) read around the call, after
    ``sync()`` so no earlier queued work is billed to it. Tests pass a fake ``now``."""

    def __init__(self, sync: Callable[[], None] = lambda: None,
                 now: Callable[[], int] = time.perf_counter_ns) -> None:
        self.sync = sync
        self.now = now

    def measure(self, fn: Callable[[], object]) -> int:
        self.sync()
        start = self.now()
        fn()
        self.sync()
        return self.now() - start


class CudaEventClock:
    """Device-timeline samples from two CUDA events on the default stream.

    PyTorch's default stream is the legacy stream 0 that PyCUDA launches on too, so the events bracket the
    work of every GPU backend. The device is drained first, so the start event fires when the call begins and
    the sample includes the host's time to queue the call's work (its launch cost). With ``device_only`` the
    device is kept busy by a spin kernel while the host queues the start event, the call's work and the end
    event, so the sample holds the device's time for that work alone; the spin is lengthened, and the call made
    again, until the host's queueing fits inside it.
    """

    def __init__(self, device_only: bool = False) -> None:
        import torch

        self._torch = torch
        self._start = torch.cuda.Event(enable_timing=True)
        self._end = torch.cuda.Event(enable_timing=True)
        self._queued = torch.cuda.Event(enable_timing=True)
        self._spin_cycles = 1 << 20 if device_only else 0

    def measure(self, fn: Callable[[], object]) -> int:
        self._torch.cuda.synchronize()
        for _ in range(12):
            host_start = time.perf_counter_ns()
            if self._spin_cycles:
                self._queued.record()
                self._torch.cuda._sleep(self._spin_cycles)
            self._start.record()
            fn()
            self._end.record()
            host_ns = time.perf_counter_ns() - host_start
            self._end.synchronize()
            # device_only: a sample only where everything was queued before the spin ended
            if not self._spin_cycles or host_ns < self._queued.elapsed_time(self._start) * 1e6:
                return round(self._start.elapsed_time(self._end) * 1e6)  # milliseconds -> nanoseconds
            self._spin_cycles *= 2
        raise RuntimeError(f"the host took {host_ns / 1e6:.1f} ms to queue the call: no device-only sample")


def clock_for(model: Model) -> CpuClock | CudaEventClock:
    """CUDA events for models whose stages run on the GPU, the host clock otherwise."""
    if model.device == "cuda":
        return CudaEventClock()
    return CpuClock(sync=model.synchronize)


class OverBudget(RuntimeError):
    """Timing a configuration would take longer than its budget; says how long one pass took."""


@dataclass(frozen=True)
class StageTimes:
    """What :func:`time_stages` measured: one :class:`Stats` per stage and the loss after the last step."""

    stats: dict[str, Stats]
    loss_after: float
    repeats: int


def _device_copy(model: Model) -> Callable[[np.ndarray, np.ndarray | None], object]:
    """The host-to-device copy of a checked batch that a CUDA model's ``prepare`` makes."""
    import torch

    from mlpbench.backends.transfer import tensor_batch

    device = torch.device("cuda", torch.cuda.current_device())
    return lambda X, T: tensor_batch(model.network, X, T, device)


def stages_for(model: Model) -> tuple[str, ...]:
    """The stages timed on ``model``: :data:`STAGES`, without ``transfer`` on CPU models and without
    ``epoch_step`` on models whose ``train_steps`` is one call per step."""
    return tuple(stage for stage in STAGES if (stage != "transfer" or model.device == "cuda")
                 and (stage != "epoch_step" or model.fuses_steps))


def time_stages(model: Model, inputs: Sequence[tuple[np.ndarray, np.ndarray]], *, lr: float,
                weight_decay: float = 0.0, repeats: int = 20, warmup: int = 3, min_repeats: int = 3,
                budget_s: float | None = None, epoch_steps: int = EPOCH_STEPS,
                clock: CpuClock | CudaEventClock | None = None) -> StageTimes:
    """Time every stage of ``model`` on host batches ``inputs`` (cycled in order, one per repeat); the
    ``epoch_step`` stage as one ``train_steps`` call of ``epoch_steps`` steps over the batches cycled.

    ``repeats`` samples are taken per stage, fewer when ``budget_s`` is set and the warm-up shows that
    ``repeats`` would not fit in it; if not even ``min_repeats`` fit, :class:`OverBudget` is raised before
    any is taken. The weights keep training during the run, so pass a small ``lr``; the returned
    ``loss_after`` tells whether they stayed finite.
    """
    if repeats < 1 or warmup < 0 or min_repeats < 1 or epoch_steps < 1:
        raise ValueError(f"need repeats >= 1, warmup >= 0, min_repeats >= 1, epoch_steps >= 1; got {repeats}, "
                         f"{warmup}, {min_repeats}, {epoch_steps}")
    if not inputs:
        raise ValueError("need at least one input batch")
    clock = clock_for(model) if clock is None else clock
    host_clock = clock if isinstance(clock, CpuClock) else CpuClock()  # the checks run on the host
    stages = stages_for(model)
    batches = [model.prepare(X, y) for X, y in inputs]
    checked = [check_inputs(model.network, X, y) for X, y in inputs]
    copy_to_device = _device_copy(model) if "transfer" in stages else None
    epoch = None
    if "epoch_step" in stages:  # the batches cycled to epoch_steps steps, copied where the model computes once
        rows = [inputs[index % len(inputs)] for index in range(epoch_steps)]
        epoch = model.prepare(np.concatenate([X for X, _ in rows]), np.concatenate([y for _, y in rows]))

    def one_pass(index: int) -> dict[str, int]:
        """One sample of every stage, on the batch that ``index`` selects."""
        X, y = inputs[index % len(inputs)]
        X_checked, T_checked = checked[index % len(checked)]
        batch = batches[index % len(batches)]
        sample = {"checks": host_clock.measure(lambda: check_inputs(model.network, X, y))}
        if copy_to_device is not None:
            sample["transfer"] = clock.measure(lambda: copy_to_device(X_checked, T_checked))
        sample["forward"] = clock.measure(lambda: model.forward(batch))
        sample["backprop"] = clock.measure(lambda: model.backprop(batch))
        sample["update"] = clock.measure(lambda: model.update(lr, weight_decay))
        sample["step"] = clock.measure(lambda: model.train_step(batch, lr, weight_decay))
        if epoch is not None:  # the whole call: divided by its steps once the samples are summarised
            sample["epoch_step"] = clock.measure(lambda: model.train_steps(epoch, batch.size, lr, weight_decay))
        return sample

    last = None
    for index in range(warmup):
        last = one_pass(index)
    if budget_s is not None and last is not None:
        per_pass = sum(last.values()) * 1e-9
        if min_repeats * per_pass > budget_s:
            raise OverBudget(f"over budget: one timed pass (every stage, then the whole step) took "
                             f"{per_pass:.3g} s; {min_repeats} repeats exceed budget_s {budget_s:g} s")
        if per_pass > 0:
            repeats = min(repeats, int(budget_s / per_pass))
    samples: dict[str, list[float]] = {stage: [] for stage in stages}
    for index in range(repeats):
        for stage, ns in one_pass(warmup + index).items():
            samples[stage].append(ns)
    if "epoch_step" in samples:
        samples["epoch_step"] = [ns / epoch_steps for ns in samples["epoch_step"]]
    model.synchronize()
    return StageTimes({stage: Stats.from_ns(samples[stage]) for stage in stages}, model.loss(), repeats)


def probe_step(model: Model, X: np.ndarray, y: np.ndarray, *, lr: float, weight_decay: float = 0.0,
               clock: CpuClock | CudaEventClock | None = None) -> float:
    """Seconds of one ``train_step`` on ``(X, y)``: the faster of two, after an untimed one that absorbs
    first-call costs (one sample alone is at the mercy of whatever else the machine runs)."""
    clock = clock_for(model) if clock is None else clock
    batch = model.prepare(X, y)
    model.train_step(batch, lr, weight_decay)
    return min(clock.measure(lambda: model.train_step(batch, lr, weight_decay)) for _ in range(2)) * 1e-9


def time_call(fn: Callable[[], object], *, repeats: int, warmup: int = 1,
              clock: CpuClock | CudaEventClock | None = None) -> Stats:
    """Time a single callable (a matrix product of the kernel ladder): ``warmup`` untimed calls, then
    ``repeats`` samples."""
    clock = CpuClock() if clock is None else clock
    for _ in range(warmup):
        fn()
    return Stats.from_ns([clock.measure(fn) for _ in range(repeats)])


def time_in_turn(calls: Mapping[K, Callable[[], object]], *, repeats: int, warmup: int = 1, settle_s: float = 0.0,
                 clock: CpuClock | CudaEventClock | None = None) -> dict[K, Stats | Exception]:
    """Time several callables against each other in ``repeats`` rounds; each round gives every callable a
    turn (A B C A B C ...): a pause of ``settle_s``, ``warmup`` untimed calls, then one sample. Whatever else
    the machine runs meanwhile reaches every callable alike instead of the one that happened to run then. The
    pause is for thread pools of different runtimes: the one the previous callable used spins on for a while
    after it returns (OpenBLAS's about 0.1 s) and would take the cores from the next callable's threads. A
    callable that raises gets its exception in place of its :class:`Stats` and is not called again; the
    others go on."""
    clock = CpuClock() if clock is None else clock
    samples: dict[K, list[int]] = {key: [] for key in calls}
    failed: dict[K, Exception] = {}
    for _ in range(repeats):
        for key, fn in calls.items():
            if key in failed:
                continue
            if settle_s:
                time.sleep(settle_s)
            try:
                for _ in range(warmup):
                    fn()
                samples[key].append(clock.measure(fn))
            except Exception as error:  # recorded for that callable; the rest are still timed
                failed[key] = error
    return {key: failed[key] if key in failed else Stats.from_ns(samples[key]) for key in calls}


def thread_option(backend: str, threads: int | None) -> dict[str, int]:
    """The ``threads`` option for backends that take one, nothing for the others."""
    return {"threads": threads} if threads is not None and model_class(backend).threaded else {}
