import numpy as np
import pytest

from mlpbench import PRESETS, Network, resolve


def test_authors_network_has_seven_layers_of_width_300():
    net = PRESETS["moons-5h300"]
    assert net.sizes == (2, 300, 300, 300, 300, 300, 300, 1)
    assert net.n_layers == 7
    assert net.loss == "sigmoid-bce" and net.activation == "sigmoid"


def test_initialisation_is_seeded_and_follows_glorot_or_he():
    net = Network((100, 50, 10), "tanh")
    first, again, other = net.init_params(3), net.init_params(3), net.init_params(4)
    for (w1, b1), (w2, _) in zip(first, again, strict=True):
        assert w1.dtype == np.float32 and np.array_equal(w1, w2) and not b1.any()
    assert not np.array_equal(first[0][0], other[0][0])
    glorot = np.sqrt(6 / 150)
    assert np.abs(first[0][0]).max() <= glorot and np.abs(first[0][0]).max() > 0.9 * glorot
    he = np.sqrt(6 / 100)
    relu_weights = Network((100, 50, 10), "relu").init_params(3)[0][0]
    assert np.abs(relu_weights).max() <= he and np.abs(relu_weights).max() > 0.9 * he


def test_flop_counts_are_dominated_by_products():
    net = Network((1024, 4096, 1024))
    flops = net.flops(256)
    one_product = 2 * 256 * 1024 * 4096  # both layers have 1024 x 4096 weights
    assert 2 * one_product <= flops["forward"] < 1.01 * 2 * one_product
    # weight gradients of both layers, input gradient of the second only (the input needs none)
    assert 3 * one_product <= flops["backprop"] < 1.01 * 3 * one_product
    assert flops["step"] == flops["forward"] + flops["backprop"] + flops["update"]


@pytest.mark.parametrize("sizes, message", [
    ((5,), "at least an input and an output"),
    ((5, 0, 2), "positive integers"),
    ((5, 2.5, 2), "positive integers"),
    ((5, 1), "at least 2 outputs"),
])
def test_bad_networks_are_rejected(sizes, message):
    with pytest.raises(ValueError, match=message):
        Network(sizes)


def test_unknown_activation_and_loss_are_rejected():
    with pytest.raises(ValueError, match="unknown activation"):
        Network((2, 2), "gelu")
    with pytest.raises(ValueError, match="unknown loss"):
        Network((2, 2), "relu", "mse")


def test_resolve_accepts_presets_and_size_strings():
    assert resolve("digits") == PRESETS["digits"]
    assert resolve("3-4-1") == Network((3, 4, 1), "sigmoid", "sigmoid-bce")
    with pytest.raises(ValueError, match="look like"):
        resolve("three-layers")
