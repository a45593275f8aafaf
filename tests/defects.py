"""Defective inputs to the model API, drawn by hypothesis, for the tests that check that an input is rejected
if and only if it breaks a rule.

Every kind breaks its rule whatever else is drawn with it, so inputs drawn with one or two defects are always
invalid and inputs drawn with none are valid.
"""

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from hypothesis import strategies as st

from mlpbench import Network

#: The batch's type, layout and values, its labels, then the options of ``load`` and the step's learning rate.
DEFECTS = ("dtype", "fortran", "strided", "misaligned", "extra_column", "empty", "nan", "inf", "labels",
           "targets_nan", "matrix", "threads", "kernel", "max_batch", "lr")


@dataclass(frozen=True)
class ModelInputs:
    """What a test hands the model API: ``load(backend, network, **options)`` then ``step(X, y, lr)``."""

    X: Any
    y: Any
    options: dict[str, Any] = field(default_factory=dict)
    lr: Any = 0.1


def draw_defects(data: st.DataObject, network: Network, inputs: ModelInputs,
                 allowed: tuple[str, ...] = DEFECTS) -> tuple[list[str], ModelInputs]:
    """Draw none, one or two of the ``allowed`` kinds and apply them; returns the kinds and the inputs."""
    # A one-row array is C-contiguous in either order, so it cannot be made Fortran-only.
    applicable = [defect for defect in allowed if defect != "fortran" or inputs.X.shape[0] >= 2]
    defects = data.draw(st.lists(st.sampled_from(applicable), max_size=2, unique=True), label="defects")
    # NaN and Inf first: writing them copies X, which would undo a layout defect applied before.
    for defect in sorted(defects, key=lambda d: d not in ("nan", "inf")):
        inputs = apply_defect(data, defect, network, inputs)
    return defects, inputs


def apply_defect(data: st.DataObject, defect: str, network: Network, inputs: ModelInputs) -> ModelInputs:
    """``inputs`` with one ``defect`` (one of :data:`DEFECTS`) applied, its details drawn from ``data``."""
    X, y = inputs.X, inputs.y
    if defect == "dtype":
        with np.errstate(invalid="ignore"):  # NaN or Inf drawn before has no int32 value
            return replace(inputs, X=X.astype(data.draw(st.sampled_from([np.float64, np.float16, np.int32]))))
    if defect == "fortran":
        return replace(inputs, X=np.asfortranarray(X))
    if defect == "strided":
        return replace(inputs, X=np.repeat(X, 2, axis=1)[:, ::2])
    if defect == "misaligned":
        offset = data.draw(st.integers(1, 3))
        raw = np.zeros(X.nbytes + offset, dtype=np.uint8)
        raw[offset:] = np.frombuffer(X.tobytes(), dtype=np.uint8)
        return replace(inputs, X=np.frombuffer(raw.data, dtype=X.dtype, count=X.size, offset=offset).reshape(X.shape))
    if defect == "extra_column":
        return replace(inputs, X=np.ones((X.shape[0], X.shape[1] + 1), dtype=X.dtype))
    if defect == "empty":
        return replace(inputs, X=X[:0], y=y[:0])
    if defect in ("nan", "inf"):
        X = X.copy()
        X.flat[data.draw(st.integers(0, X.size - 1))] = np.nan if defect == "nan" else np.inf
        return replace(inputs, X=X)
    if defect == "labels":  # one class past the last, or a target above 1
        return replace(inputs, y=y + (network.n_outputs if network.loss == "softmax-ce" else 2))
    if defect == "targets_nan":
        return replace(inputs, y=np.full(y.shape, np.nan, np.float32))
    if defect == "matrix":
        return replace(inputs, X=np.asmatrix(X))
    if defect == "threads":
        return replace(inputs, options={**inputs.options,
                                        "threads": data.draw(st.sampled_from([0, -2, 2.0, True, 10**8]))})
    if defect == "kernel":
        return replace(inputs, options={**inputs.options, "kernel": data.draw(st.sampled_from([0, 7, 3.0, "2"]))})
    if defect == "max_batch":  # zero, or fewer rows than the batch holds
        return replace(inputs, options={**inputs.options,
                                        "max_batch": data.draw(st.integers(0, max(X.shape[0] - 1, 0)))})
    if defect == "lr":
        return replace(inputs, lr=data.draw(st.sampled_from([-0.1, float("nan"), float("inf"), 1e39, "0.1"])))
    raise ValueError(f"unknown defect {defect!r}")
