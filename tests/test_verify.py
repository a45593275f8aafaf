"""The scale-aware correctness criterion: rounding in a cancelling sum passes, a real error fails."""

import numpy as np
import pytest

from mlpbench import Network
from mlpbench.backends import REGISTRY
from mlpbench.backends.native_c import SerialCModel
from mlpbench.verify import (
    FLOAT32_EPS,
    FLOAT32_TOLERANCE,
    SCALED_TOLERANCE,
    check_stages,
    reference_magnitudes,
    scaled_error,
)

# Valid networks whose bias gradient is a nearly cancelling sum over the batch: the plain relative error
# misses the flat bound although the backend only rounds (seeds found by search).
CANCELLING = [
    ("torch-cpu", Network((67, 187, 1, 199), "tanh", "sigmoid-bce"), 33, 15, {"threads": 1}),
    ("c-serial", Network((258, 263, 101, 229, 1, 77, 239), "sigmoid", "softmax-ce"), 7, 31, {}),
]


@pytest.mark.parametrize("backend, network, batch, seed, options", CANCELLING, ids=[c[0] for c in CANCELLING])
def test_rounding_in_a_cancelling_sum_passes(backend, network, batch, seed, options):
    check = check_stages(backend, network, batch, seed=seed, **options)
    assert max(check.relative.values()) > FLOAT32_TOLERANCE  # what the flat bound got wrong
    assert check.passed, check
    assert check.scaled["grad_biases"] < 1


class BiasGradientOff(SerialCModel):
    """c-serial with a planted bug: every bias gradient 0.1 % too large."""

    name = "bias-gradient-off"

    def grads(self):
        return [(dw, db * np.float32(1.001)) for dw, db in super().grads()]


@pytest.mark.parametrize("network", [Network((5, 7, 3), "tanh"), Network((4, 9, 6, 2), "sigmoid", "sigmoid-bce")],
                         ids=lambda net: net.name)
def test_a_bias_gradient_off_by_a_tenth_of_a_percent_fails(network, monkeypatch):
    monkeypatch.setitem(REGISTRY, "bias-gradient-off", (__name__, "BiasGradientOff"))
    assert check_stages("c-serial", network, 8, seed=3).passed
    check = check_stages("bias-gradient-off", network, 8, seed=3)
    assert not check.passed
    assert check.worst == "grad_biases" and check.scaled["grad_biases"] > SCALED_TOLERANCE


def test_scaled_error_is_in_units_of_float32_rounding_of_the_magnitude():
    reference = np.array([1.0, -1.0])
    magnitude = np.array([1e3, 1e3])  # large terms that cancelled
    off = reference + FLOAT32_EPS * 1e3 * np.array([0.6, 0.8])  # ‖off − ref‖ = ε · 1e3
    assert scaled_error(off, reference, magnitude) == pytest.approx(1 / np.sqrt(2))
    assert scaled_error(np.array([np.nan, 1.0]), reference, magnitude) == np.inf
    assert scaled_error(reference, reference, np.zeros(2)) == 0.0


def test_magnitudes_of_a_bias_gradient_sum_the_absolute_terms():
    network = Network((2, 1), "relu", "sigmoid-bce")  # one layer: z = xw + b, δ = (sigmoid(z) − t) / B
    W, b = np.array([[0.5, -0.25]], np.float32), np.array([0.1], np.float32)
    X = np.array([[1.0, 2.0], [-3.0, 0.5]], np.float32)
    T = np.array([[1.0], [0.0]], np.float32)
    magnitudes = reference_magnitudes(network, [(W, b)], X, T, lr=0.1, weight_decay=0.0)
    z = X.astype(np.float64) @ W.T.astype(np.float64) + b
    p = 1 / (1 + np.exp(-z))
    mag_z = np.abs(X) @ np.abs(W.T) + np.abs(b)
    mag_p = p * (1 - p) * mag_z + p
    mag_delta = (mag_p + np.abs(p - T)) / 2
    np.testing.assert_allclose(magnitudes["activations"][0], mag_p)
    np.testing.assert_allclose(magnitudes["grad_biases"][0], mag_delta.sum(axis=0))
