"""CUDA backends: the GPU optimisation ladder, one rung per backend, all verified against the float64
reference before they are timed.

===============  =====================================================================================
``cuda-naive``   rung 1: one thread per output element, global memory only; bias, activation, loss,
                 gradients and update in separate element-wise kernels (``kernels/naive.cu``)
``cuda-tiled``   rung 2: shared-memory tiles loaded with coalesced accesses (``kernels/tiled.cu``)
``cuda-opt``     rung 3: warp-tiled SGEMM with 2D register blocking, 128-bit loads and double buffering;
                 bias + activation fused into the forward product, the activation derivative into the
                 input-gradient product; ``train_step`` also fuses the SGD step into the weight-gradient
                 product and the bias update into the bias-gradient sums (``kernels/opt.cu``); tile shape
                 and k slices per product shape from an autotuner at first use (:func:`opt_choices`)
``cuda-fused``   rung 4: the whole training step in one persistent kernel with grid-wide barriers, for
                 networks up to :data:`FUSED_MAX_WIDTH` wide (``kernels/fused.cu``; its planner and backend
                 in :mod:`mlpbench.backends.cuda_fused`, on :class:`CudaModel` and this module's tables)
``cuda-cublas``  the library rung: cuBLAS products (``torch.mm`` into this backend's buffers) with the
                 element-wise kernels of rungs 1-2
===============  =====================================================================================

Every buffer (parameters, activations, gradients) is a PyTorch CUDA tensor that stays on the GPU across
steps; kernels get the tensors' device pointers through PyCUDA's ``prepared_call`` in PyTorch's own CUDA
context (see :mod:`mlpbench.gpu`) on the default stream. Data crosses the bus only in ``prepare`` (the
"transfer" stage: checks + host-to-device copy) and in the read-backs. The forward stage computes each
sample's loss on the GPU; :meth:`loss` reads those ``B`` numbers back and averages them.

:func:`matmul` exposes each rung's matrix product on its own (for the ladder study against cuBLAS),
:func:`kernel_report` the registers, shared memory and spills of every kernel, and :func:`opt_choices` the
autotuner's choices (for the results' metadata).
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from mlpbench import gpu
from mlpbench.backends.base import (
    BackendUnavailable,
    Batch,
    Model,
    Params,
    check_inputs,
    check_params,
    check_step_size,
    layer_views,
)
from mlpbench.backends.torch_nn import pin_ieee_float32, tensor_batch
from mlpbench.gpu import KERNEL_DIR, ModuleSpec
from mlpbench.network import Network

# Codes shared with kernels/common.cuh.
ACTIVATION_CODES = {"sigmoid": 0, "tanh": 1, "relu": 2}
IDENTITY = -1
LOSS_CODES = {"softmax-ce": 0, "sigmoid-bce": 1}

# Epilogues of the cuda-opt products (kernels/opt.cu).
EPI_STORE, EPI_BIAS_ACT, EPI_ACT_GRAD, EPI_SGD = 0, 1, 2, 3

FUSED_KCHUNK = 512
#: Widest layer cuda-fused accepts: its tiles stage up to FUSED_KCHUNK k values of 32 rows at once (and its
#: output head keeps two columns a thread, kernels/fused.cu).
FUSED_MAX_WIDTH = FUSED_KCHUNK
#: Most layers cuda-fused accepts (its kernels copy their layer tables to shared memory: MAX_LAYERS).
FUSED_MAX_LAYERS = 32
FUSED_HEAD_MAX = 16
FUSED_THREADS = 256
#: k values of the layer below the output layer that each thread of the fused output head sums when it computes
#: a sample's row of that layer itself (their weights and inputs held in registers).
FUSED_HIDDEN_K = 32
#: Dynamic shared memory of one fused_step block: two staging buffers of KCHUNK x 33 floats and the split-k
#: sums, four floats per thread.
FUSED_SHARED_BYTES = (2 * FUSED_KCHUNK * (32 + 1) + FUSED_THREADS * 4) * 4
#: Threads per block of cuda-fused's cluster kernel (kernels/fused_cluster.cu), and its largest cluster: the
#: portable cluster size, so no launch depends on the non-portable attribute.
CLUSTER_THREADS = 512
CLUSTER_MAX_RANKS = 8

# Every kernel source with the -D constants the backends compile it with (tests/test_kernels_compile.py
# compiles exactly these for sm_90 on machines without a GPU).
ELEMENTWISE = ModuleSpec("elementwise.cu", (("ROWS_PER_BLOCK", 8),))
NAIVE = ModuleSpec("naive.cu")
TILED = ModuleSpec("tiled.cu", (("TILE", 32),), no_extern_c=True)
OPT = ModuleSpec("opt.cu", (("BM", 128), ("BN", 128), ("BK", 8), ("WM", 64), ("WN", 32), ("MIN_BLOCKS", 2)),
                 no_extern_c=True)


def _opt_spec(BM: int, BN: int, BK: int, WM: int, WN: int, MIN_BLOCKS: int, STAGES: int = 0,
              FLOAT4_ONLY: int = 0, FRAGMENT_DB: int = 0, SMEM_TRANSPOSE: int = 0) -> ModuleSpec:
    defines = {"BM": BM, "BN": BN, "BK": BK, "WM": WM, "WN": WN, "MIN_BLOCKS": MIN_BLOCKS, "STAGES": STAGES,
               "FLOAT4_ONLY": FLOAT4_ONLY, "FRAGMENT_DB": FRAGMENT_DB, "SMEM_TRANSPOSE": SMEM_TRANSPOSE}
    return ModuleSpec("opt.cu", tuple((name, value) for name, value in defines.items() if value), no_extern_c=True)


# cuda-opt's tile configurations (kernels/opt.cu), largest first within each group. The register-staged ones
# of OPT_SMALL_CONFIGS serve every shape, small products of small networks included, where smaller tiles give
# more blocks. The rest are tried only on large float4 products (:data:`OPT_LARGE_WORK`; FLOAT4_ONLY: no
# scalar kernels), each a cp.async ring of STAGES shared-memory stages (dynamic shared memory,
# :func:`opt_shared_bytes`): with k-contiguous operands kept k-contiguous and 8 x 8 or 8 x 16 outputs per
# thread, as library SIMT kernels run (the four that the autotuner chose at 4096^3 or for the large network's
# products on an H200; results/gpu-dev/11-opt-pipelined); and ("db") with every operand staged [k][row],
# 8 x 8 outputs per thread as 2 x 2 sub-tiles of 4 x 4 and the lane's values double-buffered in registers,
# within 128 registers for two blocks of 256 threads per SM (with three or four stages; the fourth won tn in
# results/gpu-dev/22-opt-db-copies); "dbt": the same, with k-contiguous operands copied
# 16 bytes at a time into [row][k] and transposed inside shared memory once per k-step (tn runs as "db"); the
# last "dbt" with 8 x 16 outputs per thread (a quarter fewer fragment reads per multiply-add, up to 255
# registers: one block of 256 threads per SM), the fastest in nn (results/gpu-dev/17-opt-wide-fragments).
# Keys: tile, then k-step, stages and threads. (Dropped after H200 runs, never the fastest in any layout nor an
# autotuned choice: 128x128k8s4t256db after 12-opt-fragment-db; 256x128k16s3t256dbt and 128x128k16s3t128dbt,
# the other 8 x 16 ones, after 17; 128x128k8s4t128db and 128x128k16s3t128db, cuBLAS's nt shape of 4 warps of
# 8 x 16 outputs per lane, after 22.)
OPT_CONFIGS: dict[str, ModuleSpec] = {
    "128x128": OPT,
    "64x64": _opt_spec(64, 64, 8, 32, 32, 4),
    "32x32": _opt_spec(32, 32, 8, 32, 16, 8),
    "128x256k16s3t256": _opt_spec(128, 256, 16, 64, 64, 1, STAGES=3, FLOAT4_ONLY=1),
    "128x128k16s3t128": _opt_spec(128, 128, 16, 64, 64, 2, STAGES=3, FLOAT4_ONLY=1),
    "128x128k16s4t128": _opt_spec(128, 128, 16, 64, 64, 2, STAGES=4, FLOAT4_ONLY=1),
    "128x64k16s4t128": _opt_spec(128, 64, 16, 64, 32, 2, STAGES=4, FLOAT4_ONLY=1),
    "128x128k16s3t256db": _opt_spec(128, 128, 16, 64, 32, 2, STAGES=3, FLOAT4_ONLY=1, FRAGMENT_DB=1),
    "128x128k16s4t256db": _opt_spec(128, 128, 16, 64, 32, 2, STAGES=4, FLOAT4_ONLY=1, FRAGMENT_DB=1),
    "128x128k16s4t256dbt": _opt_spec(128, 128, 16, 64, 32, 2, STAGES=4, FLOAT4_ONLY=1, FRAGMENT_DB=1,
                                     SMEM_TRANSPOSE=1),
    "128x128k16s3t256dbt": _opt_spec(128, 128, 16, 64, 32, 2, STAGES=3, FLOAT4_ONLY=1, FRAGMENT_DB=1,
                                     SMEM_TRANSPOSE=1),
    "128x256k16s3t256dbt": _opt_spec(128, 256, 16, 64, 64, 1, STAGES=3, FLOAT4_ONLY=1, FRAGMENT_DB=1,
                                     SMEM_TRANSPOSE=1),
}
#: Configurations every product shape may use; the others only products of at least OPT_LARGE_WORK
#: multiply-adds (a 1024^3 product: tens of microseconds on a large GPU, enough tiles of 128 x 128 with split k).
OPT_SMALL_CONFIGS = ("128x128", "64x64", "32x32")
OPT_LARGE_WORK = 1 << 30
#: The pipelined kernels address within a tile with 32-bit offsets: every dimension must stay below this.
OPT_PIPELINED_MAX_DIM = 1 << 23
#: Shared memory one block may use on sm_80/sm_90 (opt-in), and one SM holds (per block, 1 KB is reserved).
SHARED_PER_BLOCK_MAX = 227 * 1024
SHARED_PER_SM = 228 * 1024


def opt_defines(config: str) -> dict[str, int]:
    """The -D constants of an OPT_CONFIGS entry, with the optional ones at their defaults (0)."""
    return {"STAGES": 0, "FLOAT4_ONLY": 0, "FRAGMENT_DB": 0, "SMEM_TRANSPOSE": 0, **dict(OPT_CONFIGS[config].defines)}


def opt_threads(config: str) -> int:
    d = opt_defines(config)
    return 32 * (d["BM"] // d["WM"]) * (d["BN"] // d["WN"])


def opt_float4_only(config: str) -> bool:
    """Whether ``config`` has float4 kernels only (no scalar fallback for other shapes)."""
    return bool(opt_defines(config)["FLOAT4_ONLY"])


def opt_pipelined(config: str) -> bool:
    """Whether ``config`` runs kernels/opt.cu's cp.async ring (STAGES >= 2)."""
    return opt_defines(config)["STAGES"] > 0


def opt_shared_bytes(config: str) -> int:
    """Dynamic shared memory of one block of ``config`` (kernels/opt.cu's SHARED_BYTES; the kernel traps if
    launched with less): each stage holds each operand's tile as [BK][rows + 4] with FRAGMENT_DB (plus two such
    transposed buffers per operand with SMEM_TRANSPOSE), otherwise as [rows][BK + 4] or [BK][rows + 4],
    whichever is larger. 0 for register-staged configurations (static shared memory)."""
    d = opt_defines(config)
    if not d["STAGES"]:
        return 0
    bk = d["BK"]
    if d["FRAGMENT_DB"]:
        buffers = d["STAGES"] + 2 * d["SMEM_TRANSPOSE"]
        return buffers * sum(bk * (rows + 4) for rows in (d["BM"], d["BN"])) * 4
    return d["STAGES"] * sum(max(rows * (bk + 4), bk * (rows + 4)) for rows in (d["BM"], d["BN"])) * 4


FUSED = ModuleSpec("fused.cu", (("KCHUNK", FUSED_KCHUNK), ("HEAD_MAX", FUSED_HEAD_MAX),
                                ("HIDDEN_K", FUSED_HIDDEN_K), ("UPDATE_CHUNK", 4096),
                                ("SPIN_LIMIT", 1 << 26), ("MAX_LAYERS", FUSED_MAX_LAYERS)), no_extern_c=True)
FUSED_CLUSTER = ModuleSpec("fused_cluster.cu", (("THREADS", CLUSTER_THREADS), ("MAX_LAYERS", FUSED_MAX_LAYERS)),
                           no_extern_c=True)
#: Module name of each cuda-opt configuration ("opt" for the default tile).
OPT_MODULES: dict[str, str] = {config: "opt" if spec == OPT else f"opt-{config}"
                               for config, spec in OPT_CONFIGS.items()}
MODULE_SPECS: dict[str, ModuleSpec] = {"elementwise": ELEMENTWISE, "naive": NAIVE, "tiled": TILED,
                                       **{module: OPT_CONFIGS[config] for config, module in OPT_MODULES.items()},
                                       "fused": FUSED, "fused-cluster": FUSED_CLUSTER}
OPT_VECTOR_KERNELS = ("opt_nt", "opt_nn", "opt_tn")
OPT_KERNELS = (*OPT_VECTOR_KERNELS, "opt_nt_scalar", "opt_nn_scalar", "opt_tn_scalar", "opt_splitk_sum")
MODULE_KERNELS: dict[str, tuple[str, ...]] = {
    "elementwise": ("bias_activation", "output_head", "output_delta", "activation_backward", "bias_gradient",
                    "sgd_update", "transpose"),
    "naive": ("naive_nt", "naive_nn", "naive_tn"),
    "tiled": ("tiled_nt", "tiled_nn", "tiled_tn"),
    **{module: (*OPT_VECTOR_KERNELS, "opt_splitk_sum") if opt_float4_only(config) else OPT_KERNELS
       for config, module in OPT_MODULES.items()},
    "fused": ("fused_step",),
    "fused-cluster": ("fused_cluster",),
}

#: The product ladder for :func:`matmul`: rung number -> name.
KERNELS: dict[int, str] = {1: "naive", 2: "tiled", 3: "opt"}
LAYOUTS = ("nt", "nn", "tn")
VERSIONS = {1: "naive", 2: "tiled", 3: "opt", "naive": "naive", "tiled": "tiled", "opt": "opt",
            "cuda-naive": "naive", "cuda-tiled": "tiled", "cuda-opt": "opt"}


def cdiv(n: int, per_block: int) -> int:
    """Blocks of ``per_block`` needed for ``n`` items (at least one)."""
    return max(1, -(-n // per_block))


def _kernels(module: str) -> dict[str, Any]:
    compiled = gpu.load(MODULE_SPECS[module])
    return {name: compiled.get_function(name) for name in MODULE_KERNELS[module]}


def _check_default_stream() -> None:
    # PyCUDA launches on the legacy default stream; PyTorch work queued elsewhere would race with it. The
    # backends check in prepare() (once per batch); their stages assume the caller stays on that stream.
    if torch.cuda.current_stream().cuda_stream != 0:
        raise RuntimeError("the CUDA backends launch on the default stream; call them outside "
                           "torch.cuda.stream(...) blocks")


class _Products:
    """The three matrix products of one rung on raw device pointers (row-major, float32):
    ``nt``: C (M,N) = A (M,K) @ B (N,K)^T;  ``nn``: C = A (M,K) @ B (K,N);  ``tn``: C = A (K,M)^T @ B (K,N)."""

    rung: ClassVar[str]
    block: ClassVar[tuple[int, int, int]]

    def __init__(self) -> None:
        kernels = _kernels(self.rung)
        self._kernels = {layout: kernels[f"{self.rung}_{layout}"].prepare("PPPiii") for layout in LAYOUTS}

    def grid(self, M: int, N: int) -> tuple[int, int, int]:
        return (cdiv(N, self.block[0]), cdiv(M, self.block[1]), 1)

    def __call__(self, layout: str, C: int, A: int, B: int, M: int, N: int, K: int) -> None:
        self._kernels[layout].prepared_call(self.grid(M, N), self.block, C, A, B, M, N, K)


class _NaiveProducts(_Products):
    rung = "naive"
    block = (32, 8, 1)


class _TiledProducts(_Products):
    rung = "tiled"
    block = (dict(TILED.defines)["TILE"], dict(TILED.defines)["TILE"], 1)


@dataclass(frozen=True)
class OptChoice:
    """How cuda-opt runs one product shape: the tile configuration (a key of :data:`OPT_CONFIGS`), the
    number of k slices (``splits`` > 1: partial products, then ``opt_splitk_sum``) and whether the product's
    k-contiguous operands are first transposed into scratch buffers so that the tn kernel runs it
    (``transposed``: A of nn; A and B of nt)."""

    config: str
    splits: int
    transposed: bool = False


def opt_tiles(config: str, M: int, N: int) -> int:
    """Output tiles (blocks per k slice) of an M x N product in ``config``."""
    defines = opt_defines(config)
    return cdiv(M, defines["BM"]) * cdiv(N, defines["BN"])


def opt_configs_for(M: int, N: int, K: int, vector: bool = True) -> list[str]:
    """The tile configurations worth timing for an M x N x K product: :data:`OPT_SMALL_CONFIGS` always; the
    others when the product has at least :data:`OPT_LARGE_WORK` multiply-adds on the float4 path (``vector``),
    the pipelined ones only with every dimension below :data:`OPT_PIPELINED_MAX_DIM`."""
    large = vector and M * N * K >= OPT_LARGE_WORK
    return [config for config in OPT_CONFIGS
            if config in OPT_SMALL_CONFIGS
            or (large and (not opt_pipelined(config) or max(M, N, K) < OPT_PIPELINED_MAX_DIM))]


def opt_transposable(layout: str, M: int, N: int, K: int, vector: bool) -> bool:
    """Whether a ``layout`` product may run transposed (:class:`OptChoice`): it has a k-contiguous operand
    (nt, nn), takes the float4 kernels as it is and as tn (every row length a multiple of 4), and has at least
    :data:`OPT_LARGE_WORK` multiply-adds, where the transposes' extra pass over the operands is a few percent
    of the product's time."""
    return layout in ("nt", "nn") and vector and M % 4 == N % 4 == K % 4 == 0 and M * N * K >= OPT_LARGE_WORK


def opt_candidates(layout: str, M: int, N: int, K: int, sm_count: int, vector: bool = True) -> list[OptChoice]:
    """Every (tile configuration, k slices, transposed) worth timing for an M x N x K ``layout`` product on
    ``sm_count`` SMs.

    Each configuration of :func:`opt_configs_for` without splitting; split k only while the output tiles leave
    SMs idle, the launch stays within 4 blocks per SM, and every slice (cut as kernels/opt.cu cuts k: equal
    spans of whole k-steps) holds at least two k-steps and no slice is empty. Where
    :func:`opt_transposable`, each of those again with the operands transposed first."""
    candidates = []
    for config in opt_configs_for(M, N, K, vector):
        bk = opt_defines(config)["BK"]
        tiles = opt_tiles(config, M, N)
        candidates.append(OptChoice(config, 1))
        for splits in (2, 4, 8, 16):
            span = cdiv(K, splits * bk) * bk
            if tiles >= sm_count or tiles * splits > 4 * sm_count or span < 2 * bk or (splits - 1) * span >= K:
                break
            candidates.append(OptChoice(config, splits))
    if opt_transposable(layout, M, N, K, vector):
        candidates += [OptChoice(choice.config, choice.splits, transposed=True) for choice in candidates]
    return candidates


def fastest(timings: dict[OptChoice, float]) -> OptChoice:
    """The candidate with the least time; among equal times the one with fewer launches (no split k, no
    transposes) and bigger tiles (the order of :func:`opt_candidates`)."""
    order = list(timings)
    return min(order, key=lambda choice: (timings[choice], choice.splits > 1 or choice.transposed,
                                          order.index(choice)))


class OptTuning:
    """The autotuner's choices for one GPU and one version of the kernels, kept in a JSON file beside the
    compiled kernels (:func:`mlpbench.gpu.cache_dir`): shapes are timed once per machine, not once per run.
    The file name carries a digest of the kernel sources and configurations, so changed kernels are
    tuned afresh."""

    def __init__(self, directory: str, arch: str, sm_count: int) -> None:
        sources = "".join((KERNEL_DIR / name).read_text() for name in ("opt.cu", "elementwise.cu", "common.cuh"))
        digest = hashlib.sha256((sources + repr(sorted(OPT_CONFIGS.items()))).encode()).hexdigest()[:16]
        self.path = Path(directory) / f"opt-tuning-{arch}-{sm_count}sm-{digest}.json"
        self.choices: dict[tuple[str, int, int, int, bool], OptChoice] = {}
        if self.path.exists():
            for row in json.loads(self.path.read_text()):
                key = (row["layout"], row["M"], row["N"], row["K"], row["vector"])
                self.choices[key] = OptChoice(row["config"], row["splits"], row["transposed"])

    def rows(self) -> list[dict[str, Any]]:
        return [{"layout": layout, "M": M, "N": N, "K": K, "vector": vector, "config": choice.config,
                 "splits": choice.splits, "transposed": choice.transposed}
                for (layout, M, N, K, vector), choice in sorted(self.choices.items())]

    def record(self, key: tuple[str, int, int, int, bool], choice: OptChoice) -> None:
        self.choices[key] = choice
        temporary = self.path.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text(json.dumps(self.rows(), indent=1))
        os.replace(temporary, self.path)  # atomic: a concurrent reader sees the old file or the new one


class _OptArgs(ctypes.Structure):
    """The parameters of kernels/opt.cu's product kernels, in order, for gpu.DriverKernel."""

    _fields_ = [("C", ctypes.c_uint64), ("A", ctypes.c_uint64), ("B", ctypes.c_uint64), ("M", ctypes.c_int),
                ("N", ctypes.c_int), ("K", ctypes.c_int), ("mode", ctypes.c_int), ("bias", ctypes.c_uint64),
                ("aux", ctypes.c_uint64), ("activation", ctypes.c_int), ("lr", ctypes.c_float),
                ("weight_decay", ctypes.c_float)]


class _OptProducts:
    """cuda-opt's products with a fused epilogue (``mode``); see kernels/opt.cu. The float4 kernels run when
    every row length is a multiple of 4 and every pointer 16-byte aligned, the scalar ones otherwise.

    The tile configuration and k slices of each product shape come from a small autotuner: at the first
    product of a shape, every candidate of :func:`opt_candidates` is timed on scratch operands (CUDA events
    around the launches, median of a few calls, host launch time included since that is what small products
    cost, transposes included for the transposed choices) and the fastest is kept (:class:`OptTuning`;
    :func:`opt_choices` lists them)."""

    TUNING_REPEATS = 5

    def __init__(self) -> None:
        fmt = "PPPiiiiPPiff"
        self._vector, self._scalar, self._splitk_sum, self._threads, self._shared = {}, {}, {}, {}, {}
        for config, spec in OPT_CONFIGS.items():
            compiled = gpu.load(spec)
            self._threads[config] = opt_threads(config)
            self._shared[config] = opt_shared_bytes(config)
            if opt_pipelined(config):
                # Through the driver directly: dynamic shared memory beyond 48 KB needs the kernel's opt-in
                # (cuFuncSetAttribute), which PyCUDA's Function does not offer.
                self._vector[config] = {layout: gpu.DriverKernel(spec, f"opt_{layout}", _OptArgs())
                                        for layout in LAYOUTS}
                for kernel in self._vector[config].values():
                    kernel.set_attribute(gpu.DriverKernel.MAX_DYNAMIC_SHARED_SIZE_BYTES, self._shared[config])
            else:
                self._vector[config] = {layout: compiled.get_function(f"opt_{layout}").prepare(fmt)
                                        for layout in LAYOUTS}
            if not opt_float4_only(config):
                self._scalar[config] = {layout: compiled.get_function(f"opt_{layout}_scalar").prepare(fmt)
                                        for layout in LAYOUTS}
            self._splitk_sum[config] = compiled.get_function("opt_splitk_sum").prepare("PPiiiiPPiff")
        self._transpose = _kernels("elementwise")["transpose"].prepare("PPii")
        info = gpu.info()
        self._sm_count = info.sm_count
        self.tuning = OptTuning(gpu.cache_dir(), info.arch, info.sm_count)

    @staticmethod
    def vector_ok(layout: str, M: int, N: int, K: int, *pointers: int) -> bool:
        rows = {"nt": (K, K, N), "nn": (K, N, N), "tn": (M, N, N)}[layout]
        return all(r % 4 == 0 for r in rows) and all(p % 16 == 0 for p in pointers)

    def choice(self, layout: str, M: int, N: int, K: int, vector: bool) -> OptChoice:
        key = (layout, M, N, K, vector)
        choice = self.tuning.choices.get(key)
        if choice is None:
            choice = self._tune(layout, M, N, K, vector)
            self.tuning.record(key, choice)
        return choice

    def _tune(self, layout: str, M: int, N: int, K: int, vector: bool) -> OptChoice:
        shapes = {"nt": ((M, K), (N, K)), "nn": ((M, K), (K, N)), "tn": ((K, M), (K, N))}[layout]
        A, B = (torch.randn(shape, device=gpu.device()) for shape in shapes)
        C = torch.empty((M, N), device=gpu.device())
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        timings = {}
        for candidate in opt_candidates(layout, M, N, K, self._sm_count, vector):
            times = []
            for _ in range(self.TUNING_REPEATS + 1):  # the first call of each candidate is not counted
                torch.cuda.synchronize()
                start.record()
                self.run(candidate, vector, layout, C.data_ptr(), A.data_ptr(), B.data_ptr(), M, N, K)
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
            timings[candidate] = float(np.median(times[1:]))
        return fastest(timings)

    def run(self, choice: OptChoice, vector: bool, layout: str, C: int, A: int, B: int, M: int, N: int, K: int,
            mode: int = EPI_STORE, bias: int = 0, aux: int = 0, activation: int = IDENTITY, lr: float = 0.0,
            weight_decay: float = 0.0) -> None:
        """The product in the given configuration (the autotuner and the tests pick it; callers use
        ``__call__``)."""
        if choice.transposed:
            if layout not in ("nt", "nn") or not vector:
                raise ValueError(f"a transposed choice needs an nt or nn product on the float4 path, not "
                                 f"{layout} (vector={vector})")
            # Scratch copies, freed at return: torch's allocator reuses memory in stream order, after the
            # product has read them.
            A_t = self._transposed(A, M, K)
            B_t = self._transposed(B, N, K) if layout == "nt" else None
            self.run(OptChoice(choice.config, choice.splits), True, "tn", C, A_t.data_ptr(),
                     B if B_t is None else B_t.data_ptr(), M, N, K, mode, bias, aux, activation, lr, weight_decay)
            return
        kernel = (self._vector if vector else self._scalar)[choice.config][layout]
        defines = opt_defines(choice.config)
        grid = (cdiv(N, defines["BN"]), cdiv(M, defines["BM"]), choice.splits)
        threads, shared = self._threads[choice.config], self._shared[choice.config]

        def launch(*args: Any) -> None:
            if isinstance(kernel, gpu.DriverKernel):
                for (name, _), value in zip(_OptArgs._fields_, args, strict=True):
                    setattr(kernel.args, name, value)
                kernel.launch(grid, threads, shared)
            else:
                kernel.prepared_call(grid, (threads, 1, 1), *args)

        if choice.splits == 1:
            launch(C, A, B, M, N, K, mode, bias, aux, activation, lr, weight_decay)
            return
        # Freed at return, but torch's allocator reuses memory in stream order, after these kernels.
        partial = torch.empty(choice.splits * M * N, dtype=torch.float32, device=gpu.device())
        launch(partial.data_ptr(), A, B, M, N, K, EPI_STORE, 0, 0, IDENTITY, 0.0, 0.0)
        self._splitk_sum[choice.config].prepared_call(
            (min(cdiv(M * N, 256), self._sm_count * 8), 1, 1), (256, 1, 1), C, partial.data_ptr(),
            choice.splits, M, N, mode, bias, aux, activation, lr, weight_decay)

    def _transposed(self, matrix: int, rows: int, cols: int) -> torch.Tensor:
        """A new (cols, rows) buffer holding the transpose of the row-major (rows, cols) matrix at ``matrix``."""
        out = torch.empty((cols, rows), dtype=torch.float32, device=gpu.device())
        self._transpose.prepared_call((cdiv(cols, 32), min(cdiv(rows, 32), 65535), 1), (32, 8, 1),
                                      out.data_ptr(), matrix, rows, cols)
        return out

    def __call__(self, layout: str, C: int, A: int, B: int, M: int, N: int, K: int, mode: int = EPI_STORE,
                 bias: int = 0, aux: int = 0, activation: int = IDENTITY, lr: float = 0.0,
                 weight_decay: float = 0.0) -> None:
        vector = self.vector_ok(layout, M, N, K, C, A, B, bias, aux)
        self.run(self.choice(layout, M, N, K, vector), vector, layout, C, A, B, M, N, K, mode, bias, aux,
                 activation, lr, weight_decay)


def opt_choices() -> list[dict[str, Any]]:
    """cuda-opt's tile configuration and k slices for every product shape tuned so far on this GPU (with
    this version of the kernels): one dict per shape with ``layout``, ``M``, ``N``, ``K``, ``vector``,
    ``config``, ``splits``, ``transposed``. Empty before the first cuda-opt product."""
    products = _product_cache.get("opt")
    return [] if products is None else products.tuning.rows()


_PRODUCT_CLASSES: dict[str, type] = {"naive": _NaiveProducts, "tiled": _TiledProducts, "opt": _OptProducts}
_product_cache: dict[str, Any] = {}


def _products(rung: str) -> Any:
    if rung not in _product_cache:
        _product_cache[rung] = _PRODUCT_CLASSES[rung]()
    return _product_cache[rung]


def matmul(A: torch.Tensor, B: torch.Tensor, version: int | str, layout: str = "nn",
           out: torch.Tensor | None = None) -> torch.Tensor:
    """One rung's matrix product on the GPU, for the ladder study against cuBLAS (``torch.mm``).

    ``matmul(A, B, version, layout="nn", out=None) -> C``

    * ``version``: ``1`` / ``"naive"``, ``2`` / ``"tiled"``, ``3`` / ``"opt"`` (backend names such as
      ``"cuda-opt"`` work too);
    * ``layout``: ``"nn"``: ``C = A @ B`` with A ``(M, K)``, B ``(K, N)``; ``"nt"``: ``C = A @ B.T`` with
      B ``(N, K)`` (the forward product); ``"tn"``: ``C = A.T @ B`` with A ``(K, M)`` (the weight gradient);
    * ``A``, ``B``: 2-D, C-contiguous float32 tensors on the CUDA device, ``requires_grad`` off;
    * ``out``: optional C-contiguous float32 ``(M, N)`` CUDA tensor to write into (else a new one).

    Returns C ``(M, N)``. The product is queued on the default stream (synchronise before timing with a host
    clock). Raises ``TypeError``/``ValueError`` for bad arguments, :class:`BackendUnavailable` without a GPU.
    """
    if version not in VERSIONS:
        raise ValueError(f"version: expected 1, 2, 3 or one of {sorted(v for v in VERSIONS if isinstance(v, str))}, "
                         f"got {version!r}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout: expected one of {LAYOUTS}, got {layout!r}")
    gpu.ensure_available()
    for name, tensor in (("A", A), ("B", B)):
        _check_device_matrix(name, tensor)
    if layout == "nn":
        (M, K), (K2, N) = A.shape, B.shape
    elif layout == "nt":
        (M, K), (N, K2) = A.shape, B.shape
    else:
        (K, M), (K2, N) = A.shape, B.shape
    if K != K2:
        raise ValueError(f"shapes {tuple(A.shape)} and {tuple(B.shape)} do not match for layout {layout!r}")
    if out is None:
        out = torch.empty((M, N), dtype=torch.float32, device=A.device)
    else:
        _check_device_matrix("out", out)
        if tuple(out.shape) != (M, N):
            raise ValueError(f"out: expected shape {(M, N)}, got {tuple(out.shape)}")
    _check_default_stream()
    _products(VERSIONS[version])(layout, out.data_ptr(), A.data_ptr(), B.data_ptr(), M, N, K)
    return out


def _check_device_matrix(name: str, tensor: Any) -> None:
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dtype != torch.float32:
        raise TypeError(f"{name}: expected dtype torch.float32, got {tensor.dtype}")
    if tensor.device.type != "cuda":
        raise ValueError(f"{name}: expected a CUDA tensor, got one on {tensor.device}")
    if tensor.dim() != 2 or not tensor.is_contiguous():
        raise ValueError(f"{name}: expected a 2-D C-contiguous tensor, got shape {tuple(tensor.shape)} "
                         f"with strides {tensor.stride()}")
    if tensor.requires_grad:
        raise ValueError(f"{name}: requires_grad must be off (use .detach())")
    if min(tensor.shape) < 1:
        raise ValueError(f"{name}: empty matrix {tuple(tensor.shape)}")


def kernel_report() -> list[dict[str, Any]]:
    """Registers, shared memory and local memory (stack, spills) of every kernel as loaded on this GPU.

    One dict per kernel: ``module``, ``kernel``, ``defines``, ``arch``, ``registers``,
    ``static_shared_bytes``, ``dynamic_shared_bytes`` (what the backend launches it with; None for
    ``fused_cluster``, planned per network), ``local_bytes``
    (non-zero means stack or spills), ``max_threads_per_block``.
    """
    import pycuda.driver as drv

    from mlpbench.backends.cuda_fused import fused_kernel  # imports this module

    # PyCUDA and the driver number these attributes alike (CUfunction_attribute).
    attribute = drv.function_attribute
    opt_dynamic = {module: opt_shared_bytes(config) for config, module in OPT_MODULES.items()}
    rows = []
    for module, spec in MODULE_SPECS.items():
        functions = {"fused_step": fused_kernel()} if module == "fused" else _kernels(module)
        for name, function in functions.items():
            rows.append({
                "module": spec.source,
                "kernel": name,
                "defines": " ".join(spec.options()),
                "arch": gpu.info().arch,
                "registers": function.get_attribute(attribute.NUM_REGS),
                "static_shared_bytes": function.get_attribute(attribute.SHARED_SIZE_BYTES),
                # fused_cluster's is planned per network and batch (cuda_fused.cluster_layout): None
                "dynamic_shared_bytes": (FUSED_SHARED_BYTES if name == "fused_step" else None if name == "fused_cluster"
                                         else opt_dynamic.get(module, 0)),
                "local_bytes": function.get_attribute(attribute.LOCAL_SIZE_BYTES),
                "max_threads_per_block": function.get_attribute(attribute.MAX_THREADS_PER_BLOCK),
            })
    return rows


class CudaModel(Model):
    """Parameters and buffers as CUDA tensors, the transfer stage and the read-backs; subclasses launch."""

    device = "cuda"

    def __init__(self, network: Network, params: Params) -> None:
        super().__init__(network, params)
        self.check_network(network)
        checked = check_params(network, params)
        try:
            gpu.ensure_available()
        except BackendUnavailable as error:
            raise BackendUnavailable(f"{self.name}: {error}") from None
        self._dev = gpu.device()
        self._sm_count = gpu.info().sm_count
        self._activation = ACTIVATION_CODES[network.activation]
        self._loss_kind = LOSS_CODES[network.loss]
        self._store_params(checked)
        self._capacity = 0
        self._A: list[torch.Tensor] = []
        self._dZ: list[torch.Tensor] = []
        self._loss_rows = torch.empty(0, device=self._dev)
        # Every gradient in one flat tensor (layer_views' layout): data-parallel training all-reduces it in one call.
        self._grad_flat = torch.zeros(network.n_params, device=self._dev)
        views = layer_views(network, self._grad_flat)
        self._dW = [dW for dW, _ in views]
        self._db = [db for _, db in views]
        self._forward_size = 0    # batch size of the last forward (0: none yet)
        self._labelled = False    # whether the last forward had targets (so a loss)
        self._pending = False     # a forward whose backprop has not run yet
        self._has_grads = False
        self._closed = False

    # -- hooks -------------------------------------------------------------------------------------------
    def _store_params(self, params: Params) -> None:
        self._W = [torch.tensor(w, device=self._dev) for w, _ in params]
        self._b = [torch.tensor(b, device=self._dev) for _, b in params]

    def _weight_tensors(self) -> list[torch.Tensor]:
        return self._W

    def _bias_tensors(self) -> list[torch.Tensor]:
        return self._b

    def _buffers_resized(self) -> None:
        """Called after the activation buffers were reallocated."""

    def _dead_buffers(self) -> list[torch.Tensor]:
        """Buffers that hold nothing needed now and that the next update overwrites (poisoned too)."""
        return []

    # -- transfer ----------------------------------------------------------------------------------------
    def prepare(self, X: np.ndarray, y: np.ndarray | None = None) -> Batch:
        """Check the host batch, copy it to the GPU and make the buffers hold at least its rows."""
        self._ensure_open()
        X, T = check_inputs(self.network, X, y)
        # Checked here, not in every stage: asking torch for its current stream costs ~10 us of host time.
        _check_default_stream()
        batch = X.shape[0]
        if batch > self._capacity:
            self._allocate(batch)
        return tensor_batch(self.network, X, T, self._dev)

    def _allocate(self, capacity: int) -> None:
        widths = self.network.sizes[1:]
        self._A = [torch.empty((capacity, w), device=self._dev) for w in widths]
        self._dZ = [torch.empty((capacity, w), device=self._dev) for w in widths]
        self._loss_rows = torch.empty(capacity, device=self._dev)
        self._capacity = capacity
        self._forward_size = 0
        self._pending = False
        self._buffers_resized()

    def _ensure_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"{self.name}: the model was closed")

    def _start_forward(self, batch: Batch) -> None:
        self._ensure_open()
        self._check_batch(batch)
        self._bind(batch)

    def _start_backprop(self, batch: Batch) -> None:
        self._ensure_open()
        self._check_batch(batch, need_targets=True)
        self._check_bound(batch)
        if not self._pending or batch.size != self._forward_size:
            raise RuntimeError("backprop needs a forward pass on the same labelled batch first")

    def _start_update(self, lr: float, weight_decay: float) -> tuple[float, float]:
        self._ensure_open()
        lr, weight_decay = check_step_size(lr, weight_decay)
        if not self._has_grads:
            raise RuntimeError("update before backprop")
        return lr, weight_decay

    def _forward_done(self, batch: Batch) -> None:
        self._forward_size = batch.size
        self._labelled = batch.T is not None
        self._pending = self._labelled

    # -- read-backs --------------------------------------------------------------------------------------
    def loss(self) -> float:
        if self._forward_size == 0 or not self._labelled:
            return float("nan")
        rows = self._loss_rows[:self._forward_size].cpu().numpy().astype(np.float64)
        return float(rows.sum() / self._forward_size)

    def activations(self) -> list[np.ndarray]:
        if self._forward_size == 0:
            raise RuntimeError("no forward pass yet")
        return [a[:self._forward_size].cpu().numpy().copy() for a in self._A]

    def params(self) -> Params:
        self._ensure_open()
        return [(w.cpu().numpy().copy(), b.cpu().numpy().copy())
                for w, b in zip(self._weight_tensors(), self._bias_tensors(), strict=True)]

    def grads(self) -> Params:
        if not self._has_grads:
            raise RuntimeError("no gradients yet: call backprop first")
        return [(dw.cpu().numpy().copy(), db.cpu().numpy().copy()) for dw, db in zip(self._dW, self._db,
                                                                                        strict=True)]

    def gradient_buffer(self) -> torch.Tensor:
        return self._grad_flat

    def synchronize(self) -> None:
        gpu.synchronize()

    def poison(self) -> None:
        """NaN into every buffer the next stage writes: the gradients, and also the activations and
        per-sample losses unless a forward result is still waiting for its backprop (which reads it)."""
        self._ensure_open()
        targets = [*self._dZ, *self._dW, *self._db, *self._dead_buffers()]
        if not self._pending:
            targets += [*self._A, self._loss_rows]
        for tensor in targets:
            tensor.fill_(float("nan"))

    def close(self) -> None:
        self._closed = True
        self._A, self._dZ, self._dW, self._db = [], [], [], []
        self._W, self._b = [], []


class _LayeredCudaModel(CudaModel):
    """Rungs 1-3 and the cuBLAS rung: every layer's products and element-wise work as separate kernels, in
    stream order. Subclasses provide the products (:meth:`_product`)."""

    def __init__(self, network: Network, params: Params) -> None:
        super().__init__(network, params)
        formats = {"bias_activation": "PPiii", "output_head": "PPPPiii", "output_delta": "PPPii",
                   "activation_backward": "PPii", "bias_gradient": "PPPiif", "sgd_update": "PPiff"}
        kernels = _kernels("elementwise")
        self._elementwise = {name: kernels[name].prepare(fmt) for name, fmt in formats.items()}
        self._bias_block = (32, dict(ELEMENTWISE.defines)["ROWS_PER_BLOCK"], 1)

    def _launch_elementwise(self, name: str, n: int, *args: Any) -> None:
        grid = (min(cdiv(n, 256), self._sm_count * 8), 1, 1)
        self._elementwise[name].prepared_call(grid, (256, 1, 1), *args)

    def _product(self, layout: str, C: torch.Tensor, A: torch.Tensor, B: torch.Tensor, M: int, N: int,
                 K: int) -> None:
        """C = op(A) op(B) in ``layout`` (see :class:`_Products`) on the leading rows of the buffers: an
        activation buffer holds as many rows as the largest batch seen, the product uses the first M (or K)."""
        raise NotImplementedError

    def _input(self, batch: Batch, layer: int) -> torch.Tensor:
        return batch.X if layer == 0 else self._A[layer - 1]

    def _head(self, batch: Batch, bias: int) -> None:
        n_out = self.network.n_outputs
        T = 0 if batch.T is None else batch.T.data_ptr()
        self._elementwise["output_head"].prepared_call(
            (cdiv(batch.size, 8), 1, 1), (256, 1, 1), self._A[-1].data_ptr(), bias, T,
            self._loss_rows.data_ptr(), batch.size, n_out, self._loss_kind)

    def forward(self, batch: Batch) -> None:
        self._start_forward(batch)
        B, last = batch.size, self.network.n_layers - 1
        for layer, (n_out, n_in) in enumerate(self.network.layer_shapes):
            out = self._A[layer]
            self._product("nt", out, self._input(batch, layer), self._W[layer], B, n_out, n_in)
            if layer < last:
                self._launch_elementwise("bias_activation", B * n_out, out.data_ptr(), self._b[layer].data_ptr(),
                                         B, n_out, self._activation)
        self._head(batch, self._b[last].data_ptr())
        self._forward_done(batch)

    def _output_delta(self, batch: Batch) -> None:
        n_out = self.network.n_outputs
        self._launch_elementwise("output_delta", batch.size * n_out, self._A[-1].data_ptr(), batch.T.data_ptr(),
                                 self._dZ[-1].data_ptr(), batch.size, n_out)

    def _bias_gradient(self, batch: Batch, layer: int, bias: int = 0, lr: float = 0.0) -> None:
        n_out = self.network.sizes[layer + 1]
        self._elementwise["bias_gradient"].prepared_call(
            (cdiv(n_out, 32), 1, 1), self._bias_block, self._dZ[layer].data_ptr(), self._db[layer].data_ptr(),
            bias, batch.size, n_out, lr)

    def _input_gradient(self, batch: Batch, layer: int) -> None:
        """dZ_{l-1} = (dZ_l W_l) * f'(A_{l-1}): the product, then the derivative as its own pass."""
        n_out, n_in = self.network.layer_shapes[layer]
        dZ_prev = self._dZ[layer - 1]
        self._product("nn", dZ_prev, self._dZ[layer], self._W[layer], batch.size, n_in, n_out)
        self._launch_elementwise("activation_backward", batch.size * n_in, dZ_prev.data_ptr(),
                                 self._A[layer - 1].data_ptr(), batch.size * n_in, self._activation)

    def backprop(self, batch: Batch) -> None:
        self.backprop_by_layer(batch, lambda layer: None)

    #: Each layer's gradients are queued before the layer below is: an all-reduce queued on another stream
    #: after ``on_layer`` runs while the GPU computes the layers below.
    overlaps_backprop = True

    def backprop_by_layer(self, batch: Batch, on_layer: Callable[[int], None]) -> None:
        self._start_backprop(batch)
        self._output_delta(batch)
        for layer in range(self.network.n_layers - 1, -1, -1):
            n_out, n_in = self.network.layer_shapes[layer]
            self._product("tn", self._dW[layer], self._dZ[layer], self._input(batch, layer), n_out, n_in, batch.size)
            self._bias_gradient(batch, layer)
            on_layer(layer + 1)
            if layer > 0:
                self._input_gradient(batch, layer)
        self._pending = False
        self._has_grads = True

    def update(self, lr: float, weight_decay: float = 0.0) -> None:
        lr, weight_decay = self._start_update(lr, weight_decay)
        for W, dW, b, db in zip(self._W, self._dW, self._b, self._db, strict=True):
            self._launch_elementwise("sgd_update", W.numel(), W.data_ptr(), dW.data_ptr(), W.numel(),
                                     lr, weight_decay)
            self._launch_elementwise("sgd_update", b.numel(), b.data_ptr(), db.data_ptr(), b.numel(),
                                     lr, 0.0)


class _HandWrittenCudaModel(_LayeredCudaModel):
    """Rungs 1-3: the project's own product kernels on raw device pointers."""

    rung: ClassVar[str]

    def __init__(self, network: Network, params: Params) -> None:
        super().__init__(network, params)
        self._products = _products(self.rung)

    def _product(self, layout: str, C: torch.Tensor, A: torch.Tensor, B: torch.Tensor, M: int, N: int,
                 K: int) -> None:
        self._products(layout, C.data_ptr(), A.data_ptr(), B.data_ptr(), M, N, K)


class NaiveCudaModel(_HandWrittenCudaModel):
    """``cuda-naive`` (rung 1): one thread per output element reading global memory only; every
    non-product step (bias + activation, output layer, derivative, bias gradient, update) is its own kernel."""

    name = "cuda-naive"
    rung = "naive"


class TiledCudaModel(_HandWrittenCudaModel):
    """``cuda-tiled`` (rung 2): rung 1 with shared-memory tiled, coalesced matrix products."""

    name = "cuda-tiled"
    rung = "tiled"


class OptimisedCudaModel(_HandWrittenCudaModel):
    """``cuda-opt`` (rung 3): warp-tiled, register-blocked, vectorised, double-buffered products with fused
    epilogues. ``forward``: f(A W^T + b) in one kernel per layer. ``backprop``: (dZ W) * f'(A) in one kernel.
    ``train_step`` additionally applies the SGD step inside the weight-gradient product (after the
    input-gradient product of the same layer has read the old weights) and the bias step inside the
    bias-gradient kernel, so the update costs no pass of its own."""

    name = "cuda-opt"
    rung = "opt"

    def forward(self, batch: Batch) -> None:
        self._start_forward(batch)
        B, last = batch.size, self.network.n_layers - 1
        for layer, (n_out, n_in) in enumerate(self.network.layer_shapes):
            activation = self._activation if layer < last else IDENTITY
            self._products("nt", self._A[layer].data_ptr(), self._input(batch, layer).data_ptr(),
                           self._W[layer].data_ptr(), B, n_out, n_in, EPI_BIAS_ACT, self._b[layer].data_ptr(), 0,
                           activation)
        self._head(batch, 0)
        self._forward_done(batch)

    def _input_gradient(self, batch: Batch, layer: int) -> None:
        n_out, n_in = self.network.layer_shapes[layer]
        self._products("nn", self._dZ[layer - 1].data_ptr(), self._dZ[layer].data_ptr(), self._W[layer].data_ptr(),
                       batch.size, n_in, n_out, EPI_ACT_GRAD, 0, self._A[layer - 1].data_ptr(), self._activation)

    def train_step(self, batch: Batch, lr: float, weight_decay: float = 0.0) -> None:
        lr, weight_decay = check_step_size(lr, weight_decay)
        self._check_batch(batch, need_targets=True)
        self.forward(batch)
        self._output_delta(batch)
        for layer in range(self.network.n_layers - 1, -1, -1):
            n_out, n_in = self.network.layer_shapes[layer]
            if layer > 0:  # reads W_l before the fused update below changes it
                self._input_gradient(batch, layer)
            W = self._W[layer].data_ptr()
            self._products("tn", self._dW[layer].data_ptr(), self._dZ[layer].data_ptr(),
                           self._input(batch, layer).data_ptr(), n_out, n_in, batch.size, EPI_SGD, 0, W, IDENTITY,
                           lr, weight_decay)
            self._bias_gradient(batch, layer, self._b[layer].data_ptr(), lr)
        self._pending = False
        self._has_grads = True


class CublasCudaModel(_LayeredCudaModel):
    """``cuda-cublas``: the optimised-library rung. The products are cuBLAS SGEMMs (``torch.mm`` with ``out=``
    on this backend's own buffers, IEEE float32: no TF32), queued on the same default stream as the project's
    element-wise kernels, which do everything else exactly as in rungs 1-2 (bias + activation, softmax or
    sigmoid with the loss, output gradient, activation derivative, bias gradient, SGD update). The step
    differs from ``cuda-naive`` and ``cuda-tiled`` only in who computes the products."""

    name = "cuda-cublas"

    def __init__(self, network: Network, params: Params) -> None:
        super().__init__(network, params)
        pin_ieee_float32()

    def _product(self, layout: str, C: torch.Tensor, A: torch.Tensor, B: torch.Tensor, M: int, N: int,
                 K: int) -> None:
        # Transposed operands are strided views: cuBLAS reads them in place (no copies).
        if layout == "nt":
            torch.mm(A[:M], B[:N].t(), out=C[:M])
        elif layout == "nn":
            torch.mm(A[:M], B[:K], out=C[:M])
        else:
            torch.mm(A[:K].t(), B[:K], out=C[:M])
