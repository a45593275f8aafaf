"""Every CUDA kernel source compiles for Hopper (sm_90) exactly as the backends compile it, with no register
spills: a broken kernel fails here, on machines without a GPU. Needs ``nvcc``; skipped with the reason
elsewhere."""

import shutil
from concurrent.futures import ThreadPoolExecutor

import pytest

from mlpbench import gpu
from mlpbench.backends import cuda

NVCC = shutil.which("nvcc")
pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc (CUDA toolkit) not on PATH")


@pytest.fixture(scope="module")
def reports():
    """ptxas reports of every module, compiled in parallel (the whole set takes under a minute)."""
    with ThreadPoolExecutor(max_workers=len(cuda.MODULE_SPECS)) as pool:
        futures = {name: pool.submit(gpu.compile_report, spec, "sm_90", NVCC)
                   for name, spec in cuda.MODULE_SPECS.items()}
        return {name: future.result() for name, future in futures.items()}


@pytest.mark.parametrize("module", cuda.MODULE_SPECS)
def test_every_kernel_compiles_without_spills(reports, module):
    report = {row["kernel"]: row for row in reports[module]}
    assert set(report) == set(cuda.MODULE_KERNELS[module])
    for name, row in report.items():
        assert row["registers"] > 0, name
        assert row["spill_store_bytes"] == row["spill_load_bytes"] == 0, row
        assert row["stack_bytes"] == 0, row


def test_the_fused_kernel_fits_one_block_per_sm(reports):
    """One resident block per SM is what makes the grid barrier safe: registers and shared memory must fit."""
    (row,) = reports["fused"]
    assert row["registers"] * cuda.FUSED_THREADS <= 65536
    assert row["static_shared_bytes"] + cuda.FUSED_SHARED_BYTES <= 227 * 1024


@pytest.mark.parametrize("config", cuda.OPT_CONFIGS)
def test_opt_kernels_keep_their_blocks_per_sm(reports, config):
    """Each cuda-opt configuration's registers and shared memory allow the MIN_BLOCKS resident blocks it was
    compiled for."""
    defines = cuda.opt_defines(config)
    threads = cuda.opt_threads(config)
    for row in reports[cuda.OPT_MODULES[config]]:
        assert row["registers"] * threads * defines["MIN_BLOCKS"] <= 65536, row
        if row["kernel"] != "opt_splitk_sum":
            shared = row["static_shared_bytes"] + cuda.opt_shared_bytes(config)
            assert shared <= cuda.SHARED_PER_BLOCK_MAX, row
            assert defines["MIN_BLOCKS"] * (shared + 1024) <= cuda.SHARED_PER_SM, row


@pytest.mark.parametrize("config", [c for c in cuda.OPT_CONFIGS if cuda.opt_defines(c)["FRAGMENT_DB"]
                                    and cuda.opt_defines(c)["WN"] == 32])
def test_fragment_double_buffered_kernels_fit_128_registers(reports, config):
    """8 x 8 outputs: 64 accumulators and two buffers of 16 operand values per thread leave 32 registers for the
    rest; two blocks of 256 threads per SM need every kernel within 128, without spilling (checked above)."""
    rows = [row for row in reports[cuda.OPT_MODULES[config]] if row["kernel"] != "opt_splitk_sum"]
    assert {row["kernel"] for row in rows} == set(cuda.OPT_VECTOR_KERNELS)
    assert all(row["registers"] <= 128 for row in rows), rows


def test_a_broken_kernel_is_reported(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu, "KERNEL_DIR", tmp_path)
    (tmp_path / "broken.cu").write_text("__global__ void broken(float* x) { x[0] = undefined_name; }\n")
    with pytest.raises(RuntimeError, match="undefined_name"):
        gpu.compile_report(gpu.ModuleSpec("broken.cu"), "sm_90", NVCC)
