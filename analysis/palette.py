"""Names, order and colours shared by every figure and table, so a backend looks the same everywhere.

The order is the backends registry's (reference, CPU, GPU); ``tests/test_analysis.py`` checks that it still
matches, without this package importing any backend.
"""

from __future__ import annotations

from collections.abc import Iterable

BACKEND_ORDER = ("numpy", "c-serial", "c-omp", "torch-cpu", "cuda-naive", "cuda-tiled", "cuda-opt",
                 "cuda-fused", "torch-gpu", "torch-gpu-graph")
CPU_BACKENDS = BACKEND_ORDER[:4]
GPU_BACKENDS = BACKEND_ORDER[4:]

# Families share a hue: grey reference, blue C, orange PyTorch CPU, greens CUDA, purples PyTorch GPU.
BACKEND_COLORS = {
    "numpy": "#7f7f7f",
    "c-serial": "#9ecae1",
    "c-omp": "#2171b5",
    "torch-cpu": "#e6550d",
    "cuda-naive": "#c7e9c0",
    "cuda-tiled": "#74c476",
    "cuda-opt": "#31a354",
    "cuda-fused": "#00441b",
    "torch-gpu": "#9e9ac8",
    "torch-gpu-graph": "#54278f",
}
BACKEND_MARKERS = dict(zip(BACKEND_ORDER, "osD^v<>pPX", strict=True))

STAGE_ORDER = ("transfer", "forward", "backprop", "update")
STAGE_COLORS = {"transfer": "#bdbdbd", "forward": "#1b9e77", "backprop": "#d95f02", "update": "#7570b3",
                "step": "#000000"}

#: Baseline each backend's speed-up is measured against: PyTorch on the same kind of device.
BASELINES = {**dict.fromkeys(CPU_BACKENDS, "torch-cpu"), **dict.fromkeys(GPU_BACKENDS, "torch-gpu")}

_LADDER_FIXED = {"numpy": BACKEND_COLORS["numpy"], "torch-cpu": BACKEND_COLORS["torch-cpu"],
                 "torch-gpu": BACKEND_COLORS["torch-gpu"]}
_LADDER_SHADES = {"c": ("#c6dbef", "#6baed6", "#2171b5", "#08519c", "#08306b"),
                  "cuda": ("#c7e9c0", "#a1d99b", "#74c476", "#41ab5d", "#238b45", "#006d2c", "#00441b")}


def backend_color(name: str) -> str:
    return BACKEND_COLORS.get(name, "#000000")


def ordered(names: Iterable[str]) -> list[str]:
    """Backends in :data:`BACKEND_ORDER`, unknown names last in alphabetical order."""
    names = set(names)
    known = [b for b in BACKEND_ORDER if b in names]
    return known + sorted(names - set(known))


def ladder_color(impl: str) -> str:
    """Library ceilings in their backend's colour; numbered rungs (``c-v2``, ``cuda-v5``) darker as they climb."""
    if impl in _LADDER_FIXED:
        return _LADDER_FIXED[impl]
    family, _, version = impl.rpartition("-v")
    shades = _LADDER_SHADES.get(family)
    if shades is None or not version.isdigit():
        return "#000000"
    return shades[min(int(version), len(shades)) - 1]


def ladder_order(impls: Iterable[str]) -> list[str]:
    """Rungs by family and number, each family's library ceiling after its rungs."""
    def rank(impl: str) -> tuple[int, int, str]:
        family, _, version = impl.rpartition("-v")
        groups = {"c": 0, "numpy": 1, "torch-cpu": 2, "cuda": 3, "torch-gpu": 4}
        if version.isdigit():
            return groups.get(family, 5), int(version), impl
        return groups.get(impl, 5), 0, impl
    return sorted(set(impls), key=rank)
