"""The contract every backend keeps, checked once through the common interface over every CPU backend: a
batch owns its data and belongs to its forward pass, every backend takes the same options, closed models
refuse work, and a loss that stops being finite is reported."""

import warnings

import numpy as np
import pytest
from defects import DEFECTS, ModelInputs, draw_defects
from hypothesis import given, settings
from hypothesis import strategies as st

from mlpbench import BACKENDS, Batch, Network, load
from mlpbench.backends import CPU_BACKENDS, model_class
from mlpbench.backends.numpy_ref import NumpyModel
from mlpbench.thread_policy import usable_cores
from mlpbench.verify import random_batch

NET = Network((5, 7, 3), "tanh", "softmax-ce")
BCE_NET = Network((4, 6, 2), "sigmoid", "sigmoid-bce")


def batch_of(network, rows, seed=0):
    return random_batch(network, rows, np.random.default_rng(seed))


def one_step(model, batch):
    """Loss, output and gradients of forward + backprop on ``batch``."""
    model.forward(batch)
    model.backprop(batch)
    return model.loss(), model.output(), model.grads()


def assert_same_step(first, second):
    """Equal up to float32 rounding (a library may sum in another order on a view at another address)."""
    assert first[0] == pytest.approx(second[0], rel=1e-6)
    np.testing.assert_allclose(first[1], second[1], rtol=1e-6, atol=1e-7)
    for (w, b), (w2, b2) in zip(first[2], second[2], strict=True):
        np.testing.assert_allclose(w, w2, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(b, b2, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_a_prepared_batch_owns_its_data(backend):
    X, y = batch_of(BCE_NET, 5)
    expected = one_step(load(backend, BCE_NET, seed=1), load(backend, BCE_NET, seed=1).prepare(X, y))
    model = load(backend, BCE_NET, seed=1)
    batch = model.prepare(X, y)
    X[0, 0], y[0, 0] = np.nan, 5.0  # would fail the checks had they been made now
    assert_same_step(one_step(model, batch), expected)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_backprop_takes_only_the_batch_of_the_last_forward(backend):
    model = load(backend, NET)
    first, second = model.prepare(*batch_of(NET, 4, seed=1)), model.prepare(*batch_of(NET, 4, seed=2))
    with pytest.raises(RuntimeError, match="forward pass"):
        model.backprop(first)
    model.forward(first)
    with pytest.raises(ValueError, match="different batch"):
        model.backprop(second)
    model.backprop(first)
    model.forward(second)
    with pytest.raises(ValueError, match="different batch"):
        model.backprop(first)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_a_hand_built_batch_must_hold_as_many_rows_as_it_says(backend):
    model = load(backend, NET)
    good = load("numpy", NET).prepare(*batch_of(NET, 5))
    for forged in (Batch(good.X, good.T, 3, NET), Batch(good.X, good.T[:4], 5, NET)):
        with pytest.raises(ValueError, match="rows"):
            model.forward(forged)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_rows_of_a_prepared_batch_compute_like_a_batch_of_those_rows(backend):
    X, y = batch_of(NET, 10)
    whole = load(backend, NET).prepare(X, y)
    part = whole.rows(2, 7)
    assert part.size == 5 and type(part) is type(whole)
    expected = one_step(load(backend, NET), load(backend, NET).prepare(X[2:7], y[2:7]))
    assert_same_step(one_step(load(backend, NET), part), expected)
    for start, stop in ((3, 3), (-1, 2), (0, 11)):
        with pytest.raises(ValueError, match="rows"):
            whole.rows(start, stop)
    with pytest.raises(TypeError, match="start"):
        whole.rows(1.0, 3)


@pytest.mark.parametrize("backend", ["c-serial", "c-omp"])
def test_a_data_set_larger_than_max_batch_is_computed_on_in_rows(backend):
    X, y = batch_of(NET, 10)
    model = load(backend, NET, max_batch=4)
    data = model.prepare(X, y)
    with pytest.raises(ValueError, match="max_batch=4"):
        model.forward(data)
    reference = load("numpy", NET)
    for start in range(0, 10, 4):
        rows = data.rows(start, min(start + 4, 10))
        model.train_step(rows, 0.1)
        reference.step(X[start:start + 4], y[start:start + 4], 0.1)
        assert model.loss() == pytest.approx(reference.loss(), rel=1e-5)
    for (w, b), (rw, rb) in zip(model.params(), reference.params(), strict=True):
        np.testing.assert_allclose(w, rw, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(b, rb, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_backend_takes_the_same_thread_option(backend):
    cls = model_class(backend)
    assert cls.check_thread_option(None) is None
    if cls.threaded:
        assert cls.check_thread_option(1) == 1
        with pytest.raises(ValueError, match=f"at most {cls.max_threads()}"):
            cls.check_thread_option(cls.max_threads() + 1)
    else:
        assert cls.check_thread_option(1) is None  # its own fixed count
        with pytest.raises(ValueError, match="takes no thread count"):
            cls.check_thread_option(2)
    with pytest.raises(TypeError, match="threads"):
        cls.check_thread_option(2.0)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_one_set_of_options_loads_every_cpu_backend(backend):
    for threads in (None, 1):
        with load(backend, NET, threads=threads, on_nonfinite="raise") as model:
            assert np.isfinite(model.step(*batch_of(NET, 3), 0.1))
    with pytest.raises(ValueError, match="on_nonfinite"):
        load(backend, NET, on_nonfinite="shout")


def test_torch_cpu_refuses_more_threads_than_this_process_may_use():
    with pytest.raises(ValueError, match="threads"):
        load("torch-cpu", NET, threads=10**6)
    with pytest.raises(ValueError, match="threads"):
        load("torch-cpu", NET, threads=usable_cores() + 1)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_closed_models_refuse_every_call(backend):
    model = load(backend, NET)
    X, y = batch_of(NET, 3)
    batch = model.prepare(X, y)
    model.step(X, y, 0.1)
    model.close()
    model.close()
    calls = [lambda: model.prepare(X, y), lambda: model.forward(batch), lambda: model.backprop(batch),
             lambda: model.update(0.1), lambda: model.train_step(batch, 0.1), lambda: model.step(X, y, 0.1),
             model.loss, model.activations, model.output, model.params, model.grads, model.poison]
    for call in calls:
        with pytest.raises(RuntimeError, match="closed"):
            call()


@pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_same_errors_for_matrices_huge_steps_and_missing_gradients(backend):
    model = load(backend, NET)
    X, y = batch_of(NET, 3)
    with pytest.raises(TypeError, match="subclass matrix"):
        model.prepare(np.asmatrix(X), y)
    with pytest.raises(TypeError, match="subclass"):
        load(backend, BCE_NET).prepare(*[np.asmatrix(a) for a in batch_of(BCE_NET, 3)])
    with pytest.raises(RuntimeError, match="no gradients yet"):
        model.grads()
    batch = model.prepare(X, y)
    model.forward(batch)
    model.backprop(batch)
    with pytest.raises(ValueError, match="overflows float32"):
        model.update(1e39)
    with pytest.raises(ValueError, match="overflows float32"):
        model.train_step(batch, 0.1, weight_decay=1e39)


def test_the_c_size_limit_is_the_one_the_c_library_enforces():
    import re

    from mlpbench import native
    from mlpbench.backends.native_c import C_SIZE_LIMIT

    source = (native.native_dir() / "src" / "model.c").read_text()
    shift = re.search(r"SIZE_LIMIT\s*=\s*1\s*<<\s*(\d+)", source)
    assert shift and C_SIZE_LIMIT == 1 << int(shift.group(1))


@pytest.mark.parametrize("backend", ["c-serial", "c-omp"])
def test_c_size_limits_are_checked_before_c(backend):
    wide = Network((2**24 + 1, 2))
    with pytest.raises(ValueError, match="16777216"):
        load(backend, wide, params=[])
    with pytest.raises(ValueError, match="max_batch"):
        load(backend, NET, max_batch=2**24 + 1)


@pytest.mark.parametrize("backend", [b for b in CPU_BACKENDS if b != "numpy"])
def test_a_diverging_float32_run_is_reported_as_asked(backend):
    X, y = batch_of(NET, 4)

    def diverge(on_nonfinite):
        model = load(backend, NET, on_nonfinite=on_nonfinite)
        return [model.step(X, y, lr=3e38) for _ in range(3)]  # float32 overflows by the third step

    with pytest.raises(FloatingPointError, match=r"loss is (nan|inf)"):
        diverge("raise")
    with pytest.warns(RuntimeWarning, match="diverged"):
        diverge("warn")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not np.isfinite(diverge("ignore")[-1])


class NanLossModel(NumpyModel):
    name = "nan-loss"

    def loss(self) -> float:
        return float("nan")


def test_the_default_is_a_warning_and_finite_losses_say_nothing():
    X, y = batch_of(NET, 4)
    model = NanLossModel(NET, NET.init_params(0))
    assert model.on_nonfinite == "warn"
    with pytest.warns(RuntimeWarning, match="nan-loss: the training loss is nan"):
        model.step(X, y, 0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load("numpy", NET).step(X, y, 0.1)


# ------------------------------------------------------------------ random abuse: rejected if and only if defective

ABUSE_NETWORKS = [Network((3, 5, 2), "tanh", "softmax-ce"), Network((4, 7, 1), "relu", "sigmoid-bce")]
# kernel and max_batch are options of the C backends alone, not of the contract every backend keeps.
CONTRACT_DEFECTS = tuple(defect for defect in DEFECTS if defect not in ("kernel", "max_batch"))


@pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")
@settings(max_examples=120, deadline=None)
@given(data=st.data())
def test_random_inputs_are_rejected_if_and_only_if_defective(data):
    backend = data.draw(st.sampled_from(CPU_BACKENDS), label="backend")
    network = data.draw(st.sampled_from(ABUSE_NETWORKS), label="network")
    rows = data.draw(st.integers(2, 9), label="rows")
    X, y = batch_of(network, rows, seed=data.draw(st.integers(0, 2**16), label="seed"))
    inputs = ModelInputs(X, y, {"threads": data.draw(st.sampled_from([None, 1]), label="threads")})
    defects, inputs = draw_defects(data, network, inputs, CONTRACT_DEFECTS)
    try:
        model = load(backend, network, seed=1, **inputs.options)
        loss = model.step(inputs.X, inputs.y, inputs.lr)
    except (TypeError, ValueError) as error:
        assert defects, f"valid input rejected: {error}"
        assert str(error)
        return
    assert not defects, f"defects {defects} were not rejected"
    reference = load("numpy", network, seed=1)
    assert loss == pytest.approx(reference.step(inputs.X, inputs.y, inputs.lr), rel=1e-5)
