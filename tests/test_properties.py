"""Random valid networks, batches and options on every backend that runs here (the GPU ones where a GPU
exists), checked against the float64 reference with the scale-aware criterion of ``mlpbench.verify``."""

import inspect

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlpbench import BACKENDS, BackendUnavailable, Network, load
from mlpbench.backends import model_class
from mlpbench.network import ACTIVATIONS
from mlpbench.verify import check_stages

PROBE = Network((2, 3, 2))


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request):
    try:
        load(request.param, PROBE).close()
    except BackendUnavailable as error:
        pytest.skip(str(error))
    return request.param


@st.composite
def networks(draw):
    widths = draw(st.lists(st.integers(1, 48), min_size=2, max_size=5), label="widths")
    loss = draw(st.sampled_from(["softmax-ce", "sigmoid-bce"] if widths[-1] > 1 else ["sigmoid-bce"]))
    return Network(tuple(widths), draw(st.sampled_from(ACTIVATIONS)), loss)


def options_for(backend, draw):
    cls = model_class(backend)
    options = {}
    if cls.threaded:
        options["threads"] = draw(st.integers(1, min(cls.max_threads(), 3)), label="threads")
    if "kernel" in inspect.signature(cls).parameters:  # the C library's product ladder (not c-blas: OpenBLAS)
        options["kernel"] = draw(st.sampled_from([1, 2, 3]), label="kernel")
    return options


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(network=networks(), batch=st.integers(1, 40), seed=st.integers(0, 2**31 - 1), data=st.data())
def test_random_networks_match_the_reference(backend, network, batch, seed, data):
    options = options_for(backend, data.draw)
    check = check_stages(backend, network, batch, seed=seed, **options)
    assert check.passed, (network.name, network.activation, network.loss, batch, options, check)
