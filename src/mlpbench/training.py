"""Mini-batch SGD training on any backend, reporting loss and accuracy per epoch."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from mlpbench.backends.base import Model
from mlpbench.data import Dataset


@dataclass(frozen=True)
class EpochResult:
    epoch: int
    train_loss: float      # mean of the batch losses seen during the epoch (before each update)
    train_accuracy: float  # on the whole training set after the epoch
    test_accuracy: float   # on the test set after the epoch (NaN without a test set)

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def accuracy(model: Model, X: np.ndarray, y: np.ndarray, batch_size: int = 1024) -> float:
    """Fraction of samples classified correctly (arg-max of softmax, or sigmoid > 0.5 for one output)."""
    if len(X) == 0:
        return float("nan")
    correct = 0
    for start in range(0, len(X), batch_size):
        probs = model.predict(X[start:start + batch_size])
        labels = y[start:start + batch_size]
        if probs.shape[1] == 1:
            correct += int(((probs[:, 0] > 0.5) == (labels.reshape(-1) > 0.5)).sum())
        else:
            correct += int((probs.argmax(axis=1) == labels).sum())
    return correct / len(X)


def train(model: Model, dataset: Dataset, epochs: int, batch_size: int, lr: float,
          weight_decay: float = 0.0, seed: int = 0) -> list[EpochResult]:
    """Train ``model`` for ``epochs`` passes over ``dataset`` with batches shuffled by ``seed``."""
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    rng = np.random.Generator(np.random.PCG64(seed))
    history = []
    for epoch in range(1, epochs + 1):
        losses, sizes = [], []
        for X, y in dataset.batches(batch_size, rng):
            losses.append(model.step(X, y, lr, weight_decay))
            sizes.append(len(X))
        history.append(EpochResult(
            epoch=epoch,
            train_loss=float(np.average(losses, weights=sizes)),
            train_accuracy=accuracy(model, dataset.X_train, dataset.y_train),
            test_accuracy=accuracy(model, dataset.X_test, dataset.y_test),
        ))
    return history
