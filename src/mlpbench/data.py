"""Data sets: the original study's two moons, scikit-learn's bundled digits, MNIST from IDX files, and random
data of any shape for speed runs. Every loader returns float32 inputs and labels ready for ``Model.prepare``.
"""

from __future__ import annotations

import gzip
import struct
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from mlpbench.network import Network


@dataclass(frozen=True)
class Dataset:
    """Train and test split. Labels are int64 class indices, or float32 ``(N, 1)`` targets for one output."""

    name: str
    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    n_classes: int

    @property
    def n_features(self) -> int:
        return self.X_train.shape[1]

    def batches(self, batch_size: int, rng: np.random.Generator) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """One epoch of shuffled mini-batches; the last one is smaller when the size does not divide."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        order = rng.permutation(len(self.X_train))
        for start in range(0, len(order), batch_size):
            index = order[start:start + batch_size]
            yield self.X_train[index], self.y_train[index]


def _split(name: str, X: np.ndarray, y: np.ndarray, n_classes: int, test_fraction: float,
           seed: int) -> Dataset:
    rng = np.random.Generator(np.random.PCG64(seed))
    order = rng.permutation(len(X))
    n_test = round(len(X) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    X = np.ascontiguousarray(X, dtype=np.float32)
    return Dataset(name, X[train], y[train], X[test], y[test], n_classes)


def moons(n_samples: int = 1000, noise: float = 0.1, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """The original study's two interleaving half-moons (2 features, 1000 points), one sigmoid output."""
    from sklearn.datasets import make_moons

    X, y = make_moons(n_samples=n_samples, noise=noise, random_state=seed)
    return _split("moons", X, y.astype(np.float32).reshape(-1, 1), 2, test_fraction, seed)


def digits(test_fraction: float = 0.25, seed: int = 0) -> Dataset:
    """scikit-learn's bundled 8x8 handwritten digits (1797 samples, 10 classes), standardised features."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    split = _split("digits", bunch.data, bunch.target.astype(np.int64), 10, test_fraction, seed)
    return standardised(split)


def standardised(dataset: Dataset) -> Dataset:
    """Each feature scaled to zero mean and unit variance with the training split's statistics (constant
    features are left at zero): plain SGD on sigmoid networks converges far more steadily on such inputs."""
    mean = dataset.X_train.mean(axis=0)
    std = dataset.X_train.std(axis=0)
    std[std == 0] = 1.0
    return replace(dataset, X_train=((dataset.X_train - mean) / std).astype(np.float32),
                   X_test=((dataset.X_test - mean) / std).astype(np.float32))


def synthetic(network: Network, n_samples: int, seed: int = 0) -> Dataset:
    """Standard-normal inputs and uniformly random labels shaped for ``network`` (speed runs only)."""
    rng = np.random.Generator(np.random.PCG64(seed))
    X = rng.standard_normal((n_samples, network.n_inputs), dtype=np.float32)
    if network.loss == "softmax-ce":
        y = rng.integers(0, network.n_outputs, size=n_samples)
        n_classes = network.n_outputs
    else:
        y = rng.integers(0, 2, size=(n_samples, network.n_outputs)).astype(np.float32)
        n_classes = 2
    return Dataset("synthetic", X, y, X[:0], y[:0], n_classes)


# --- MNIST IDX files --------------------------------------------------------------------------------------

_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
              0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (optionally gzip-compressed), as distributed for MNIST; checks its header."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        raw = handle.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic number)")
    type_code, n_dims = raw[2], raw[3]
    if type_code not in _IDX_TYPES:
        raise ValueError(f"{path}: unknown IDX element type 0x{type_code:02x}")
    header = 4 + 4 * n_dims
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{n_dims}I", raw[4:header])
    dtype = np.dtype(_IDX_TYPES[type_code])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(f"{path}: IDX header promises {expected} bytes of data, file holds {len(raw) - header}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write an unsigned-byte IDX file (used by the tests to make small MNIST-shaped files)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    opener = gzip.open if Path(path).suffix == ".gz" else open
    with opener(path, "wb") as handle:
        handle.write(header + array.tobytes())


_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def mnist(directory: str | Path) -> Dataset:
    """MNIST from the four IDX files in ``directory`` (plain or ``.gz``); never downloads anything."""
    directory = Path(directory)
    parts = {}
    for split, names in _MNIST_FILES.items():
        arrays = []
        for name in names:
            candidates = [directory / name, directory / f"{name}.gz"]
            found = next((p for p in candidates if p.exists()), None)
            if found is None:
                raise FileNotFoundError(f"MNIST file {name}[.gz] not found in {directory}; "
                                        "download the four IDX files there first")
            arrays.append(read_idx(found))
        images, labels = arrays
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(f"{directory}: {split} images {images.shape} and labels {labels.shape} do not match")
        parts[split] = (images.reshape(len(images), -1).astype(np.float32) / 255.0, labels.astype(np.int64))
    (X_train, y_train), (X_test, y_test) = parts["train"], parts["test"]
    return Dataset("mnist", X_train, y_train, X_test, y_test, 10)


def load(name: str, seed: int = 0, path: str | Path | None = None) -> Dataset:
    """A data set by name: ``moons``, ``digits``, or ``mnist`` (needs ``path``)."""
    if name == "moons":
        return moons(seed=seed)
    if name == "digits":
        return digits(seed=seed)
    if name == "mnist":
        if path is None:
            raise ValueError("the mnist data set needs path=<directory holding the IDX files>")
        return mnist(path)
    raise ValueError(f"unknown data set {name!r}; choose moons, digits or mnist")
