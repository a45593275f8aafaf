"""Input checks shared by the backends and the libraries they call (``native``, ``gpu``), and the error
that says a backend cannot run here. This module sits below both, so nothing low imports the backend layer.

Every check raises ``TypeError`` (wrong kind of value) or ``ValueError`` (right kind, wrong value) naming the
argument and the broken rule, before anything reaches C or CUDA.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from mlpbench.network import Network

#: ``[(W, b), ...]``: one weight matrix ``(n_out, n_in)`` and bias ``(n_out,)`` per layer.
Params = list[tuple[np.ndarray, np.ndarray]]


class BackendUnavailable(RuntimeError):
    """The backend cannot run on this machine (no GPU, no compiler output, missing package); says why."""


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
    return X, check_targets(network, y, X.shape[0])


def _check_plain_ndarray(name: str, array: Any) -> None:
    """A plain ``numpy.ndarray``: subclasses (``np.matrix``, masked arrays) change what indexing and
    arithmetic mean, so they are refused rather than guessed at."""
    if not isinstance(array, np.ndarray):
        raise TypeError(f"{name}: expected a numpy.ndarray, got {type(array).__name__}")
    if type(array) is not np.ndarray:
        raise TypeError(f"{name}: expected a plain numpy.ndarray, got the subclass {type(array).__name__} "
                        "(convert it with np.asarray)")


def check_float32_matrix(name: str, array: Any, writable: bool = False) -> np.ndarray:
    """A 2-D float32 array that C or CUDA can read as a flat row-major buffer: C-contiguous and aligned
    (and writable, if asked). Raises ``TypeError``/``ValueError`` naming ``name`` and the broken rule."""
    _check_plain_ndarray(name, array)
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


def check_targets(network: Network, y: Any, batch: int) -> np.ndarray:
    """Labels ``y`` as float32 targets of shape ``(batch, n_outputs)`` (see :func:`check_inputs`)."""
    _check_plain_ndarray("y", y)
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


#: Largest finite float32: every backend computes its update in float32 (the reference in float64 but it is
#: held to the same step sizes, so every backend accepts the same ones).
FLOAT32_MAX = float(np.finfo(np.float32).max)


def check_step_size(lr: float, weight_decay: float) -> tuple[float, float]:
    """Learning rate and weight decay: numbers, finite and ``>= 0``, and finite in float32."""
    for name, value in (("lr", lr), ("weight_decay", weight_decay)):
        if isinstance(value, bool) or not isinstance(value, int | float | np.floating | np.integer):
            raise TypeError(f"{name}: expected a number, got {type(value).__name__}")
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{name}: must be finite and >= 0, got {value}")
        if value > FLOAT32_MAX:
            raise ValueError(f"{name}: {value} overflows float32")
    return float(lr), float(weight_decay)


def check_on_nonfinite(policy: Any) -> str:
    """What to do when a step's loss is not finite: ``"raise"``, ``"warn"`` or ``"ignore"``."""
    if policy not in ("raise", "warn", "ignore"):
        raise ValueError(f"on_nonfinite: expected 'raise', 'warn' or 'ignore', got {policy!r}")
    return policy
