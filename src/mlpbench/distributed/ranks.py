"""The program every rank runs (``torchrun ... -m mlpbench.distributed``): data-parallel SGD, timed stage by stage.

Every rank builds the same seeded network on its backend, takes its shard of every global batch, runs forward
and backprop on it, averages the gradient buffer over all ranks, and updates. Two rungs:

``after-backprop``  one all-reduce of the whole gradient buffer after backprop;
``overlapped``      each layer's slice of the buffer all-reduced asynchronously as soon as backprop has produced
                    it (as PyTorch DDP does with its buckets); all handles are waited for before the update.

Timing: each pass times forward, backprop, allreduce and update one by one, each after a barrier (so a stage's
time is not another rank's lag), then the whole step on its own. Host clock on CPU ranks, CUDA events on GPU
ranks. In the ``overlapped`` rung there is no barrier between backprop and allreduce, and ``allreduce`` is the
time spent waiting for the handles after backprop returned: the communication backprop did not hide. Each
stage's median and quartiles are those of the slowest rank (maximum over ranks). ``bytes`` is the size of the
gradient buffer; ``algbw = bytes / time`` and ``busbw = algbw * 2 (n - 1) / n`` as nccl-tests define them.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime as dt
import itertools
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch
import torch.distributed as dist

from mlpbench import data, machine
from mlpbench.backends import Model, load
from mlpbench.backends.base import BackendUnavailable, layer_spans
from mlpbench.distributed.config import (
    ALLREDUCE_COLUMNS,
    NVLINK_MULTICAST_OFF,
    RANKS_COLUMNS,
    RUNGS,
    SCALINGS,
    STAGES,
    RankConfig,
    model_options,
    validate,
)
from mlpbench.network import Network
from mlpbench.timing import Stats, pinned_threads
from mlpbench.verify import relative_error

#: Distinct global batches the timed passes rotate over (the check steps use their own).
ROTATE_BATCHES = 4
FAULT_KINDS = ("raise", "exit", "bad-input")


# --- data --------------------------------------------------------------------------------------------------

def global_batches(network: Network, global_batch: int, count: int, seed: int) -> list[tuple[np.ndarray, Any]]:
    """``count`` seeded global batches ``(X, y)``, identical on every rank and in the single-process reference."""
    dataset = data.synthetic(network, count * global_batch, seed)
    return [(dataset.X_train[i * global_batch:(i + 1) * global_batch],
             dataset.y_train[i * global_batch:(i + 1) * global_batch]) for i in range(count)]


def shard(X: np.ndarray, y: Any, rank: int, world_size: int) -> tuple[np.ndarray, Any]:
    """Rank ``rank``'s equal share of a global batch (contiguous copies)."""
    rows = X.shape[0] // world_size
    part = slice(rank * rows, (rank + 1) * rows)
    return np.ascontiguousarray(X[part]), np.ascontiguousarray(y[part])


# --- the data-parallel step ---------------------------------------------------------------------------------

class DataParallel:
    """Forward, backprop, gradient average and update of one rank's model in an initialised process group."""

    def __init__(self, model: Model, rung: str) -> None:
        if rung not in RUNGS:
            raise ValueError(f"rung: expected one of {', '.join(RUNGS)}, got {rung!r}")
        self.model = model
        self.rung = rung
        self.buffer = model.gradient_buffer()
        self.world_size = dist.get_world_size()
        self._spans = layer_spans(model.network)
        self._handles: list[Any] = []

    @property
    def bytes(self) -> int:
        return self.buffer.numel() * self.buffer.element_size()

    def forward(self, batch: Any) -> None:
        self.model.forward(batch)

    def backprop(self, batch: Any) -> None:
        if self.rung == "after-backprop":
            self.model.backprop(batch)
        else:
            self._handles = []
            self.model.backprop_by_layer(batch, self._start_layer)

    def _start_layer(self, layer: int) -> None:
        start, stop = self._spans[layer - 1]
        self._handles.append(dist.all_reduce(self.buffer[start:stop], async_op=True))

    def allreduce(self) -> None:
        """Sum the gradient buffer over the ranks (or wait for the per-layer sums) and divide by their number."""
        if self.rung == "after-backprop":
            dist.all_reduce(self.buffer)
        else:
            if len(self._handles) != self.model.network.n_layers:
                raise RuntimeError(f"{len(self._handles)} layer all-reduces started, expected "
                                   f"{self.model.network.n_layers}: backprop_by_layer missed a layer")
            for handle in self._handles:
                handle.wait()
            self._handles = []
        self.buffer.div_(self.world_size)

    def update(self, lr: float) -> None:
        self.model.update(lr)

    def step(self, batch: Any, lr: float) -> None:
        self.forward(batch)
        self.backprop(batch)
        self.allreduce()
        self.update(lr)


def flat_params(model: Model, device: torch.device) -> torch.Tensor:
    """The model's parameters as one float64 tensor (host copies; float64 holds the reference exactly)."""
    pieces = [np.asarray(array, dtype=np.float64).ravel() for pair in model.params() for array in pair]
    return torch.from_numpy(np.concatenate(pieces)).to(device)


def check_identical_params(model: Model, device: torch.device) -> None:
    """Raise on every rank unless every rank starts from rank 0's parameters, bit for bit."""
    mine = flat_params(model, device)
    first = mine.clone()
    dist.broadcast(first, src=0)
    differs = torch.tensor([0.0 if torch.equal(mine, first) else 1.0], dtype=torch.float64, device=device)
    dist.all_reduce(differs, op=dist.ReduceOp.MAX)
    if differs.item():
        raise RuntimeError("the ranks start from different parameters (the seeded initialisation differs)")


# --- clocks -------------------------------------------------------------------------------------------------

class SplitClock:
    """Times consecutive calls with no synchronisation between them: ``measure(f, g)`` gives the time of ``f``
    and of ``g`` after ``f`` returned. Host clock on CPU; on GPU, CUDA events on the current stream after the
    device drained, so each time runs until the device finished that call's work."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def measure(self, *calls: Callable[[], object]) -> list[int]:
        if not self.cuda:
            stamps = [time.perf_counter_ns()]
            for call in calls:
                call()
                stamps.append(time.perf_counter_ns())
            return [end - start for start, end in itertools.pairwise(stamps)]
        torch.cuda.synchronize()
        events = [torch.cuda.Event(enable_timing=True) for _ in range(len(calls) + 1)]
        events[0].record()
        for call, event in zip(calls, events[1:], strict=True):
            call()
            event.record()
        events[-1].synchronize()
        return [round(start.elapsed_time(end) * 1e6) for start, end in itertools.pairwise(events)]


def barrier(device: torch.device) -> None:
    if device.type == "cuda":
        dist.barrier(device_ids=[device.index])
    else:
        dist.barrier()


def slowest(stats: dict[str, Stats], device: torch.device) -> dict[str, tuple[float, float, float]]:
    """``(median, q1, q3)`` of every stage, each the maximum over the ranks."""
    names = list(stats)
    local = torch.tensor([[stats[n].median, stats[n].q1, stats[n].q3] for n in names], dtype=torch.float64,
                         device=device)
    dist.all_reduce(local, op=dist.ReduceOp.MAX)
    return {name: tuple(float(v) for v in row) for name, row in zip(names, local.cpu().tolist(), strict=True)}


def bandwidths(nbytes: int, seconds: float, world_size: int) -> dict[str, float]:
    """nccl-tests' all-reduce bandwidths in GB/s: ``algbw = bytes / time``, ``busbw = algbw * 2 (n - 1) / n``."""
    algbw = nbytes / seconds / 1e9 if seconds > 0 else float("nan")
    return {"bytes": nbytes, "algbw_gbps": algbw, "busbw_gbps": algbw * 2 * (world_size - 1) / world_size}


# --- failure injection ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Fault:
    """A failure made on purpose on one rank at one training step, to check that every rank stops:
    ``raise`` an exception between forward and backprop, ``exit`` (the process is killed by SIGKILL), or
    ``bad-input`` (a NaN in that rank's shard, which the backend's input check rejects)."""

    rank: int
    step: int
    kind: str

    @classmethod
    def parse(cls, text: str) -> Fault:
        parts = text.split(":")
        if len(parts) != 3 or not parts[0].isdigit() or not parts[1].isdigit() or parts[2] not in FAULT_KINDS:
            raise ValueError(f"fault {text!r}: expected RANK:STEP:KIND with KIND one of {', '.join(FAULT_KINDS)}")
        return cls(int(parts[0]), int(parts[1]), parts[2])


class Steps:
    """Counts this rank's training steps (check steps, then warm-up and timed passes) and makes the injected
    fault, if any, happen at its step."""

    def __init__(self, rank: int, fault: Fault | None) -> None:
        self.rank, self.fault, self.count = rank, fault, 0

    def start(self, model: Model, X: np.ndarray, y: Any) -> None:
        """The next step begins on the host shard ``(X, y)``; the bad-input fault sends it through the
        backend's input check with a NaN in it."""
        self.count += 1
        if self._fires("bad-input"):
            X = X.copy()
            X[0, 0] = np.nan
            model.prepare(X, y)

    def between_stages(self) -> None:
        if self._fires("raise"):
            raise RuntimeError(f"fault injected on rank {self.rank} at step {self.count}")
        if self._fires("exit"):
            os.kill(os.getpid(), signal.SIGKILL)

    def _fires(self, kind: str) -> bool:
        fault = self.fault
        return fault is not None and (fault.rank, fault.step, fault.kind) == (self.rank, self.count, kind)


# --- one rank's run -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RankEnv:
    """What ``torchrun`` tells each rank through its environment."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int

    @classmethod
    def from_environ(cls) -> RankEnv:
        missing = [n for n in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if n not in os.environ]
        if missing:
            raise ValueError(f"not started by torchrun: {', '.join(missing)} not set (run `torchrun "
                             f"--nproc-per-node N -m mlpbench.distributed ...`)")
        world_size = int(os.environ["WORLD_SIZE"])
        return cls(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")),
                   int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size))))


def build_model(config: RankConfig, batch: int) -> Model:
    return load(config.backend, config.resolved_network(), seed=config.seed, **model_options(config, batch))


def init_process_group(config: RankConfig, env: RankEnv) -> torch.device:
    """Join the process group (after :func:`validate`); returns this rank's device."""
    os.environ.update(NVLINK_MULTICAST_OFF)
    timeout = dt.timedelta(seconds=config.timeout_s)
    if config.pg_backend == "nccl":
        device = torch.device("cuda", env.local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", timeout=timeout, device_id=device)
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo", timeout=timeout)
    return device


def time_passes(trainer: DataParallel, shards: Sequence[tuple[np.ndarray, Any]], config: RankConfig,
                device: torch.device, steps: Steps) -> dict[str, Stats]:
    """``warmup`` untimed and ``steps`` timed passes over this rank's ``shards`` (prepared before timing)."""
    clock = SplitClock(device)
    samples: dict[str, list[int]] = {stage: [] for stage in STAGES}
    lr = config.lr
    batches = [trainer.model.prepare(X, y) for X, y in shards]
    for index in range(config.warmup + config.steps):
        batch = batches[index % len(batches)]
        steps.start(trainer.model, *shards[index % len(shards)])
        sample: dict[str, int] = {}
        barrier(device)
        sample["forward"], = clock.measure(lambda batch=batch: trainer.forward(batch))
        steps.between_stages()
        barrier(device)
        if trainer.rung == "after-backprop":
            sample["backprop"], = clock.measure(lambda batch=batch: trainer.backprop(batch))
            barrier(device)
            sample["allreduce"], = clock.measure(trainer.allreduce)
        else:
            sample["backprop"], sample["allreduce"] = clock.measure(lambda batch=batch: trainer.backprop(batch),
                                                                    trainer.allreduce)
        barrier(device)
        sample["update"], = clock.measure(lambda: trainer.update(lr))
        barrier(device)
        sample["step"], = clock.measure(lambda batch=batch: trainer.step(batch, lr))
        if index >= config.warmup:
            for stage, ns in sample.items():
                samples[stage].append(ns)
    return {stage: Stats.from_ns(ns) for stage, ns in samples.items()}


def benchmark_allreduce(config: RankConfig, device: torch.device, sizes: Sequence[int]) -> list[dict[str, Any]]:
    """The ceiling: a plain all-reduce of float32 tensors of each size in bytes (slowest rank's median), and on
    CPU the memory-copy bandwidth of rank 0 at the same sizes (``pg_backend`` ``memcpy``; ``algbw`` = bytes
    copied / time) while the other ranks wait."""
    world_size = dist.get_world_size()
    clock = SplitClock(device)
    rows = []
    for nbytes in sizes:
        tensor = torch.empty(nbytes // 4, dtype=torch.float32, device=device)
        samples = []
        for index in range(2 + config.allreduce_repeats):
            tensor.fill_(1.0)  # repeated sums would grow without bound
            barrier(device)
            ns, = clock.measure(lambda tensor=tensor: dist.all_reduce(tensor))
            if index >= 2:
                samples.append(ns)
        median = slowest({"allreduce": Stats.from_ns(samples)}, device)["allreduce"][0]
        rows.append({"device": device.type, "pg_backend": config.pg_backend, "world_size": world_size,
                     "repeats": config.allreduce_repeats, "median_s": median,
                     **bandwidths(tensor.numel() * 4, median, world_size)})
        if device.type == "cpu":
            barrier(device)
            if dist.get_rank() == 0:
                target = torch.empty_like(tensor)
                copy = Stats.from_ns([clock.measure(lambda t=tensor, d=target: d.copy_(t))[0]
                                      for _ in range(2 + config.allreduce_repeats)][2:])
                rows.append({"device": "cpu", "pg_backend": "memcpy", "world_size": world_size,
                             "repeats": config.allreduce_repeats, "median_s": copy.median,
                             "bytes": tensor.numel() * 4, "algbw_gbps": tensor.numel() * 4 / copy.median / 1e9})
            barrier(device)
    return [{**row, "status": "ok", "reason": ""} for row in rows]


def reference_error(config: RankConfig, checked: list[tuple[np.ndarray, np.ndarray]]) -> float:
    """Largest relative error, over every weight and bias tensor, of the data-parallel parameters after the
    check steps against one process training the same backend on the global batches."""
    network = config.resolved_network()
    model = build_model(config, config.global_batch)
    for X, y in global_batches(network, config.global_batch, config.check_steps, config.seed):
        model.step(X, y, config.lr)
    return max(relative_error(mine, ref) for pair, ref_pair in zip(checked, model.params(), strict=True)
               for mine, ref in zip(pair, ref_pair, strict=True))


def run(config: RankConfig, env: RankEnv, out_dir: Path | None, fault: Fault | None = None) -> dict[str, Any]:
    """One rank's whole run; rank 0 appends the rows and returns the slowest-rank stage times."""
    load_before = os.getloadavg()[0]
    device = init_process_group(config, env)
    network = config.resolved_network()
    steps = Steps(env.rank, fault)
    with pinned_threads(config.threads):
        model = build_model(config, config.batch_per_rank)
        check_identical_params(model, device)
        trainer = DataParallel(model, config.rung)
        for X, y in global_batches(network, config.global_batch, config.check_steps, config.seed):
            X, y = shard(X, y, env.rank, env.world_size)
            steps.start(model, X, y)
            batch = model.prepare(X, y)
            trainer.forward(batch)
            steps.between_stages()
            trainer.backprop(batch)
            trainer.allreduce()
            trainer.update(config.lr)
        checked = model.params()
        timed = [shard(X, y, env.rank, env.world_size)
                 for X, y in global_batches(network, config.global_batch, ROTATE_BATCHES, config.seed + 1)]
        times = slowest(time_passes(trainer, timed, config, device, steps), device)
        # The gradient buffer's own size among them: its all-reduce against a plain one of the same bytes.
        sizes = sorted({*config.allreduce_sizes, trainer.bytes}) if config.allreduce_sizes else ()
        ceiling = benchmark_allreduce(config, device, sizes)
        barrier(device)
        dist.destroy_process_group()
        if env.rank != 0:
            return {}
        err_params = reference_error(config, checked) if config.check_steps else ""
    overlap_note = ""
    if config.rung == "overlapped" and not type(model).overlaps_backprop:
        overlap_note = (f"{config.backend} computes every gradient before reporting a layer: the all-reduces "
                        f"cannot overlap backprop")
    base = {"backend": config.backend, "device": device.type, "network": config.network, "sizes": network.name,
            "scaling": config.scaling, "world_size": env.world_size, "pg_backend": config.pg_backend,
            "rung": config.rung, "round": config.round, "threads_per_rank": getattr(model, "threads", config.threads),
            "batch_per_rank": config.batch_per_rank, "global_batch": config.global_batch, "status": "ok",
            "reason": overlap_note, "repeats": config.steps, "err_params": err_params,
            "load_before": load_before, "load_after": os.getloadavg()[0], "finished_at": machine.now_utc()}
    rows = []
    for stage in STAGES:
        median, q1, q3 = times[stage]
        row = {**base, "stage": stage, "median_s": median, "q1_s": q1, "q3_s": q3}
        if stage == "allreduce":
            row.update(bandwidths(trainer.bytes, median, env.world_size))
        rows.append(row)
    print_summary(config, rows)
    if out_dir is not None:
        write_rows(out_dir, config, rows, ceiling)
    return {row["stage"]: row for row in rows}


def write_rows(out_dir: Path, config: RankConfig, rows: list[dict[str, Any]],
               ceiling: list[dict[str, Any]]) -> None:
    from mlpbench.sweep import BlockTable

    out_dir.mkdir(parents=True, exist_ok=True)
    finished = machine.now_utc()
    if ceiling:
        table = BlockTable(out_dir / "allreduce.csv", ALLREDUCE_COLUMNS)
        table.read()
        table.append(config.key + "|allreduce", [{**row, "finished_at": finished} for row in ceiling])
    table = BlockTable(out_dir / "ranks.csv", RANKS_COLUMNS)
    table.read()
    table.append(config.key, rows)


def print_summary(config: RankConfig, rows: list[dict[str, Any]]) -> None:
    print(f"{config.backend} {config.network} on {config.world_size} ranks ({config.pg_backend}, {config.rung}), "
          f"global batch {config.global_batch}, {config.threads} threads per rank; err_params "
          f"{rows[0]['err_params']}")
    for row in rows:
        extra = (f"  {row['bytes']} B  algbw {row['algbw_gbps']:.3g} GB/s  busbw {row['busbw_gbps']:.3g} GB/s"
                 if row["stage"] == "allreduce" else "")
        print(f"  {row['stage']:<10} median {row['median_s'] * 1e6:10.1f} us  "
              f"q1 {row['q1_s'] * 1e6:10.1f}  q3 {row['q3_s'] * 1e6:10.1f}{extra}")
    if rows[0]["reason"]:
        print(f"  note: {rows[0]['reason']}")
    sys.stdout.flush()


# --- command line ---------------------------------------------------------------------------------------------

def _sizes(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",") if part)


def parser() -> argparse.ArgumentParser:
    defaults = RankConfig("numpy", "digits", 1, 1)
    p = argparse.ArgumentParser(prog="torchrun --nproc-per-node N -m mlpbench.distributed",
                                description="Data-parallel SGD of one network on every rank; prints per-stage "
                                            "medians (slowest rank) and appends rows to OUT/ranks.csv and "
                                            "OUT/allreduce.csv.")
    p.add_argument("--network", required=True, help="preset name or sizes such as 64-128-10")
    p.add_argument("--backend", required=True, help="backend every rank computes with")
    p.add_argument("--threads", type=int, default=defaults.threads, help="threads per rank")
    p.add_argument("--global-batch", type=int, required=True, help="samples per step over all ranks")
    p.add_argument("--steps", type=int, default=defaults.steps, help="timed passes")
    p.add_argument("--warmup", type=int, default=defaults.warmup, help="untimed passes first")
    p.add_argument("--check-steps", type=int, default=defaults.check_steps,
                   help="steps compared with one process on the global batch (err_params); 0: not compared")
    p.add_argument("--rung", choices=RUNGS, default=defaults.rung)
    p.add_argument("--scaling", choices=SCALINGS, default=defaults.scaling,
                   help="recorded with the rows: how the caller chose the global batch")
    p.add_argument("--lr", type=float, default=defaults.lr)
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--timeout-s", type=float, default=defaults.timeout_s,
                   help="process-group timeout: the longest any rank waits for the others")
    p.add_argument("--force", action="store_true", help="allow more threads x ranks than cores")
    p.add_argument("--allreduce-sizes", type=_sizes, default=defaults.allreduce_sizes,
                   help="bytes of the plain all-reduce benchmark, comma-separated (the gradient buffer's "
                        "size is added); empty: none")
    p.add_argument("--allreduce-repeats", type=int, default=defaults.allreduce_repeats)
    p.add_argument("--round", type=int, default=defaults.round,
                   help="which launch of this configuration it is, where a sweep launches each several times "
                        "(recorded with the rows)")
    p.add_argument("--out", type=Path, help="results folder (rank 0 appends ranks.csv and allreduce.csv)")
    p.add_argument("--inject-fault", type=Fault.parse, metavar="RANK:STEP:KIND",
                   help=f"make one rank fail at one step ({', '.join(FAULT_KINDS)}) to check that all stop")
    return p


def config_from(args: argparse.Namespace, world_size: int) -> RankConfig:
    return RankConfig(backend=args.backend, network=args.network, world_size=world_size,
                      global_batch=args.global_batch, threads=args.threads, steps=args.steps, warmup=args.warmup,
                      check_steps=args.check_steps, rung=args.rung, scaling=args.scaling, lr=args.lr,
                      seed=args.seed, timeout_s=args.timeout_s, force=args.force,
                      allreduce_sizes=args.allreduce_sizes, allreduce_repeats=args.allreduce_repeats,
                      round=args.round)


def fail(rank: int | str, error: BaseException, code: int) -> NoReturn:
    """Say which rank failed and why, then leave at once: a clean shutdown could wait on the other ranks."""
    traceback.print_exception(error, file=sys.stderr)
    print(f"mlpbench.distributed: rank {rank} failed: {type(error).__name__}: {error}", file=sys.stderr)
    leave(code)


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def end_with_the_launcher() -> None:
    """Ask the kernel to kill this rank when the process that started it (torchrun) ends. torchrun starts each
    rank in a session of its own, so a launcher that ends torchrun's session on a timeout does not reach a rank
    that torchrun had not yet registered: that rank then lived on, holding the launcher's output pipe open, until
    its own timeout. Linux only (``prctl(PR_SET_PDEATHSIG)``); elsewhere nothing changes."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:  # the launcher ended before the request took effect
        leave(1)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    end_with_the_launcher()
    args = parser().parse_args(argv)
    rank: int | str = os.environ.get("RANK", "?")
    try:
        env = RankEnv.from_environ()
        rank = env.rank
        config = validate(config_from(args, env.world_size), env.local_world_size)
    except (ValueError, TypeError, BackendUnavailable) as error:
        fail(rank, error, 2)
    try:
        run(config, env, args.out, args.inject_fault)
    except BaseException as error:  # every failure must end this rank, named
        fail(rank, error, 1)
    leave(0)


def leave(code: int) -> NoReturn:
    """End the process without the interpreter's teardown, where PyTorch occasionally aborts
    (``terminate called without an active exception``) after a process group was used, when all work is done."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
