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

__all__ = ["BackendUnavailable", "Batch", "Model", "Params", "check_float32_matrix", "check_inputs",
           "check_params", "check_step_size", "check_targets", "check_threads"]


@dataclass(frozen=True)
class Batch:
    """A checked batch, ready for :meth:`Model.forward`: inputs and one-hot / probability targets.

    ``X`` and ``T`` live where the backend computes (NumPy arrays for CPU backends, device arrays on GPU
    backends). ``T`` is ``None`` for inference-only batches.
    """

    X: Any
    T: Any
    size: int
    network: Network


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
    #: Seconds this model spent compiling its step (``torch.compile``), recorded beside its timings; ``None``
    #: where nothing is compiled per model (kernels compiled at run time are cached per process and paid in
    #: the warm-up).
    compile_seconds: float | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "fuses_step" not in cls.__dict__:
            cls.fuses_step = cls.train_step is not Model.train_step
        if not hasattr(cls, "family"):
            cls.family = cls.device

    @classmethod
    def max_threads(cls) -> int:
        """Most threads the ``threads`` option takes here: the cores this process may use if the backend is
        ``threaded`` (more would only oversubscribe them), 1 otherwise."""
        return usable_cores() if cls.threaded else 1

    def __init__(self, network: Network, params: Params) -> None:
        self.network = network

    def prepare(self, X: np.ndarray, y: np.ndarray | None = None) -> Batch:
        """Check a host batch and make it ready for :meth:`forward` (the "transfer" stage on GPUs)."""
        X, T = check_inputs(self.network, X, y)
        return Batch(X, T, X.shape[0], self.network)

    def _check_batch(self, batch: Batch, need_targets: bool = False) -> None:
        if not isinstance(batch, Batch):
            raise TypeError(f"expected a Batch from {type(self).__name__}.prepare(X, y), "
                            f"got {type(batch).__name__}")
        if batch.network != self.network:
            raise ValueError(f"batch was prepared for network {batch.network.name}, "
                             f"this model is {self.network.name}")
        if need_targets and batch.T is None:
            raise ValueError("batch has no labels: call prepare(X, y) with y to train")

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
        """Release native or device memory early; the model is unusable afterwards."""

    def train_step(self, batch: Batch, lr: float, weight_decay: float = 0.0) -> None:
        """Forward, backprop and update on a prepared batch. Backends that can do the whole step in fewer
        launches (a fused kernel, one captured CUDA graph) override this; the sweep times it as "step"."""
        self.forward(batch)
        self.backprop(batch)
        self.update(lr, weight_decay)

    def step(self, X: np.ndarray, y: np.ndarray, lr: float, weight_decay: float = 0.0) -> float:
        """One training step on a host batch; returns the batch loss before the update."""
        self.train_step(self.prepare(X, y), lr, weight_decay)
        return self.loss()

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
