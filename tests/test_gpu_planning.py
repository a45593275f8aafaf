"""The host side of the CUDA backends that needs no GPU: clear errors where no GPU can be used, the fused
kernel's size limit, its phase plans and tile shapes, and the structs shared with the kernels."""

import threading
import time

import pytest
import torch

from mlpbench import BackendUnavailable, Network, load
from mlpbench.backends import BACKENDS, CPU_BACKENDS, cuda, torch_compile
from mlpbench.network import PRESETS

NO_GPU = not torch.cuda.is_available()


@pytest.mark.skipif(not NO_GPU, reason="a GPU is present; tests/test_gpu_backends.py covers these backends")
@pytest.mark.parametrize("backend", [backend for backend in BACKENDS if backend not in CPU_BACKENDS])
def test_without_a_gpu_loading_says_why(backend):
    with pytest.raises(BackendUnavailable, match=f"{backend}: .*(GPU|PyCUDA)"):
        load(backend, "64-128-10")


@pytest.mark.skipif(not NO_GPU, reason="a GPU is present")
def test_without_a_gpu_matmul_says_why():
    A = torch.ones(4, 4)
    with pytest.raises(BackendUnavailable, match="GPU"):
        cuda.matmul(A, A, 3)


def test_matmul_rejects_unknown_versions_and_layouts_first():
    A = torch.ones(2, 2)
    with pytest.raises(ValueError, match="version"):
        cuda.matmul(A, A, 4)
    with pytest.raises(ValueError, match="layout"):
        cuda.matmul(A, A, 1, layout="tt")


@pytest.mark.parametrize("sizes", [(1024, 16), (2, 513, 1), (8, 4096, 4096, 8)])
def test_fused_rejects_networks_too_wide_before_touching_the_gpu(sizes):
    with pytest.raises(ValueError, match=f"up to {cuda.FUSED_MAX_WIDTH} wide.*use cuda-opt"):
        load("cuda-fused", Network(sizes, loss="softmax-ce" if sizes[-1] > 1 else "sigmoid-bce"))


def test_fused_rejects_networks_too_deep_before_touching_the_gpu():
    with pytest.raises(ValueError, match=f"up to {cuda.FUSED_MAX_LAYERS} layers.*use cuda-opt"):
        load("cuda-fused", Network((4,) * 34 + (2,)))


def test_structs_match_the_kernel():
    # kernels/fused.cu static_asserts the same sizes; tests/test_kernels_compile.py compiles it.
    assert cuda._LAYER_DTYPE.itemsize == 72
    assert cuda._PHASE_DTYPE.itemsize == 48
    assert cuda._LAYER_DTYPE.fields["n_in"][1] == 64


@pytest.mark.parametrize("M, N, K", [(1, 1, 1), (32, 300, 300), (300, 300, 32), (7, 513, 5), (1024, 64, 2048)])
@pytest.mark.parametrize("blocks", [1, 132])
def test_chosen_tiles_use_every_thread_once(M, N, K, blocks):
    tile = cuda.choose_tile(M, N, K, blocks)
    assert tile.micro in (1, 2)
    assert tile.gm * tile.gn * tile.ksplit == cuda.FUSED_THREADS
    assert tile.micro * max(tile.gm, tile.gn) <= 32  # the staging buffers hold 32 rows
    assert tile.count(M, N) >= 1


def test_small_products_are_split_over_many_blocks():
    # 32 x 300 outputs with k = 300 on 132 blocks: one tile per block would leave most of the GPU idle.
    tile = cuda.choose_tile(32, 300, 300, 132)
    assert tile.count(32, 300) > 38


def test_training_step_plan_of_5h300():
    net = PRESETS["moons-5h300"]
    plan = cuda.fused_plan(net, "step", 32, 132)
    kinds = [phase.kind for phase in plan]
    # six hidden forward phases, the output layer with its loss in one warp per sample, seven backward phases
    assert kinds == [cuda.PHASE_FORWARD] * 6 + [cuda.PHASE_FORWARD_HEAD] + [cuda.PHASE_BACKWARD] * 7
    assert [phase.layer for phase in plan[7:]] == list(range(6, -1, -1))
    assert all(phase.flags & cuda.FLAG_SGD for phase in plan[7:])
    assert plan[6].flags & cuda.FLAG_DELTA


def test_stage_plans_split_the_step():
    net = Network((5, 40, 40), "tanh", "softmax-ce")  # output wider than the single-warp head
    forward = cuda.fused_plan(net, "forward", 9, 132)
    assert [p.kind for p in forward] == [cuda.PHASE_FORWARD, cuda.PHASE_FORWARD, cuda.PHASE_HEAD]
    assert not any(p.flags for p in forward)
    backprop = cuda.fused_plan(net, "backprop", 9, 132)
    assert [p.kind for p in backprop] == [cuda.PHASE_OUTPUT_DELTA, cuda.PHASE_BACKWARD, cuda.PHASE_BACKWARD]
    assert not any(p.flags for p in backprop)
    assert [p.kind for p in cuda.fused_plan(net, "update", 9, 132)] == [cuda.PHASE_UPDATE]
    with pytest.raises(ValueError, match="stage"):
        cuda.fused_plan(net, "sideways", 9, 132)


def test_phase_items_cover_the_work():
    net = Network((64, 128, 10), "sigmoid", "softmax-ce")
    plan = cuda.fused_plan(net, "step", 32, 132)
    backward_1 = plan[2]
    n_out, n_in = net.layer_shapes[1]
    # the bias gradient is summed by the weight-gradient tiles: no items of its own
    expected = backward_1.main.count(32, n_in) + backward_1.weights.count(n_out, n_in)
    assert backward_1.items(net, 32) == expected
    update = cuda.fused_plan(net, "update", 32, 132)[0]
    assert update.items(net, 32) == sum(-(-(o * i + o) // 4096) for o, i in net.layer_shapes)


def test_gradient_tiles_are_chosen_together():
    # 5h300's hidden backward phase: the pair is no worse than each product's own best shape side by side
    first, second = (32, 300, 300), (300, 300, 32)
    main, weights = cuda.choose_tiles(first, second, 132)
    for tile in (main, weights):
        assert tile.gm * tile.gn * tile.ksplit == cuda.FUSED_THREADS
    alone = [(cuda.choose_tile(*first, 132), *first), (cuda.choose_tile(*second, 132), *second)]
    assert cuda._phase_cycles([(main, *first), (weights, *second)], 132) <= cuda._phase_cycles(alone, 132)


def test_phase_cost_is_the_busiest_blocks():
    tile = cuda.Tile(1, 16, 16, 1)
    one = cuda.tile_cycles(tile, 64)
    assert cuda._phase_cycles([(tile, 16, 16 * 10, 64)], 4) == 3 * one  # 10 tiles on 4 blocks: 3, 3, 2, 2
    assert cuda._phase_cycles([(tile, 16, 16 * 10, 64)], 132) == one


def test_compile_budget_returns_the_time_taken_or_gives_up_with_the_reason():
    assert 0 <= torch_compile.run_within_budget(lambda: None, 5.0, "nothing") < 5.0
    released = threading.Event()
    start = time.perf_counter()
    with pytest.raises(BackendUnavailable, match=r"compiling x did not finish within its budget of 0.2 s"):
        torch_compile.run_within_budget(lambda: released.wait(30), 0.2, "compiling x")
    assert time.perf_counter() - start < 5  # the caller is not held until the work ends
    released.set()


def test_compile_failures_are_reported_with_their_cause():
    def broken():
        raise RuntimeError("no C compiler")

    with pytest.raises(BackendUnavailable, match="compiling y failed: RuntimeError: no C compiler") as caught:
        torch_compile.run_within_budget(broken, 5.0, "compiling y")
    assert isinstance(caught.value.__cause__, RuntimeError)


@pytest.mark.parametrize("options, error, message", [
    ({"compile_budget_s": 0}, ValueError, "compile_budget_s"),
    ({"compile_budget_s": float("inf")}, ValueError, "compile_budget_s"),
    ({"compile_budget_s": "300"}, TypeError, "compile_budget_s"),
    ({"mode": "reduce-overhead"}, ValueError, "mode"),
    ({"fullgraph": True}, TypeError, "fullgraph"),
])
def test_compile_options_are_checked_before_the_gpu(options, error, message):
    with pytest.raises(error, match=message):
        load("torch-gpu-compile", "64-128-10", **options)
