"""Data-parallel training on GPUs: every GPU backend's flat gradient buffer and layer-by-layer backprop, and NCCL
ranks (one GPU each) against one process on the global batch. Needs an NVIDIA GPU, PyTorch with CUDA and PyCUDA
(two GPUs for the two-rank cases); skipped with the reason elsewhere."""

import numpy as np
import pytest
import torch
from layered_backprop import NET, backprop_pair, batch_for, flat

from mlpbench import load
from mlpbench.backends import BACKENDS, CPU_BACKENDS, model_class
from mlpbench.backends.base import layer_spans
from mlpbench.distributed import run_ranks

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("cuda_ready")]
# Compiling backends trace one graph per shape: their buffer is tested through torch-gpu, which they extend.
BUFFER_BACKENDS = [b for b in BACKENDS if b not in CPU_BACKENDS and not model_class(b).compiles_per_shape]
RANK_BACKENDS = ("torch-gpu", "cuda-opt", "cuda-fused")
# float32 sums in another order (two shards added by NCCL against one batch) over two steps.
TOLERANCE = 1e-5


def host(tensor):
    return tensor.detach().cpu().numpy().astype(np.float64)


@pytest.mark.parametrize("backend", BUFFER_BACKENDS)
def test_gradient_buffer_is_the_storage_backprop_writes(backend):
    model = load(backend, NET, seed=1)
    buffer = model.gradient_buffer()
    assert buffer.is_cuda and buffer.dim() == 1 and buffer.numel() == NET.n_params
    for seed in (0, 1):
        batch = batch_for(model, seed=seed)
        model.forward(batch)
        model.backprop(batch)
        assert model.gradient_buffer().data_ptr() == buffer.data_ptr()
        np.testing.assert_array_equal(host(buffer), flat(model.grads()))
    before = model.params()
    buffer.zero_()  # what update uses: here nothing is left to apply
    model.update(0.5)
    for mine, theirs in zip(model.params(), before, strict=True):
        for a, b in zip(mine, theirs, strict=True):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("backend", BUFFER_BACKENDS)
def test_backprop_by_layer_reports_each_layer_final_and_equals_backprop(backend):
    plain, layered, batch, buffer = backprop_pair(backend)
    seen = {}

    def report(layer):
        torch.cuda.synchronize()  # the snapshot sees what the layer's queued kernels wrote
        seen[layer] = buffer.clone()

    layered.backprop_by_layer(batch, report)
    torch.cuda.synchronize()
    assert list(seen) == list(range(NET.n_layers, 0, -1))
    for layer, snapshot in seen.items():
        start, stop = layer_spans(NET)[layer - 1]
        assert torch.equal(snapshot[start:stop], buffer[start:stop]), layer  # final when reported
    for mine, theirs in zip(layered.grads(), plain.grads(), strict=True):
        for a, b in zip(mine, theirs, strict=True):
            np.testing.assert_array_equal(a, b)


def gpu_ranks_or_skip(world_size):
    if torch.cuda.device_count() < world_size:
        pytest.skip(f"{world_size} GPU ranks need {world_size} GPUs; {torch.cuda.device_count()} here")


@pytest.mark.parametrize("world_size", [1, 2])
@pytest.mark.parametrize("rung", ["after-backprop", "overlapped"])
@pytest.mark.parametrize("backend", RANK_BACKENDS)
def test_nccl_ranks_train_like_one_process_on_the_global_batch(tmp_path, backend, rung, world_size):
    gpu_ranks_or_skip(world_size)
    rows = run_ranks(backend, NET.name, world_size, global_batch=8, out_dir=tmp_path, timeout_s=120, steps=3,
                     warmup=1, rung=rung, allreduce_sizes=(4096,), allreduce_repeats=3)
    assert [row["stage"] for row in rows] == ["forward", "backprop", "allreduce", "update", "step"], rows
    for row in rows:
        assert row["status"] == "ok" and row["pg_backend"] == "nccl" and row["device"] == "cuda", row
        assert float(row["median_s"]) > 0
        assert float(row["err_params"]) <= TOLERANCE, row
