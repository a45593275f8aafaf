"""Every CPU backend learns the same thing: the bundled digits to the same test accuracy."""

import numpy as np
import pytest

from mlpbench import Network, data, load
from mlpbench.training import accuracy, train

DIGITS_NET = Network((64, 128, 10), "sigmoid", "softmax-ce")
BACKEND_OPTIONS = {"numpy": {}, "torch-cpu": {"threads": 2}, "c-serial": {}, "c-omp": {"threads": 2}}


@pytest.fixture(scope="module")
def digits():
    return data.digits(seed=0)


@pytest.fixture(scope="module")
def reference_history(digits):
    return train(load("numpy", DIGITS_NET, seed=0), digits, epochs=10, batch_size=32, lr=0.5, seed=0)


def test_reference_learns_digits(reference_history):
    assert reference_history[-1].test_accuracy > 0.95
    assert reference_history[-1].train_loss < reference_history[0].train_loss / 4


@pytest.mark.parametrize("backend", [b for b in BACKEND_OPTIONS if b != "numpy"])
def test_backend_reaches_the_reference_accuracy(backend, digits, reference_history):
    model = load(backend, DIGITS_NET, seed=0, **BACKEND_OPTIONS[backend])
    history = train(model, digits, epochs=10, batch_size=32, lr=0.5, seed=0)
    assert history[-1].test_accuracy > 0.95
    # Same seed, same batches: float32 rounding may flip a sample or two, not more.
    assert abs(history[-1].test_accuracy - reference_history[-1].test_accuracy) <= 2 / len(digits.X_test)
    np.testing.assert_allclose([h.train_loss for h in history], [h.train_loss for h in reference_history],
                               rtol=1e-3)


def test_authors_two_moons_network_stays_finite():
    # The original study's float sigmoid overflowed to NaN in the first forward pass; a stable sigmoid and
    # Glorot initialisation keep every loss finite (though six sigmoid layers learn slowly with plain SGD).
    history = train(load("numpy", "moons-5h300", seed=0), data.moons(seed=0), epochs=3, batch_size=32,
                    lr=0.3, weight_decay=1e-3, seed=0)
    assert np.isfinite([h.train_loss for h in history]).all()


def test_five_hidden_layers_of_tanh_learn_the_moons():
    net = Network((2, *([300] * 6), 1), "tanh", "sigmoid-bce")
    history = train(load("numpy", net, seed=0), data.moons(seed=0), epochs=5, batch_size=32, lr=0.3,
                    weight_decay=1e-3, seed=0)
    assert history[-1].test_accuracy > 0.85


def test_accuracy_of_single_output_uses_threshold():
    model = load("numpy", Network((1, 1), "sigmoid", "sigmoid-bce"),
                 [(np.array([[10.0]], np.float32), np.zeros(1, np.float32))])
    X = np.array([[1.0], [-1.0], [2.0]], np.float32)
    assert accuracy(model, X, np.array([[1.0], [0.0], [0.0]], np.float32)) == pytest.approx(2 / 3)


def test_train_rejects_zero_epochs(digits):
    with pytest.raises(ValueError, match="epochs"):
        train(load("numpy", DIGITS_NET), digits, epochs=0, batch_size=32, lr=0.1)
