"""The interface every backend implements, and the input checks they all share.

A training step is four calls, each timed on its own by the sweep::

    batch = model.prepare(X, y)   # checks the input; copies it to the GPU on GPU backends ("transfer")
    model.forward(batch)          # activations of every layer and the loss
    model.backprop(batch)         # gradients of every weight and bias
    model.update(lr)              # SGD step

``model.train_step(batch, lr)`` runs the last three (fused where a backend can) and ``model.step(X, y, lr)``
all four, returning the loss. Everything a caller reads back
(``loss``, ``output``, ``params``, ``grads``) comes back as host NumPy data, so tests compare any two backends
with the same code.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from mlpbench.network import Network

Params = list[tuple[np.ndarray, np.ndarray]]


class BackendUnavailable(RuntimeError):
    """The backend cannot run on this machine (no GPU, no compiler output, missing package); says why."""


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


def check_inputs(network: Network, X: Any, y: Any = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Validate a host batch and turn labels into float32 targets ``T`` of shape ``(B, n_outputs)``.

    ``X``: float32, C-contiguous, aligned, shape ``(B, n_inputs)`` with ``B >= 1``, all finite.
    ``y`` for ``softmax-ce``: integer class labels of shape ``(B,)`` in ``[0, n_outputs)``;
    for ``sigmoid-bce``: targets in ``[0, 1]`` of shape ``(B, n_outputs)`` (or ``(B,)`` with one output).
    Every rule broken raises ``TypeError`` or ``ValueError`` naming the argument and the problem.
    """
    X = check_float32_matrix("X", X)
    if X.shape[0] < 1:
        raise ValueError("X: empty batch (0 rows); a batch needs at least one sample")
    if X.shape[1] != network.n_inputs:
        raise ValueError(f"X: expected {network.n_inputs} features per row for network {network.name}, "
                         f"got shape {X.shape}")
    if not np.isfinite(X).all():
        raise ValueError("X: contains NaN or Inf")
    if y is None:
        return X, None
    return X, _targets(network, y, X.shape[0])


def check_float32_matrix(name: str, array: Any, writable: bool = False) -> np.ndarray:
    """A 2-D float32 array that C or CUDA can read as a flat row-major buffer: C-contiguous and aligned
    (and writable, if asked). Raises ``TypeError``/``ValueError`` naming ``name`` and the broken rule."""
    if not isinstance(array, np.ndarray):
        raise TypeError(f"{name}: expected a numpy.ndarray, got {type(array).__name__}")
    if array.dtype != np.float32:
        raise TypeError(f"{name}: expected dtype float32, got {array.dtype} (convert with .astype(np.float32))")
    if array.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array, got {array.ndim} dimensions")
    if not array.flags.c_contiguous:
        raise ValueError(f"{name}: array is not C-contiguous (use np.ascontiguousarray)")
    if not array.flags.aligned:
        raise ValueError(f"{name}: array is misaligned in memory (copy it with np.array(..., copy=True))")
    if writable and not array.flags.writeable:
        raise ValueError(f"{name}: array is read-only")
    return array


def _targets(network: Network, y: Any, batch: int) -> np.ndarray:
    if not isinstance(y, np.ndarray):
        raise TypeError(f"y: expected a numpy.ndarray, got {type(y).__name__}")
    n_out = network.n_outputs
    if network.loss == "softmax-ce":
        if not np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_:
            raise TypeError(f"y: softmax-ce needs integer class labels, got dtype {y.dtype}")
        if y.shape != (batch,):
            raise ValueError(f"y: expected shape ({batch},) to match X, got {y.shape}")
        low, high = int(y.min()), int(y.max())
        if low < 0 or high >= n_out:
            raise ValueError(f"y: labels must lie in [0, {n_out}), got values in [{low}, {high}]")
        targets = np.zeros((batch, n_out), dtype=np.float32)
        targets[np.arange(batch), y] = 1.0
        return targets
    if not np.issubdtype(y.dtype, np.floating) and not np.issubdtype(y.dtype, np.integer):
        raise TypeError(f"y: sigmoid-bce needs numeric targets in [0, 1], got dtype {y.dtype}")
    if y.shape == (batch,) and n_out == 1:
        y = y.reshape(batch, 1)
    if y.shape != (batch, n_out):
        raise ValueError(f"y: expected shape ({batch}, {n_out}) to match X, got {y.shape}")
    targets = np.ascontiguousarray(y, dtype=np.float32)
    if not np.isfinite(targets).all():
        raise ValueError("y: contains NaN or Inf")
    if targets.min() < 0.0 or targets.max() > 1.0:
        raise ValueError("y: sigmoid-bce targets must lie in [0, 1]")
    return targets


def check_params(network: Network, params: Params, dtype: type = np.float32) -> Params:
    """Validate ``[(W, b), ...]`` against the network's shapes; returns C-contiguous copies in ``dtype``."""
    if len(params) != network.n_layers:
        raise ValueError(f"params: expected {network.n_layers} (W, b) pairs, got {len(params)}")
    checked = []
    for index, ((weights, bias), (n_out, n_in)) in enumerate(zip(params, network.layer_shapes, strict=True)):
        weights = np.array(weights, dtype=dtype, order="C", copy=True)
        bias = np.array(bias, dtype=dtype, order="C", copy=True)
        if weights.shape != (n_out, n_in) or bias.shape != (n_out,):
            raise ValueError(f"params[{index}]: expected W {(n_out, n_in)} and b {(n_out,)}, "
                             f"got {weights.shape} and {bias.shape}")
        if not (np.isfinite(weights).all() and np.isfinite(bias).all()):
            raise ValueError(f"params[{index}]: contains NaN or Inf")
        checked.append((weights, bias))
    return checked


def check_step_size(lr: float, weight_decay: float) -> tuple[float, float]:
    for name, value in (("lr", lr), ("weight_decay", weight_decay)):
        if isinstance(value, bool) or not isinstance(value, int | float | np.floating | np.integer):
            raise TypeError(f"{name}: expected a number, got {type(value).__name__}")
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{name}: must be finite and >= 0, got {value}")
    return float(lr), float(weight_decay)


def check_threads(threads: Any) -> int:
    if isinstance(threads, bool) or not isinstance(threads, int | np.integer):
        raise TypeError(f"threads: expected an integer, got {type(threads).__name__}")
    if threads < 1:
        raise ValueError(f"threads: must be >= 1, got {threads}")
    return int(threads)


class Model(ABC):
    """One network on one backend. Subclasses implement the four stages and the read-backs."""

    #: The backend's name as used everywhere (results, figures, report).
    name: ClassVar[str]
    #: ``"cpu"`` or ``"cuda"``: where the stages run, so timers know whether to synchronise.
    device: ClassVar[str] = "cpu"

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
