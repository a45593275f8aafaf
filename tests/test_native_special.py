"""NaN reaching the C backends is never turned into a number: a poisoned input row or weight gives a NaN
loss and NaN outputs on every instruction set (the C tests cover +-inf limits and every kernel rung)."""

import math

import numpy as np
import pytest

from mlpbench import load, native
from mlpbench.network import Network

NETWORK = Network((6, 9, 4), "tanh", "softmax-ce")
NEEDS_BLAS = pytest.mark.skipif(not native.library_path("blas").is_file(),
                                reason="libmlp_blas.so not built (make -C native with scipy-openblas32 installed)")
BACKENDS = [("c-serial", {}), ("c-omp", {"threads": 2}), pytest.param(("c-blas", {"threads": 2}), marks=NEEDS_BLAS)]
INSTRUCTION_SETS = [name for name in native.ISAS if name != "auto"]


def make_model(backend, isa, activation="tanh"):
    if not native.library("serial").mlp_isa_supported(native.ISAS[isa]):
        pytest.skip(f"this CPU cannot run the {isa} kernels")
    name, options = backend
    network = Network(NETWORK.sizes, activation, NETWORK.loss)
    return load(name, network, seed=1, isa=isa, **options)


def batch_of(model, rows=5):
    rng = np.random.default_rng(3)
    X = rng.standard_normal((rows, NETWORK.n_inputs)).astype(np.float32)
    y = rng.integers(0, NETWORK.n_outputs, rows)
    return model.prepare(X, y)


@pytest.mark.parametrize("isa", INSTRUCTION_SETS)
@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b[0])
def test_nan_input_gives_nan_loss_and_output(backend, isa):
    model = make_model(backend, isa)
    batch = batch_of(model)
    model.forward(batch)
    assert math.isfinite(model.loss())
    # Python's checks reject NaN, so it is written past them, into the memory C reads.
    batch.x_ptr[0] = math.nan
    model.forward(batch)
    assert math.isnan(model.loss()), model.loss()
    output = model.output()
    assert np.isnan(output[0]).all() and np.isfinite(output[1:]).all(), output


@pytest.mark.parametrize("activation", ["sigmoid", "tanh", "relu"])
@pytest.mark.parametrize("isa", INSTRUCTION_SETS)
@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b[0])
def test_nan_weight_gives_nan_everywhere(backend, isa, activation):
    model = make_model(backend, isa, activation)
    lib = model._lib
    lib.mlp_model_buffer(model._model, lib.MLP_BUF_WEIGHTS, 1)[0] = math.nan
    batch = batch_of(model)
    model.forward(batch)
    assert math.isnan(model.loss())
    assert np.isnan(model.output()).all()
    model.backprop(batch)
    assert all(np.isnan(dW).any() and np.isnan(db).any() for dW, db in model.grads())
