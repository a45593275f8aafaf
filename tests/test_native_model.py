"""``c-serial`` and ``c-omp`` against the float64 reference, stage by stage and over 50 training steps;
bit-identical results for any thread count; and every malformed input stopped in Python, before C."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from defects import ModelInputs, draw_defects
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from mlpbench import data, load, native
from mlpbench.backends import model_class
from mlpbench.backends.base import Batch
from mlpbench.network import Network
from mlpbench.verify import FLOAT32_TOLERANCE, compare_stages, random_batch, training_losses

# Widths and batches that divide no tile (6 x 16 and 8 x 32, KC 512, MC 144), one width and one batch over KC;
# every activation and loss.
CASES = [
    (Network((33, 257, 7), "sigmoid", "softmax-ce"), 7),
    (Network((7, 33, 1), "tanh", "sigmoid-bce"), 257),
    (Network((1, 7, 33, 2), "relu", "softmax-ce"), 1),
    (Network((257, 33, 7), "relu", "sigmoid-bce"), 33),
    (Network((300, 20, 5), "tanh", "softmax-ce"), 13),
    (Network((2, 30, 30, 1), "sigmoid", "sigmoid-bce"), 32),
    (Network((515, 9, 3), "relu", "softmax-ce"), 517),
    # A forward layer of at most MLP_DOT_ROWS rows and MLP_DOT_MIN_COLS outputs is dot products: k of 9 (a tail
    # only), 65 (one past 64) and 70.
    (Network((9, 65, 70, 1), "relu", "sigmoid-bce"), 4),
    (Network((70, 64, 3), "sigmoid", "softmax-ce"), 1),
]
BACKENDS = [("c-serial", {}), ("c-omp", {"threads": 1}), ("c-omp", {"threads": 2}), ("c-omp", {"threads": 3})]
# c-blas exists where the scipy-openblas32 wheel was installed when the library was built (a dependency).
NEEDS_BLAS = pytest.mark.skipif(not native.library_path("blas").is_file(),
                                reason="libmlp_blas.so not built (make -C native with scipy-openblas32 installed)")


def case_id(case):
    network, batch = case
    return f"{network.name}-{network.activation}-{network.loss}-b{batch}"


def backend_id(backend):
    name, options = backend
    return name + "".join(f"-{key}{value}" for key, value in options.items())


@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("kernel", sorted(native.KERNELS))
@pytest.mark.parametrize("backend", BACKENDS, ids=backend_id)
def test_stages_match_reference(backend, kernel, case):
    name, options = backend
    network, batch = case
    errors = compare_stages(name, network, batch, seed=11, kernel=kernel, **options)
    assert max(errors.values()) <= FLOAT32_TOLERANCE, errors


@NEEDS_BLAS
@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("threads", [1, 2])
def test_blas_stages_match_reference(threads, case):
    network, batch = case
    errors = compare_stages("c-blas", network, batch, seed=11, threads=threads)
    assert max(errors.values()) <= FLOAT32_TOLERANCE, errors


@NEEDS_BLAS
def test_blas_library_runs_openblas_on_the_threads_asked():
    import ctypes

    import scipy_openblas32

    lib = native.library("blas")
    assert lib.mlp_has_blas() == 1 and lib.mlp_has_openmp() == 0
    assert native.library("omp").mlp_has_blas() == 0
    # The library opened by c-blas (by its rpath) is this one: dlopen hands back the same instance.
    openblas = ctypes.CDLL(str(Path(scipy_openblas32.get_lib_dir()) / "libscipy_openblas.so"))
    network = Network((7, 33, 3), "tanh", "softmax-ce")
    X, y = random_batch(network, 9, np.random.default_rng(0))
    for threads in (2, 1, 2):
        model = load("c-blas", network, threads=threads)
        model.step(X, y, 0.1)
        assert openblas.scipy_openblas_get_num_threads() == threads
    assert "scipy_openblas" in native.build_info()["blas"]


@pytest.mark.parametrize("kernel", sorted(native.KERNELS))
@pytest.mark.parametrize("isa", [isa for isa in native.ISAS if isa != "auto"])
def test_each_instruction_set_matches_reference(isa, kernel):
    if not native.library("omp").mlp_isa_supported(native.ISAS[isa]):
        pytest.skip(f"this CPU cannot run the {isa} kernels")
    for network, batch in CASES[:5]:
        errors = compare_stages("c-omp", network, batch, seed=5, threads=2, kernel=kernel, isa=isa)
        assert max(errors.values()) <= FLOAT32_TOLERANCE, (network, errors)


def digits_data():
    dataset = data.digits()
    return dataset.X_train, dataset.y_train


TRAINING = [
    (Network((64, 128, 10), "sigmoid", "softmax-ce"), digits_data, 32, 0.5),
    (Network((64, 33, 17, 10), "relu", "softmax-ce"), digits_data, 57, 0.1),
    (Network((2, 30, 30, 1), "tanh", "sigmoid-bce"),
     lambda: (data.moons().X_train, data.moons().y_train), 32, 0.3),
]


@pytest.mark.parametrize("training", TRAINING, ids=lambda t: f"{t[0].name}-{t[0].activation}")
@pytest.mark.parametrize("backend", [("c-serial", {}), ("c-omp", {"threads": 2}),
                                     ("c-omp", {"threads": 2, "kernel": 1}),
                                     pytest.param(("c-blas", {"threads": 2}), marks=NEEDS_BLAS)], ids=backend_id)
def test_fifty_training_steps_follow_reference(backend, training):
    name, options = backend
    network, get_data, batch, lr = training
    X, y = get_data()
    reference = training_losses("numpy", network, X, y, 50, batch, lr, weight_decay=1e-3)
    losses = training_losses(name, network, X, y, 50, batch, lr, weight_decay=1e-3, **options)
    np.testing.assert_allclose(losses, reference, rtol=1e-4)
    assert losses[-1] < losses[0]  # it learns


@pytest.mark.parametrize("kernel", sorted(native.KERNELS))
def test_thread_count_changes_no_bit(kernel):
    network = Network((64, 33, 17, 10), "tanh", "softmax-ce")
    X, y = digits_data()
    runs = []
    for threads in (1, 2, 3):
        model = load("c-omp", network, seed=3, threads=threads, kernel=kernel)
        losses = [model.step(X[i * 25:(i + 1) * 25], y[i * 25:(i + 1) * 25], 0.2, 1e-3) for i in range(50)]
        runs.append((losses, model.params(), model.grads(), model.activations()))
        model.close()
    first_losses, first_params, first_grads, first_acts = runs[0]
    for losses, params, grads, acts in runs[1:]:
        assert losses == first_losses
        for (w, b), (w0, b0) in zip(params + grads, first_params + first_grads, strict=True):
            np.testing.assert_array_equal(w, w0)
            np.testing.assert_array_equal(b, b0)
        for a, a0 in zip(acts, first_acts, strict=True):
            np.testing.assert_array_equal(a, a0)


@pytest.mark.parametrize("batch", [1, 3, 4])
def test_a_few_rows_forward_has_the_same_bits_on_every_vector_set_and_thread_count(batch):
    """The dot products of a forward layer of a few rows (MLP_DOT_ROWS) sum in 16 lanes in one fixed order on
    the AVX2 and AVX-512 sets alike, and each thread takes whole columns: one result for all of them."""
    lib = native.library("omp")
    assert batch <= lib.MLP_DOT_ROWS and 100 >= lib.MLP_DOT_MIN_COLS
    network = Network((75, 100, 100, 10), "tanh", "softmax-ce")
    X, y = random_batch(network, batch, np.random.default_rng(4))
    runs = []
    for isa in ("avx2", "avx512"):
        if not lib.mlp_isa_supported(native.ISAS[isa]):
            continue
        for threads in (1, 2, 3):
            model = load("c-omp", network, seed=2, threads=threads, isa=isa)
            model.step(X, y, 0.1, 1e-3)
            model.forward(model.prepare(X, y))
            runs.append((isa, threads, model.activations(), model.params()))
            model.close()
    if len({isa for isa, *_ in runs}) < 2:
        pytest.skip("this CPU cannot run both the avx2 and avx512 kernels")
    _, _, first_acts, first_params = runs[0]
    for isa, threads, acts, params in runs[1:]:
        for a, a0 in zip(acts, first_acts, strict=True):
            np.testing.assert_array_equal(a, a0, err_msg=f"{isa} {threads} threads")
        for (w, b), (w0, b0) in zip(params, first_params, strict=True):
            np.testing.assert_array_equal(w, w0, err_msg=f"{isa} {threads} threads")
            np.testing.assert_array_equal(b, b0, err_msg=f"{isa} {threads} threads")


def test_fused_step_equals_the_three_stages():
    network = Network((7, 33, 17, 3), "sigmoid", "softmax-ce")
    X, y = random_batch(network, 9, np.random.default_rng(0))
    fused, staged = load("c-omp", network, threads=2), load("c-omp", network, threads=2)
    fused.train_step(fused.prepare(X, y), 0.1, 1e-3)
    batch = staged.prepare(X, y)
    staged.forward(batch)
    staged.backprop(batch)
    staged.update(0.1, 1e-3)
    assert fused.loss() == staged.loss()
    for (w, b), (w0, b0) in zip(fused.params() + fused.grads(), staged.params() + staged.grads(), strict=True):
        np.testing.assert_array_equal(w, w0)
        np.testing.assert_array_equal(b, b0)


def test_inference_predict_and_attributes():
    network = Network((5, 9, 3), "relu", "softmax-ce")
    model = load("c-omp", network, threads=2, max_batch=40)
    reference = load("numpy", network)
    X = np.random.default_rng(1).standard_normal((40, 5)).astype(np.float32)
    np.testing.assert_allclose(model.predict(X), reference.predict(X), rtol=1e-5, atol=1e-7)
    assert np.isnan(model.loss())
    assert (model.threads, model.kernel, model.max_batch) == (2, 3, 40)
    assert model.isa == native.ISA_NAMES[native.library("omp").mlp_best_isa()]
    assert load("c-serial", network).threads == 1


def test_poison_fills_what_the_next_stage_writes():
    network = Network((4, 6, 3), "sigmoid", "softmax-ce")
    model = load("c-omp", network, threads=2)
    X, y = random_batch(network, 5, np.random.default_rng(2))
    batch = model.prepare(X, y)
    model.forward(batch)
    model.poison()  # keeps the activations backprop reads
    assert np.isfinite(model.output()).all()
    model.backprop(batch)
    model.poison()  # keeps the gradients update reads
    assert all(np.isnan(a).all() for a in model.activations())
    assert all(np.isfinite(g).all() for pair in model.grads() for g in pair)
    model.update(0.1)


# ------------------------------------------------------------------ malformed input stops in Python


class CallRecorder:
    """Forwards to the real library and records which C functions were called."""

    def __init__(self, lib):
        self._lib = lib
        self.calls = []

    def __getattr__(self, name):
        attribute = getattr(self._lib, name)
        if callable(attribute):
            def record(*args):
                self.calls.append(name)
                return attribute(*args)
            return record
        return attribute


STAGE_FUNCTIONS = {"mlp_forward", "mlp_backprop", "mlp_update", "mlp_train_step"}


@pytest.fixture
def recorded():
    """A c-omp model whose library calls are recorded, with a good batch."""
    network = Network((4, 6, 3), "tanh", "softmax-ce")
    model = load("c-omp", network, threads=2, max_batch=8)
    recorder = CallRecorder(model._lib)
    model._lib = recorder
    X, y = random_batch(network, 5, np.random.default_rng(0))
    yield model, recorder, X, y
    model.close()


def misaligned(array):
    raw = np.zeros(array.nbytes + 1, dtype=np.uint8)
    raw[1:] = np.frombuffer(array.tobytes(), dtype=np.uint8)
    return np.frombuffer(raw.data, dtype=array.dtype, count=array.size, offset=1).reshape(array.shape)


@pytest.mark.parametrize(("make", "error", "match"), [
    (lambda X, y: (X.astype(np.float64), y), TypeError, "float32"),
    (lambda X, y: (np.asfortranarray(np.repeat(X, 2, axis=0)[::2]), y), ValueError, "C-contiguous"),
    (lambda X, y: (misaligned(X), y), ValueError, "misaligned"),
    (lambda X, y: (X[:, :3].copy(), y), ValueError, "features"),
    (lambda X, y: (X[:0], y[:0]), ValueError, "empty"),
    (lambda X, y: (np.where(X > 0, np.nan, X).astype(np.float32), y), ValueError, "NaN"),
    (lambda X, y: (X, y + 10), ValueError, "labels"),
    (lambda X, y: (X, y.astype(np.float32)), TypeError, "integer class labels"),
])
def test_bad_batch_raises_before_c(recorded, make, error, match):
    model, recorder, X, y = recorded
    with pytest.raises(error, match=match):
        model.prepare(*make(X, y))
    assert not STAGE_FUNCTIONS & set(recorder.calls)


def test_foreign_and_forged_batches_are_checked(recorded):
    model, recorder, X, y = recorded
    network = model.network
    numpy_batch = load("numpy", network).prepare(X, y)
    model.forward(numpy_batch)  # a plain Batch with host arrays works
    assert np.isfinite(model.output()).all()
    recorder.calls.clear()
    forged = [
        (Batch(X.astype(np.float64), None, 5, network), TypeError, "float32"),
        (Batch(X, None, 4, network), ValueError, "shape"),
        (Batch(X.tolist(), None, 5, network), TypeError, "numpy.ndarray"),
        (Batch(X, np.zeros((5, 2), np.float32), 5, network), ValueError, "T: expected shape"),
        (Batch(X, None, 5, Network((4, 6, 2))), ValueError, "prepared for network"),
        (Batch(np.tile(X, (2, 1)), None, 10, network), ValueError, "max_batch"),
        ("not a batch", TypeError, "expected a Batch"),
    ]
    for batch, error, match in forged:
        with pytest.raises(error, match=match):
            model.forward(batch)
    with pytest.raises(ValueError, match="no labels"):
        model.backprop(model.prepare(X))
    assert not STAGE_FUNCTIONS & set(recorder.calls)


def test_stage_order_and_step_sizes_checked(recorded):
    model, recorder, X, y = recorded
    batch = model.prepare(X, y)
    with pytest.raises(RuntimeError, match="forward"):
        model.backprop(batch)
    with pytest.raises(RuntimeError, match="backprop"):
        model.update(0.1)
    with pytest.raises(RuntimeError, match="backprop"):
        model.grads()
    with pytest.raises(RuntimeError, match="forward"):
        model.activations()
    assert not STAGE_FUNCTIONS & set(recorder.calls)
    model.forward(batch)
    model.backprop(batch)
    for lr, weight_decay, error in [(-0.1, 0.0, ValueError), (float("nan"), 0.0, ValueError),
                                    (1e300, 0.0, ValueError), (0.1, float("inf"), ValueError),
                                    ("0.1", 0.0, TypeError), (0.1, None, TypeError)]:
        with pytest.raises(error):
            model.update(lr, weight_decay)
        with pytest.raises(error):
            model.train_step(batch, lr, weight_decay)
    assert recorder.calls.count("mlp_update") == 0 and recorder.calls.count("mlp_train_step") == 0


@pytest.mark.parametrize(("backend", "options", "error", "match"), [
    ("c-omp", {"threads": 0}, ValueError, "threads"),
    ("c-omp", {"threads": True}, TypeError, "threads"),
    ("c-omp", {"threads": 2.0}, TypeError, "threads"),
    ("c-omp", {"threads": 10**7}, ValueError, "threads"),
    ("c-omp", {"kernel": 4}, ValueError, "matrix-product version"),
    ("c-omp", {"kernel": "3"}, TypeError, "kernel"),
    ("c-omp", {"max_batch": 0}, ValueError, "max_batch"),
    ("c-omp", {"max_batch": 2.5}, ValueError, "max_batch"),
    ("c-omp", {"isa": "sse9"}, ValueError, "instruction set"),
    ("c-serial", {"threads": 2}, ValueError, "threads"),
    pytest.param("c-blas", {"kernel": 3}, TypeError, "kernel", marks=NEEDS_BLAS),
    pytest.param("c-blas", {"threads": 0}, ValueError, "threads", marks=NEEDS_BLAS),
    ("c-omp", {"color": "red"}, TypeError, "color"),
])
def test_bad_options_raise(backend, options, error, match):
    with pytest.raises(error, match=match):
        load(backend, Network((4, 6, 3)), **options)


def test_bad_params_raise():
    network = Network((4, 6, 3))
    params = network.init_params()
    params[1] = (params[1][0], np.full(3, np.nan, np.float32))
    with pytest.raises(ValueError, match="NaN"):
        load("c-omp", network, params)
    with pytest.raises(ValueError, match="expected W"):
        load("c-omp", network, [(np.ones((6, 5)), np.ones(6)), params[1]])


def test_close_is_idempotent_and_final():
    network = Network((4, 6, 3))
    model = load("c-omp", network, threads=2)
    X, y = random_batch(network, 3, np.random.default_rng(0))
    model.step(X, y, 0.1)
    kept = model.params()
    snapshot = [(w.copy(), b.copy()) for w, b in kept]
    model.close()
    model.close()
    for (w, b), (w0, b0) in zip(kept, snapshot, strict=True):  # copies, not views of the freed C memory
        assert w.flags.owndata and b.flags.owndata
        np.testing.assert_array_equal(w, w0)
        np.testing.assert_array_equal(b, b0)
    for call in (lambda: model.prepare(X, y), lambda: model.params(), lambda: model.poison(),
                 lambda: model.update(0.1)):
        with pytest.raises(RuntimeError, match="closed"):
            call()
    with load("c-serial", network) as scoped:
        scoped.step(X, y, 0.1)
    with pytest.raises(RuntimeError, match="closed"):
        scoped.params()


def test_missing_library_is_reported(tmp_path):
    """With no built library the registry reports the backend unavailable and says how to build it."""
    code = ("from mlpbench import load\n"
            "from mlpbench.backends.base import BackendUnavailable\n"
            "try:\n    load('c-omp', '4-6-3')\n"
            "except BackendUnavailable as error:\n    print(error)\n")
    env = {**os.environ, "MLPBENCH_NATIVE_DIR": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60,
                            check=True)
    assert "run `make -C native` first" in result.stdout
    assert model_class("c-omp").name == "c-omp"
    code = code.replace("c-omp", "c-blas")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60,
                            check=True)
    assert "pip install scipy-openblas32" in result.stdout and "make -C native PYTHON=" in result.stdout


def test_a_library_built_from_another_header_is_refused(tmp_path):
    """A stale build (the header changed since, `make -C native` not run) is reported, not loaded: cffi would
    lay out its structures as the new header says."""
    (tmp_path / "include").mkdir()
    shutil.copytree(native.native_dir() / "build", tmp_path / "build",
                    ignore=shutil.ignore_patterns("asan*", "tests", "omp", "serial", "blas"))
    header = (native.native_dir() / "include" / "mlp.h").read_text()
    code = ("from mlpbench import load\n"
            "from mlpbench.backends.base import BackendUnavailable\n"
            "try:\n    load('c-omp', '4-6-3')\n    print('loaded')\n"
            "except BackendUnavailable as error:\n    print(error)\n")
    env = {**os.environ, "MLPBENCH_NATIVE_DIR": str(tmp_path)}
    for text, expected in ((header, "loaded"), (header + "/* changed */\n", "a stale build; run `make -C native`")):
        (tmp_path / "include" / "mlp.h").write_text(text)
        result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60,
                                check=True)
        assert expected in result.stdout, result.stdout + result.stderr


# ------------------------------------------------------------------ random abuse of the model API

NETWORKS = [Network((3, 5, 2), "tanh", "softmax-ce"), Network((4, 7, 1), "relu", "sigmoid-bce")]


# Each example breaks none, one or two of the rules in defects.DEFECTS; the valid ones are compared with the
# reference.
@pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_inputs_raise_cleanly_or_match_reference(data):
    network = data.draw(st.sampled_from(NETWORKS), label="network")
    rows = data.draw(st.integers(1, 12), label="rows")
    rng = np.random.Generator(np.random.PCG64(data.draw(st.integers(0, 2**32), label="seed")))
    X = rng.standard_normal((rows, network.n_inputs)).astype(np.float32)
    if network.loss == "softmax-ce":
        y = rng.integers(0, network.n_outputs, size=rows)
    else:
        y = rng.uniform(0, 1, size=rows).astype(np.float32)
    options = {"threads": data.draw(st.sampled_from([1, 2, 3, None]), label="threads"),
               "kernel": data.draw(st.sampled_from([1, 2, 3]), label="kernel"), "max_batch": 12}
    defects, inputs = draw_defects(data, network, ModelInputs(X, y, options))
    try:
        model = load("c-omp", network, seed=1, **inputs.options)
        loss = model.step(inputs.X, inputs.y, inputs.lr, 1e-3)
    except (TypeError, ValueError) as error:
        assert defects, f"valid input rejected: {error}"
        assert str(error)
        event("rejected")
        return
    assert not defects, f"defects {defects} were not rejected"
    event("computed")
    reference = load("numpy", network, seed=1)
    expected = reference.step(inputs.X, inputs.y, inputs.lr, 1e-3)
    assert abs(loss - expected) <= 1e-5 * abs(expected)
    for (w, b), (rw, rb) in zip(model.params(), reference.params(), strict=True):
        np.testing.assert_allclose(w, rw, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(b, rb, rtol=1e-5, atol=1e-6)
    model.close()
