"""The backend interface: names, options and the input checks every CPU backend applies before computing."""

import numpy as np
import pytest

from mlpbench import BACKENDS, BackendUnavailable, Network, load
from mlpbench.backends import CPU_BACKENDS, GPU_BACKENDS, REGISTRY, model_class
from mlpbench.backends.numpy_ref import NumpyModel
from mlpbench.thread_policy import usable_cores
from mlpbench.verify import check_stages, random_batch

NET = Network((5, 7, 3), "tanh", "softmax-ce")
BCE_NET = Network((4, 6, 2), "sigmoid", "sigmoid-bce")


def test_registry_names_match_the_study():
    assert BACKENDS == CPU_BACKENDS + GPU_BACKENDS
    assert CPU_BACKENDS == ("numpy", "c-serial", "c-omp", "c-blas", "torch-cpu")
    with pytest.raises(ValueError, match="unknown backend 'cuda'"):
        model_class("cuda")


# What each backend is, written out from the study's design (not read from the classes).
DECLARED = {  # name: (device, family, threaded, fixed_threads, fuses_step)
    "numpy": ("cpu", "reference", False, None, False),
    "c-serial": ("cpu", "c", False, 1, True),
    "c-omp": ("cpu", "c", True, None, True),
    "c-blas": ("cpu", "c", True, None, True),
    "torch-cpu": ("cpu", "torch", True, None, False),
    "cuda-naive": ("cuda", "cuda", False, None, False),
    "cuda-tiled": ("cuda", "cuda", False, None, False),
    "cuda-opt": ("cuda", "cuda", False, None, True),
    "cuda-fused": ("cuda", "cuda", False, None, True),
    "torch-gpu": ("cuda", "torch", False, None, False),
    "cuda-cublas": ("cuda", "cuda", False, None, False),
    "torch-gpu-graph": ("cuda", "torch", False, None, True),
    "torch-gpu-compile": ("cuda", "torch", False, None, True),
}


@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_classes_declare_what_the_harness_needs(backend):
    cls = model_class(backend)
    assert cls.name == backend
    assert (cls.device, cls.family, cls.threaded, cls.fixed_threads, cls.fuses_step) == DECLARED[backend]
    assert cls.fuses_steps == (backend == "cuda-fused")  # many steps in one launch: the fused kernel alone
    if backend == "c-omp":  # the C library's own limit: it may oversubscribe the cores on purpose
        from mlpbench import native

        assert cls.max_threads() == native.library("omp").MLP_THREADS_LIMIT
    else:
        assert cls.max_threads() == (usable_cores() if cls.threaded else 1)


class ToyModel(NumpyModel):
    """A backend added the documented way: one class, one registry line."""

    name = "toy"
    family = "toy"
    fixed_threads = 1


def test_a_new_backend_is_one_class_and_one_registry_line(monkeypatch):
    from mlpbench import sweep

    monkeypatch.setitem(REGISTRY, "toy", (__name__, "ToyModel"))
    assert isinstance(load("toy", NET), ToyModel)
    configs = sweep.plan(sweep.make_params("quick", backends=("toy", "c-omp"), threads=(1, 2)))
    toy = [c for c in configs if c.backend == "toy"]
    assert toy and all(c.threads == 1 for c in toy)  # its declared fixed count
    assert {c.backend for c in configs if c.study == "threads"} == {"c-omp"}  # not threaded: no thread study


@pytest.mark.parametrize("network", [Network((1, 1, 2), "relu"), Network((33, 257, 7), "sigmoid"),
                                     Network((7, 33, 1, 3), "tanh", "sigmoid-bce")],
                         ids=lambda net: net.name)
@pytest.mark.parametrize("batch", [1, 7, 33])
def test_torch_cpu_matches_the_reference(network, batch):
    check = check_stages("torch-cpu", network, batch, seed=batch, threads=1)
    assert check.passed, check


def good_batch(network=NET, batch=4):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((batch, network.n_inputs)).astype(np.float32)
    y = rng.integers(0, network.n_outputs, batch)
    return X, y


def misaligned(shape):
    raw = np.zeros(int(np.prod(shape)) * 4 + 1, np.uint8)
    return raw[1:].view(np.float32).reshape(shape)


X_OK, Y_OK = good_batch()
BAD_INPUTS = [
    ("list", X_OK.tolist(), Y_OK, TypeError, "numpy.ndarray"),
    ("float64", X_OK.astype(np.float64), Y_OK, TypeError, "float32"),
    ("1-D", X_OK.reshape(-1), Y_OK, ValueError, "2-D"),
    ("transposed", np.asfortranarray(X_OK), Y_OK, ValueError, "C-contiguous"),
    ("strided", np.repeat(X_OK, 2, axis=0)[::2], Y_OK, ValueError, "C-contiguous"),
    ("misaligned", misaligned(X_OK.shape), Y_OK, ValueError, "misaligned"),
    ("wrong width", np.zeros((4, 6), np.float32), Y_OK, ValueError, "expected 5 features"),
    ("empty", np.zeros((0, 5), np.float32), Y_OK[:0], ValueError, "empty batch"),
    ("nan", np.where(X_OK > 1, np.nan, X_OK).astype(np.float32), Y_OK, ValueError, "NaN or Inf"),
    ("inf", np.full((4, 5), np.inf, np.float32), Y_OK, ValueError, "NaN or Inf"),
    ("float labels", X_OK, Y_OK.astype(np.float32), TypeError, "integer class labels"),
    ("label too big", X_OK, np.array([0, 1, 2, 3]), ValueError, r"\[0, 3\)"),
    ("negative label", X_OK, np.array([0, -1, 2, 1]), ValueError, r"\[0, 3\)"),
    ("short labels", X_OK, Y_OK[:3], ValueError, r"shape \(4,\)"),
]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("case, X, y, error, message", BAD_INPUTS, ids=[case[0] for case in BAD_INPUTS])
def test_bad_input_is_rejected_before_computing(backend, case, X, y, error, message):
    model = load(backend, NET)
    with pytest.raises(error, match=message):
        model.step(X, y, lr=0.1)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_bad_bce_targets_and_step_sizes_are_rejected(backend):
    model = load(backend, BCE_NET)
    X = np.ones((3, 4), np.float32)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        model.step(X, np.full((3, 2), 1.5, np.float32), lr=0.1)
    with pytest.raises(ValueError, match="NaN or Inf"):
        model.step(X, np.full((3, 2), np.nan, np.float32), lr=0.1)
    with pytest.raises(ValueError, match=r"shape \(3, 2\)"):
        model.step(X, np.ones(3, np.float32), lr=0.1)
    with pytest.raises(ValueError, match="lr"):
        model.step(X, np.ones((3, 2), np.float32), lr=float("nan"))
    with pytest.raises(ValueError, match="weight_decay"):
        model.step(X, np.ones((3, 2), np.float32), lr=0.1, weight_decay=-1.0)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_stages_out_of_order_and_foreign_batches_are_rejected(backend):
    model = load(backend, NET)
    with pytest.raises(TypeError, match="Batch"):
        model.forward(X_OK)
    other = load("numpy", Network((5, 4, 3)))
    with pytest.raises(ValueError, match="prepared for network 5-4-3"):
        model.forward(other.prepare(X_OK, Y_OK))
    unlabelled = model.prepare(X_OK)
    model.forward(unlabelled)
    with pytest.raises(ValueError, match="no labels"):
        model.backprop(unlabelled)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_train_steps_equals_one_train_step_per_block_of_rows(backend):
    X, y = random_batch(NET, 4 * 9, np.random.default_rng(5))
    together, apart = load(backend, NET, seed=2), load(backend, NET, seed=2)
    together.train_steps(together.prepare(X, y), 9, 0.1, 1e-3)
    for start in range(0, len(X), 9):
        apart.train_step(apart.prepare(X[start:start + 9], y[start:start + 9]), 0.1, 1e-3)
    # Not bit for bit everywhere: PyTorch's CPU kernels round differently on rows of a larger array.
    for (w, b), (w2, b2) in zip(together.params(), apart.params(), strict=True):
        np.testing.assert_allclose(w, w2, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(b, b2, rtol=1e-5, atol=1e-7)
    assert together.loss() == pytest.approx(apart.loss(), rel=1e-5)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_train_steps_wants_whole_labelled_steps(backend):
    model = load(backend, NET)
    X, y = random_batch(NET, 12, np.random.default_rng(6))
    for batch_size in (5, 0, -3, 13):
        with pytest.raises(ValueError, match="divisor of the 12 rows"):
            model.train_steps(model.prepare(X, y), batch_size, 0.1)
    for batch_size in (4.0, True):
        with pytest.raises(TypeError, match="batch_size"):
            model.train_steps(model.prepare(X, y), batch_size, 0.1)
    with pytest.raises(ValueError, match="no labels"):
        model.train_steps(model.prepare(X), 4, 0.1)
    with pytest.raises(ValueError, match="lr"):
        model.train_steps(model.prepare(X, y), 4, float("nan"))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_wrong_parameter_shapes_are_rejected(backend):
    params = NET.init_params(0)
    params[1] = (params[1][0][:, :-1], params[1][1])
    with pytest.raises(ValueError, match=r"params\[1\]"):
        load(backend, NET, params)


@pytest.mark.parametrize("backend", ["torch-cpu", "c-omp"])
@pytest.mark.parametrize("threads, error", [(0, ValueError), (-2, ValueError), (1.5, TypeError),
                                            (True, TypeError), (10**6, ValueError)])
def test_bad_thread_counts_are_rejected(backend, threads, error):
    with pytest.raises(error, match="threads"):
        load(backend, NET, threads=threads)


def test_unknown_options_are_rejected():
    with pytest.raises(TypeError, match="kernel"):
        load("numpy", NET, kernel=3)
    with pytest.raises(TypeError, match="max_batch"):
        load("torch-cpu", NET, max_batch=8)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_backends_explain_why_they_cannot_run(backend):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is present here; the GPU tests cover these backends")
    with pytest.raises(BackendUnavailable, match=backend):
        load(backend, NET)


def test_c_activation_and_loss_codes_come_from_the_header():
    import re
    from pathlib import Path

    from mlpbench import native
    from mlpbench.backends.native_c import header_code
    from mlpbench.network import ACTIVATIONS, LOSSES

    lib = native.library("serial")
    text = (Path(native.native_dir()) / "include" / "mlp.h").read_text()
    for name in (*ACTIVATIONS, *LOSSES):
        constant = "MLP_" + name.upper().replace("-", "_")
        written = re.search(rf"\b{constant}\s*=\s*(\d+)", text)
        assert written, f"{constant} is not in mlp.h"
        assert header_code(lib, name) == int(written.group(1))
