"""The GPU backends against the float64 reference: every stage, poisoned outputs, loss curves, the matrix
product of each rung, bad input, determinism. Needs an NVIDIA GPU, PyTorch with CUDA and PyCUDA; skipped
with the reason elsewhere."""

import re
import threading

import numpy as np
import pytest
import torch

from mlpbench import BackendUnavailable, Network, load
from mlpbench.backends import BACKENDS, CPU_BACKENDS
from mlpbench.backends.base import Batch
from mlpbench.verify import FLOAT32_TOLERANCE, compare_stages, random_batch, training_losses

pytestmark = pytest.mark.gpu
GPU_BACKENDS = [backend for backend in BACKENDS if backend not in CPU_BACKENDS]
CUDA_BACKENDS = ("cuda-naive", "cuda-tiled", "cuda-opt", "cuda-fused", "cuda-cublas")
# torch-gpu-compile compiles once per network and batch size: the default mode (seconds, not the minutes of
# max-autotune) for the many shapes below; test_compile_with_max_autotune checks the backend's own default.
OPTIONS = {"torch-gpu-compile": {"mode": "default"}}


pytestmark = pytest.mark.usefixtures("cuda_ready")


# Odd sizes (1, 7, 33, 257) among batches and widths, every activation and both losses; sizes that are
# multiples of 4 take cuda-opt's float4 path, the others its scalar path; (5, 40) is wider than the fused
# kernel's one-warp output head; batch 600 makes the fused weight-gradient product run over two k-chunks.
CASES = [
    (Network((7, 33, 5), "sigmoid", "softmax-ce"), 7),
    (Network((1, 7, 1), "tanh", "sigmoid-bce"), 1),
    (Network((33, 257, 7, 3), "relu", "softmax-ce"), 33),
    (Network((257, 33, 1), "sigmoid", "sigmoid-bce"), 257),
    (Network((64, 128, 10), "tanh", "softmax-ce"), 32),
    (Network((2, 300, 300, 300, 1), "relu", "sigmoid-bce"), 32),
    (Network((5, 40), "tanh", "softmax-ce"), 9),
    (Network((12, 24, 6), "relu", "softmax-ce"), 600),
    (Network((300, 260, 130), "sigmoid", "softmax-ce"), 200),
    (Network((1030, 20, 3), "tanh", "softmax-ce"), 8),  # cuda-opt splits k of the first product
    (Network((5, 12), "relu", "softmax-ce"), 9),  # cuda-fused's cluster kernel without a hidden layer: one block
]


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("network, batch", CASES, ids=[f"{n.name}-{n.activation}-b{b}" for n, b in CASES])
def test_every_stage_matches_the_reference(backend, network, batch):
    if backend == "cuda-fused" and max(network.sizes) > 512:
        pytest.skip("wider than cuda-fused accepts (test_fused_rejects_a_network_too_wide)")
    if backend == "torch-gpu-compile" and CASES.index((network, batch)) >= 6:
        pytest.skip("the first six cases cover every activation, loss and odd size; each compile takes seconds")
    errors = compare_stages(backend, network, batch, seed=batch, **OPTIONS.get(backend, {}))
    assert max(errors.values()) <= FLOAT32_TOLERANCE, errors


def fused_options(kernel, network, batch):
    """load() options that run cuda-fused on ``kernel`` for ``batch`` rows; skips where the cluster kernel
    cannot hold the case (the planner's reason)."""
    if kernel == "cluster":
        try:
            chosen, reason = load("cuda-fused", network, kernel="cluster").kernel_choice(batch, steps=2)
        except ValueError as error:  # does not fit
            pytest.skip(str(error))
        if chosen != "cluster":  # a GPU without clusters
            pytest.skip(reason)
    return {"kernel": kernel}


FUSED_VARIANTS = [("cuda-fused", kernel) for kernel in ("grid", "cluster")]
CUDA_VARIANTS = [(backend, None) for backend in CUDA_BACKENDS if backend != "cuda-fused"] + FUSED_VARIANTS


@pytest.mark.parametrize("kernel", ["grid", "cluster"])
@pytest.mark.parametrize("network, batch", CASES, ids=[f"{n.name}-{n.activation}-b{b}" for n, b in CASES])
def test_each_fused_kernel_matches_the_reference(kernel, network, batch):
    if max(network.sizes) > 512:
        pytest.skip("wider than cuda-fused accepts (test_fused_rejects_a_network_too_wide)")
    errors = compare_stages("cuda-fused", network, batch, seed=batch, **fused_options(kernel, network, batch))
    assert max(errors.values()) <= FLOAT32_TOLERANCE, errors


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("network, batch, lr, decay", [
    (Network((64, 128, 10), "sigmoid", "softmax-ce"), 32, 0.5, 0.0),
    (Network((2, 300, 300, 300, 300, 300, 300, 1), "sigmoid", "sigmoid-bce"), 32, 0.3, 1e-3),
], ids=["digits", "5h300"])
def test_fifty_step_loss_curve_matches_the_reference(backend, network, batch, lr, decay):
    rng = np.random.default_rng(7)
    X, y = random_batch(network, 400, rng)
    reference = training_losses("numpy", network, X, y, steps=50, batch=batch, lr=lr, weight_decay=decay)
    losses = training_losses(backend, network, X, y, steps=50, batch=batch, lr=lr, weight_decay=decay,
                             **OPTIONS.get(backend, {}))
    np.testing.assert_allclose(losses, reference, rtol=1e-4)


@pytest.mark.parametrize("backend", CUDA_BACKENDS)
def test_poison_fills_what_the_next_stage_writes(backend):
    net = Network((6, 20, 4), "tanh", "softmax-ce")
    X, y = random_batch(net, 5, np.random.default_rng(0))
    model = load(backend, net)
    batch = model.prepare(X, y)
    model.forward(batch)
    model.backprop(batch)
    model.poison()  # nothing pending: gradients and activations become NaN
    assert all(np.isnan(a).all() for a in model.activations())
    assert all(np.isnan(dw).all() and np.isnan(db).all() for dw, db in model.grads())
    model.forward(batch)
    model.poison()  # a forward waits for its backprop: activations are kept
    assert all(np.isfinite(a).all() for a in model.activations())
    model.backprop(batch)
    assert all(np.isfinite(dw).all() and np.isfinite(db).all() for dw, db in model.grads())


@pytest.mark.parametrize("backend, kernel", CUDA_VARIANTS, ids=[b + (f"-{k}" if k else "") for b, k in CUDA_VARIANTS])
def test_train_step_equals_the_stages_bit_for_bit_and_repeats(backend, kernel):
    net = Network((6, 20, 9, 4), "relu", "softmax-ce")
    X, y = random_batch(net, 13, np.random.default_rng(1))
    options = fused_options(kernel, net, 13) if kernel else {}

    def run(fused_step):
        model = load(backend, net, seed=5, **options)
        batch = model.prepare(X, y)
        for _ in range(3):
            if fused_step:
                model.train_step(batch, 0.2, 0.01)
            else:
                model.forward(batch)
                model.backprop(batch)
                model.update(0.2, 0.01)
        return model.params(), model.grads(), model.loss(), model.activations()

    first, stages, again = run(True), run(False), run(True)
    for other in (stages, again):
        for (w, b), (w2, b2) in zip(first[0] + first[1], other[0] + other[1], strict=True):
            np.testing.assert_array_equal(w, w2)
            np.testing.assert_array_equal(b, b2)
        assert first[2] == other[2]
        for a, a2 in zip(first[3], other[3], strict=True):
            np.testing.assert_array_equal(a, a2)


# The fused head's row of the layer below (FLAG_HEAD_HIDDEN) on both of its load paths, several samples a block:
# 16-byte loads over k ranges of 16, and of 4 with the last range empty; 4-byte loads where a range (30 inputs)
# is no multiple of 4.
HEAD_HIDDEN_CASES = [(Network((64, 40, 10), "tanh", "softmax-ce"), 300),
                     (Network((28, 20, 4), "sigmoid", "softmax-ce"), 133),
                     (Network((30, 200, 1), "relu", "sigmoid-bce"), 257)]


@pytest.mark.parametrize("network, batch", HEAD_HIDDEN_CASES, ids=[n.name for n, _ in HEAD_HIDDEN_CASES])
def test_fused_head_computes_the_layer_below_on_either_load_path(network, batch):
    from mlpbench.backends import cuda_fused

    assert cuda_fused.fused_plan(network, "step", batch, 132)[0].flags & cuda_fused.FLAG_HEAD_HIDDEN
    errors = compare_stages("cuda-fused", network, batch, seed=batch, kernel="grid")
    assert max(errors.values()) <= FLOAT32_TOLERANCE, errors


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_bad_input_raises_before_the_gpu_sees_it(backend):
    from test_backend_interface import BAD_INPUTS, NET, X_OK, Y_OK

    model = load(backend, NET, **OPTIONS.get(backend, {}))
    for _, X, y, error, message in BAD_INPUTS:
        with pytest.raises(error, match=message):
            model.step(X, y, lr=0.1)
    with pytest.raises(TypeError, match="Batch"):
        model.forward(X_OK)
    other = load("numpy", Network((5, 4, 3)))
    with pytest.raises(ValueError, match="prepared for network 5-4-3"):
        model.forward(other.prepare(X_OK, Y_OK))


@pytest.mark.parametrize("backend", CUDA_BACKENDS)
def test_stages_out_of_order_are_rejected(backend):
    net = Network((5, 7, 3), "tanh", "softmax-ce")
    X, y = random_batch(net, 4, np.random.default_rng(2))
    model = load(backend, net)
    batch = model.prepare(X, y)
    with pytest.raises(RuntimeError, match="forward"):
        model.backprop(batch)
    with pytest.raises(RuntimeError, match="backprop"):
        model.update(0.1)
    with pytest.raises(ValueError, match="lr"):
        model.train_step(batch, float("inf"))
    model.close()
    with pytest.raises(RuntimeError, match="closed"):
        model.prepare(X, y)


def test_fused_rejects_a_network_too_wide():
    with pytest.raises(ValueError, match="use cuda-opt"):
        load("cuda-fused", Network((1024, 4096, 10)))


def test_torch_graph_recaptures_for_a_new_step_size_and_matches_eager():
    net = Network((16, 32, 5), "tanh", "softmax-ce")
    X, y = random_batch(net, 24, np.random.default_rng(3))
    graph, eager = load("torch-gpu-graph", net), load("torch-gpu", net)
    for lr, decay in [(0.1, 0.0), (0.1, 0.0), (0.3, 1e-3), (0.1, 0.0)]:
        for model in (graph, eager):
            model.train_step(model.prepare(X, y), lr, decay)
        assert graph.loss() == pytest.approx(eager.loss(), rel=1e-5)
    assert len(graph._graphs) == 2
    for (w, b), (w2, b2) in zip(graph.params(), eager.params(), strict=True):
        np.testing.assert_allclose(w, w2, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(b, b2, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="prepare"):
        graph.train_step(Batch(torch.zeros(24, 16, device="cuda"), torch.zeros(24, 5, device="cuda"), 24, net), 0.1)


@pytest.mark.parametrize("version", [1, 2, 3])
@pytest.mark.parametrize("layout", ["nn", "nt", "tn"])
@pytest.mark.parametrize("M, N, K", [(1, 1, 1), (7, 33, 257), (257, 129, 64), (128, 256, 512), (64, 96, 2048),
                                     (33, 17, 1030)])
def test_matmul_rungs_match_float64(version, layout, M, N, K):
    from mlpbench.backends import cuda

    g = torch.Generator().manual_seed(M * N + K)
    a_shape = (K, M) if layout == "tn" else (M, K)
    b_shape = (N, K) if layout == "nt" else (K, N)
    A, B = torch.randn(a_shape, generator=g), torch.randn(b_shape, generator=g)
    C = cuda.matmul(A.cuda(), B.cuda(), version, layout).cpu()
    a, b = A.double(), B.double()
    reference = (a.T if layout == "tn" else a) @ (b.T if layout == "nt" else b)
    assert ((C.double() - reference).norm() / reference.norm()).item() < FLOAT32_TOLERANCE


def test_matmul_handles_misaligned_operands_and_checks_arguments():
    from mlpbench.backends import cuda

    storage = torch.randn(64 * 64 + 1, device="cuda")
    A = storage[1:].view(64, 64)  # contiguous but 4 bytes past a 16-byte boundary: the scalar path
    B = torch.randn(64, 64, device="cuda")
    out = torch.full((64, 64), float("nan"), device="cuda")
    assert cuda.matmul(A, B, "opt", out=out) is out
    torch.testing.assert_close(out.double(), A.double() @ B.double(), rtol=1e-5, atol=1e-4)
    with pytest.raises(TypeError, match="float32"):
        cuda.matmul(A.double(), B, 3)
    with pytest.raises(ValueError, match="CUDA"):
        cuda.matmul(A.cpu(), B, 3)
    with pytest.raises(ValueError, match="contiguous"):
        cuda.matmul(B.T, B, 3)
    with pytest.raises(ValueError, match="do not match"):
        cuda.matmul(A, B[:10], 3)
    with pytest.raises(ValueError, match="requires_grad"):
        cuda.matmul(B.clone().requires_grad_(), B, 3)


def test_kernel_report_lists_every_kernel_without_spills():
    from mlpbench.backends import cuda

    report = cuda.kernel_report()
    assert {(row["module"], row["kernel"]) for row in report} == {
        (cuda.MODULE_SPECS[module].source, kernel)
        for module, kernels in cuda.MODULE_KERNELS.items() for kernel in kernels}
    for row in report:
        assert row["registers"] > 0 and row["local_bytes"] == 0, row
    fused = next(row for row in report if row["kernel"] == "fused_step")
    assert fused["dynamic_shared_bytes"] > 48 * 1024
    cluster = next(row for row in report if row["kernel"] == "fused_cluster")
    assert cluster["dynamic_shared_bytes"] is None  # planned per network and batch


def test_other_threads_need_the_context_manager():
    from mlpbench import gpu

    net = Network((4, 8, 2), "tanh", "softmax-ce")
    X, y = random_batch(net, 3, np.random.default_rng(4))
    outcome = {}

    def worker():
        try:
            load("cuda-naive", net)
        except RuntimeError as error:
            outcome["without"] = str(error)
        with gpu.thread_context():
            outcome["with"] = load("cuda-fused", net).step(X, y, 0.1)

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert "thread_context" in outcome["without"]
    assert np.isfinite(outcome["with"])


def test_cublas_products_are_the_only_difference_from_the_naive_rung():
    # Same element-wise kernels, products by cuBLAS: activations agree to float32 rounding, not bit for bit.
    net = Network((33, 70, 9), "sigmoid", "softmax-ce")
    X, y = random_batch(net, 17, np.random.default_rng(5))
    cublas, naive = load("cuda-cublas", net, seed=2), load("cuda-naive", net, seed=2)
    for model in (cublas, naive):
        model.forward(model.prepare(X, y))
    for a, b in zip(cublas.activations(), naive.activations(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert torch.backends.cuda.matmul.fp32_precision == "ieee"


def test_compile_with_max_autotune_matches_eager_and_records_its_time():
    net = Network((64, 128, 10), "tanh", "softmax-ce")
    errors = compare_stages("torch-gpu-compile", net, 32, seed=11)  # the backend's own mode: max-autotune
    assert max(errors.values()) <= FLOAT32_TOLERANCE, errors
    X, y = random_batch(net, 32, np.random.default_rng(6))
    compiled, eager = load("torch-gpu-compile", net, seed=4), load("torch-gpu", net, seed=4)
    assert compiled.mode == "max-autotune-no-cudagraphs"
    for _ in range(3):
        for model in (compiled, eager):
            model.train_step(model.prepare(X, y), 0.2, 1e-3)  # compiled: one CUDA graph per step
        assert compiled.loss() == pytest.approx(eager.loss(), rel=1e-5)
    for (w, b), (w2, b2) in zip(compiled.params(), eager.params(), strict=True):
        np.testing.assert_allclose(w, w2, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(b, b2, rtol=1e-5, atol=1e-7)
    assert list(compiled.compile_times) == [(32, True)]
    assert compiled.compile_seconds > 0


def test_compile_past_its_budget_says_so_and_stays_refused():
    # The compile it gives up on goes on in a background thread for a few seconds; the process waits for it.
    net = Network((3, 11, 2), "relu", "softmax-ce")
    X, y = random_batch(net, 6, np.random.default_rng(7))
    model = load("torch-gpu-compile", net, compile_budget_s=1e-3, mode="default")
    batch = model.prepare(X, y)
    with pytest.raises(BackendUnavailable, match=r"torch-gpu-compile: compiling 3-11-2 .* budget of 0.001 s"):
        model.train_step(batch, 0.1)
    with pytest.raises(BackendUnavailable, match="budget"):
        model.forward(batch)


def _float64_product(layout, A, B):
    a, b = A.double(), B.double()
    return (a.T if layout == "tn" else a) @ (b.T if layout == "nt" else b)


def _kernel_splits(config, K, most):
    """The most k slices up to ``most`` that kernels/opt.cu can cut K into with none empty."""
    from mlpbench.backends import cuda

    bk = cuda.opt_defines(config)["BK"]
    return max(s for s in range(1, most + 1) if (s - 1) * (-(-K // (s * bk)) * bk) < K)


def _operands(layout, M, N, K, seed, device="cuda"):
    """Random A and B of an M x N x K product in ``layout`` (nt: A (M, K), B (N, K); nn: B (K, N); tn: A (K, M))."""
    g = torch.Generator(device=device).manual_seed(seed)
    A = torch.randn((K, M) if layout == "tn" else (M, K), device=device, generator=g)
    B = torch.randn((N, K) if layout == "nt" else (K, N), device=device, generator=g)
    return A, B


def _assert_forced_config_matches_float64(products, config, layout, A, B, C, most_splits):
    """``config``'s float4 kernel forced onto C = A B unsplit and with the most k slices up to each of
    ``most_splits``; every output checked against float64 (C starts as NaN)."""
    from mlpbench.backends import cuda

    (M, N), K = C.shape, A.shape[0] if layout == "tn" else A.shape[1]
    reference = _float64_product(layout, A, B)
    for splits in sorted({1, *(_kernel_splits(config, K, most) for most in most_splits)}):
        C.fill_(float("nan"))
        products.run(cuda.OptChoice(config, splits), True, layout, C.data_ptr(), A.data_ptr(), B.data_ptr(),
                     M, N, K)
        error = ((C.double() - reference).norm() / reference.norm()).item()
        assert error < FLOAT32_TOLERANCE, ((M, N, K), splits, error)


@pytest.mark.parametrize("layout", ["nn", "nt", "tn"])
@pytest.mark.parametrize("M, N, K", [(32, 300, 300), (33, 70, 257), (7, 12, 1030), (256, 1024, 784)])
def test_every_opt_configuration_and_split_matches_float64(layout, M, N, K):
    # The autotuner may pick any candidate: each one, on float4 (multiples of 4) and scalar shapes.
    from mlpbench import gpu
    from mlpbench.backends import cuda

    products = cuda._products("opt")
    A, B = _operands(layout, M, N, K, seed=M + N + K, device="cpu")
    reference = _float64_product(layout, A, B)
    A, B = A.cuda(), B.cuda()
    C = torch.empty(M, N, device="cuda")
    vector = products.vector_ok(layout, M, N, K, C.data_ptr(), A.data_ptr(), B.data_ptr())
    assert vector == (M % 4 == N % 4 == K % 4 == 0)
    for choice in cuda.opt_candidates(layout, M, N, K, gpu.info().sm_count, vector):
        C.fill_(float("nan"))
        products.run(choice, vector, layout, C.data_ptr(), A.data_ptr(), B.data_ptr(), M, N, K)
        error = ((C.cpu().double() - reference).norm() / reference.norm()).item()
        assert error < FLOAT32_TOLERANCE, (choice, error)


# Spelled out so that the parametrised test ids name them; checked against cuda.OPT_CONFIGS below.
LARGE_OPT_CONFIGS = ["128x256k16s3t256", "128x128k16s3t128", "128x128k16s4t128", "128x64k16s4t128",
                     "128x128k16s3t256db", "128x128k16s4t256db", "128x128k16s4t256dbt", "128x128k16s3t256dbt",
                     "128x256k16s3t256dbt"]


@pytest.mark.parametrize("config", LARGE_OPT_CONFIGS)
@pytest.mark.parametrize("layout", ["nn", "nt", "tn"])
def test_every_large_opt_configuration_matches_float64(config, layout):
    # The configurations only large float4 products use, forced onto shapes (multiples of 4) that cut every
    # tile edge, with and without split k, each output checked (C starts as NaN).
    from mlpbench.backends import cuda

    assert set(LARGE_OPT_CONFIGS) == set(cuda.OPT_CONFIGS) - set(cuda.OPT_SMALL_CONFIGS)
    products = cuda._products("opt")
    shapes = [(36, 260, 292), (260, 132, 1028), (4, 4, 4), (516, 268, 100), (1028, 1036, 1024)]
    for M, N, K in shapes:
        A, B = _operands(layout, M, N, K, seed=M + N + K)
        C = torch.empty(M, N, device="cuda")
        assert products.vector_ok(layout, M, N, K, C.data_ptr(), A.data_ptr(), B.data_ptr())
        _assert_forced_config_matches_float64(products, config, layout, A, B, C, most_splits=(3, 8))


@pytest.mark.parametrize("config", ["128x128k16s3t256db", "128x128k16s4t256dbt", "128x128k16s3t256dbt",
                                    "128x256k16s3t256dbt"])
@pytest.mark.parametrize("layout", ["nn", "nt", "tn"])
def test_opt_fragment_double_buffered_configurations_at_the_ring_edges(config, layout):
    # Fewer k-steps than stages (one, two, three), k ending mid-step, rows and columns ending inside a
    # thread's 4 x 4 sub-tile and inside a warp's rows, several blocks in both directions, and split k whose
    # last slice is short: each output checked against float64 (C starts as NaN).
    from mlpbench.backends import cuda

    products = cuda._products("opt")
    # dbt: transposed buffers filled one step ahead, so one to four k-steps and a short last one matter.
    for M, N, K in ((132, 68, 8), (4, 260, 16), (36, 132, 20), (260, 4, 24), (196, 388, 4), (388, 196, 52),
                    (132, 260, 1300), (132, 132, 48), (68, 260, 64), (260, 68, 36)):
        A, B = _operands(layout, M, N, K, seed=M * 7 + N * 3 + K)
        _assert_forced_config_matches_float64(products, config, layout, A, B, torch.empty(M, N, device="cuda"),
                                              most_splits=(2, 5))


@pytest.mark.parametrize("config", ["128x128", "128x128k16s4t256db", "128x256k16s3t256dbt"])
@pytest.mark.parametrize("layout", ["nn", "nt"])
def test_opt_transposed_choices_match_float64(config, layout):
    # nt and nn with their k-contiguous operands transposed first and run by the tn kernel, on shapes whose
    # edges cut the transpose's 32 x 32 tiles and the product's tiles, unsplit and split; C starts as NaN.
    from mlpbench.backends import cuda

    products = cuda._products("opt")
    for M, N, K in ((36, 260, 292), (260, 132, 1028), (4, 4, 4), (1028, 1036, 1024)):
        A, B = _operands(layout, M, N, K, seed=M + 2 * N + K)
        C = torch.empty(M, N, device="cuda")
        reference = _float64_product(layout, A, B)
        for splits in sorted({1, _kernel_splits(config, K, 3)}):
            C.fill_(float("nan"))
            products.run(cuda.OptChoice(config, splits, transposed=True), True, layout, C.data_ptr(),
                         A.data_ptr(), B.data_ptr(), M, N, K)
            error = ((C.double() - reference).norm() / reference.norm()).item()
            assert error < FLOAT32_TOLERANCE, ((M, N, K), splits, error)
        with pytest.raises(ValueError, match="transposed choice"):
            products.run(cuda.OptChoice(config, 1, transposed=True), False, layout, C.data_ptr(), A.data_ptr(),
                         B.data_ptr(), M, N, K)


def test_opt_transpose_beyond_the_grid_limit_of_row_tiles():
    # More row tiles than grid y allows (65535): the kernel strides over the rest.
    from mlpbench.backends import cuda

    products = cuda._products("opt")
    rows, cols = 65535 * 32 + 37, 5
    matrix = torch.randn(rows, cols, device="cuda")
    assert torch.equal(products._transposed(matrix.data_ptr(), rows, cols), matrix.T)


@pytest.mark.parametrize("layout", ["nn", "nt", "tn"])
def test_large_products_through_the_autotuner_match_float64(layout):
    # 1024^3 and the large network's widest product: the candidates include every configuration
    from mlpbench.backends import cuda

    for M, N, K in ((1024, 1024, 1024), (1024, 4096, 4096)):
        A, B = _operands(layout, M, N, K, seed=M + K)
        C = cuda.matmul(A, B, "opt", layout)
        reference = _float64_product(layout, A, B)
        assert ((C.double() - reference).norm() / reference.norm()).item() < FLOAT32_TOLERANCE
        assert any(r["config"] in cuda.OPT_CONFIGS for r in cuda.opt_choices()
                   if (r["layout"], r["M"], r["N"], r["K"]) == (layout, M, N, K))


OPT_EPILOGUE_CHOICES = [("32x32", 1), ("32x32", 8), ("64x64", 4), ("128x128", 2),
                        *[(config, splits) for config in LARGE_OPT_CONFIGS for splits in (1, 3)]]


@pytest.mark.parametrize("config, splits", OPT_EPILOGUE_CHOICES)
@pytest.mark.parametrize("network, batch", [(Network((33, 257, 7, 3), "relu", "softmax-ce"), 33),
                                            (Network((64, 128, 12), "sigmoid", "softmax-ce"), 32),
                                            (Network((36, 260, 12, 4), "tanh", "softmax-ce"), 36)])
def test_opt_epilogues_in_every_configuration(monkeypatch, config, splits, network, batch):
    # Forces one configuration (the most k slices up to `splits` that each product's k allows) for every
    # product: forward (bias + activation), input gradient (activation derivative), weight gradient (SGD step).
    from mlpbench.backends import cuda

    if cuda.opt_float4_only(config) and any(size % 4 for size in (*network.sizes, batch)):
        pytest.skip("the configurations of large products run float4 shapes only")

    def forced(self, layout, M, N, K, vector):
        return cuda.OptChoice(config, _kernel_splits(config, K, splits))

    monkeypatch.setattr(cuda._OptProducts, "choice", forced)
    errors = compare_stages("cuda-opt", network, batch, seed=3)
    assert max(errors.values()) <= FLOAT32_TOLERANCE, errors
    X, y = random_batch(network, batch, np.random.default_rng(8))
    stepped, staged = load("cuda-opt", network, seed=1), load("cuda-opt", network, seed=1)
    stepped.train_step(stepped.prepare(X, y), 0.3, 1e-3)  # the SGD step fused into the weight gradient
    batch_data = staged.prepare(X, y)
    staged.forward(batch_data)
    staged.backprop(batch_data)
    staged.update(0.3, 1e-3)
    for (w, b), (w2, b2) in zip(stepped.params(), staged.params(), strict=True):
        np.testing.assert_allclose(w, w2, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(b, b2, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("config", ["128x128", "128x128k16s4t256db"])
def test_opt_epilogues_with_transposed_operands(monkeypatch, config):
    # Every nt and nn product of a step transposed first (forward with bias and activation, input gradient
    # with the activation derivative); tn as it is (weight gradient with the SGD step).
    from mlpbench.backends import cuda

    network, batch = Network((36, 260, 12, 4), "tanh", "softmax-ce"), 36
    runs = []
    original = cuda._OptProducts.run

    def forced_run(self, choice, vector, layout, *args, **kwargs):
        runs.append((choice.transposed, layout))
        return original(self, choice, vector, layout, *args, **kwargs)

    monkeypatch.setattr(cuda._OptProducts, "choice",
                        lambda self, layout, M, N, K, vector: cuda.OptChoice(config, 1, transposed=layout != "tn"))
    monkeypatch.setattr(cuda._OptProducts, "run", forced_run)
    errors = compare_stages("cuda-opt", network, batch, seed=5)
    assert max(errors.values()) <= FLOAT32_TOLERANCE, errors
    assert (True, "nt") in runs and (True, "nn") in runs


def test_opt_choices_are_listed():
    from mlpbench.backends import cuda

    net = Network((20, 36, 4), "tanh", "softmax-ce")
    load("cuda-opt", net).step(*random_batch(net, 8, np.random.default_rng(9)), 0.1)
    rows = {(r["layout"], r["M"], r["N"], r["K"]): r for r in cuda.opt_choices()}
    assert ("nt", 8, 36, 20) in rows and ("tn", 36, 20, 8) in rows
    assert all(r["config"] in cuda.OPT_CONFIGS and r["splits"] >= 1 for r in rows.values())
    assert not rows["nt", 8, 36, 20]["transposed"] and not rows["nn", 8, 36, 4]["transposed"]  # too small


@pytest.mark.parametrize("backend", [*GPU_BACKENDS, "cuda-fused-grid", "cuda-fused-cluster"])
@pytest.mark.parametrize("network, batch, steps", [
    (Network((2, 300, 300, 300, 300, 300, 300, 1), "sigmoid", "sigmoid-bce"), 32, 32),  # an epoch of the study
    (Network((7, 33, 5), "tanh", "softmax-ce"), 7, 5),
    (Network((5, 40), "relu", "softmax-ce"), 9, 2),  # wider than the one-warp head: FORWARD + HEAD phases
    (Network((12, 24, 6), "sigmoid", "softmax-ce"), 600, 1),
], ids=["5h300-32x32", "7-33-5-7x5", "5-40-9x2", "12-24-6-600x1"])
def test_train_steps_equals_one_train_step_per_block_of_rows(backend, network, batch, steps):
    if backend == "torch-gpu-compile":
        pytest.skip("its train_steps is the base class's loop over train_step (tests/test_backend_interface.py)")
    options = {}
    if backend.startswith("cuda-fused-"):
        backend, kernel = "cuda-fused", backend.removeprefix("cuda-fused-")
        options = fused_options(kernel, network, batch)
    X, y = random_batch(network, batch * steps, np.random.default_rng(steps))
    together, apart = load(backend, network, seed=4, **options), load(backend, network, seed=4, **options)
    together.train_steps(together.prepare(X, y), batch, 0.3, 1e-3)
    for start in range(0, len(X), batch):
        apart.train_step(apart.prepare(X[start:start + batch], y[start:start + batch]), 0.3, 1e-3)
    for (w, b), (w2, b2) in zip(together.params(), apart.params(), strict=True):
        np.testing.assert_allclose(w, w2, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(b, b2, rtol=1e-5, atol=1e-7)
    assert together.loss() == pytest.approx(apart.loss(), rel=1e-5)
    # The steps go on from where one launch left them (the weight copies' parity after an odd count).
    more = together.prepare(X[:batch], y[:batch])
    together.train_step(more, 0.3)
    apart.train_step(apart.prepare(X[:batch], y[:batch]), 0.3)
    np.testing.assert_allclose(together.params()[0][0], apart.params()[0][0], rtol=1e-5, atol=1e-7)


def test_fused_epoch_step_is_timed_per_step_of_one_launch():
    from mlpbench.timing import time_stages

    net = Network((2, 300, 300, 300, 300, 300, 300, 1), "sigmoid", "sigmoid-bce")
    model = load("cuda-fused", net)
    inputs = [random_batch(net, 32, np.random.default_rng(seed)) for seed in range(3)]
    stats = time_stages(model, inputs, lr=1e-3, repeats=5, warmup=1).stats
    # per step, not per call: a step inside one launch saves that step's launch, so it is the cheaper
    assert 0 < stats["epoch_step"].median < stats["step"].median


def test_fused_train_steps_refuses_a_strided_batch():
    net = Network((7, 33, 5), "tanh", "softmax-ce")
    model = load("cuda-fused", net)
    data = model.prepare(*random_batch(net, 14, np.random.default_rng(0)))
    strided = Batch(data.X[::2], data.T[::2], 7, net)
    with pytest.raises(ValueError, match="contiguous"):
        model.train_steps(strided, 7, 0.1)


def test_fused_profiler_measures_phases_barriers_and_host_costs():
    from mlpbench.backends.cuda_fused import FusedProfiler

    net = Network((2, 300, 300, 300, 300, 300, 300, 1), "sigmoid", "sigmoid-bce")
    model = load("cuda-fused", net)
    profiler = FusedProfiler(model)
    X, y = random_batch(net, 3 * 32, np.random.default_rng(1))
    plan = profiler.plan("step", 32)
    assert len(plan.phases) == 13 and 1 <= plan.blocks
    times = profiler.phase_times(model.prepare(X, y), 32, 0.3)
    assert times.shape == (3 * 13,) and (times > 0.1).all() and times.sum() < 10_000  # microseconds
    reference = load("cuda-fused", net)
    reference.train_steps(reference.prepare(X, y), 32, 0.3)  # the clocked launch trained as train_steps does
    np.testing.assert_array_equal(model.params()[0][0], reference.params()[0][0])
    first = model.prepare(X[:32], y[:32])
    model.forward(first)
    cost = profiler.barrier(first, blocks=8, repeats=5)
    # Microseconds of device time: 32 more phases take longer, and neither is near a millisecond.
    assert 0 < cost["one_phase_us"] < 1000 and 0 < cost["barrier_us"] < 100
    with pytest.raises(RuntimeError, match="backprop needs a forward"):
        model.backprop(first)
    host = profiler.host_costs(first, 0.3, count=20, rounds=2)
    assert set(host) == {"train_step", "batch check", "arguments + launch", "launch alone"}
    assert all(0.1 < value < 1000 for value in host.values())  # microseconds of host time per call


def test_fused_step_parts_add_up_to_the_step_between_events():
    """The step between events holds the device-only step, which holds the kernel's own span and is longer than
    a launch with nothing to do."""
    from mlpbench.backends.cuda_fused import FusedProfiler
    from mlpbench.network import PRESETS

    net = PRESETS["digits"]
    model = load("cuda-fused", net)
    batch = model.prepare(*random_batch(net, 32, np.random.default_rng(2)))
    parts = FusedProfiler(model).step_parts(batch, 0.3, repeats=5, warmup=1)
    us = {part: stats.median * 1e6 for part, stats in parts.items()}
    assert set(us) == {"events", "device", "start", "kernel"} and all(stats.n == 5 for stats in parts.values())
    assert 0 < us["start"] < us["device"] < us["events"] < 1000, us
    assert 0 < us["kernel"] < us["device"], us
    with pytest.raises(ValueError, match="grid kernel"):
        FusedProfiler(load("cuda-fused", net, kernel="cluster")).step_parts(batch, 0.3, repeats=1)


def test_fused_chooses_the_cluster_kernel_for_epochs_that_fit_and_says_why():
    from mlpbench.backends.cuda_fused import FusedProfiler
    from mlpbench.network import PRESETS

    net = Network((64, 128, 40, 10), "sigmoid", "softmax-ce")  # a grid step of four phases
    deeper = load("cuda-fused", net)
    kernel, reason = deeper.kernel_choice(32, steps=4)
    assert kernel == "cluster" and re.fullmatch(r"fits in one cluster: 8 blocks, \d+ KiB of shared memory each", reason)
    kernel, reason = deeper.kernel_choice(32)
    assert kernel == "grid" and reason.startswith("one step a launch (the cluster kernel would take 8 blocks")
    kernel, reason = deeper.kernel_choice(256, steps=4)
    assert kernel == "grid" and "KiB of shared memory per block for 64-128-40-10 at batch 256" in reason
    # digits: the grid kernel's step is two phases (the head computes the hidden layer), for epochs too
    kernel, reason = load("cuda-fused", PRESETS["digits"]).kernel_choice(32, steps=4)
    assert kernel == "grid" and reason.startswith("the grid kernel's step is 2 phases, faster than the cluster")
    assert load("cuda-fused", net, kernel="grid").kernel_choice(32, steps=4)[0] == "grid"
    assert load("cuda-fused", PRESETS["digits"], kernel="cluster").kernel_choice(32)[0] == "cluster"
    profiler = FusedProfiler(deeper)
    plan = profiler.plan("step", 32, steps=4)
    assert plan.kernel == "cluster" and plan.phases == () and plan.blocks == 8
    assert profiler.plan("step", 32).kernel == "grid"
    X, y = random_batch(net, 4 * 32, np.random.default_rng(3))
    data = deeper.prepare(X, y)
    times = profiler.step_times(data, 32, 0.1)
    assert times.shape == (4,) and (times > 0).all() and times.sum() < 10_000  # microseconds
    with pytest.raises(ValueError, match="runs no phases"):
        profiler.phase_times(data, 32, 0.1)
    deep = load("cuda-fused", PRESETS["moons-5h300"], kernel="cluster")
    with pytest.raises(ValueError, match=r"needs \d+ KiB.*use kernel='grid' or 'auto'"):
        deep.step(*random_batch(PRESETS["moons-5h300"], 32, np.random.default_rng(0)), 0.1)
