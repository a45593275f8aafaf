"""Stage-by-stage comparison of a backend with the float64 ``numpy`` reference on fresh random data.

The tests assert on these errors, and the sweep runs the same check before it times a backend, so no number
is ever reported for a backend that computes something else.

Two errors are measured for every quantity (activations, loss, weight and bias gradients, parameters after
the update):

* the plain **relative error** ‖x − ref‖ / ‖ref‖;
* the **scaled error** ‖x − ref‖ / (ε · ‖M‖), ε = 2⁻²³ the float32 machine epsilon, where ``M`` is the
  magnitude the quantity is computed from, element by element: for a sum, the sum of the absolute values of
  its terms (for ``z = aWᵀ + b``: ``|a||W|ᵀ + |b|``; for a bias gradient, the sum over the batch of
  ``|δ|``), carried through every layer with the absolute slopes of the activations (see
  :func:`reference_magnitudes`). It is the first-order error bound of float32 arithmetic without the factor
  of the number of operations: a correct float32 backend stays at a few units, whatever cancellation the sum
  has, where the relative error of a nearly cancelling sum can be large.

A backend passes when every scaled error is at most :data:`SCALED_TOLERANCE` (:func:`passes`). The relative
error is reported beside it, and stays under :data:`FLOAT32_TOLERANCE` unless a sum cancels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from mlpbench.backends import load
from mlpbench.backends.base import Params
from mlpbench.backends.numpy_ref import activate, activation_derivative
from mlpbench.network import Network

#: Relative error (‖x − ref‖ / ‖ref‖) a float32 backend stays under for every quantity unless a sum cancels.
FLOAT32_TOLERANCE = 1e-5
#: Float32 machine epsilon, the unit of the scaled error.
FLOAT32_EPS = float(np.finfo(np.float32).eps)
#: Largest scaled error (in units of ε times the magnitude computed from) a correct float32 backend shows.
SCALED_TOLERANCE = 4.0
#: The quantities compared, in the order of tables.
QUANTITIES = ("activations", "loss", "grad_weights", "grad_biases", "params")


def relative_error(value: np.ndarray, reference: np.ndarray) -> float:
    """‖value − reference‖₂ / ‖reference‖₂ in float64; ``inf`` if ``value`` has NaN/Inf or the wrong shape."""
    value = np.asarray(value, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if value.shape != reference.shape or not np.isfinite(value).all():
        return float("inf")
    scale = np.linalg.norm(reference)
    diff = np.linalg.norm(value - reference)
    return float(diff / scale) if scale > 0 else float(diff)


def scaled_error(value: np.ndarray, reference: np.ndarray, magnitude: np.ndarray) -> float:
    """‖value − reference‖₂ / (ε · ‖magnitude‖₂) in float64; ``inf`` if ``value`` has NaN/Inf or the wrong
    shape."""
    value = np.asarray(value, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if value.shape != reference.shape or not np.isfinite(value).all():
        return float("inf")
    diff = np.linalg.norm(value - reference)
    scale = FLOAT32_EPS * np.linalg.norm(magnitude)
    return float(diff / scale) if scale > 0 else (0.0 if diff == 0 else float("inf"))


def _curvature(activation: str, a: np.ndarray) -> np.ndarray:
    """|d act'(z) / d a|: how much the backprop factor moves when the activation ``a`` is off."""
    if activation == "sigmoid":
        return np.abs(1.0 - 2.0 * a)
    if activation == "tanh":
        return np.abs(2.0 * a)
    return np.zeros_like(a)


def reference_magnitudes(network: Network, params: Params, X: np.ndarray, T: np.ndarray, lr: float,
                         weight_decay: float) -> dict[str, list[np.ndarray]]:
    """For one step of :func:`compare_stages`, the magnitude every computed element is made from, per
    quantity (lists in the order the backends report them; ``loss`` a one-element list).

    Each element's magnitude is the sum of the absolute values of the terms it adds up, where each term's
    inputs carry their own magnitudes (an input that is itself a rounded result contributes its magnitude
    times the absolute slope of the operation), plus its own absolute value for its final rounding.
    """
    act = network.activation
    weights = [np.asarray(w, np.float64) for w, _ in params]
    biases = [np.asarray(b, np.float64) for _, b in params]
    a, mag_a = np.asarray(X, np.float64), np.abs(np.asarray(X, np.float64))
    acts, mags = [a], [mag_a]
    for index, (w, b) in enumerate(zip(weights, biases, strict=True)):
        z = a @ w.T + b
        mag_z = mag_a @ np.abs(w).T + np.abs(b)
        if index < network.n_layers - 1:
            a = activate(act, z)
            mag_a = np.abs(activation_derivative(act, a)) * mag_z + np.abs(a)
        elif network.loss == "softmax-ce":
            a = np.exp(z - z.max(axis=1, keepdims=True))
            a /= a.sum(axis=1, keepdims=True)
            mag_a = a * (mag_z + (a * mag_z).sum(axis=1, keepdims=True)) + a
        else:
            a = 1.0 / (1.0 + np.exp(-z))
            mag_a = a * (1.0 - a) * mag_z + a
        acts.append(a)
        mags.append(mag_a)
    targets = np.asarray(T, np.float64)
    batch = X.shape[0]
    loss_terms = ((targets + acts[-1]) * mag_z).sum(axis=1)
    magnitudes: dict[str, list[np.ndarray]] = {"activations": mags[1:], "loss": [np.array(loss_terms.mean())]}
    delta = (acts[-1] - targets) / batch
    mag_delta = (mags[-1] + np.abs(acts[-1] - targets)) / batch
    grad_w, grad_b = [], []
    for index in range(network.n_layers - 1, -1, -1):
        grad_w.append(mag_delta.T @ np.abs(acts[index]) + np.abs(delta).T @ mags[index])
        grad_b.append(mag_delta.sum(axis=0))
        if index > 0:
            back = delta @ weights[index]
            mag_back = mag_delta @ np.abs(weights[index])
            slope = activation_derivative(act, acts[index])
            mag_delta = (mag_back * np.abs(slope) + np.abs(back) * _curvature(act, acts[index]) * mags[index]
                         + np.abs(back * slope))
            delta = back * slope
    magnitudes["grad_weights"], magnitudes["grad_biases"] = grad_w[::-1], grad_b[::-1]
    updated = []
    for w, b, mw, mb in zip(weights, biases, magnitudes["grad_weights"], magnitudes["grad_biases"], strict=True):
        updated += [np.abs(w) * (2.0 + lr * weight_decay) + lr * mw, 2.0 * np.abs(b) + lr * mb]
    magnitudes["params"] = updated
    return magnitudes


def random_params(network: Network, rng: np.random.Generator) -> Params:
    """Initial weights with random, non-zero biases (zero biases would hide bias bugs)."""
    params = network.init_params(int(rng.integers(2**31)))
    return [(w, rng.uniform(-0.5, 0.5, size=b.shape).astype(np.float32)) for w, b in params]


def random_batch(network: Network, batch: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Standard-normal inputs; class labels (softmax-ce) or soft targets in [0, 1] (sigmoid-bce)."""
    X = rng.standard_normal((batch, network.n_inputs)).astype(np.float32)
    if network.loss == "softmax-ce":
        y = rng.integers(0, network.n_outputs, size=batch)
    else:
        y = rng.uniform(0.0, 1.0, size=(batch, network.n_outputs)).astype(np.float32)
    return X, y


@dataclass(frozen=True)
class StageCheck:
    """What :func:`check_stages` measured: per quantity (:data:`QUANTITIES`), the worst relative error and
    the worst scaled error over its tensors."""

    relative: dict[str, float]
    scaled: dict[str, float]

    @property
    def worst(self) -> str:
        """The quantity with the largest scaled error."""
        return max(QUANTITIES, key=lambda name: self.scaled[name])

    @property
    def passed(self) -> bool:
        return passes(self.scaled)


def passes(scaled: dict[str, float], tolerance: float = SCALED_TOLERANCE) -> bool:
    """Whether every scaled error is within ``tolerance`` (NaN fails)."""
    return all(value <= tolerance for value in scaled.values())


def check_stages(backend: str, network: Network, batch: int, seed: int = 0, lr: float = 0.1,
                 weight_decay: float = 1e-3, params: Params | None = None,
                 data: tuple[np.ndarray, np.ndarray] | None = None, **options: Any) -> StageCheck:
    """Run one step on ``backend`` and on the reference from the same random parameters and batch (or the
    ``params`` and ``data`` given), and measure every quantity's relative and scaled error.

    Every buffer the backend writes is poisoned (NaN) before each stage. The quantities: ``activations``
    (every layer's output), ``loss``, ``grad_weights``, ``grad_biases`` and ``params`` (after the update).
    """
    rng = np.random.Generator(np.random.PCG64(seed))
    if params is None:
        params = random_params(network, rng)
    X, y = random_batch(network, batch, rng) if data is None else data
    reference = load("numpy", network, params)
    model = load(backend, network, params, **options)
    try:
        ref_batch, batch_data = reference.prepare(X, y), model.prepare(X, y)
        magnitudes = reference_magnitudes(network, params, X, ref_batch.T, lr, weight_decay)
        found: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
        model.poison()
        reference.forward(ref_batch)
        model.forward(batch_data)
        found["activations"] = list(zip(model.activations(), reference.activations(), strict=True))
        found["loss"] = [(np.array(model.loss()), np.array(reference.loss()))]
        model.poison()
        reference.backprop(ref_batch)
        model.backprop(batch_data)
        grads, ref_grads = model.grads(), reference.grads()
        found["grad_weights"] = [(g[0], r[0]) for g, r in zip(grads, ref_grads, strict=True)]
        found["grad_biases"] = [(g[1], r[1]) for g, r in zip(grads, ref_grads, strict=True)]
        reference.update(lr, weight_decay)
        model.update(lr, weight_decay)
        found["params"] = []
        for (w, b), (rw, rb) in zip(model.params(), reference.params(), strict=True):
            found["params"] += [(w, rw), (b, rb)]
    finally:
        model.close()
    relative = {name: max(relative_error(v, r) for v, r in found[name]) for name in QUANTITIES}
    scaled = {name: max(scaled_error(v, r, m) for (v, r), m in zip(found[name], magnitudes[name], strict=True))
              for name in QUANTITIES}
    return StageCheck(relative, scaled)


def compare_stages(backend: str, network: Network, batch: int, seed: int = 0, lr: float = 0.1,
                   weight_decay: float = 1e-3, **options: Any) -> dict[str, float]:
    """The worst relative error of each quantity of :func:`check_stages` (the plain, not scale-aware,
    measure)."""
    return check_stages(backend, network, batch, seed, lr, weight_decay, **options).relative


def training_losses(backend: str, network: Network, X: np.ndarray, y: np.ndarray, steps: int,
                    batch: int, lr: float, weight_decay: float = 0.0, seed: int = 0,
                    **options: Any) -> np.ndarray:
    """Loss of each of ``steps`` SGD steps over ``(X, y)`` in fixed order, from the seeded initialisation."""
    model = load(backend, network, seed=seed, **options)
    try:
        losses = []
        for index in range(steps):
            start = (index * batch) % (len(X) - batch + 1)
            losses.append(model.step(X[start:start + batch], y[start:start + batch], lr, weight_decay))
        return np.array(losses)
    finally:
        model.close()
