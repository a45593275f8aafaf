"""Backends by name. Each family lives in its own module, imported only when one of its backends is loaded,
so the CPU backends work on machines without PyCUDA or a GPU.

A new backend is one module with a :class:`~mlpbench.backends.base.Model` subclass plus one line here: the class
declares what the harness needs (device, family, threads, limits), and everything else asks the class through
:func:`model_class` instead of keeping lists of names.
"""

from __future__ import annotations

import importlib
from typing import Any

from mlpbench.backends.base import BackendUnavailable, Batch, Model, Params
from mlpbench.checks import check_on_nonfinite
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
    "cuda-fused": ("mlpbench.backends.cuda_fused", "FusedCudaModel"),
    "cuda-cublas": ("mlpbench.backends.cuda", "CublasCudaModel"),
    "torch-gpu": ("mlpbench.backends.torch_nn", "TorchGPUModel"),
    "torch-gpu-graph": ("mlpbench.backends.torch_nn", "TorchGPUGraphModel"),
    "torch-gpu-compile": ("mlpbench.backends.torch_compile", "TorchGPUCompileModel"),
}

BACKENDS: tuple[str, ...] = tuple(REGISTRY)


def check_backend(backend: str) -> str:
    """``backend`` if it is a registered name (nothing imported); ``ValueError`` naming the choices if not."""
    if not isinstance(backend, str) or backend not in REGISTRY:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    return backend


def model_class(backend: str) -> type[Model]:
    """The class behind a backend name; raises ``ValueError`` for unknown names and
    :class:`BackendUnavailable` when its module cannot be imported here."""
    module_name, class_name = REGISTRY[check_backend(backend)]
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise BackendUnavailable(f"{backend}: cannot import {module_name}: {error}") from error
    return getattr(module, class_name)


def load(backend: str, network: Network | str, params: Params | None = None, seed: int = 0, *,
         threads: int | None = None, on_nonfinite: str = "warn", **options: Any) -> Model:
    """Build ``network`` on ``backend`` with ``params`` (default: the network's seeded initialisation).

    Every backend takes the same two options: ``threads`` (its CPU thread count where it is ``threaded``,
    at most :meth:`~Model.max_threads`; ``None`` or 1 elsewhere, any other count is a ``ValueError``) and
    ``on_nonfinite`` (``"raise"``, ``"warn"`` or ``"ignore"``: what :meth:`~Model.step` does when a loss is
    NaN or infinite). Other ``options`` belong to one backend family (``kernel``, ``max_batch`` and ``isa``
    for the C library; ``kernel`` for cuda-fused); a backend that does not know one raises ``TypeError``.
    """
    network = resolve(network)
    cls = model_class(backend)
    threads = cls.check_thread_option(threads)
    on_nonfinite = check_on_nonfinite(on_nonfinite)
    if threads is not None:
        options["threads"] = threads
    if params is None:
        params = network.init_params(seed)
    model = cls(network, params, **options)
    model.on_nonfinite = on_nonfinite
    return model


def backends_on(device: str) -> tuple[str, ...]:
    """Registered backends whose class computes on ``device`` (``"cpu"`` or ``"cuda"``), in registry order.
    Imports every backend module (PyTorch included; PyCUDA is only imported when a CUDA model is built)."""
    return tuple(name for name in BACKENDS if model_class(name).device == device)


def __getattr__(attribute: str) -> tuple[str, ...]:
    # Computed from the classes on first use, so importing the package stays light.
    if attribute in ("CPU_BACKENDS", "GPU_BACKENDS"):
        value = backends_on("cpu" if attribute == "CPU_BACKENDS" else "cuda")
        globals()[attribute] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {attribute!r}")


__all__ = ["BACKENDS", "CPU_BACKENDS", "GPU_BACKENDS", "REGISTRY", "BackendUnavailable", "Batch", "Model",
           "Params", "backends_on", "check_backend", "load", "model_class"]
