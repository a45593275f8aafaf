"""Shared test fixtures."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def cuda_ready() -> None:
    """Skip the module, with the reason, unless PyCUDA, a CUDA driver and a GPU PyTorch sees are all here."""
    drv = pytest.importorskip("pycuda.driver", exc_type=ImportError)
    try:
        drv.init()
    except drv.Error as error:
        pytest.skip(f"CUDA driver unusable: {error}")
    import torch

    if not torch.cuda.is_available():
        pytest.skip("PyTorch sees no CUDA GPU")
    from mlpbench import gpu

    gpu.ensure_available()
