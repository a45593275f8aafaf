"""Stage-by-stage comparison of a backend with the float64 ``numpy`` reference on fresh random data.

The tests assert on these errors, and the sweep runs the same check before it times a backend, so no number
is ever reported for a backend that computes something else.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mlpbench.backends import load
from mlpbench.backends.base import Params
from mlpbench.network import Network

#: Relative error (‖x − ref‖ / ‖ref‖) a float32 backend must stay under, for every quantity checked.
FLOAT32_TOLERANCE = 1e-5


def relative_error(value: np.ndarray, reference: np.ndarray) -> float:
    """‖value − reference‖₂ / ‖reference‖₂ in float64; ``inf`` if ``value`` has NaN/Inf or the wrong shape."""
    value = np.asarray(value, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if value.shape != reference.shape or not np.isfinite(value).all():
        return float("inf")
    scale = np.linalg.norm(reference)
    diff = np.linalg.norm(value - reference)
    return float(diff / scale) if scale > 0 else float(diff)


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


def _worst(pairs: list[tuple[np.ndarray, np.ndarray]]) -> float:
    return max(relative_error(value, reference) for value, reference in pairs)


def compare_stages(backend: str, network: Network, batch: int, seed: int = 0, lr: float = 0.1,
                   weight_decay: float = 1e-3, **options: Any) -> dict[str, float]:
    """Run one step on ``backend`` and on the reference from the same random parameters and batch.

    Every buffer the backend writes is poisoned (NaN) before each stage. Returns the worst relative error of
    each quantity over all layers: ``activations`` (every layer's output), ``loss``, ``grad_weights``,
    ``grad_biases`` and ``params`` (after the update).
    """
    rng = np.random.Generator(np.random.PCG64(seed))
    params = random_params(network, rng)
    X, y = random_batch(network, batch, rng)
    reference = load("numpy", network, params)
    model = load(backend, network, params, **options)
    try:
        ref_batch, batch_data = reference.prepare(X, y), model.prepare(X, y)
        errors = {}
        model.poison()
        reference.forward(ref_batch)
        model.forward(batch_data)
        errors["activations"] = _worst(list(zip(model.activations(), reference.activations(), strict=True)))
        errors["loss"] = relative_error(np.array(model.loss()), np.array(reference.loss()))
        model.poison()
        reference.backprop(ref_batch)
        model.backprop(batch_data)
        grads, ref_grads = model.grads(), reference.grads()
        errors["grad_weights"] = _worst([(g[0], r[0]) for g, r in zip(grads, ref_grads, strict=True)])
        errors["grad_biases"] = _worst([(g[1], r[1]) for g, r in zip(grads, ref_grads, strict=True)])
        reference.update(lr, weight_decay)
        model.update(lr, weight_decay)
        pairs = []
        for (w, b), (rw, rb) in zip(model.params(), reference.params(), strict=True):
            pairs += [(w, rw), (b, rb)]
        errors["params"] = _worst(pairs)
        return errors
    finally:
        model.close()


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
