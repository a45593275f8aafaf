"""Names, order and colours shared by every figure and table, so a backend looks the same everywhere.

Nothing here lists the backends: one rule places any name. A backend belongs to a family (its name, or the
family's prefix and a rung word: ``c-omp``, ``cuda-fused``); families run reference, CPU, GPU, hand-written
code before the framework; inside a family the rungs run in the order they climb. The family gives the hue and
the device, the rung the shade, so ``cuda-cublas`` or ``torch-gpu-compile`` need no new line here. A name of
no known family goes last, in grey, on the device its rows say.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from dataclasses import dataclass

import matplotlib as mpl


@dataclass(frozen=True)
class Family:
    prefix: str
    device: str  # "cpu" or "gpu"
    colormap: str
    rungs: tuple[str, ...]  # "" is the bare family name
    library: str = ""  # the rung whose products are a library's, not the project's own code


FAMILIES = (
    Family("numpy", "cpu", "Greys", ("",)),
    Family("c", "cpu", "Blues", ("serial", "omp", "blas"), library="blas"),
    Family("torch-cpu", "cpu", "Oranges", ("",)),
    Family("cuda", "gpu", "Greens", ("naive", "tiled", "opt", "fused", "cublas"), library="cublas"),
    Family("torch-gpu", "gpu", "Purples", ("", "graph", "compile")),
)
#: The float64 reference every backend is checked against (not a contender in any comparison).
REFERENCE = "numpy"
#: The PyTorch backend of each device: the unit every other backend on that device is measured in.
BASELINE_OF_DEVICE = {"cpu": "torch-cpu", "gpu": "torch-gpu"}
MARKERS = "osD^v<>pPX"

STAGE_ORDER = ("transfer", "forward", "backprop", "update")
STAGE_COLORS = {"transfer": "#bdbdbd", "forward": "#1b9e77", "backprop": "#d95f02", "update": "#7570b3",
                "allreduce": "#e7298a", "step": "#000000"}
_UNKNOWN_COLORS = ("#8c564b", "#e377c2", "#bcbd22", "#17becf", "#7f7f7f")

_LADDER_FIXED = {"numpy": "#7f7f7f", "torch-cpu": "#e6550d", "torch-gpu": "#9e9ac8"}
_LADDER_SHADES = {"c": ("#c6dbef", "#6baed6", "#2171b5", "#08519c", "#08306b"),
                  "cuda": ("#c7e9c0", "#a1d99b", "#74c476", "#41ab5d", "#238b45", "#006d2c", "#00441b")}


def _family(name: str) -> tuple[int, Family, str] | None:
    """``(family index, family, rung word)``; the longest matching prefix wins (``torch-gpu`` over ``torch``)."""
    found = [(i, f, name[len(f.prefix) + 1:] if name != f.prefix else "") for i, f in enumerate(FAMILIES)
             if name == f.prefix or name.startswith(f.prefix + "-")]
    return max(found, key=lambda item: len(item[1].prefix)) if found else None


def rank(name: str) -> tuple[int, int, str]:
    """Sort key of a backend: family, then rung (known rungs in order, unknown rungs after), then name."""
    found = _family(name)
    if found is None:
        return len(FAMILIES), 0, name
    index, family, rung = found
    return index, family.rungs.index(rung) if rung in family.rungs else len(family.rungs), name


def ordered(names: Iterable[str]) -> list[str]:
    """Backends by :func:`rank`: reference, CPU, GPU; names of no known family last, alphabetically."""
    return sorted(set(names), key=rank)


def hand_written_ladder(prefix: str) -> list[str]:
    """The family's own rungs in the order they climb, its library rung left out (``cuda``: naive, tiled, opt,
    fused): each is meant to be at least as fast as every rung before it."""
    (family,) = [f for f in FAMILIES if f.prefix == prefix]
    return [f"{prefix}-{rung}" for rung in family.rungs if rung and rung != family.library]


def device(name: str, default: str = "cpu") -> str:
    """``"cpu"`` or ``"gpu"`` by family; ``default`` (from the rows' ``device`` column) for unknown names."""
    found = _family(name)
    return found[1].device if found else default


def backend_color(name: str) -> str:
    """The family's hue, darker for higher rungs; unknown names a fixed colour picked from their name."""
    found = _family(name)
    if found is None:
        return _UNKNOWN_COLORS[zlib.crc32(name.encode()) % len(_UNKNOWN_COLORS)]
    _, family, rung = found
    steps = len(family.rungs)
    position = family.rungs.index(rung) if rung in family.rungs else steps
    shade = 0.6 if steps == 1 and position == 0 else 0.3 + 0.65 * position / steps
    return mpl.colors.to_hex(mpl.colormaps[family.colormap](shade))


def backend_marker(name: str) -> str:
    _, rung_rank, _ = rank(name)
    return MARKERS[rung_rank % len(MARKERS)]


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
    def key(impl: str) -> tuple[int, int, str]:
        family, _, version = impl.rpartition("-v")
        groups = {"c": 0, "numpy": 1, "torch-cpu": 2, "cuda": 3, "torch-gpu": 4}
        if version.isdigit():
            return groups.get(family, 5), int(version), impl
        return groups.get(impl, 5), 0, impl
    return sorted(set(impls), key=key)
