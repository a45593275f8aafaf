"""The interface every backend implements.

A training step is four calls, each timed on its own by the sweep::

    batch = model.prepare(X, y)   # checks the input; copies it to the GPU on GPU backends ("transfer")
    model.forward(batch)          # activations of every layer and the loss
    model.backprop(batch)         # gradients of every weight and bias
    model.update(lr)              # SGD step

``model.train_step(batch, lr)`` runs the last three (fused where a backend can) and ``model.step(X, y, lr)``
all four, returning the loss. Everything a caller reads back
(``loss``, ``output``, ``params``, ``grads``) comes back as host NumPy data, so tests compare any two backends
with the same code.

A backend class also declares what the harness needs to run and time it (``device``, ``family``,
``threaded``, ``fixed_threads``, ``fuses_step``, :meth:`Model.max_threads`), so nothing outside
``backends/`` keeps lists of backend names. The shared input checks live in :mod:`mlpbench.checks` and
:mod:`mlpbench.thread_policy`; they are re-exported here.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from mlpbench.checks import (
    BackendUnavailable,
    Params,
    check_float32_matrix,
    check_inputs,
    check_params,
    check_step_size,
    check_targets,
)
from mlpbench.network import Network
from mlpbench.thread_policy import check_threads, usable_cores

__all__ = ["BackendUnavailable", "Batch", "Model", "Params", "check_float32_matrix",
           "check_inputs", "check_params", "check_step_size", "check_targets", "check_threads",
           "owned_host_batch"]


@dataclass(frozen=True)
class Batch:
    """A checked batch, ready for :meth:`Model.forward`: inputs and one-hot / probability targets.

    ``X`` and ``T`` live where the backend computes (NumPy arrays for CPU backends, device arrays on GPU
    backends). ``T`` is ``None`` for inference-only batches. A batch from :meth:`Model.prepare` owns its data
    (host arrays are read-only copies), so changing the arrays it was made from changes nothing checked.
    """

    X: Any
    T: Any
    size: int
    network: Network

    def rows(self, start: int, stop: int) -> Batch:
        """Rows ``start:stop`` of this batch, already checked and on the same device: no copy, no check of
        the values again. Prepare a whole data set once, then train on ``rows`` of it."""
        for name, value in (("start", start), ("stop", stop)):
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                raise TypeError(f"{name}: expected an integer, got {type(value).__name__}")
        if not 0 <= start < stop <= self.size:
            raise ValueError(f"rows {start}:{stop}: need 0 <= start < stop <= {self.size} (the batch's rows)")
        return dataclasses.replace(self, X=self.X[start:stop], T=None if self.T is None else self.T[start:stop],
                                   size=int(stop - start))

    def take(self, indices: Any) -> Batch:
        """The rows ``indices`` (a 1-D array of row numbers, e.g. an epoch's permutation) gathered into a new
        batch on the same device: a host gather on the CPU, a gather on the GPU for device batches (only the
        indices cross to the device). The values were checked when this batch was prepared."""
        index = np.asarray(indices)
        if index.ndim != 1 or index.size == 0 or not np.issubdtype(index.dtype, np.integer):
            raise ValueError(f"indices: expected a non-empty 1-D integer array, got shape {index.shape} and "
                             f"dtype {index.dtype}")
        if index.min() < 0 or index.max() >= self.size:
            raise ValueError(f"indices: row numbers must lie in [0, {self.size}), got [{index.min()}, "
                             f"{index.max()}]")
        if isinstance(self.X, np.ndarray):
            X, T = self.X[index], None if self.T is None else self.T[index]
            for array in (X, T):
                if array is not None:
                    array.flags.writeable = False
        else:
            import torch

            on_device = torch.from_numpy(index.astype(np.int64)).to(self.X.device)
            X = self.X.index_select(0, on_device)
            T = None if self.T is None else self.T.index_select(0, on_device)
        return dataclasses.replace(self, X=X, T=T, size=int(index.size))


def owned_host_batch(network: Network, X: np.ndarray, T: np.ndarray | None) -> Batch:
    """A host batch holding read-only copies of checked ``X`` and ``T``."""
    X = X.copy()
    X.flags.writeable = False
    if T is not None:
        T = T.copy()
        T.flags.writeable = False
    return Batch(X, T, X.shape[0], network)


class Model(ABC):
    """One network on one backend. Subclasses implement the four stages and the read-backs."""

    #: The backend's name as used everywhere (results, figures, report).
    name: ClassVar[str]
    #: ``"cpu"`` or ``"cuda"``: where the stages run, so timers know whether to synchronise.
    device: ClassVar[str] = "cpu"
    #: The implementations it belongs to: ``"reference"``, ``"c"``, ``"torch"``, ``"cuda"``. A class that
    #: declares none is named after its device (the hand-written CUDA kernels are the ``"cuda"`` family).
    family: ClassVar[str]
    #: Takes a ``threads`` option: its own CPU thread count, up to :meth:`max_threads`.
    threaded: ClassVar[bool] = False
    #: Threads a backend that is not ``threaded`` computes on: ``1`` for a single-threaded build; ``None``
    #: when it uses the thread pools the harness sets (NumPy's BLAS) or computes on a GPU.
    fixed_threads: ClassVar[int | None] = None
    #: ``train_step`` does the whole step in fewer calls than its three stages (one C call, a fused kernel,
    #: one CUDA graph). Unless a class says otherwise: whether it overrides ``train_step``.
    fuses_step: ClassVar[bool] = False
    #: ``train_steps`` runs many consecutive steps in one call to the device (one kernel launch) instead of
    #: one call per step. Unless a class says otherwise: whether it overrides ``train_steps``.
    fuses_steps: ClassVar[bool] = False
    #: Seconds this model spent compiling its step (``torch.compile``), recorded beside its timings; ``None``
    #: where nothing is compiled per model (kernels compiled at run time are cached per process and paid in
    #: the warm-up).
    compile_seconds: float | None = None
    #: Each new batch size costs a compilation of many seconds (``torch.compile``): a harness runs such a
    #: backend only where few shapes occur, and gives it the option ``compile_budget_s``.
    compiles_per_shape: ClassVar[bool] = False
    #: What :meth:`step` does when the loss of a step is NaN or infinite: ``"raise"``
    #: (``FloatingPointError``), ``"warn"`` (``RuntimeWarning``) or ``"ignore"``; ``load(on_nonfinite=...)``.
    on_nonfinite: str = "warn"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("_closed_class"):
            return
        if "fuses_step" not in cls.__dict__:
            cls.fuses_step = cls.train_step is not Model.train_step
        if "fuses_steps" not in cls.__dict__:
            cls.fuses_steps = cls.train_steps is not Model.train_steps
        if not hasattr(cls, "family"):
            cls.family = cls.device
        if "close" in cls.__dict__:
            cls.close = _closing(cls.__dict__["close"])

    @classmethod
    def check_thread_option(cls, threads: Any) -> int | None:
        """A checked ``threads`` option: up to :meth:`max_threads` for a ``threaded`` backend; ``None`` or 1
        for the others, which run on their own fixed count (any other value is a ``ValueError``)."""
        if threads is None:
            return None
        if cls.threaded:
            return check_threads(threads, limit=cls.max_threads())
        if check_threads(threads) != 1:
            raise ValueError(f"threads: {cls.name} takes no thread count (it runs on "
                             + ("one thread" if cls.fixed_threads == 1 else
                                "the GPU" if cls.device != "cpu" else "the thread pools the harness sets")
                             + f"); pass threads=None or 1, got {threads}")
        return None

    def max_rows(self) -> int | None:
        """The most rows one stage call takes (a C model's ``max_batch``); ``None``: no limit of its own."""
        return None

    @classmethod
    def check_network(cls, network: Network) -> None:
        """Raise ``ValueError`` for a network this backend cannot run (a limit of its kernels); called before
        anything is allocated, and by callers that plan runs without building a model (the data-parallel
        launcher). Every network passes by default."""

    @classmethod
    def max_threads(cls) -> int:
        """Most threads the ``threads`` option takes here: the cores this process may use if the backend is
        ``threaded`` (more would only oversubscribe them), 1 otherwise."""
        return usable_cores() if cls.threaded else 1

    def __init__(self, network: Network, params: Params) -> None:
        self.network = network
        self._forward_batch: Batch | None = None  # the batch of the last forward, which backprop must get

    def prepare(self, X: np.ndarray, y: np.ndarray | None = None) -> Batch:
        """Check a host batch and make it ready for :meth:`forward` (the "transfer" stage on GPUs). The batch
        owns its data: later changes to ``X`` or ``y`` do not reach it."""
        X, T = check_inputs(self.network, X, y)
        return owned_host_batch(self.network, X, T)

    def _bind(self, batch: Batch) -> None:
        """Remember ``batch`` as the one the activations now belong to (called by every forward pass)."""
        self._forward_batch = batch

    def _check_bound(self, batch: Batch) -> None:
        """``backprop`` computes with the activations of the last forward pass: only on that same batch."""
        if self._forward_batch is None:
            raise RuntimeError("backprop needs a forward pass on this batch first")
        if batch is not self._forward_batch:
            raise ValueError("backprop got a different batch than the last forward pass: the activations "
                             "belong to that one; call forward(batch) first")

    def _check_batch(self, batch: Batch, need_targets: bool = False) -> None:
        if not isinstance(batch, Batch):
            raise TypeError(f"expected a Batch from {type(self).__name__}.prepare(X, y), "
                            f"got {type(batch).__name__}")
        if batch.network is not self.network and batch.network != self.network:
            raise ValueError(f"batch was prepared for network {batch.network.name}, "
                             f"this model is {self.network.name}")
        if need_targets and batch.T is None:
            raise ValueError("batch has no labels: call prepare(X, y) with y to train")
        # Arrays of the wrong kind are refused by the backend's own checks; here only the row count. Written
        # out, not as a comprehension: a GPU step of a few microseconds waits for this check.
        for array in (batch.X, batch.T):
            shape = getattr(array, "shape", None)
            if shape and (len(shape) != 2 or shape[0] != batch.size):
                shapes = [tuple(getattr(a, "shape", ())) for a in (batch.X, batch.T) if a is not None]
                raise ValueError(f"batch says it has {batch.size} rows but holds arrays of shapes {shapes}")

    @abstractmethod
    def forward(self, batch: Batch) -> None:
        """Compute every layer's activations (kept for backprop) and, if the batch has labels, the loss."""

    @abstractmethod
    def backprop(self, batch: Batch) -> None:
        """Compute the loss gradient of every weight and bias for the batch last passed to forward."""

    @abstractmethod
    def update(self, lr: float, weight_decay: float = 0.0) -> None:
        """One SGD step with the gradients from the last backprop."""

    @abstractmethod
    def loss(self) -> float:
        """Mean loss over the batch of the last forward (NaN before any labelled forward)."""

    @abstractmethod
    def activations(self) -> list[np.ndarray]:
        """Host copies of every layer's output from the last forward; the last entry is the network's output
        probabilities (softmax or sigmoid)."""

    def output(self) -> np.ndarray:
        """Output probabilities of the last forward, ``(B, n_outputs)``, on the host."""
        return self.activations()[-1]

    @abstractmethod
    def params(self) -> Params:
        """Copies of ``[(W, b), ...]`` on the host."""

    @abstractmethod
    def grads(self) -> Params:
        """Copies of ``[(dW, db), ...]`` from the last backprop, on the host."""

    def synchronize(self) -> None:
        """Wait for queued device work (GPU backends); CPU backends return at once."""

    def poison(self) -> None:
        """Fill every buffer the stages write (activations, gradients) with NaN, so a check after the next
        stage catches any element it failed to write. Backends that allocate fresh outputs each call have
        nothing to poison."""

    def close(self) -> None:
        """Release native or device memory early; every later call raises ``RuntimeError`` (closing again
        does nothing)."""
        self.__class__ = _closed_class(type(self))

    def train_step(self, batch: Batch, lr: float, weight_decay: float = 0.0) -> None:
        """Forward, backprop and update on a prepared batch. Backends that can do the whole step in fewer
        launches (a fused kernel, one captured CUDA graph) override this; the sweep times it as "step"."""
        self.forward(batch)
        self.backprop(batch)
        self.update(lr, weight_decay)

    def train_steps(self, batches: Batch, batch_size: int, lr: float, weight_decay: float = 0.0) -> None:
        """Consecutive training steps on rows ``[0, batch_size)``, ``[batch_size, 2 batch_size)``, ... of
        ``batches`` (an epoch's shuffled batches, prepared once): the same as :meth:`train_step` on each slice
        in turn. Backends that can run them all in one launch override this (:attr:`fuses_steps`); afterwards
        :meth:`loss` is the last step's."""
        for start in self._step_starts(batches, batch_size):
            self.train_step(batches.rows(start, start + batch_size), lr, weight_decay)

    def kernel_choice(self, batch_size: int, steps: int = 1) -> tuple[str, str] | None:
        """Which of its kernels the backend runs for a launch of ``steps`` training steps of ``batch_size`` rows
        (single steps and the stages: ``steps=1``), and why; ``None`` for a backend with one way to run them
        (or whose kernel is an explicit option). The sweep records it beside each timing."""
        return None

    def _step_starts(self, batches: Batch, batch_size: int) -> range:
        """The first row of each step of :meth:`train_steps`, after checking the call."""
        self._check_batch(batches, need_targets=True)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer):
            raise TypeError(f"batch_size: expected an integer, got {type(batch_size).__name__}")
        if batch_size < 1 or batches.size % batch_size:
            raise ValueError(f"batch_size: need a positive divisor of the {batches.size} rows (whole steps only), "
                             f"got {batch_size}")
        return range(0, batches.size, int(batch_size))

    def step(self, X: np.ndarray, y: np.ndarray, lr: float, weight_decay: float = 0.0) -> float:
        """One training step on a host batch; returns the batch loss before the update. A loss that is NaN
        or infinite is reported as :attr:`on_nonfinite` says."""
        self.train_step(self.prepare(X, y), lr, weight_decay)
        loss = self.loss()
        if not math.isfinite(loss):
            self.report_nonfinite(loss)
        return loss

    def report_nonfinite(self, loss: float) -> None:
        """Say that a step's loss was ``loss`` (NaN or infinite), as :attr:`on_nonfinite` asks."""
        if self.on_nonfinite == "ignore":
            return
        message = (f"{self.name}: the training loss is {loss} on network {self.network.name}: the weights "
                   "have diverged or the batch holds values the network cannot represent (lower lr?)")
        if self.on_nonfinite == "raise":
            raise FloatingPointError(message)
        warnings.warn(message, RuntimeWarning, stacklevel=3)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Output probabilities for a host batch (no labels needed)."""
        batch = self.prepare(X)
        self.forward(batch)
        return self.output()

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self.network.name}>"

    #: Whether :meth:`backprop_by_layer` reports a layer while the layers below it are still being computed
    #: (what lets a data-parallel all-reduce overlap backprop); results record it.
    overlaps_backprop: ClassVar[bool] = False

    def gradient_buffer(self) -> Any:
        """One flat 1-D ``torch.Tensor`` on the model's device that IS the model's gradient storage, laid out
        ``[dW_1, db_1, ..., dW_L, db_L]`` (row-major, layer order; see :func:`layer_spans`): averaging it in
        place changes what :meth:`update` uses. Backends without one raise :class:`BackendUnavailable`."""
        raise gradient_buffer_missing(self.name)

    def backprop_by_layer(self, batch: Batch, on_layer: Callable[[int], None]) -> None:
        """:meth:`backprop`, calling ``on_layer(layer)`` for layer ``L`` down to ``1`` as soon as that layer's
        ``dW`` and ``db`` are final. This default computes every gradient first (no overlap); backends that
        report layers earlier set :attr:`overlaps_backprop`. The gradients equal :meth:`backprop`'s."""
        self.backprop(batch)
        for layer in range(self.network.n_layers, 0, -1):
            on_layer(layer)


def layer_spans(network: Network) -> list[tuple[int, int]]:
    """``[start, stop)`` of each layer's ``[dW_l, db_l]`` in a flat gradient or parameter buffer."""
    spans, start = [], 0
    for n_out, n_in in network.layer_shapes:
        stop = start + n_out * n_in + n_out
        spans.append((start, stop))
        start = stop
    return spans


def layer_views(network: Network, flat: Any) -> list[tuple[Any, Any]]:
    """``[(W_l, b_l), ...]`` views into a flat NumPy array or tensor laid out as :func:`layer_spans` says."""
    views = []
    for (start, stop), (n_out, n_in) in zip(layer_spans(network), network.layer_shapes, strict=True):
        middle = start + n_out * n_in
        views.append((flat[start:middle].reshape(n_out, n_in), flat[middle:stop]))
    return views


def gradient_buffer_missing(backend: str) -> BackendUnavailable:
    """The error of a backend without :meth:`Model.gradient_buffer`, naming the missing capability."""
    return BackendUnavailable(f"{backend}: no gradient_buffer() (one flat gradient tensor the model updates "
                              f"from), which data-parallel training all-reduces")


_PUBLIC_CALLS = ("prepare", "forward", "backprop", "update", "train_step", "train_steps", "step", "predict", "loss",
                 "activations", "output", "params", "grads", "poison", "synchronize", "report_nonfinite",
                 "gradient_buffer", "backprop_by_layer")
_closed_classes: dict[type, type] = {}


def _raise_closed(self: Model, *args: Any, **kwargs: Any) -> Any:
    raise RuntimeError(f"{self.name} model is closed")


def _closed_class(cls: type) -> type:
    """The class a closed model becomes: the same model whose every call raises (no cost while open)."""
    if cls.__dict__.get("_closed_class"):
        return cls
    if cls not in _closed_classes:
        members: dict[str, Any] = {name: _raise_closed for name in _PUBLIC_CALLS}
        members.update(_closed_class=True, close=lambda self: None, __module__=cls.__module__)
        _closed_classes[cls] = type(f"Closed{cls.__name__}", (cls,), members)
    return _closed_classes[cls]


def _closing(release: Any) -> Any:
    """A backend's own ``close`` (which frees its memory), followed by the switch to the closed class."""
    def close(self: Model) -> None:
        release(self)
        Model.close(self)

    close.__doc__ = release.__doc__
    return close
