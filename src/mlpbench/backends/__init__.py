"""Backends by name. Each family lives in its own module, imported only when one of its backends is loaded,
so the CPU backends work on machines without PyCUDA or a GPU.

A new backend is one module with a :class:`~mlpbench.backends.base.Model` subclass plus one line here.
"""

from __future__ import annotations

import importlib
from typing import Any

from mlpbench.backends.base import BackendUnavailable, Batch, Model, Params
from mlpbench.network import Network, resolve

# name -> (module, class). The order is the order of tables and figures: reference, CPU, GPU.
REGISTRY: dict[str, tuple[str, str]] = {
    "numpy": ("mlpbench.backends.numpy_ref", "NumpyModel"),
    "c-serial": ("mlpbench.backends.native_c", "SerialCModel"),
    "c-omp": ("mlpbench.backends.native_c", "OpenMPCModel"),
    "c-blas": ("mlpbench.backends.native_c", "BlasCModel"),
    "torch-cpu": ("mlpbench.backends.torch_nn", "TorchCPUModel"),
    "cuda-naive": ("mlpbench.backends.cuda", "NaiveCudaModel"),
    "cuda-tiled": ("mlpbench.backends.cuda", "TiledCudaModel"),
    "cuda-opt": ("mlpbench.backends.cuda", "OptimisedCudaModel"),
    "cuda-fused": ("mlpbench.backends.cuda", "FusedCudaModel"),
    "torch-gpu": ("mlpbench.backends.torch_nn", "TorchGPUModel"),
    "torch-gpu-graph": ("mlpbench.backends.torch_nn", "TorchGPUGraphModel"),
}

BACKENDS: tuple[str, ...] = tuple(REGISTRY)
CPU_BACKENDS = ("numpy", "c-serial", "c-omp", "c-blas", "torch-cpu")
GPU_BACKENDS = ("cuda-naive", "cuda-tiled", "cuda-opt", "cuda-fused", "torch-gpu", "torch-gpu-graph")


def model_class(backend: str) -> type[Model]:
    """The class behind a backend name; raises ``ValueError`` for unknown names and
    :class:`BackendUnavailable` when its module cannot be imported here."""
    if backend not in REGISTRY:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    module_name, class_name = REGISTRY[backend]
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise BackendUnavailable(f"{backend}: cannot import {module_name}: {error}") from error
    return getattr(module, class_name)


def load(backend: str, network: Network | str, params: Params | None = None, seed: int = 0,
         **options: Any) -> Model:
    """Build ``network`` on ``backend`` with ``params`` (default: the network's seeded initialisation).

    ``options`` are backend-specific (``threads`` for ``c-omp`` and ``torch-cpu``, ``kernel`` for the C
    library's matrix-product version); unknown options raise ``TypeError``.
    """
    network = resolve(network)
    cls = model_class(backend)
    if params is None:
        params = network.init_params(seed)
    return cls(network, params, **options)


__all__ = ["BACKENDS", "CPU_BACKENDS", "GPU_BACKENDS", "REGISTRY", "BackendUnavailable", "Batch", "Model",
           "Params", "load", "model_class"]
