"""The host side of the CUDA backends that needs no GPU: clear errors where no GPU can be used, the fused
kernel's size limit, its phase plans and tile shapes, and the structs shared with the kernels."""

import ctypes
import itertools
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mlpbench import BackendUnavailable, Network, load
from mlpbench.backends import BACKENDS, CPU_BACKENDS, cuda, cuda_fused, torch_compile
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
    assert cuda_fused._LAYER_DTYPE.itemsize == 72
    assert cuda_fused._PHASE_DTYPE.itemsize == 64
    assert cuda_fused._LAYER_DTYPE.fields["n_in"][1] == 64


def kernel_parameters(signature: str) -> list[tuple[str, type]]:
    """(name, ctypes type) of each parameter of a kernel's parameter list: pointers as 64-bit addresses."""
    parameters = []
    for declaration in signature.split(","):
        declaration = declaration.replace("const ", "").strip()
        name = re.search(r"(\w+)$", declaration).group(1)
        kind = ctypes.c_uint64 if "*" in declaration else {"int": ctypes.c_int, "float": ctypes.c_float}[
            declaration.removesuffix(name).strip()]
        parameters.append((name, kind))
    return parameters


def test_launch_arguments_match_the_kernel_signature():
    # DriverKernel passes the ctypes structure's fields as the kernel's parameters, in order: a field out of
    # place would shift every argument after it.
    source = (Path(cuda.__file__).parent.parent / "kernels" / "fused.cu").read_text()
    signature = re.search(r"fused_step\(([^)]*)\)", source).group(1)
    parameters = [(name.removesuffix("_in"), kind) for name, kind in kernel_parameters(signature)]
    assert list(cuda_fused._FusedArgs._fields_) == parameters


def test_opt_launch_arguments_match_the_kernel_signature():
    # The pipelined configurations launch through DriverKernel with cuda._OptArgs as the parameter list.
    source = (Path(cuda.__file__).parent.parent / "kernels" / "opt.cu").read_text()
    macro = source[source.index("#define OPT_KERNEL"):].replace("\\\n", " ")
    signature = re.search(r"name\(([^)]*)\)", macro).group(1)
    assert list(cuda._OptArgs._fields_) == kernel_parameters(signature)


@pytest.mark.parametrize("M, N, K", [(1, 1, 1), (32, 300, 300), (300, 300, 32), (7, 513, 5), (1024, 64, 2048)])
@pytest.mark.parametrize("blocks", [1, 132])
def test_chosen_tiles_use_every_thread_once(M, N, K, blocks):
    tile = cuda_fused.choose_tile(M, N, K, blocks)
    assert tile.micro in (1, 2)
    assert tile.gm * tile.gn * tile.ksplit == cuda.FUSED_THREADS
    assert tile.micro * max(tile.gm, tile.gn) <= 32  # the staging buffers hold 32 rows
    assert tile.count(M, N) >= 1


def test_small_products_are_split_over_many_blocks():
    # 32 x 300 outputs with k = 300 on 132 blocks: one tile per block would leave most of the GPU idle.
    tile = cuda_fused.choose_tile(32, 300, 300, 132)
    assert tile.count(32, 300) > 38


def test_training_step_plan_of_5h300():
    net = PRESETS["moons-5h300"]
    plan = cuda_fused.fused_plan(net, "step", 32, 132)
    kinds = [phase.kind for phase in plan]
    # six hidden forward phases, the output layer with its loss and the input gradient below it in one block per
    # sample, six backward phases: the output layer's weight gradient in the first of them
    assert kinds == [cuda_fused.PHASE_FORWARD] * 6 + [cuda_fused.PHASE_FORWARD_HEAD] + [cuda_fused.PHASE_BACKWARD] * 6
    assert [phase.layer for phase in plan[7:]] == list(range(5, -1, -1))
    assert all(phase.flags & cuda_fused.FLAG_SGD for phase in plan[7:])
    assert plan[6].flags == cuda_fused.FLAG_DELTA | cuda_fused.FLAG_HEAD_INPUT
    assert [bool(phase.flags & cuda_fused.FLAG_ABOVE) for phase in plan[7:]] == [True] + [False] * 5


def test_stage_plans_split_the_step():
    net = Network((5, 40, 40), "tanh", "softmax-ce")  # output wider than the single-warp head
    forward = cuda_fused.fused_plan(net, "forward", 9, 132)
    assert [p.kind for p in forward] == [cuda_fused.PHASE_FORWARD, cuda_fused.PHASE_FORWARD, cuda_fused.PHASE_HEAD]
    assert not any(p.flags for p in forward)
    backprop = cuda_fused.fused_plan(net, "backprop", 9, 132)
    assert [p.kind for p in backprop] == [cuda_fused.PHASE_OUTPUT_DELTA, *[cuda_fused.PHASE_BACKWARD] * 2]
    assert not any(p.flags for p in backprop)
    assert [p.kind for p in cuda_fused.fused_plan(net, "update", 9, 132)] == [cuda_fused.PHASE_UPDATE]
    # an output layer the head serves: the output gradient runs a block per sample with the input gradient below
    narrow = Network((5, 40, 7), "tanh", "softmax-ce")
    backprop = cuda_fused.fused_plan(narrow, "backprop", 9, 132)
    assert [(p.kind, p.layer, p.flags) for p in backprop] == [
        (cuda_fused.PHASE_OUTPUT_DELTA, 1, cuda_fused.FLAG_HEAD_INPUT),
        (cuda_fused.PHASE_BACKWARD, 0, cuda_fused.FLAG_ABOVE)]
    assert backprop[0].items(narrow, 9) == 9
    # one layer: nothing below the output layer, the plan of old
    single = Network((5, 7), "tanh", "softmax-ce")
    assert [(p.kind, p.flags) for p in cuda_fused.fused_plan(single, "backprop", 9, 132)] == [
        (cuda_fused.PHASE_OUTPUT_DELTA, 0), (cuda_fused.PHASE_BACKWARD, 0)]
    with pytest.raises(ValueError, match="stage"):
        cuda_fused.fused_plan(net, "sideways", 9, 132)


def test_phase_items_cover_the_work():
    net = Network((64, 128, 10), "sigmoid", "softmax-ce")
    plan = cuda_fused.fused_plan(net, "step", 32, 132)
    assert [p.kind for p in plan] == [cuda_fused.PHASE_FORWARD_HEAD, cuda_fused.PHASE_BACKWARD]
    assert plan[0].items(net, 32) == 32
    backward = plan[1]
    # the bias gradients are summed by the weight-gradient tiles: no items of their own; layer 0 has no input
    # gradient, and the output layer's weight gradient rides on its phase
    expected = backward.weights.count(*net.layer_shapes[0]) + backward.above.count(*net.layer_shapes[1])
    assert backward.layer == 0 and backward.items(net, 32) == expected
    deeper = Network((64, 128, 40, 10), "sigmoid", "softmax-ce")
    backward_1 = next(p for p in cuda_fused.fused_plan(deeper, "step", 32, 132)
                      if p.kind == cuda_fused.PHASE_BACKWARD and p.layer == 1)
    n_out, n_in = deeper.layer_shapes[1]
    assert backward_1.items(deeper, 32) == (backward_1.main.count(32, n_in) + backward_1.weights.count(n_out, n_in)
                                            + backward_1.above.count(*deeper.layer_shapes[2]))
    update = cuda_fused.fused_plan(net, "update", 32, 132)[0]
    assert update.items(net, 32) == sum(-(-(o * i + o) // 4096) for o, i in net.layer_shapes)


def test_the_head_computes_a_small_layer_below_it_in_every_plan_that_runs_the_head():
    # digits: the hidden layer's 128 outputs take two threads each, 32 of its 64 inputs a thread, so the step is
    # two phases and the forward stage one, the same row code in both (the step and the stages agree bit for bit)
    digits = PRESETS["digits"]
    assert cuda_fused.head_computes_the_layer_below(digits)
    hidden = cuda_fused.FLAG_HEAD_HIDDEN
    step = cuda_fused.fused_plan(digits, "step", 32, 132)
    assert [(p.kind, p.layer, p.flags) for p in step[:1]] == [
        (cuda_fused.PHASE_FORWARD_HEAD, 1, cuda_fused.FLAG_DELTA | cuda_fused.FLAG_HEAD_INPUT | hidden)]
    forward = cuda_fused.fused_plan(digits, "forward", 32, 132)
    assert [(p.kind, p.layer, p.flags) for p in forward] == [(cuda_fused.PHASE_FORWARD_HEAD, 1, hidden)]
    # deeper: only the layer under the head moves into it; the layers before keep their forward phases
    deeper = Network((33, 257, 7, 3), "relu", "softmax-ce")
    assert [(p.kind, p.layer) for p in cuda_fused.fused_plan(deeper, "forward", 33, 132)] == [
        (cuda_fused.PHASE_FORWARD, 0), (cuda_fused.PHASE_FORWARD_HEAD, 2)]
    # more outputs than threads (5h300's 300 x 300), a head wider than HEAD_MAX, or no layer below: the layer
    # keeps its phase
    for net in (PRESETS["moons-5h300"], Network((4, 300, 2)), Network((5, 40, 40)), Network((5, 7))):
        assert not any(p.flags & hidden for p in cuda_fused.fused_plan(net, "step", 32, 132)), net.name
    assert not cuda_fused.head_computes_the_layer_below(PRESETS["moons-5h300"])
    assert not cuda_fused.head_computes_the_layer_below(Network((4, 300, 2)))
    # the bound is the inputs a thread sums: 256 threads over 129-256 outputs leave one per output, 32 inputs
    assert cuda_fused.head_computes_the_layer_below(Network((32, 129, 3)))
    assert not cuda_fused.head_computes_the_layer_below(Network((33, 129, 3)))
    assert cuda_fused.head_computes_the_layer_below(Network((512, 8, 3)))  # 32 threads an output, 16 inputs each
    assert cuda_fused.head_computes_the_layer_below(Network((33, 128, 3)))  # two threads an output, 17 each


def test_gradient_tiles_are_chosen_together():
    # 5h300's hidden backward phase: the pair is no worse than each product's own best shape side by side
    first, second = (32, 300, 300), (300, 300, 32)
    main, weights = cuda_fused.choose_tiles([first, second], 132)
    for tile in (main, weights):
        assert tile.gm * tile.gn * tile.ksplit == cuda.FUSED_THREADS
    alone = [(cuda_fused.choose_tile(*first, 132), *first), (cuda_fused.choose_tile(*second, 132), *second)]
    assert cuda_fused._phase_cycles([(main, *first), (weights, *second)], 132) <= cuda_fused._phase_cycles(alone, 132)


def test_phase_cost_is_the_busiest_blocks():
    tile = cuda_fused.Tile(1, 16, 16, 1)
    one = cuda_fused.tile_cycles(tile, 64)
    assert cuda_fused._phase_cycles([(tile, 16, 16 * 10, 64)], 4) == 3 * one  # 10 tiles on 4 blocks: 3, 3, 2, 2
    assert cuda_fused._phase_cycles([(tile, 16, 16 * 10, 64)], 132) == one


def test_second_round_items_go_to_the_blocks_whose_first_item_came_last():
    assert cuda_fused.blocks_of_items(np.arange(10), 4).tolist() == [0, 1, 2, 3, 3, 2, 1, 0, 0, 1]
    # three dear tiles, then two cheap ones, on four blocks: the cheap pair shares a block, no dear tile does
    dear, cheap = cuda_fused.Tile(2, 16, 16, 1), cuda_fused.Tile(1, 4, 4, 16)
    products = [(dear, 32 * 3, 32, 512), (cheap, 4, 4 * 2, 16)]
    expected = max(cuda_fused.tile_cycles(dear, 512), 2 * cuda_fused.tile_cycles(cheap, 16))
    assert cuda_fused._phase_cycles(products, 4) == expected


def test_compile_budget_returns_the_time_taken_or_gives_up_with_the_reason():
    assert 0 <= torch_compile.run_within_budget(lambda: None, 5.0, "nothing") < 5.0
    released = threading.Event()
    start = time.perf_counter()
    with pytest.raises(BackendUnavailable, match=r"compiling x did not finish within its budget of 0.2 s"):
        torch_compile.run_within_budget(lambda: released.wait(30), 0.2, "compiling x")
    assert time.perf_counter() - start < 5  # the caller is not held until the work ends
    released.set()


def test_a_compile_past_its_budget_finishes_before_the_process_exits(tmp_path):
    # A thread still inside PyTorch when the interpreter shuts down crashes it: the process waits instead.
    marker = tmp_path / "finished"
    script = f"""
import time
from mlpbench.backends import torch_compile
from mlpbench.backends.base import BackendUnavailable
try:
    torch_compile.run_within_budget(lambda: (time.sleep(1.5), open({str(marker)!r}, "w").close()), 0.1, "x")
except BackendUnavailable as error:
    print(error)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "x did not finish within its budget" in done.stdout, done.stderr
    assert marker.exists()


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


@pytest.mark.parametrize("M, N, K", [(1, 1, 1), (32, 300, 300), (32, 10, 1024), (256, 1024, 784), (7, 33, 257),
                                     (4096, 4096, 4096), (1024, 1024, 4096), (1024, 4096, 1024)])
@pytest.mark.parametrize("sm_count", [1, 132])
@pytest.mark.parametrize("vector", [True, False])
@pytest.mark.parametrize("layout", ["nt", "nn", "tn"])
def test_opt_candidates_are_valid_launches(layout, M, N, K, sm_count, vector):
    candidates = cuda.opt_candidates(layout, M, N, K, sm_count, vector)
    assert len(set(candidates)) == len(candidates)
    # every tile shape the product may use, as is
    as_is = [c for c in candidates if not c.transposed]
    assert [c.config for c in as_is if c.splits == 1] == cuda.opt_configs_for(M, N, K, vector)
    # transposed: each of those again, only for large float4 products with a k-contiguous operand
    transposed = [c for c in candidates if c.transposed]
    large = vector and M * N * K >= cuda.OPT_LARGE_WORK and M % 4 == N % 4 == K % 4 == 0
    expected = as_is if layout != "tn" and large else []
    assert [(c.config, c.splits) for c in transposed] == [(c.config, c.splits) for c in expected]
    for choice in candidates:
        assert vector or not cuda.opt_float4_only(choice.config), choice  # no scalar kernels to run
        if choice.splits == 1:
            continue
        tiles = cuda.opt_tiles(choice.config, M, N)
        bk = dict(cuda.OPT_CONFIGS[choice.config].defines)["BK"]
        k_span = -(-K // (choice.splits * bk)) * bk  # as kernels/opt.cu cuts k
        assert (choice.splits - 1) * k_span < K, choice  # no empty slice
        assert k_span >= 2 * bk, choice
        assert tiles < sm_count and tiles * choice.splits <= 4 * sm_count, choice


def test_small_products_may_split_and_large_ones_do_not():
    small = cuda.opt_candidates("nt", 32, 300, 300, 132)  # a hidden layer of 5h300 at batch 32
    assert cuda.OptChoice("32x32", 8) in small and cuda.OptChoice("128x128", 4) in small
    assert not any(c.transposed for c in small)
    for layout in cuda.LAYOUTS:
        assert all(c.splits == 1 for c in cuda.opt_candidates(layout, 4096, 4096, 4096, 132))


def test_transposed_choices_are_offered_where_the_transposes_are_cheap():
    # nt and nn at 4096^3 run either as they are or with their k-contiguous operands transposed for the tn
    # kernel; tn has none to transpose, and a product below OPT_LARGE_WORK or off the float4 path never is.
    for layout in ("nt", "nn"):
        candidates = cuda.opt_candidates(layout, 4096, 4096, 4096, 132)
        assert cuda.OptChoice("128x128k16s4t256db", 1, transposed=True) in candidates
        assert cuda.OptChoice("128x128k16s4t256db", 1) in candidates
        assert not cuda.opt_transposable(layout, 4096, 4096, 4096, vector=False)
        assert not cuda.opt_transposable(layout, 512, 512, 512, vector=True)
        assert not cuda.opt_transposable(layout, 1026, 1024, 1024, vector=True)  # M is not a multiple of 4
    assert not any(c.transposed for c in cuda.opt_candidates("tn", 4096, 4096, 4096, 132))


# Every product of the small networks' steps (digits, 5h300, mnist at their sweep batches): forward (nt), input
# gradient (nn) and weight gradient (tn).
SMALL_NETWORK_PRODUCTS = [shape for net, batch in (("digits", 32), ("moons-5h300", 32), ("mnist", 256))
                          for n_out, n_in in PRESETS[net].layer_shapes
                          for shape in ((batch, n_out, n_in), (batch, n_in, n_out), (n_out, n_in, batch))]
LARGE_NETWORK_PRODUCTS = [shape for n_out, n_in in PRESETS["large"].layer_shapes
                          for shape in ((1024, n_out, n_in), (1024, n_in, n_out), (n_out, n_in, 1024))]


@pytest.mark.parametrize("M, N, K", sorted(set(SMALL_NETWORK_PRODUCTS)))
def test_small_networks_keep_the_register_staged_tiles(M, N, K):
    for vector in (True, False):
        assert cuda.opt_configs_for(M, N, K, vector) == list(cuda.OPT_SMALL_CONFIGS)


@pytest.mark.parametrize("M, N, K", [(4096, 4096, 4096), *sorted(set(LARGE_NETWORK_PRODUCTS))])
def test_large_products_try_every_configuration(M, N, K):
    assert cuda.opt_configs_for(M, N, K, vector=True) == list(cuda.OPT_CONFIGS)
    # without float4 alignment only those with scalar kernels
    assert cuda.opt_configs_for(M, N, K, vector=False) == list(cuda.OPT_SMALL_CONFIGS)


def test_pipelined_tiles_need_dimensions_their_offsets_can_address():
    huge = cuda.OPT_PIPELINED_MAX_DIM
    assert not any(cuda.opt_pipelined(c) for c in cuda.opt_configs_for(4, huge, 64))
    assert any(cuda.opt_pipelined(c) for c in cuda.opt_configs_for(4096, huge - 4, 64))


@pytest.mark.parametrize("config", cuda.OPT_CONFIGS)
def test_opt_configurations_fit_the_gpu(config):
    """Threads, shared memory and tiling of every configuration are launchable on sm_80/sm_90 with the
    resident blocks it was compiled for (registers: tests/test_kernels_compile.py)."""
    d = cuda.opt_defines(config)
    threads = cuda.opt_threads(config)
    assert threads % 32 == 0 and threads <= 1024
    assert d["BM"] % d["WM"] == 0 and d["BN"] % d["WN"] == 0 and d["WM"] % 32 == 0 and d["WN"] % 16 == 0
    assert d["BK"] % 4 == 0
    for rows in (d["BM"], d["BN"]):  # every thread stages whole float4s of both operands
        assert rows * d["BK"] % (4 * threads) == 0
    static = 0 if d["STAGES"] else 2 * d["BK"] * (d["BM"] + 4 + d["BN"] + 4) * 4
    per_block = static + cuda.opt_shared_bytes(config)
    assert per_block <= (cuda.SHARED_PER_BLOCK_MAX if d["STAGES"] else 48 * 1024)
    assert d["MIN_BLOCKS"] * (per_block + 1024) <= cuda.SHARED_PER_SM
    assert d["STAGES"] == 0 or (d["STAGES"] >= 2 and d["FLOAT4_ONLY"])  # 16-byte copies need float4 shapes
    if d["FRAGMENT_DB"]:  # a ring; k copied 8 at a time; rows 4 banks apart in a [BK][rows + 4] stage
        assert d["STAGES"] >= 2 and d["BK"] % 8 == 0 and d["BM"] % 32 == 0 and d["BN"] % 32 == 0
    if d["SMEM_TRANSPOSE"]:  # copies land two steps ahead; the k & 8 swizzle covers the banks for BK 8 or 16
        assert d["FRAGMENT_DB"] and d["STAGES"] >= 3 and d["BK"] in (8, 16)
    assert (config in cuda.OPT_SMALL_CONFIGS) != cuda.opt_float4_only(config)  # small shapes may not be float4


def test_pipelined_shared_memory_matches_the_kernel_formula():
    # kernels/opt.cu: STAGES * (stage_floats(BM) + stage_floats(BN)) * 4, stage_floats = the larger of the
    # k-major [rows][BK + 4] and the m-major [BK][rows + 4] tile
    assert cuda.opt_shared_bytes("128x128k16s3t128") == 3 * (128 * 20 + 128 * 20) * 4
    assert cuda.opt_shared_bytes("128x64k16s4t128") == 4 * (128 * 20 + 64 * 20) * 4
    assert cuda.opt_shared_bytes("128x128") == 0
    # FRAGMENT_DB: every operand [BK][rows + 4]
    assert cuda.opt_shared_bytes("128x128k16s3t256db") == 3 * (16 * 132 + 16 * 132) * 4
    # SMEM_TRANSPOSE: the same ring plus two transposed [BK][rows + 4] buffers per operand
    assert cuda.opt_shared_bytes("128x128k16s4t256dbt") == (4 + 2) * (16 * 132 + 16 * 132) * 4 == 101376
    assert cuda.opt_shared_bytes("128x128k16s3t256dbt") == (3 + 2) * (16 * 132 + 16 * 132) * 4
    assert cuda.opt_shared_bytes("128x256k16s3t256dbt") == (3 + 2) * (16 * 132 + 16 * 260) * 4


FRAGMENT_DB_CONFIGS = [config for config in cuda.OPT_CONFIGS if cuda.opt_defines(config)["FRAGMENT_DB"]]
# 8 x 16 outputs per thread: up to 255 registers, so 256 threads have an SM to themselves.
WIDE_FRAGMENT_CONFIGS = ["128x256k16s3t256dbt"]


def test_fragment_double_buffered_configurations_keep_their_blocks_per_sm():
    """8 x 8 outputs per thread as 2 x 2 sub-tiles of 4 x 4, 256 threads, two blocks per SM (so at most 128
    registers: tests/test_kernels_compile.py); or 8 x 16 outputs per thread, one block of 256 threads per SM;
    offered to the same large products as the other rings."""
    assert len(FRAGMENT_DB_CONFIGS) == 5
    for config in FRAGMENT_DB_CONFIGS:
        d = cuda.opt_defines(config)
        threads = cuda.opt_threads(config)
        if config in WIDE_FRAGMENT_CONFIGS:
            assert (d["WM"] // 8, d["WN"] // 4) == (8, 16)
            assert threads == 256 and d["MIN_BLOCKS"] == 1
        else:
            assert threads == 256 and d["MIN_BLOCKS"] == 2
            assert (d["WM"] // 8, d["WN"] // 4) == (8, 8)
        assert cuda.opt_pipelined(config) and cuda.opt_float4_only(config)
        assert config not in cuda.opt_configs_for(1024, 1024, 1023, vector=False)
        for M, N, K in ((4096, 4096, 4096), *LARGE_NETWORK_PRODUCTS):
            assert cuda.OptChoice(config, 1) in cuda.opt_candidates("nt", M, N, K, 132)


SMEM_TRANSPOSE_CONFIGS = [config for config in cuda.OPT_CONFIGS if cuda.opt_defines(config)["SMEM_TRANSPOSE"]]


def test_shared_memory_transposing_configurations():
    """The fragment double-buffered kernel with 16-byte copies of k-contiguous operands, transposed in shared
    memory: its blocks per SM still fit their shared memory, offered to the same products as the other
    rings."""
    assert SMEM_TRANSPOSE_CONFIGS == ["128x128k16s4t256dbt", "128x128k16s3t256dbt", *WIDE_FRAGMENT_CONFIGS]
    for config in SMEM_TRANSPOSE_CONFIGS:
        d = cuda.opt_defines(config)
        assert config.endswith("dbt") and d["FRAGMENT_DB"] == 1
        assert d["MIN_BLOCKS"] * (cuda.opt_shared_bytes(config) + 1024) <= cuda.SHARED_PER_SM
        assert config not in cuda.opt_configs_for(1024, 1024, 1023, vector=False)
        assert config not in cuda.opt_configs_for(256, 256, 256)  # below OPT_LARGE_WORK
        for M, N, K in ((4096, 4096, 4096), *LARGE_NETWORK_PRODUCTS):
            assert cuda.OptChoice(config, 1) in cuda.opt_candidates("nt", M, N, K, 132)


def test_configurations_that_never_won_are_gone():
    # results/gpu-dev/12-opt-fragment-db: k8s4 db was never the fastest in a layout nor an autotuned choice;
    # those that were stay.
    # 17-opt-wide-fragments: of the three 8 x 16 transposing ones only 128x256 won (nn).
    # 22-opt-db-copies: cuBLAS's nt shape (4 warps of 8 x 16 outputs per lane) won no layout.
    for dropped in ("128x128k8s4t256db", "256x128k16s3t256dbt", "128x128k16s3t128dbt", "128x128k8s4t128db",
                    "128x128k16s3t128db"):
        assert dropped not in cuda.OPT_CONFIGS
    for kept in ("128x64k16s4t128", "128x256k16s3t256", "128x128k16s3t128", "128x128k16s4t128",
                 "128x128k16s3t256db", "128x128k16s4t256db", "128x256k16s3t256dbt"):
        assert kept in cuda.OPT_CONFIGS


def test_every_opt_configuration_has_its_module():
    for config, module in cuda.OPT_MODULES.items():
        assert cuda.MODULE_SPECS[module] == cuda.OPT_CONFIGS[config]
        scalar = {"opt_nt_scalar", "opt_nn_scalar", "opt_tn_scalar"}
        assert scalar.isdisjoint(cuda.MODULE_KERNELS[module]) == cuda.opt_float4_only(config)


def test_fastest_takes_the_least_time_and_breaks_ties_without_splitting():
    a, b, c = cuda.OptChoice("128x128", 1), cuda.OptChoice("32x32", 4), cuda.OptChoice("32x32", 1)
    assert cuda.fastest({a: 3.0, b: 1.0, c: 2.0}) == b
    assert cuda.fastest({a: 1.0, b: 1.0, c: 1.0}) == a
    assert cuda.fastest({b: 1.0, c: 1.0}) == c
    t = cuda.OptChoice("32x32", 1, transposed=True)
    assert cuda.fastest({t: 1.0, c: 1.0}) == c  # no transposes for nothing
    assert cuda.fastest({t: 0.9, c: 1.0}) == t


def test_tuning_is_kept_per_gpu_and_kernel_version(tmp_path, monkeypatch):
    tuning = cuda.OptTuning(str(tmp_path), "sm_90", 132)
    key = ("nt", 32, 300, 300, True)
    tuning.record(key, cuda.OptChoice("32x32", 4))
    large = ("nn", 4096, 4096, 4096, True)
    tuning.record(large, cuda.OptChoice("128x128k16s4t256db", 1, transposed=True))
    again = cuda.OptTuning(str(tmp_path), "sm_90", 132)
    assert again.choices == {key: cuda.OptChoice("32x32", 4),
                             large: cuda.OptChoice("128x128k16s4t256db", 1, transposed=True)}
    assert again.rows() == [
        {"layout": "nn", "M": 4096, "N": 4096, "K": 4096, "vector": True, "config": "128x128k16s4t256db",
         "splits": 1, "transposed": True},
        {"layout": "nt", "M": 32, "N": 300, "K": 300, "vector": True, "config": "32x32", "splits": 4,
         "transposed": False}]
    assert cuda.OptTuning(str(tmp_path), "sm_90", 114).choices == {}  # another GPU
    monkeypatch.setitem(cuda.OPT_CONFIGS, "16x16", cuda.OPT_CONFIGS["32x32"])
    assert cuda.OptTuning(str(tmp_path), "sm_90", 132).choices == {}  # other kernels


def test_no_choices_before_the_first_opt_product():
    if "opt" not in cuda._product_cache:
        assert cuda.opt_choices() == []


def _defines(source: str, prefix: str) -> dict[str, int]:
    text = (cuda.KERNEL_DIR / source).read_text()
    return {name: int(value) for name, value in re.findall(rf"#define ({prefix}\w+) \(?(-?\d+)\)?", text)}


def test_codes_in_the_kernels_match_the_c_header_and_python():
    header = (Path(__file__).parents[1] / "native" / "include" / "mlp.h").read_text()

    def enum(name: str) -> dict[str, int]:
        body = re.search(rf"enum {name} \{{([^}}]*)\}}", header).group(1)
        return {key: int(value) for key, value in re.findall(r"(\w+) = (\d+)", body)}

    activations, losses = enum("mlp_activation"), enum("mlp_loss")
    kernel_activations, kernel_losses = _defines("common.cuh", "ACT_"), _defines("common.cuh", "LOSS_")
    assert set(cuda.ACTIVATION_CODES) == {key[4:].lower() for key in activations}
    for name, code in cuda.ACTIVATION_CODES.items():
        assert activations[f"MLP_{name.upper()}"] == kernel_activations[f"ACT_{name.upper()}"] == code
    assert kernel_activations["ACT_IDENTITY"] == cuda.IDENTITY
    assert set(cuda.LOSS_CODES) == {key[4:].lower().replace("_", "-") for key in losses}
    for name, code in cuda.LOSS_CODES.items():
        key = name.upper().replace("-", "_")
        assert losses[f"MLP_{key}"] == kernel_losses[f"LOSS_{key}"] == code


def test_phase_flag_and_epilogue_codes_match_the_kernels():
    phases, flags = _defines("fused.cu", "PHASE_"), _defines("fused.cu", "FLAG_")
    assert phases == {name: getattr(cuda_fused, name) for name in phases} and len(phases) == 6
    assert flags == {name: getattr(cuda_fused, name) for name in flags} and len(flags) == 5
    epilogues = _defines("opt.cu", "EPI_")
    assert epilogues == {name: getattr(cuda, name) for name in epilogues} and len(epilogues) == 4


@pytest.mark.parametrize("network", [Network((7, 33, 5), "sigmoid", "softmax-ce"),
                                     Network((3, 9, 4, 1), "tanh", "sigmoid-bce"),
                                     Network((6, 20, 3), "relu", "softmax-ce")], ids=lambda net: net.name)
def test_the_compiled_function_is_the_reference_network(network):
    # torch-gpu-compile compiles exactly this function; uncompiled on the CPU it must be the network.
    from mlpbench.verify import FLOAT32_TOLERANCE, random_batch, random_params, relative_error

    rng = np.random.default_rng(2)
    params = random_params(network, rng)
    X, y = random_batch(network, 11, rng)
    reference = load("numpy", network, params)
    batch = reference.prepare(X, y)
    reference.forward(batch)
    weights = [torch.from_numpy(w) for w, _ in params]
    biases = [torch.from_numpy(b) for _, b in params]
    hidden, logits, loss = torch_compile.network_loss(torch.from_numpy(X), torch.from_numpy(batch.T.copy()), weights,
                                                      biases, network.activation, network.loss)
    for ours, theirs in zip(hidden, reference.activations()[:-1], strict=True):
        assert relative_error(ours.numpy(), theirs) < FLOAT32_TOLERANCE
    probabilities = torch.softmax(logits, 1) if network.loss == "softmax-ce" else torch.sigmoid(logits)
    assert relative_error(probabilities.numpy(), reference.output()) < FLOAT32_TOLERANCE
    assert relative_error(np.array(loss.item()), np.array(reference.loss())) < FLOAT32_TOLERANCE
    _, _, no_loss = torch_compile.network_loss(torch.from_numpy(X), None, weights, biases, network.activation,
                                               network.loss)
    assert no_loss is None


def test_cluster_plan_matches_the_kernel_struct():
    # struct ClusterPlan in kernels/fused_cluster.cu: eight ints, then eight per layer (static_assert there).
    layout = cuda_fused.cluster_layout(PRESETS["digits"], 32, 227 * 1024)
    assert layout.table.dtype == np.int32 and layout.table.nbytes == 40 + 32 * cuda.FUSED_MAX_LAYERS
    assert "MAX_LAYERS" in dict(cuda.FUSED_CLUSTER.defines) and "MAX_LAYERS" in dict(cuda.FUSED.defines)


@pytest.mark.parametrize("sizes, batch", [((64, 128, 10), 32), ((33, 257, 7, 3), 33), ((5, 12), 9),
                                          ((1, 7, 1), 1), ((12, 24, 6), 300), ((6, 20, 9, 9, 4), 13)])
def test_cluster_layout_gives_every_buffer_its_own_aligned_region(sizes, batch):
    net = Network(sizes, loss="softmax-ce" if sizes[-1] > 1 else "sigmoid-bce")
    layout = cuda_fused.cluster_layout(net, batch, 227 * 1024)
    ranks, head = layout.ranks, net.n_layers - 1
    assert ranks == (min(8, *sizes[1:-1]) if len(sizes) > 2 else 1)
    regions = [(layout.header("loss"), batch)]
    for buffer in "01":
        regions += [(layout.header("x" + buffer), batch * layout.header("x_stride")),
                    (layout.header("t" + buffer), batch * net.n_outputs)]
    assert layout.header("n_layers") == net.n_layers and layout.header("x_stride") >= sizes[0]
    assert layout.header("x_stride") % 8 == 4
    def widest(n):  # the widest share slice_begin gives a block
        return max(n * (r + 1) // ranks - n * r // ranks for r in range(ranks))

    for layer, (n_out, n_in) in enumerate(net.layer_shapes):
        # hidden layers: rows of W; the output layer: columns of it
        rows, cols = (n_out, widest(n_in)) if layer == head else (widest(n_out), n_in)
        slot = {field: layout.slot(layer, field) for field in cuda_fused._SLOT_FIELDS}
        assert slot["w_stride"] >= cols and slot["a_stride"] >= n_out
        # strides four times an odd number: 16-byte rows, 16-byte loads of eight rows in different banks
        strides = ["w_stride", "a_stride", "dz_stride"] if layer < head else ["w_stride"]
        assert all(slot[name] % 8 == 4 for name in strides)
        if layer == head:  # output_rows reads whole rows of the logits and the output gradient
            assert slot["a_stride"] == slot["dz_stride"] == n_out
            regions.append((slot["parts"], ranks * batch * n_out))
        regions += [(slot["w"], rows * slot["w_stride"]), (slot["b"], rows), (slot["a"], batch * slot["a_stride"]),
                    (slot["dz"], batch * slot["dz_stride"])]
    if net.n_layers > 2:  # partial input gradients of every hidden layer above the first
        stride = layout.header("partial_stride")
        assert stride % 8 == 4 and stride >= max(n_in for _, n_in in net.layer_shapes[1:head])
        regions += [(layout.header("partial0"), batch * stride), (layout.header("partial1"), batch * stride)]
    regions.sort()
    assert all(start % 4 == 0 for start, _ in regions)  # 16-byte aligned
    assert all(start + size <= after for (start, size), (after, _) in itertools.pairwise(regions))
    assert regions[-1][0] + regions[-1][1] <= layout.shared_bytes // 4 <= 227 * 1024 // 4


def test_cluster_layout_says_why_a_network_does_not_fit():
    assert isinstance(cuda_fused.cluster_layout(PRESETS["digits"], 32, 227 * 1024), cuda_fused.ClusterLayout)
    reason = cuda_fused.cluster_layout(PRESETS["digits"], 256, 227 * 1024)
    assert re.fullmatch(r"the cluster kernel needs 414 KiB of shared memory per block for 64-128-10 at batch 256 "
                        r"\(8 blocks\); the GPU allows 227 KiB", reason)
    assert "5h300" in cuda_fused.cluster_layout(PRESETS["moons-5h300"], 32, 227 * 1024).replace(
        PRESETS["moons-5h300"].name, "5h300")
    small = cuda_fused.cluster_layout(PRESETS["digits"], 32, 227 * 1024).shared_bytes
    assert isinstance(cuda_fused.cluster_layout(PRESETS["digits"], 32, small - 1), str)
    wide = cuda_fused.cluster_layout(Network((4, 8, 17), loss="softmax-ce"), 2, 227 * 1024)
    assert wide == "the cluster kernel computes output layers up to 16 wide (a half-warp a row); 4-8-17 has 17"


def test_fused_kernel_option_is_checked_before_the_gpu():
    with pytest.raises(ValueError, match="kernel: expected one of auto, grid, cluster"):
        load("cuda-fused", "64-128-10", kernel="warp")


def test_the_kernel_choice_and_its_reason():
    fits = cuda_fused.cluster_layout(PRESETS["digits"], 32, 227 * 1024)
    too_big = cuda_fused.cluster_layout(PRESETS["digits"], 256, 227 * 1024)
    each = f"8 blocks, {fits.shared_bytes // 1024} KiB of shared memory each"
    # auto: the cluster kernel from two steps a launch on, where the step fits and the grid kernel's takes more
    # than two phases
    assert cuda_fused.choose_kernel("auto", fits, 2, 3) == ("cluster", f"fits in one cluster: {each}")
    assert cuda_fused.choose_kernel("auto", fits, 1, 3) == (
        "grid", f"one step a launch (the cluster kernel would take {each}, and gains over several steps)")
    assert cuda_fused.choose_kernel("auto", fits, 32, 2) == (
        "grid", f"the grid kernel's step is 2 phases, faster than the cluster kernel ({each}) over several steps too")
    assert cuda_fused.choose_kernel("auto", too_big, 32, 3) == ("grid", too_big)
    no_clusters = "this GPU has no thread-block clusters"
    assert cuda_fused.choose_kernel("auto", None, 32, 3, no_clusters) == ("grid", no_clusters)
    # asked for: the cluster kernel even for one step, where it fits; the grid kernel always
    assert cuda_fused.choose_kernel("cluster", fits, 1, 2)[0] == "cluster"
    with pytest.raises(ValueError, match=r"needs 414 KiB.*use kernel='grid' or 'auto'"):
        cuda_fused.choose_kernel("cluster", too_big, 32, 3)
    assert cuda_fused.choose_kernel("grid", fits, 32, 3) == ("grid", "the grid kernel was asked for")
