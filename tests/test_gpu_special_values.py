"""NaN in gives NaN out on every GPU backend: after a NaN or an infinity is planted in the inputs, the targets
or a weight (past the input checks), every activation, the loss, every gradient and every parameter holds a
non-finite entry exactly where the float64 reference holds one (no clamp, max or min may turn it into a
number). The CUDA rungs compute the reference's own formulas (output gradient P - T, derivatives from the
activations), so they must match it entry by entry; PyTorch's autograd spreads a special value differently
within a tensor (its soft-target cross-entropy gradient is P * sum(T) - T, its ReLU backward passes a NaN
gradient), so for the PyTorch backends each tensor must be non-finite exactly when the reference's is.
Needs an NVIDIA GPU, PyTorch with CUDA and PyCUDA; skipped with the reason elsewhere."""

import numpy as np
import pytest
import torch

from mlpbench import Network, load
from mlpbench.backends import BACKENDS, CPU_BACKENDS
from mlpbench.verify import random_batch, random_params

# the float64 reference warns about the very values planted here
pytestmark = [pytest.mark.gpu, pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")]
GPU = [backend for backend in BACKENDS if backend not in CPU_BACKENDS]
# compiles once per network and batch; the default mode keeps that to seconds
OPTIONS = {"torch-gpu-compile": {"mode": "default"}}

# Every activation, both losses, and an output wider than the fused kernel's one-warp head.
NETWORKS = [Network((6, 20, 9, 4), "sigmoid", "softmax-ce"), Network((5, 17, 3), "tanh", "sigmoid-bce"),
            Network((7, 33, 40), "relu", "softmax-ce")]


pytestmark = pytest.mark.usefixtures("cuda_ready")


def plant(model, batch, where: str, value: float) -> None:
    """Write ``value`` past the input checks: into the prepared batch (a host batch's read-only copy made
    writable for this), or into the first weight matrix."""
    if where in ("X", "T"):
        array = batch.X if where == "X" else batch.T
        if isinstance(array, np.ndarray):
            array.flags.writeable = True
        array[1, 2 if where == "X" else 0] = value
    elif hasattr(model, "_params"):  # numpy: float64 arrays
        model._params[0][0][1, 2] = value
    elif hasattr(model, "_weights"):  # the PyTorch backends: leaf tensors
        with torch.no_grad():
            model._weights[0][1, 2] = value
    else:  # the CUDA backends: the current weights
        model._weight_tensors()[0][1, 2] = value


def nonfinite(values) -> list[np.ndarray]:
    return [~np.isfinite(np.asarray(v)) for v in values]


def outcomes(backend: str, network: Network, where: str, value: float, how: str) -> dict[str, list[np.ndarray]]:
    """Which entries of each result are NaN or infinite after one planted training step."""
    rng = np.random.default_rng(3)
    params = random_params(network, rng)
    X, y = random_batch(network, 5, rng)
    model = load(backend, network, params, **OPTIONS.get(backend, {}))
    try:
        batch = model.prepare(X.copy(), y.copy())
        plant(model, batch, where, value)
        found = {}
        if how == "stages":
            model.forward(batch)
            found["activations"] = nonfinite(model.activations())
            found["loss"] = nonfinite([model.loss()])
            model.backprop(batch)
            found["grads"] = nonfinite([g for pair in model.grads() for g in pair])
            model.update(0.1, 1e-3)
        else:
            model.train_step(batch, 0.1, 1e-3)
            found["loss"] = nonfinite([model.loss()])
        found["params"] = nonfinite([p for pair in model.params() for p in pair])
        return found
    finally:
        model.close()


@pytest.mark.parametrize("how", ["stages", "step"])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("where", ["X", "T", "weights"])
@pytest.mark.parametrize("network", NETWORKS, ids=[f"{n.name}-{n.activation}" for n in NETWORKS])
@pytest.mark.parametrize("backend", GPU)
def test_special_values_reach_the_same_entries_as_in_the_reference(backend, network, where, value, how):
    reference = outcomes("numpy", network, where, value, "stages")
    assert any(mask.any() for masks in reference.values() for mask in masks)  # the plant reached something
    if np.isnan(value):
        assert reference["loss"][0].all()
    found = outcomes(backend, network, where, value, how)
    entry_by_entry = backend.startswith("cuda-")
    for quantity, masks in found.items():
        for index, (mask, expected) in enumerate(zip(masks, reference[quantity], strict=True)):
            if entry_by_entry:
                np.testing.assert_array_equal(mask, expected, err_msg=f"{quantity}[{index}]")
            else:
                assert mask.any() == expected.any(), f"{quantity}[{index}]"
