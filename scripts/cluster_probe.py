"""What a cluster-resident layer of moons-5h300 (batch 32, 300 wide, tanh) would cost on a Hopper GPU.

Runs ``cluster_probe.cu`` (its header says what each mode does) as one thread-block cluster of 2-16 blocks and
reports, per cluster size, the GPU time of one layer in each mode (block 0's ``%globaltimer`` over many layers
in one launch, median over launches, with the SM clock the launch ran at): the cluster barrier, the activation
exchange pushed or pulled with 4- or 16-byte accesses or sent by the copy engine, the product alone and a whole
forward layer. Each compute mode's output after a few layers is
first checked against a float64 chain of the same layers. Cluster launches go through ``gpu.DriverKernel``
(``cuLaunchKernelEx``, which PyCUDA does not wrap).

``--batch`` gives the rows of the batch one cluster holds: 32, the whole batch, or the share of one of several
clusters that would split it (8 clusters of 4 rows, 4 of 8), each on SMs of its own. Writes ``cluster.json`` and
``cluster.txt`` under ``--out``.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

from mlpbench import gpu
from mlpbench.timing import Stats
from mlpbench.verify import FLOAT32_TOLERANCE

SOURCE = Path(__file__).with_name("cluster_probe.cu")
BATCH, WIDTH, THREADS, STRIDE_PAD, MAX_LAYERS = 32, 300, 256, 4, 5  # BATCH: the whole batch, the default
BATCHES = (4, 8, 16, 32)  # rows a cluster may hold: multiples of the smallest thread tile's 4
MODES = {"sync": 0, "push-scalar": 1, "push-vec": 2, "pull-vec": 3, "push-bulk": 4, "compute": 5, "layer-push": 6,
         "layer-pull": 7, "layer-bulk": 8}
COMPUTES = ("compute", "layer-push", "layer-pull", "layer-bulk")
# Product mappings: thread tiles (batch rows x output rows), the batch's rows as a warp's lanes, 32 or 8 lanes
# per output row (splitting its k, summed by shuffles), or one output per thread (its whole k range; its k loop
# rolled, or unrolled 20 steps at a time).
VARIANTS = {0: (4, 1), 1: (8, 2), 2: (16, 2), 3: "lanes", 4: "rows", 5: "rows8", 6: "outputs", 7: "outputs-u20"}
UNSPLIT = ("rows", "rows8", "outputs", "outputs-u20")  # mappings without shared-memory partial sums
OUTPUTS_ROWS = (20, 40)  # rows a block holds that the one-output-per-thread mappings are compiled for (C = 16, 8)
WARPS = THREADS // 32


def spec(batch: int = BATCH) -> gpu.ModuleSpec:
    """The probe's source for ``batch`` rows, compiled as the package compiles its kernels (PyCUDA's nvcc, this
    GPU's arch, cached)."""
    if batch not in BATCHES:
        raise ValueError(f"a cluster holds one of {BATCHES} rows of the batch, not {batch}")
    return gpu.ModuleSpec(str(SOURCE), defines=(("BATCH", batch),), no_extern_c=True)


def variants(batch: int) -> list[int]:
    """The product mappings that fit ``batch`` rows: a thread tile's rows at most, the lanes only at 32."""
    return [v for v, tile in VARIANTS.items()
            if tile in UNSPLIT or (batch == 32 if tile == "lanes" else tile[0] <= batch)]


def tile_name(variant: int | None) -> str:
    """A product mapping as the probe's tables name it: ``4x1``, ``lanes``, ``rows8``; empty for none."""
    tile = VARIANTS.get(variant, "")
    return tile if isinstance(tile, str) else f"{tile[0]}x{tile[1]}"


class ProbeArgs(ctypes.Structure):
    """cluster_probe's parameters, in order, for gpu.DriverKernel."""

    _fields_ = [("mode", ctypes.c_int), ("variant", ctypes.c_int), ("reps", ctypes.c_int), ("R", ctypes.c_int),
                ("layers_held", ctypes.c_int), ("W", ctypes.c_uint64), ("b", ctypes.c_uint64), ("x", ctypes.c_uint64),
                ("out", ctypes.c_uint64), ("ns", ctypes.c_uint64)]


def partial_rows(rows: int, variant: int | None, batch: int = BATCH) -> int:
    """Rows of `rows` floats the k-split sums of a product mapping take (none for the exchange-only modes)."""
    if variant is None or VARIANTS[variant] in UNSPLIT:
        return 0
    if VARIANTS[variant] == "lanes":
        return WARPS * batch
    tb, tj = VARIANTS[variant]
    tiles = (batch // tb) * (rows // tj)
    return batch * (THREADS // tiles) if THREADS // tiles > 1 else 0


def layout(cluster: int, shared_limit: int, variant: int | None = None, batch: int = BATCH) -> dict[str, int]:
    """Rows per block, the shared-memory footprint and how many layers' weight slices fit beside it."""
    rows = math.ceil(WIDTH / cluster / 4) * 4
    stride = cluster * rows + STRIDE_PAD
    # activations, 2 mbarriers, sums
    fixed = 2 * batch * cluster * rows + 4 + partial_rows(rows, variant, batch) * rows
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
    parser.add_argument("--batch", type=int, default=BATCH, choices=BATCHES, help="rows of the batch a cluster holds")
    parser.add_argument("--modes", default=",".join(MODES), help="modes to run, in this order (a profiler's subset)")
    parser.add_argument("--tiles", default="", help="product mappings to run (4x1, lanes, rows8, ...); empty: all")
    args = parser.parse_args()
    modes = args.modes.split(",")
    unknown = set(modes) - set(MODES)
    if unknown:
        parser.error(f"unknown modes {sorted(unknown)}; choose from {', '.join(MODES)}")
    fitting = [tile_name(v) for v in variants(args.batch)]
    unknown = set(args.tiles.split(",")) - set(fitting) if args.tiles else set()
    if unknown:
        parser.error(f"product mappings {sorted(unknown)} do not run at batch {args.batch}; choose from "
                     f"{', '.join(fitting)}")
    if not torch.cuda.is_available():
        parser.error("needs an NVIDIA GPU with thread-block clusters (Hopper); none is usable here")
    args.out.mkdir(parents=True, exist_ok=True)

    torch.cuda.init()
    props = torch.cuda.get_device_properties(0)
    shared_limit = props.shared_memory_per_block_optin
    kernel = gpu.DriverKernel(spec(args.batch), "cluster_probe", ProbeArgs())
    kernel.set_attribute(gpu.DriverKernel.NON_PORTABLE_CLUSTER_SIZE_ALLOWED, 1)
    gen = torch.Generator(device="cuda").manual_seed(0)
    W = (torch.rand(MAX_LAYERS, WIDTH, WIDTH, device="cuda", generator=gen) * 2 - 1) * math.sqrt(3 / WIDTH)
    b = (torch.rand(MAX_LAYERS, WIDTH, device="cuda", generator=gen) * 2 - 1) * 0.1
    x = torch.rand(args.batch, WIDTH, device="cuda", generator=gen) * 2 - 1
    out = torch.empty(args.batch, WIDTH, device="cuda")
    ns = torch.zeros(2, dtype=torch.int64, device="cuda")

    def run(cluster: int, plan: dict[str, int], mode: str, variant: int, layers: int) -> tuple[int, int]:
        """Nanoseconds and SM cycles of `layers` layers in one launch."""
        kernel.set_attribute(gpu.DriverKernel.MAX_DYNAMIC_SHARED_SIZE_BYTES, plan["shared_bytes"])
        for name, value in (("mode", MODES[mode]), ("variant", variant), ("reps", layers), ("R", plan["rows"]),
                            ("layers_held", plan["layers_held"]), ("W", W.data_ptr()), ("b", b.data_ptr()),
                            ("x", x.data_ptr()), ("out", out.data_ptr()), ("ns", ns.data_ptr())):
            setattr(kernel.args, name, value)
        kernel.launch(cluster, THREADS, plan["shared_bytes"], cluster=cluster)
        torch.cuda.synchronize()
        return tuple(ns.tolist())

    rows_out = []
    for cluster in (int(c) for c in args.clusters.split(",")):
        for mode in modes:
            for variant in (variants(args.batch) if mode in COMPUTES else [None]):
                plan = layout(cluster, shared_limit, variant, args.batch)
                tile = tile_name(variant)
                if args.tiles and variant is not None and tile not in args.tiles.split(","):
                    continue
                row = {"batch": args.batch, "cluster": cluster, "mode": mode, "tile": tile,
                       "rows_per_block": plan["rows"], "layers_held": plan["layers_held"],
                       "shared_kb": plan["shared_bytes"] / 1024}
                if variant is not None and tile.startswith("outputs") and plan["rows"] not in OUTPUTS_ROWS:
                    row["skipped"] = f"one output per thread is compiled for {OUTPUTS_ROWS} rows a block"
                    rows_out.append(row)
                    continue
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
    columns = ["batch", "cluster", "mode", "tile", "rows_per_block", "layers_held", "layer_us", "q1_us", "q3_us",
               "layer_cycles", "sm_ghz", "rel_error", "skipped"]
    lines = [" | ".join(columns)] + [" | ".join(
        (f"{r[c]:.3g}" if isinstance(r.get(c), float) else str(r.get(c, ""))) for c in columns) for r in rows_out]
    (args.out / "cluster.txt").write_text(json.dumps(meta) + "\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
