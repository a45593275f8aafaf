"""The float64 reference is the ground truth for every other backend, so it is checked against calculus:
its gradients must match central finite differences of its own loss."""

import numpy as np
import pytest

from mlpbench import Network, load
from mlpbench.verify import random_batch, random_params, relative_error


def loss_at(network, params, X, y):
    model = load("numpy", network, params)
    batch = model.prepare(X, y)
    model.forward(batch)
    return model.loss()


@pytest.mark.parametrize("network", [
    Network((3, 5, 4), "sigmoid", "softmax-ce"),
    Network((4, 6, 5, 1), "tanh", "sigmoid-bce"),
    Network((2, 7, 3), "relu", "softmax-ce"),
    Network((5, 3, 2), "sigmoid", "sigmoid-bce"),
], ids=lambda net: f"{net.name}-{net.activation}-{net.loss}")
def test_gradients_match_finite_differences(network):
    rng = np.random.Generator(np.random.PCG64(7))
    params = random_params(network, rng)
    X, y = random_batch(network, 6, rng)
    model = load("numpy", network, params)
    batch = model.prepare(X, y)
    model.forward(batch)
    model.backprop(batch)
    grads = model.grads()
    # Differentiate in float64 around the float32 parameters (the reference works in float64).
    base = [(w.astype(np.float64), b.astype(np.float64)) for w, b in params]
    step = 1e-6
    for layer in range(network.n_layers):
        for which in (0, 1):
            numeric = np.zeros_like(base[layer][which])
            for index in np.ndindex(numeric.shape):
                values = []
                for sign in (1, -1):
                    shifted = [(w.copy(), b.copy()) for w, b in base]
                    shifted[layer][which][index] += sign * step
                    values.append(loss_at(network, shifted, X, y))
                numeric[index] = (values[0] - values[1]) / (2 * step)
            assert relative_error(grads[layer][which], numeric) < 1e-6, (layer, which)


def test_relu_gradient_is_zero_where_inactive():
    network = Network((2, 3, 2), "relu", "softmax-ce")
    params = [(np.array([[1, 0], [0, 1], [-1, -1]], np.float32), np.zeros(3, np.float32)),
              (np.ones((2, 3), np.float32), np.zeros(2, np.float32))]
    model = load("numpy", network, params)
    model.step(np.array([[1.0, 2.0]], np.float32), np.array([1]), lr=0.0)
    assert np.all(model.grads()[0][0][2] == 0.0)  # third hidden unit is inactive for this input


def test_update_applies_weight_decay_to_weights_only():
    network = Network((2, 2), "sigmoid", "softmax-ce")
    params = [(np.ones((2, 2), np.float32), np.ones(2, np.float32))]
    model = load("numpy", network, params)
    batch = model.prepare(np.zeros((1, 2), np.float32), np.array([0]))
    model.forward(batch)
    model.backprop(batch)
    dW, db = model.grads()[0]
    model.update(lr=0.5, weight_decay=0.1)
    W, b = model.params()[0]
    np.testing.assert_allclose(W, 1 - 0.5 * (dW + 0.1), rtol=1e-12)
    np.testing.assert_allclose(b, 1 - 0.5 * db, rtol=1e-12)


def test_loss_stays_finite_for_saturated_outputs():
    # Large pre-activations are what made the original study's network produce NaN.
    network = Network((1, 1), "sigmoid", "sigmoid-bce")
    model = load("numpy", network, [(np.array([[200.0]], np.float32), np.zeros(1, np.float32))])
    batch = model.prepare(np.array([[1.0], [-1.0]], np.float32), np.array([0.0, 1.0], np.float32))
    model.forward(batch)
    assert model.loss() == pytest.approx(200.0)
    model.backprop(batch)
    assert all(np.isfinite(g).all() for pair in model.grads() for g in pair)
