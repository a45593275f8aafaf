"""The C model's gradients as one contiguous block (the views alias C's memory: what is written there is
what ``update`` applies) and the layer-wise backprop, bit-identical to the whole one."""

import numpy as np
import pytest

from mlpbench import load, native
from mlpbench.network import Network

NETWORK = Network((7, 33, 17, 3), "tanh", "softmax-ce")
BACKENDS = [("c-serial", {}), ("c-omp", {"threads": 2})]
NEEDS_BLAS = pytest.mark.skipif(not native.library_path("blas").is_file(),
                                reason="libmlp_blas.so not built (make -C native with scipy-openblas32 installed)")


def prepared(model, rows=9):
    rng = np.random.default_rng(4)
    X = rng.standard_normal((rows, NETWORK.n_inputs)).astype(np.float32)
    return model.prepare(X, rng.integers(0, NETWORK.n_outputs, rows))


def flat(params):
    return np.concatenate([np.concatenate([W.ravel(), b]) for W, b in params])


@pytest.mark.parametrize("backend", [*BACKENDS, pytest.param(("c-blas", {"threads": 2}), marks=NEEDS_BLAS)],
                         ids=lambda b: b[0])
def test_block_is_the_gradients_and_update_reads_it(backend):
    name, options = backend
    model = load(name, NETWORK, seed=2, **options)
    block = model.gradient_block()
    assert block.dtype == np.float32 and block.shape == (sum((n_in + 1) * n_out for n_out, n_in in
                                                             NETWORK.layer_shapes),)
    batch = prepared(model)
    model.forward(batch)
    model.backprop(batch)
    np.testing.assert_array_equal(block, flat(model.grads()))
    before = flat(model.params())
    pattern = np.linspace(-1.0, 1.0, block.size, dtype=np.float32)
    block[:] = pattern  # as an all-reduce would, in place
    np.testing.assert_array_equal(flat(model.grads()), pattern)
    model.update(0.5)
    np.testing.assert_allclose(flat(model.params()), before - 0.5 * pattern, rtol=0, atol=1e-6)


@pytest.mark.parametrize("kernel", sorted(native.KERNELS))
@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b[0])
def test_layerwise_backprop_equals_backprop(backend, kernel):
    name, options = backend
    whole = load(name, NETWORK, seed=2, kernel=kernel, **options)
    layered = load(name, NETWORK, seed=2, kernel=kernel, **options)
    batch_whole, batch_layered = prepared(whole), prepared(layered)
    whole.forward(batch_whole)
    whole.backprop(batch_whole)
    layered.forward(batch_layered)
    block = layered.gradient_block()
    for layer in range(NETWORK.n_layers, 0, -1):
        with pytest.raises(RuntimeError, match="update before backprop"):
            layered.update(0.1)
        layered.backprop_layer(batch_layered, layer)
        # The layer just done is final: it can be all-reduced now.
        start = sum((n_in + 1) * n_out for n_out, n_in in NETWORK.layer_shapes[:layer - 1])
        np.testing.assert_array_equal(block[start:], whole.gradient_block()[start:])
    assert flat(layered.grads()).tobytes() == flat(whole.grads()).tobytes()
    layered.update(0.1)
    whole.update(0.1)
    assert flat(layered.params()).tobytes() == flat(whole.params()).tobytes()


def test_layerwise_order_and_arguments_checked():
    model = load("c-serial", NETWORK, seed=2)
    batch = prepared(model)
    with pytest.raises(RuntimeError, match="forward pass"):
        model.backprop_layer(batch, 3)
    model.forward(batch)
    with pytest.raises(RuntimeError, match="out of order"):
        model.backprop_layer(batch, 2)
    with pytest.raises(ValueError, match="layer"):
        model.backprop_layer(batch, 4)
    with pytest.raises(TypeError, match="layer"):
        model.backprop_layer(batch, 2.0)
    model.close()
    with pytest.raises(RuntimeError, match="closed"):
        model.gradient_block()
