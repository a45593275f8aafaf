"""What a cluster-resident layer of moons-5h300 (batch 32, 300 wide, tanh) would cost on a Hopper GPU.

Runs ``cluster_probe.cu`` (its header says what each mode does) as one thread-block cluster of 2-16 blocks and
reports, per cluster size, the GPU time of one layer in each mode (block 0's ``%globaltimer`` over many layers
in one launch, median over launches, with the SM clock the launch ran at): the cluster barrier, the activation
exchange pushed or pulled with 4- or 16-byte accesses or sent by the copy engine, the product alone and a whole
forward layer. Each compute mode's output after a few layers is
first checked against a float64 chain of the same layers. Cluster launches need ``cuLaunchKernelEx``, which
PyCUDA does not wrap, so the driver API is called through ctypes inside PyTorch's context.

Writes ``cluster.json`` and ``cluster.txt`` under ``--out``.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from mlpbench.timing import Stats
from mlpbench.verify import FLOAT32_TOLERANCE

SOURCE = Path(__file__).with_name("cluster_probe.cu")
BATCH, WIDTH, THREADS, STRIDE_PAD, MAX_LAYERS = 32, 300, 256, 4, 5
MODES = {"sync": 0, "push-scalar": 1, "push-vec": 2, "pull-vec": 3, "push-bulk": 4, "compute": 5, "layer-push": 6,
         "layer-pull": 7, "layer-bulk": 8}
COMPUTES = ("compute", "layer-push", "layer-pull", "layer-bulk")
# Product mappings: thread tiles (batch rows x output rows), or the batch's rows as a warp's lanes.
VARIANTS = {0: (4, 1), 1: (8, 2), 2: (16, 2), 3: "lanes"}
WARPS = THREADS // 32

# Driver API values (cuda.h).
FUNC_MAX_DYNAMIC_SHARED = 8
FUNC_NON_PORTABLE_CLUSTER_SIZE = 14
LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION = 4


class LaunchAttribute(ctypes.Structure):
    _fields_ = [("id", ctypes.c_int), ("pad", ctypes.c_char * 4), ("value", ctypes.c_uint * 16)]


class LaunchConfig(ctypes.Structure):
    _fields_ = [("grid", ctypes.c_uint * 3), ("block", ctypes.c_uint * 3), ("shared", ctypes.c_uint),
                ("stream", ctypes.c_void_p), ("attrs", ctypes.POINTER(LaunchAttribute)), ("n_attrs", ctypes.c_uint)]


class Driver:
    """The few driver calls a cluster launch needs, in the current (PyTorch's primary) context."""

    def __init__(self) -> None:
        self.lib = ctypes.CDLL("libcuda.so.1")

    def check(self, result: int, what: str) -> None:
        if result != 0:
            name = ctypes.c_char_p()
            self.lib.cuGetErrorName(result, ctypes.byref(name))
            raise RuntimeError(f"{what}: {name.value.decode() if name.value else result}")

    def function(self, cubin: bytes, name: str) -> ctypes.c_void_p:
        module, function = ctypes.c_void_p(), ctypes.c_void_p()
        self.check(self.lib.cuModuleLoadData(ctypes.byref(module), cubin), "cuModuleLoadData")
        self.check(self.lib.cuModuleGetFunction(ctypes.byref(function), module, name.encode()), "cuModuleGetFunction")
        self.check(self.lib.cuFuncSetAttribute(function, FUNC_NON_PORTABLE_CLUSTER_SIZE, 1), "cluster size 16")
        return function

    def launch(self, function: ctypes.c_void_p, cluster: int, shared_bytes: int, args: list) -> None:
        self.check(self.lib.cuFuncSetAttribute(function, FUNC_MAX_DYNAMIC_SHARED, shared_bytes), "shared limit")
        attribute = LaunchAttribute(id=LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION)
        attribute.value[0], attribute.value[1], attribute.value[2] = cluster, 1, 1
        config = LaunchConfig(grid=(ctypes.c_uint * 3)(cluster, 1, 1), block=(ctypes.c_uint * 3)(THREADS, 1, 1),
                              shared=shared_bytes, stream=torch.cuda.current_stream().cuda_stream,
                              attrs=ctypes.pointer(attribute), n_attrs=1)
        params = (ctypes.c_void_p * len(args))(*[ctypes.cast(ctypes.pointer(a), ctypes.c_void_p) for a in args])
        self.check(self.lib.cuLaunchKernelEx(ctypes.byref(config), function, params, None), "cuLaunchKernelEx")


def nvcc_command(cubin: Path, nvcc: str = "nvcc") -> list[str]:
    """How the probe is built: plain sm_90 (clusters, mbarriers and bulk copies need nothing of sm_90a)."""
    return [nvcc, "-cubin", "-arch=sm_90", "-O3", "-Xptxas", "-v", "-o", str(cubin), str(SOURCE)]


def partial_rows(rows: int, variant: int | None) -> int:
    """Rows of `rows` floats the k-split sums of a product mapping take (none for the exchange-only modes)."""
    if variant is None:
        return 0
    if VARIANTS[variant] == "lanes":
        return WARPS * BATCH
    tb, tj = VARIANTS[variant]
    tiles = (BATCH // tb) * (rows // tj)
    return BATCH * (THREADS // tiles) if THREADS // tiles > 1 else 0


def layout(cluster: int, shared_limit: int, variant: int | None = None) -> dict[str, int]:
    """Rows per block, the shared-memory footprint and how many layers' weight slices fit beside it."""
    rows = math.ceil(WIDTH / cluster / 4) * 4
    stride = cluster * rows + STRIDE_PAD
    fixed = 2 * BATCH * cluster * rows + 4 + partial_rows(rows, variant) * rows  # activations, 2 mbarriers, sums
    per_layer = rows * stride + rows
    layers = min(MAX_LAYERS, (shared_limit // 4 - fixed) // per_layer)
    return {"rows": rows, "layers_held": max(layers, 0),
            "shared_bytes": 4 * (fixed + max(layers, 0) * per_layer)}


def reference(x: torch.Tensor, W: torch.Tensor, b: torch.Tensor, layers: int, held: int) -> torch.Tensor:
    a = x.double()
    for i in range(layers):
        a = torch.tanh(a @ W[i % held].double().T + b[i % held].double())
    return a


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--clusters", default="2,4,8,16")
    parser.add_argument("--launches", type=int, default=7)
    parser.add_argument("--layers", type=int, default=1000, help="layers per launch (exchange-only modes: 4x)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    torch.cuda.init()
    props = torch.cuda.get_device_properties(0)
    shared_limit = props.shared_memory_per_block_optin
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "probe.cubin"
        subprocess.run(nvcc_command(cubin), check=True, capture_output=True)
        binary = cubin.read_bytes()
    driver = Driver()
    gen = torch.Generator(device="cuda").manual_seed(0)
    W = (torch.rand(MAX_LAYERS, WIDTH, WIDTH, device="cuda", generator=gen) * 2 - 1) * math.sqrt(3 / WIDTH)
    b = (torch.rand(MAX_LAYERS, WIDTH, device="cuda", generator=gen) * 2 - 1) * 0.1
    x = torch.rand(BATCH, WIDTH, device="cuda", generator=gen) * 2 - 1
    out = torch.empty(BATCH, WIDTH, device="cuda")
    ns = torch.zeros(2, dtype=torch.int64, device="cuda")

    function = driver.function(binary, "cluster_probe")

    def run(cluster: int, plan: dict[str, int], mode: str, variant: int, layers: int) -> tuple[int, int]:
        """Nanoseconds and SM cycles of `layers` layers in one launch."""
        driver.launch(function, cluster, plan["shared_bytes"],
                      [ctypes.c_int(MODES[mode]), ctypes.c_int(variant), ctypes.c_int(layers),
                       ctypes.c_int(plan["rows"]), ctypes.c_int(plan["layers_held"]), ctypes.c_void_p(W.data_ptr()),
                       ctypes.c_void_p(b.data_ptr()), ctypes.c_void_p(x.data_ptr()),
                       ctypes.c_void_p(out.data_ptr()), ctypes.c_void_p(ns.data_ptr())])
        torch.cuda.synchronize()
        return tuple(ns.tolist())

    rows_out = []
    for cluster in (int(c) for c in args.clusters.split(",")):
        for mode in MODES:
            for variant in (VARIANTS if mode in COMPUTES else [None]):
                plan = layout(cluster, shared_limit, variant)
                tile = VARIANTS.get(variant, "")
                tile = tile if isinstance(tile, str) else f"{tile[0]}x{tile[1]}"
                row = {"cluster": cluster, "mode": mode, "tile": tile,
                       "rows_per_block": plan["rows"], "layers_held": plan["layers_held"],
                       "shared_kb": plan["shared_bytes"] / 1024}
                if mode in COMPUTES and plan["layers_held"] == 0:
                    row["skipped"] = "one layer's weight slice does not fit in shared memory"
                    rows_out.append(row)
                    continue
                if mode in COMPUTES and mode != "compute":
                    check_layers = 7
                    run(cluster, plan, mode, variant, check_layers)
                    expected = reference(x, W, b, check_layers, plan["layers_held"])
                    error = float((out.double() - expected).abs().max() / expected.abs().max())
                    row["rel_error"] = error
                    if error > FLOAT32_TOLERANCE:
                        row["skipped"] = f"wrong result: relative error {error:.2e}"
                        rows_out.append(row)
                        continue
                layers = args.layers if mode in COMPUTES else 4 * args.layers
                run(cluster, plan, mode, variant or 0, 10)
                samples = [run(cluster, plan, mode, variant or 0, layers) for _ in range(args.launches)]
                stats = Stats.from_ns([elapsed / layers for elapsed, _ in samples])
                row.update(layer_us=stats.median * 1e6, q1_us=stats.q1 * 1e6, q3_us=stats.q3 * 1e6,
                           layer_cycles=float(np.median([cycles / layers for _, cycles in samples])),
                           sm_ghz=float(np.median([cycles / elapsed for elapsed, cycles in samples])))
                rows_out.append(row)
                print(row, flush=True)

    meta = {"gpu": props.name, "sm_count": props.multi_processor_count, "shared_optin": shared_limit,
            "torch": torch.__version__, "launches": args.launches, "layers": args.layers}
    (args.out / "cluster.json").write_text(json.dumps({"meta": meta, "rows": rows_out}, indent=1))
    columns = ["cluster", "mode", "tile", "rows_per_block", "layers_held", "layer_us", "q1_us", "q3_us",
               "layer_cycles", "sm_ghz", "rel_error", "skipped"]
    lines = [" | ".join(columns)] + [" | ".join(
        (f"{r[c]:.3g}" if isinstance(r.get(c), float) else str(r.get(c, ""))) for c in columns) for r in rows_out]
    (args.out / "cluster.txt").write_text(json.dumps(meta) + "\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
