"""``torch-gpu-compile``: the network and its loss compiled by ``torch.compile`` (Inductor,
``mode="max-autotune-no-cudagraphs"``, IEEE float32: no TF32), the whole training step (forward, loss,
backward, ``SGD.step()``) replayed from one CUDA graph as in ``torch-gpu-graph``. It is what a PyTorch user
tuning a small network reaches for first, so it is the strongest PyTorch baseline of the GPU ladder.

Compilation is specialised to the batch size (``dynamic=False``) and happens at the first forward of each
batch size (with and without labels), outside every timed region. That first use compiles the forward and
the backward in a worker thread and waits at most ``compile_budget_s`` seconds for it; past the budget the
model raises :class:`~mlpbench.backends.base.BackendUnavailable` with the reason (now and on every later
call) instead of hanging the caller. A compile that ran out of its budget cannot be stopped from Python: its
thread finishes in the background (it reads the parameters and writes nothing the model uses), and the
process waits for it at exit. The seconds spent compiling are in :attr:`TorchGPUCompileModel.compile_seconds`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from mlpbench.backends.base import BackendUnavailable, Batch, Params
from mlpbench.backends.torch_nn import _ACTIVATIONS, TorchGPUGraphModel, pin_ieee_float32
from mlpbench.network import Network

DEFAULT_MODE = "max-autotune-no-cudagraphs"
#: torch.compile modes that leave CUDA graphs to the caller (this backend captures the whole step itself).
MODES = ("max-autotune-no-cudagraphs", "default")
DEFAULT_COMPILE_BUDGET_S = 300.0
#: Compiled variants of the one network function allowed per process (dynamo's default of 8 would make
#: later networks and batch sizes run uncompiled without a word; past this limit loading raises instead).
RECOMPILE_LIMIT = 512


def network_loss(X: torch.Tensor, T: torch.Tensor | None, weights: list[torch.Tensor],
                 biases: list[torch.Tensor], activation: str,
                 loss: str) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor | None]:
    """Hidden activations, output logits and (with targets) the mean loss: the function ``torch.compile``
    compiles, written as ``torch-gpu`` writes the network."""
    a = X
    hidden = []
    last = len(weights) - 1
    for index, (w, b) in enumerate(zip(weights, biases, strict=True)):
        z = F.linear(a, w, b)
        if index < last:
            a = _ACTIVATIONS[activation](z)
            hidden.append(a)
    if T is None:
        return hidden, z, None
    if loss == "softmax-ce":
        return hidden, z, F.cross_entropy(z, T)
    return hidden, z, F.binary_cross_entropy_with_logits(z, T, reduction="sum") / z.shape[0]


_compiled: dict[str, Callable[..., Any]] = {}
#: Seconds of the first compilation of each program in this process (mode, network, batch size, labelled):
#: later models of the same shapes reuse it, and still report what it cost.
_first_compile_seconds: dict[tuple[str, str, str, str, int, bool], float] = {}


def compiled_network_loss(mode: str) -> Callable[..., Any]:
    """:func:`network_loss` under ``torch.compile`` in ``mode``, one wrapper per mode for the process, so
    models of the same shapes share one compiled program."""
    if mode not in _compiled:
        _compiled[mode] = torch.compile(network_loss, mode=mode, dynamic=False)
    return _compiled[mode]


def run_within_budget(work: Callable[[], None], budget_s: float, what: str) -> float:
    """Run ``work`` in a thread and wait at most ``budget_s`` seconds; returns the seconds it took.

    Raises :class:`BackendUnavailable` naming ``what`` when the budget runs out (the thread is left to finish
    on its own: Python cannot stop it) or when ``work`` raised (the error chained). The thread is not a daemon:
    the interpreter waits for it at exit, where a daemon thread still inside PyTorch would run on into the
    interpreter's shutdown and crash the process."""
    outcome: dict[str, BaseException] = {}

    def target() -> None:
        try:
            work()
        except BaseException as error:  # handed to the caller's thread below
            outcome["error"] = error

    start = time.perf_counter()
    thread = threading.Thread(target=target, name=f"mlpbench {what}")
    thread.start()
    thread.join(budget_s)
    seconds = time.perf_counter() - start
    if thread.is_alive():
        raise BackendUnavailable(f"{what} did not finish within its budget of {budget_s:g} s "
                                 "(option compile_budget_s)")
    if "error" in outcome:
        error = outcome["error"]
        raise BackendUnavailable(f"{what} failed: {type(error).__name__}: {error}") from error
    return seconds


def _check_budget(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"compile_budget_s: expected a number of seconds, got {type(value).__name__}")
    if not value > 0 or value == float("inf"):
        raise ValueError(f"compile_budget_s: must be a finite number of seconds > 0, got {value}")
    return float(value)


class TorchGPUCompileModel(TorchGPUGraphModel):
    """``torch-gpu-compile``: ``torch-gpu-graph`` with the network and loss compiled by ``torch.compile``.

    Options: ``compile_budget_s`` (default 300): the most seconds one compilation (one batch size) may
    take; ``mode`` (default ``"max-autotune-no-cudagraphs"``): the ``torch.compile`` mode (the whole step is
    captured in a CUDA graph by this backend, so modes that make their own graphs are refused).

    :attr:`compile_times` is the wall time of this model's first forward (and backward) of each ``(batch size,
    labelled)``. Models of the same shapes, activation and loss share one compiled program, so for a later
    model that is a first call that compiles nothing; :attr:`compile_seconds` is what compiling its programs
    cost the first time, in whichever model that was.
    """

    name = "torch-gpu-compile"
    compiles_per_shape = True

    def __init__(self, network: Network, params: Params, compile_budget_s: float = DEFAULT_COMPILE_BUDGET_S,
                 mode: str = DEFAULT_MODE) -> None:
        self.compile_budget_s = _check_budget(compile_budget_s)
        if mode not in MODES:
            raise ValueError(f"mode: expected one of {MODES} (this backend captures the whole step in one CUDA "
                             f"graph itself), got {mode!r}")
        self.mode = mode
        super().__init__(network, params)
        pin_ieee_float32()
        self._network_loss = compiled_network_loss(mode)
        self.compile_times: dict[tuple[int, bool], float] = {}
        self._unusable: str | None = None

    @property
    def compile_seconds(self) -> float:
        """Seconds compiling this model's programs took when the process first compiled them (a model whose
        shapes were compiled before reuses that program and reports its first compile time)."""
        return sum(_first_compile_seconds[self._program(*key)] for key in self.compile_times)

    def _program(self, size: int, labelled: bool) -> tuple[str, str, str, str, int, bool]:
        return self.mode, self.network.name, self.network.activation, self.network.loss, size, labelled

    def _call(self, batch: Batch) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor | None]:
        return self._network_loss(batch.X, batch.T, self._weights, self._biases, self.network.activation,
                                  self.network.loss)

    def _ensure_compiled(self, batch: Batch) -> None:
        if self._unusable is not None:
            raise BackendUnavailable(self._unusable)
        key = (batch.size, batch.T is not None)
        if key in self.compile_times:
            return
        parameters = [*self._weights, *self._biases]

        def compile_forward_and_backward() -> None:
            with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT, fail_on_recompile_limit_hit=True):
                _, _, loss = self._call(batch)
                if loss is not None:  # compiles the backward; autograd.grad leaves the parameters' .grad alone
                    torch.autograd.grad(loss, parameters)
            torch.cuda.synchronize()

        what = (f"{self.name}: compiling {self.network.name} for batch {batch.size} "
                f"(torch.compile mode {self.mode})")
        try:
            self.compile_times[key] = run_within_budget(compile_forward_and_backward, self.compile_budget_s, what)
            _first_compile_seconds.setdefault(self._program(*key), self.compile_times[key])
        except BackendUnavailable as error:
            self._unusable = str(error)
            raise

    def forward(self, batch: Batch) -> None:
        self._check_batch(batch)
        self._ensure_compiled(batch)
        hidden, logits, loss = self._call(batch)
        self._hidden, self._logits = [h.detach() for h in hidden], logits.detach()
        self._pending_loss = loss
        self._loss = None if loss is None else loss.detach()
        self._bind(batch)

    def backprop(self, batch: Batch) -> None:
        if self._unusable is not None:
            raise BackendUnavailable(self._unusable)
        super().backprop(batch)

    def update(self, lr: float, weight_decay: float = 0.0) -> None:
        if self._unusable is not None:
            raise BackendUnavailable(self._unusable)
        super().update(lr, weight_decay)

    def train_step(self, batch: Batch, lr: float, weight_decay: float = 0.0) -> None:
        self._check_batch(batch, need_targets=True)
        self._ensure_compiled(batch)  # before the graph capture: nothing may compile while it records
        super().train_step(batch, lr, weight_decay)
