"""``numpy``: the float64 reference every other backend is checked against. Written for clarity, not speed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from mlpbench.backends.base import Batch, Model, Params, check_params, check_step_size, layer_views
from mlpbench.network import Network


def activate(name: str, z: np.ndarray) -> np.ndarray:
    if name == "sigmoid":
        return sigmoid(z)
    if name == "tanh":
        return np.tanh(z)
    return np.maximum(z, 0.0)


def activation_derivative(name: str, a: np.ndarray) -> np.ndarray:
    """Derivative of the activation written in terms of its output ``a`` (all the forward pass keeps)."""
    if name == "sigmoid":
        return a * (1.0 - a)
    if name == "tanh":
        return 1.0 - a * a
    return (a > 0.0).astype(a.dtype)


def sigmoid(z: np.ndarray) -> np.ndarray:
    # exp of a non-positive number only: no overflow for large |z| (the original study's NaN).
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def loss_from_logits(loss: str, z: np.ndarray, targets: np.ndarray) -> float:
    """Mean per-sample loss, computed from the logits so it stays finite when probabilities round to 0 or 1."""
    if loss == "softmax-ce":
        shifted = z - z.max(axis=1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        per_sample = -(targets * log_probs).sum(axis=1)
    else:
        # -[t log s(z) + (1-t) log(1-s(z))] = softplus(z) - t z
        per_sample = (np.logaddexp(0.0, z) - targets * z).sum(axis=1)
    return float(per_sample.mean())


class NumpyModel(Model):
    name = "numpy"
    family = "reference"

    def __init__(self, network: Network, params: Params) -> None:
        super().__init__(network, params)
        self._params = check_params(network, params, np.float64)
        # Every gradient lives in one flat array (views per layer), which data-parallel training all-reduces.
        self._grad_flat = np.zeros(network.n_params, dtype=np.float64)
        self._grads: Params = []  # the views, once a backprop has filled them
        self._activations: list[np.ndarray] = []
        self._loss = float("nan")

    def forward(self, batch: Batch) -> None:
        self._check_batch(batch)
        net = self.network
        a = batch.X.astype(np.float64)
        self._activations = [a]
        for index, (weights, bias) in enumerate(self._params):
            z = a @ weights.T + bias
            if index < net.n_layers - 1:
                a = activate(net.activation, z)
            else:
                a = softmax(z) if net.loss == "softmax-ce" else sigmoid(z)
            self._activations.append(a)
        self._loss = float("nan") if batch.T is None else loss_from_logits(net.loss, z, batch.T)
        self._bind(batch)

    def backprop(self, batch: Batch) -> None:
        self.backprop_by_layer(batch, lambda layer: None)

    def update(self, lr: float, weight_decay: float = 0.0) -> None:
        lr, weight_decay = check_step_size(lr, weight_decay)
        if not self._grads:
            raise RuntimeError("update before backprop")
        self._params = [(w - lr * (dw + weight_decay * w), b - lr * db)
                        for (w, b), (dw, db) in zip(self._params, self._grads, strict=True)]

    def loss(self) -> float:
        return self._loss

    def activations(self) -> list[np.ndarray]:
        if not self._activations:
            raise RuntimeError("no forward pass yet")
        return [a.copy() for a in self._activations[1:]]

    def params(self) -> Params:
        return [(w.copy(), b.copy()) for w, b in self._params]

    def grads(self) -> Params:
        if not self._grads:
            raise RuntimeError("no gradients yet: call backprop first")
        return [(dw.copy(), db.copy()) for dw, db in self._grads]

    overlaps_backprop = True

    def backprop_by_layer(self, batch: Batch, on_layer: Callable[[int], None]) -> None:
        self._check_batch(batch, need_targets=True)
        self._check_bound(batch)
        acts = self._activations
        grads = layer_views(self.network, self._grad_flat)
        delta = (acts[-1] - batch.T) / batch.size
        for index in range(self.network.n_layers - 1, -1, -1):
            grad_weights, grad_bias = grads[index]
            np.matmul(delta.T, acts[index], out=grad_weights)
            np.sum(delta, axis=0, out=grad_bias)
            if index > 0:
                weights = self._params[index][0]
                delta = (delta @ weights) * activation_derivative(self.network.activation, acts[index])
            on_layer(index + 1)
        self._grads = grads

    def gradient_buffer(self) -> Any:
        import torch

        return torch.from_numpy(self._grad_flat)
