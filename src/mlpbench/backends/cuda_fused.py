"""``cuda-fused`` (rung 4 of the GPU ladder): the whole training step of a small network in one launch, with
two kernels and the planner that chooses between them (tested without a GPU):

- the cluster kernel (``kernels/fused_cluster.cu``) for launches of several steps (``train_steps``) whose
  weights and batch activations fit in the shared memory of one thread-block cluster: nothing leaves the
  chip between layers or steps, and blocks meet at cluster barriers (:func:`cluster_layout` plans its shared
  memory, or says why it does not fit);
- the grid kernel (``kernels/fused.cu``) otherwise: a persistent kernel whose phases are separated by
  grid-wide barriers, every block resident at once (at most one block per SM); :func:`fused_plan` chooses
  which phases a launch runs and the tile shape of each phase's products from a cost model.

:meth:`FusedCudaModel.kernel_choice` gives the choice and its reason.

Launches go through :class:`mlpbench.gpu.DriverKernel` (``cuLaunchKernel`` from C, arguments set in place), since
a step of a few microseconds cannot hide PyCUDA's per-call packing.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import itertools
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mlpbench import gpu
from mlpbench.backends.base import BackendUnavailable, Batch, Model, Params, check_step_size
from mlpbench.backends.cuda import (
    CLUSTER_MAX_RANKS,
    CLUSTER_THREADS,
    FUSED,
    FUSED_CLUSTER,
    FUSED_HEAD_MAX,
    FUSED_HIDDEN_K,
    FUSED_KCHUNK,
    FUSED_MAX_LAYERS,
    FUSED_MAX_WIDTH,
    FUSED_SHARED_BYTES,
    FUSED_THREADS,
    CudaModel,
    cdiv,
)
from mlpbench.network import Network
from mlpbench.timing import CudaEventClock, Stats, time_call

# Mirrors of struct Layer and struct Phase in kernels/fused.cu.
_LAYER_DTYPE = np.dtype([("W", np.uint64, 2), ("b", np.uint64, 2), ("dW", np.uint64), ("db", np.uint64),
                         ("A", np.uint64), ("dZ", np.uint64), ("n_in", np.int32), ("n_out", np.int32)])
_TILE_FIELDS = [("micro", np.int32), ("gm", np.int32), ("gn", np.int32), ("ksplit", np.int32)]
_PHASE_DTYPE = np.dtype([("kind", np.int32), ("layer", np.int32), ("flags", np.int32), ("padding", np.int32),
                         ("main", _TILE_FIELDS), ("weights", _TILE_FIELDS), ("above", _TILE_FIELDS)])
PHASE_FORWARD, PHASE_FORWARD_HEAD, PHASE_HEAD, PHASE_OUTPUT_DELTA, PHASE_BACKWARD, PHASE_UPDATE = range(6)
PHASE_NAMES = {PHASE_FORWARD: "forward", PHASE_FORWARD_HEAD: "forward+head", PHASE_HEAD: "head",
               PHASE_OUTPUT_DELTA: "output delta", PHASE_BACKWARD: "backward", PHASE_UPDATE: "update"}
FLAG_DELTA, FLAG_SGD, FLAG_HEAD_INPUT, FLAG_ABOVE, FLAG_HEAD_HIDDEN = 1, 2, 4, 8, 16
_UPDATE_CHUNK = dict(FUSED.defines)["UPDATE_CHUNK"]


class _FusedArgs(ctypes.Structure):
    """The parameters of fused_step (kernels/fused.cu), in order, for gpu.DriverKernel."""

    _fields_ = [("layers", ctypes.c_uint64), ("phases", ctypes.c_uint64), ("n_phases", ctypes.c_int),
                ("n_layers", ctypes.c_int), ("X", ctypes.c_uint64), ("T", ctypes.c_uint64),
                ("loss_rows", ctypes.c_uint64), ("batch", ctypes.c_int), ("n_steps", ctypes.c_int),
                ("activation", ctypes.c_int),
                ("loss_kind", ctypes.c_int), ("parity", ctypes.c_int), ("lr", ctypes.c_float),
                ("weight_decay", ctypes.c_float), ("barrier", ctypes.c_uint64), ("profile", ctypes.c_uint64)]


class _ClusterArgs(ctypes.Structure):
    """The parameters of fused_cluster (kernels/fused_cluster.cu), in order, for gpu.DriverKernel."""

    _fields_ = [("layers", ctypes.c_uint64), ("plan", ctypes.c_uint64), ("mode", ctypes.c_int),
                ("X", ctypes.c_uint64), ("T", ctypes.c_uint64), ("loss_rows", ctypes.c_uint64),
                ("batch", ctypes.c_int), ("n_steps", ctypes.c_int), ("activation", ctypes.c_int),
                ("loss_kind", ctypes.c_int), ("parity", ctypes.c_int), ("lr", ctypes.c_float),
                ("weight_decay", ctypes.c_float), ("profile", ctypes.c_uint64)]


# Modes of fused_cluster, by the stage names of fused_plan.
CLUSTER_MODES = {"step": 0, "forward": 1, "backprop": 2, "update": 3}
# Mirror of struct ClusterPlan in kernels/fused_cluster.cu: the header's ints, then eight per layer.
_SLOT_FIELDS = ("w", "w_stride", "b", "a", "a_stride", "dz", "dz_stride", "parts")
_CLUSTER_HEADER = ("x0", "x1", "x_stride", "t0", "t1", "partial0", "partial1", "partial_stride", "loss", "n_layers")
_CLUSTER_TABLE_INTS = len(_CLUSTER_HEADER) + len(_SLOT_FIELDS) * FUSED_MAX_LAYERS


def fused_kernel() -> gpu.DriverKernel:
    """fused_step with its shared-memory limit raised (a new argument block each call; one module load)."""
    kernel = gpu.DriverKernel(FUSED, "fused_step", _FusedArgs())
    kernel.set_attribute(gpu.DriverKernel.MAX_DYNAMIC_SHARED_SIZE_BYTES, FUSED_SHARED_BYTES)
    return kernel


@dataclass(frozen=True)
class ClusterLayout:
    """Where the cluster kernel keeps a network's step for ``batch`` rows: ``ranks`` blocks of one cluster,
    ``shared_bytes`` of dynamic shared memory each, laid out as ``table`` (struct ClusterPlan) says."""

    ranks: int
    batch: int
    shared_bytes: int
    table: np.ndarray

    def slot(self, layer: int, field: str) -> int:
        return int(self.table[len(_CLUSTER_HEADER) + len(_SLOT_FIELDS) * layer + _SLOT_FIELDS.index(field)])

    def header(self, field: str) -> int:
        return int(self.table[_CLUSTER_HEADER.index(field)])


def cluster_ranks(network: Network) -> int:
    """Blocks of the cluster: the portable maximum, fewer when a hidden layer is narrower (every block owns
    at least one column of each), one for a network without hidden layers."""
    hidden = network.sizes[1:-1]
    return min(CLUSTER_MAX_RANKS, *hidden) if hidden else 1


def cluster_layout(network: Network, batch: int, shared_limit: int) -> ClusterLayout | str:
    """The cluster kernel's shared-memory plan for ``network`` on ``batch`` rows, or, when a block would need
    more than ``shared_limit`` bytes or the output layer is wider than FUSED_HEAD_MAX, the reason it does not
    fit (the grid kernel then runs it).

    Per block (floats; every region 16-byte aligned, row strides four times an odd number): the batch's
    inputs and targets (twice: the next step's are queued while a step runs); per hidden layer its rows of W
    and b (a ``ranks``-th of its outputs, rounded up), the whole activation and the block's columns of dZ; the
    output layer's columns of W that read the block's columns of the last hidden layer, its whole b, logits
    and output gradient, and every block's partial logits; two buffers of partial input gradients (networks
    of two or more hidden layers); the per-row losses."""
    if network.n_outputs > FUSED_HEAD_MAX:
        return (f"the cluster kernel computes output layers up to {FUSED_HEAD_MAX} wide (a half-warp a row); "
                f"{network.name} has {network.n_outputs}")
    ranks = cluster_ranks(network)
    head = network.n_layers - 1
    used = 0

    def region(floats: int) -> int:
        nonlocal used
        start = used
        used += cdiv(floats, 4) * 4
        return start

    def stride(n: int) -> int:  # four times an odd number, at least n: see the kernel's header
        return cdiv(n, 4) * 4 + (4 if cdiv(n, 4) % 2 == 0 else 0)

    header = dict.fromkeys(_CLUSTER_HEADER, 0)
    header["n_layers"] = network.n_layers
    header["x_stride"] = stride(network.sizes[0])
    for buffer in ("0", "1"):  # a step's batch and the next one's, queued while it runs
        header["x" + buffer] = region(batch * header["x_stride"])
        header["t" + buffer] = region(batch * network.n_outputs)
    slots = []
    for layer, (n_out, n_in) in enumerate(network.layer_shapes):
        # A hidden layer's rows of W; the output layer's columns of it (every row)
        rows, cols = (n_out, cdiv(n_in, ranks)) if layer == head else (cdiv(n_out, ranks), n_in)
        slot = dict.fromkeys(_SLOT_FIELDS, 0)
        slot["w_stride"] = stride(cols)
        slot["w"] = region(rows * slot["w_stride"])
        slot["b"] = region(rows)
        slot["a_stride"] = n_out if layer == head else stride(n_out)
        slot["a"] = region(batch * slot["a_stride"])
        slot["dz_stride"] = n_out if layer == head else stride(rows)
        slot["dz"] = region(batch * slot["dz_stride"])
        if layer == head:
            slot["parts"] = region(ranks * batch * n_out)
        slots.append(slot)
    partial_inputs = [n_in for layer, (_, n_in) in enumerate(network.layer_shapes) if 0 < layer < head]
    if partial_inputs:
        header["partial_stride"] = stride(max(partial_inputs))
        header["partial0"] = region(batch * header["partial_stride"])
        header["partial1"] = region(batch * header["partial_stride"])
    header["loss"] = region(batch)
    needed = used * 4
    if needed > shared_limit:
        return (f"the cluster kernel needs {needed // 1024} KiB of shared memory per block for {network.name} at "
                f"batch {batch} ({ranks} blocks); the GPU allows {shared_limit // 1024} KiB")
    table = np.zeros(_CLUSTER_TABLE_INTS, dtype=np.int32)
    table[:len(header)] = [header[field] for field in _CLUSTER_HEADER]
    for layer, slot in enumerate(slots):
        start = len(header) + len(_SLOT_FIELDS) * layer
        table[start:start + len(_SLOT_FIELDS)] = [slot[field] for field in _SLOT_FIELDS]
    return ClusterLayout(ranks, batch, needed, table)


def choose_kernel(option: str, layout: ClusterLayout | str | None, steps: int, grid_phases: int,
                  no_cluster: str = "") -> tuple[str, str]:
    """The kernel (``"cluster"`` or ``"grid"``) of a launch of ``steps`` steps, and why, for the model option
    ``option``, the cluster kernel's :func:`cluster_layout` of the launch's batch (a string: why it does not
    fit; ``None``: not planned, the GPU having no clusters (``no_cluster`` says so) or the grid kernel being
    asked for) and the phases of the grid kernel's step. ``"auto"`` takes the cluster kernel for launches of
    several steps where it fits: it keeps the weights on chip from step to step; for one step a launch it is no
    faster than the grid kernel, which spreads each product over every SM (results/gpu-dev/README.md, run 33),
    nor over several where the grid kernel's step is two phases (run 39, digits). ``"cluster"`` where it does
    not fit is a ``ValueError``."""
    if option == "grid":
        return "grid", "the grid kernel was asked for"
    if layout is None:
        return "grid", no_cluster
    if isinstance(layout, str):
        if option == "cluster":
            raise ValueError(f"{layout}: use kernel='grid' or 'auto'")
        return "grid", layout
    fits = f"{layout.ranks} blocks, {layout.shared_bytes // 1024} KiB of shared memory each"
    if option == "auto" and steps == 1:
        return "grid", f"one step a launch (the cluster kernel would take {fits}, and gains over several steps)"
    if option == "auto" and grid_phases <= 2:
        return "grid", (f"the grid kernel's step is {grid_phases} phases, faster than the cluster kernel "
                        f"({fits}) over several steps too")
    return "cluster", f"fits in one cluster: {fits}"


@dataclass(frozen=True)
class Tile:
    """Shape of a cuda-fused product tile: (micro*gm) x (micro*gn) outputs, ksplit k slices per output."""

    micro: int
    gm: int
    gn: int
    ksplit: int

    def count(self, M: int, N: int) -> int:
        return cdiv(M, self.micro * self.gm) * cdiv(N, self.micro * self.gn)

    def as_tuple(self) -> tuple[int, int, int, int]:
        return (self.micro, self.gm, self.gn, self.ksplit)


_TILES = [Tile(micro, gm, gn, FUSED_THREADS // (gm * gn))
          for micro in (1, 2) for gm in (1, 2, 4, 8, 16) for gn in (1, 2, 4, 8, 16)
          if 8 <= gm * gn <= FUSED_THREADS]


def tile_cycles(tile: Tile, K: int) -> float:
    """Estimated cycles of one tile of depth K on one block (a rough model; only its ordering matters).

    Per k-chunk one round trip to L2 for the asynchronous staging copies (~800), the staging traffic at
    ~64 bytes per cycle, the shared-memory loads of the products (one warp-wide load per cycle per SM:
    8 warps x 2 * micro loads per k step, k / ksplit steps), the split-k sum and a fixed cost per tile."""
    steps = cdiv(K, tile.ksplit)
    outputs = tile.micro * tile.micro
    return (cdiv(K, FUSED_KCHUNK) * 800 + (tile.micro * (tile.gm + tile.gn)) * K / 16
            + 16 * tile.micro * steps + 4 * tile.ksplit * outputs + 150)


def blocks_of_items(items: np.ndarray, blocks: int) -> np.ndarray:
    """The block that takes each item of a phase (item_of_round in kernels/fused.cu): round-robin, every
    other round backwards."""
    rounds, position = np.divmod(items, blocks)
    return np.where(rounds % 2 == 0, position, blocks - 1 - position)


def _phase_cycles(products: list[tuple[Tile, int, int, int]], blocks: int) -> float:
    """Cycles of a phase whose blocks take the tiles of ``products`` ((tile, M, N, K), in order) as the kernel
    shares them out: the busiest block's sum."""
    busy, start = np.zeros(blocks), 0
    for tile, M, N, K in products:
        end = start + tile.count(M, N)
        busy += tile_cycles(tile, K) * np.bincount(blocks_of_items(np.arange(start, end), blocks), minlength=blocks)
        start = end
    return float(busy.max())


def choose_tile(M: int, N: int, K: int, blocks: int) -> Tile:
    """The tile shape with the least estimated time for an (M x N, depth K) product over ``blocks`` blocks
    (ties: fewer tiles)."""
    return min(_TILES, key=lambda tile: (_phase_cycles([(tile, M, N, K)], blocks), tile.count(M, N)))


def choose_tiles(products: Sequence[tuple[int, int, int]], blocks: int) -> tuple[Tile, ...]:
    """Tile shapes for products that share a phase (the input and weight gradients of a layer, and the weight
    gradient of the layer above where the head computed its input gradient), each (M, N, K): their tiles are
    one list of items, so the shapes are chosen together (one round of items where that pays)."""
    shortlist = [sorted(_TILES, key=lambda tile, p=p: (_phase_cycles([(tile, *p)], blocks), tile.count(*p[:2])))[:8]
                 for p in products]
    return min(itertools.product(*shortlist),
               key=lambda tiles: (_phase_cycles([(tile, *p) for tile, p in zip(tiles, products, strict=True)], blocks),
                                  sum(tile.count(*p[:2]) for tile, p in zip(tiles, products, strict=True))))


@dataclass(frozen=True)
class Phase:
    """One phase of a cuda-fused launch (struct Phase in kernels/fused.cu)."""

    kind: int
    layer: int
    flags: int = 0
    main: Tile = Tile(1, 16, 16, 1)     # FORWARD: the forward product; BACKWARD: the input-gradient product
    weights: Tile = Tile(1, 16, 16, 1)  # BACKWARD: the weight-gradient product
    above: Tile = Tile(1, 16, 16, 1)    # BACKWARD with FLAG_ABOVE: the weight-gradient product of layer + 1

    def items(self, network: Network, batch: int) -> int:
        """Work items of the phase as the kernel cuts them (sets the grid size, not the results)."""
        n_out, n_in = network.layer_shapes[self.layer]
        warps = FUSED_THREADS // 32
        if self.kind == PHASE_FORWARD:
            return self.main.count(batch, n_out)
        if self.kind == PHASE_FORWARD_HEAD:  # a block per sample
            return batch
        if self.kind == PHASE_HEAD:  # a warp per sample
            return cdiv(batch, warps)
        if self.kind == PHASE_OUTPUT_DELTA:  # with the head's input gradient, a block per sample
            return batch if self.flags & FLAG_HEAD_INPUT else cdiv(batch * n_out, FUSED_THREADS)
        if self.kind == PHASE_BACKWARD:  # the bias gradient rides on the weight-gradient tiles
            inputs = self.main.count(batch, n_in) if self.layer > 0 else 0
            above = self.above.count(*network.layer_shapes[self.layer + 1]) if self.flags & FLAG_ABOVE else 0
            return inputs + self.weights.count(n_out, n_in) + above
        return sum(cdiv(o * i + o, _UPDATE_CHUNK) for o, i in network.layer_shapes)


def head_computes_the_layer_below(network: Network) -> bool:
    """Whether the fused output head can compute each sample's row of the layer below itself (FLAG_HEAD_HIDDEN):
    that layer has at most as many outputs as the block has threads, and each of its outputs' threads (the
    block's threads over the outputs rounded up to a power of two) sums at most FUSED_HIDDEN_K of its inputs."""
    if network.n_layers < 2:
        return False
    n_out, n_in = network.layer_shapes[-2]
    if n_out > FUSED_THREADS:
        return False
    ranges = FUSED_THREADS // (1 << (n_out - 1).bit_length())
    return cdiv(n_in, ranges) <= FUSED_HIDDEN_K


@functools.lru_cache(maxsize=256)
def fused_plan(network: Network, stage: str, batch: int, blocks: int) -> tuple[Phase, ...]:
    """The phases cuda-fused runs for ``stage`` (``"step"``, ``"forward"``, ``"backprop"`` or ``"update"``)
    on ``batch`` samples with ``blocks`` blocks; grid-wide barriers separate consecutive phases. Cached per
    process: the tile search takes milliseconds, which a new model of a shape already planned should not pay."""
    if stage not in ("step", "forward", "backprop", "update"):
        raise ValueError(f"stage: expected step, forward, backprop or update, got {stage!r}")
    last = network.n_layers - 1
    # Where the output layer fits the one-block head and has a layer below, the block of each sample also
    # computes that sample's row of the layer below's dZ (a sum over at most FUSED_HEAD_MAX outputs), and the
    # output layer's weight gradient joins the phase below: one phase and barrier fewer.
    head_input = FLAG_HEAD_INPUT if last > 0 and network.n_outputs <= FUSED_HEAD_MAX else 0
    # Where the layer below is small enough for the threads of each sample's block to hold its weights in
    # registers, the head computes the sample's row of that layer first: its forward phase and barrier go too.
    head_hidden = FLAG_HEAD_HIDDEN if head_input and head_computes_the_layer_below(network) else 0
    phases = []
    if stage in ("forward", "step"):
        delta = FLAG_DELTA | head_input if stage == "step" else 0
        for layer, (n_out, n_in) in enumerate(network.layer_shapes):
            if layer == last - 1 and head_hidden:
                continue
            if layer == last and n_out <= FUSED_HEAD_MAX:
                phases.append(Phase(PHASE_FORWARD_HEAD, layer, delta | head_hidden))
            else:
                phases.append(Phase(PHASE_FORWARD, layer, main=choose_tile(batch, n_out, n_in, blocks)))
        if network.n_outputs > FUSED_HEAD_MAX:
            phases.append(Phase(PHASE_HEAD, last, delta))
    if stage == "backprop":
        phases.append(Phase(PHASE_OUTPUT_DELTA, last, head_input))
    if stage in ("backprop", "step"):
        sgd = FLAG_SGD if stage == "step" else 0
        for layer in range(last - 1 if head_input else last, -1, -1):
            n_out, n_in = network.layer_shapes[layer]
            # each product the phase runs, (M, N, K) by its tile's name; one it does not run keeps the default
            products = {"main": (batch, n_in, n_out)} if layer > 0 else {}
            products["weights"] = (n_out, n_in, batch)
            above = head_input and layer == last - 1
            if above:
                products["above"] = (*network.layer_shapes[last], batch)
            tiles = dict(zip(products, choose_tiles(list(products.values()), blocks), strict=True))
            phases.append(Phase(PHASE_BACKWARD, layer, sgd | (FLAG_ABOVE if above else 0), **tiles))
    if stage == "update":
        phases.append(Phase(PHASE_UPDATE, 0))
    return tuple(phases)


class FusedCudaModel(CudaModel):
    """``cuda-fused`` (rung 4): the training step of a small network (every width <= FUSED_MAX_WIDTH) in one
    launch. ``train_step`` is that launch; ``forward``, ``backprop`` and ``update`` launch the same kernel on
    their own part of the step, for per-stage timing, and compute exactly what the step computes.

    ``kernel`` picks the kernel: ``"cluster"`` (kernels/fused_cluster.cu: the step in one thread-block cluster,
    for networks and batches that fit in its shared memory; others raise ``ValueError`` with the reason),
    ``"grid"`` (kernels/fused.cu: phases separated by grid-wide barriers), or ``"auto"`` (the default: the
    cluster kernel for launches of several steps where it fits, the grid kernel elsewhere;
    :meth:`kernel_choice` says which and why, per batch size and steps a launch). Under ``"auto"`` a
    ``train_steps`` call may therefore run the other kernel than single steps: its results equal theirs to
    float32 rounding, not bit for bit. Weights are double-buffered: a step writes the updated copy while
    other blocks may still read the current one, and the two swap after each update."""

    name = "cuda-fused"
    KERNELS = ("auto", "grid", "cluster")

    @classmethod
    def check_network(cls, network: Network) -> None:
        widest = max(network.sizes)
        if widest > FUSED_MAX_WIDTH:
            raise ValueError(f"cuda-fused runs networks up to {FUSED_MAX_WIDTH} wide; {network.name} has a layer "
                             f"of {widest}: use cuda-opt")
        if network.n_layers > FUSED_MAX_LAYERS:
            raise ValueError(f"cuda-fused runs networks of up to {FUSED_MAX_LAYERS} layers; {network.name} has "
                             f"{network.n_layers}: use cuda-opt")

    def __init__(self, network: Network, params: Params, kernel: str = "auto") -> None:
        if kernel not in self.KERNELS:
            raise ValueError(f"kernel: expected one of {', '.join(self.KERNELS)}, got {kernel!r}")
        super().__init__(network, params)
        info = gpu.info()
        if FUSED_SHARED_BYTES > info.max_shared_per_block_optin:
            raise BackendUnavailable(f"cuda-fused needs {FUSED_SHARED_BYTES} bytes of shared memory per block; "
                                     f"{info.name} allows {info.max_shared_per_block_optin}")
        self._kernel_option = kernel
        self._cluster: gpu.DriverKernel | None = None
        self._no_cluster = ""  # why this GPU runs no cluster kernel ("" if it can)
        if kernel != "grid":
            if info.compute_capability < (9, 0):
                self._no_cluster = f"{info.name} has no thread-block clusters (compute capability 9.0 or later)"
                if kernel == "cluster":
                    raise BackendUnavailable(f"cuda-fused's cluster kernel: {self._no_cluster}")
            else:
                self._cluster = gpu.DriverKernel(FUSED_CLUSTER, "fused_cluster", _ClusterArgs())
                static = self._cluster.get_attribute(gpu.DriverKernel.SHARED_SIZE_BYTES)
                self._cluster_limit = info.max_shared_per_block_optin - static
                self._cluster.set_attribute(gpu.DriverKernel.MAX_DYNAMIC_SHARED_SIZE_BYTES, self._cluster_limit)
                self._cluster_args = self._cluster.args
                self._cluster_args.activation = self._activation
                self._cluster_args.loss_kind = self._loss_kind
                update = np.zeros(_CLUSTER_TABLE_INTS, dtype=np.int32)
                update[_CLUSTER_HEADER.index("n_layers")] = network.n_layers
                self._cluster_update_table = torch.tensor(update, device=self._dev)
        self._cluster_plans: dict[int, tuple[ClusterLayout | str, torch.Tensor | None]] = {}
        self._update_kernel = "grid"  # the kernel of the last backprop, whose update arithmetic the update repeats
        self._launch_kernels: dict[tuple[int, bool], str] = {}  # _launch_kernel's memory
        self._kernel = fused_kernel()
        self._args = self._kernel.args
        self._barrier = torch.zeros(1, dtype=torch.int32, device=self._dev)
        self._args.barrier = self._barrier.data_ptr()
        self._args.n_layers = self.network.n_layers
        self._args.activation = self._activation
        self._args.loss_kind = self._loss_kind
        self._parity = 0
        self._plans: dict[tuple[str, int], tuple[torch.Tensor, int, int]] = {}
        self._layer_table = torch.empty(0, dtype=torch.uint8, device=self._dev)
        self._step_args: tuple[float, float] | None = None

    def _store_params(self, params: Params) -> None:
        # Two copies of every weight and bias; the current one is [parity].
        self._W2 = [[torch.tensor(w, device=self._dev) for _ in range(2)] for w, _ in params]
        self._b2 = [[torch.tensor(b, device=self._dev) for _ in range(2)] for _, b in params]
        self._parity = 0

    def _weight_tensors(self) -> list[torch.Tensor]:
        return [pair[self._parity] for pair in self._W2]

    def _bias_tensors(self) -> list[torch.Tensor]:
        return [pair[self._parity] for pair in self._b2]

    def _dead_buffers(self) -> list[torch.Tensor]:
        return [pair[self._parity ^ 1] for pair in (*self._W2, *self._b2)]

    def close(self) -> None:
        super().close()
        self._W2, self._b2, self._plans = [], [], {}

    def _buffers_resized(self) -> None:
        table = np.zeros(self.network.n_layers, dtype=_LAYER_DTYPE)
        for layer, (n_out, n_in) in enumerate(self.network.layer_shapes):
            table[layer] = ([t.data_ptr() for t in self._W2[layer]], [t.data_ptr() for t in self._b2[layer]],
                            self._dW[layer].data_ptr(), self._db[layer].data_ptr(), self._A[layer].data_ptr(),
                            self._dZ[layer].data_ptr(), n_in, n_out)
        self._layer_table = torch.tensor(table.view(np.uint8), device=self._dev)
        self._args.layers = self._layer_table.data_ptr()
        self._args.loss_rows = self._loss_rows.data_ptr()
        if self._cluster is not None:
            self._cluster_args.layers = self._layer_table.data_ptr()
            self._cluster_args.loss_rows = self._loss_rows.data_ptr()
        self._plans.clear()

    def _cluster_plan(self, rows: int) -> tuple[ClusterLayout | str, torch.Tensor | None]:
        plan = self._cluster_plans.get(rows)
        if plan is None:
            layout = cluster_layout(self.network, rows, self._cluster_limit)
            table = None if isinstance(layout, str) else torch.tensor(layout.table, device=self._dev)
            plan = self._cluster_plans[rows] = (layout, table)
        return plan

    def kernel_choice(self, batch_size: int, steps: int = 1) -> tuple[str, str]:
        """The kernel a launch of ``steps`` steps of ``batch_size`` rows runs (``"cluster"`` or ``"grid"``) and
        why (:func:`choose_kernel`)."""
        grid_phases = len(fused_plan(self.network, "step", batch_size, self._sm_count))
        if self._kernel_option == "grid" or self._cluster is None:
            return choose_kernel(self._kernel_option, None, steps, grid_phases, self._no_cluster)
        return choose_kernel(self._kernel_option, self._cluster_plan(batch_size)[0], steps, grid_phases)

    def _launch_kernel(self, rows: int, steps: int) -> str:
        """The kernel of :meth:`kernel_choice`, remembered per batch size and whether the launch has several
        steps (all the choice depends on): a launch-bound step should not build the reason at every call."""
        key = (rows, steps > 1)
        kernel = self._launch_kernels.get(key)
        if kernel is None:
            kernel = self._launch_kernels[key] = self.kernel_choice(rows, steps)[0]
        return kernel

    def _plan(self, stage: str, batch: int) -> tuple[torch.Tensor, int, int]:
        key = (stage, batch)
        plan = self._plans.get(key)
        if plan is None:
            phases = fused_plan(self.network, stage, batch, self._sm_count)
            table = np.zeros(len(phases), dtype=_PHASE_DTYPE)
            for index, phase in enumerate(phases):
                table[index] = (phase.kind, phase.layer, phase.flags, 0, phase.main.as_tuple(),
                                phase.weights.as_tuple(), phase.above.as_tuple())
            items = max(phase.items(self.network, batch) for phase in phases)
            grid = min(self._sm_count, items)  # every block resident at once: the barrier needs it
            plan = (torch.tensor(table.view(np.uint8), device=self._dev), len(phases), grid)
            self._plans[key] = plan
        return plan

    def _launch(self, stage: str, batch: Batch | None, lr: float = 0.0, weight_decay: float = 0.0,
                profile: int = 0, steps: int = 1) -> None:
        """One launch of ``stage``'s phases, ``steps`` times over consecutive ``batch.size // steps``-row
        blocks of ``batch``; ``profile``: device pointer for the phase clock (0: none)."""
        rows = 0 if batch is None else batch.size // steps
        kernel = self._update_kernel if stage == "update" else self._launch_kernel(rows, steps)
        if stage in ("backprop", "step"):
            self._update_kernel = kernel
        if kernel == "cluster":
            self._launch_cluster(stage, batch, rows, lr, weight_decay, profile, steps)
            return
        phases, n_phases, grid = self._plan(stage, rows)
        args = self._args
        args.phases = phases.data_ptr()
        args.n_phases = n_phases
        args.n_steps = steps
        if batch is None:
            args.X = args.T = args.batch = 0
        else:
            args.X = batch.X.data_ptr()
            args.T = 0 if batch.T is None else batch.T.data_ptr()
            args.batch = rows
        args.parity = self._parity
        args.lr = lr
        args.weight_decay = weight_decay
        args.profile = profile
        self._kernel.launch(grid, FUSED_THREADS, FUSED_SHARED_BYTES)

    def _launch_cluster(self, stage: str, batch: Batch | None, rows: int, lr: float, weight_decay: float,
                        profile: int, steps: int) -> None:
        """:meth:`_launch` on the cluster kernel (``profile``: rank 0's clock at the start and after each
        step)."""
        args = self._cluster_args
        if batch is None:  # the update: elementwise over the blocks' rows, no shared-memory plan
            ranks, shared, args.plan = cluster_ranks(self.network), 0, self._cluster_update_table.data_ptr()
            args.X = args.T = args.batch = 0
        else:
            layout, table = self._cluster_plan(rows)
            ranks, shared, args.plan = layout.ranks, layout.shared_bytes, table.data_ptr()
            args.X = batch.X.data_ptr()
            args.T = 0 if batch.T is None else batch.T.data_ptr()
            args.batch = rows
        args.mode = CLUSTER_MODES[stage]
        args.n_steps = steps
        args.parity = self._parity
        args.lr = lr
        args.weight_decay = weight_decay
        args.profile = profile
        self._cluster.launch(ranks, CLUSTER_THREADS, shared, cluster=ranks)

    # -- stages --------------------------------------------------------------------------------------------
    def forward(self, batch: Batch) -> None:
        self._start_forward(batch)
        self._launch("forward", batch)
        self._forward_done(batch)

    def backprop(self, batch: Batch) -> None:
        self._start_backprop(batch)
        self._launch("backprop", batch)
        self._pending = False
        self._has_grads = True

    def update(self, lr: float, weight_decay: float = 0.0) -> None:
        lr, weight_decay = self._start_update(lr, weight_decay)
        self._launch("update", None, lr, weight_decay)
        self._parity ^= 1

    # Backprop is one launch: every layer is reported after it, none while it runs (the ladder's per-layer
    # products, which the parent class reports from, do not exist here).
    overlaps_backprop = False
    backprop_by_layer = Model.backprop_by_layer

    def _start_steps(self, lr: float, weight_decay: float) -> None:
        if self._step_args != (lr, weight_decay):  # checked once per new setting: the step is launch-bound
            check_step_size(lr, weight_decay)
            self._step_args = (lr, weight_decay)
        self._ensure_open()

    def _steps_done(self, steps: int, rows: int) -> None:
        self._parity ^= steps & 1
        self._forward_size = rows
        self._labelled = True
        self._pending = False
        self._has_grads = True

    def train_step(self, batch: Batch, lr: float, weight_decay: float = 0.0) -> None:
        """Forward, loss, backprop and SGD step in one launch."""
        self._start_steps(lr, weight_decay)
        self._check_batch(batch, need_targets=True)
        self._launch("step", batch, lr, weight_decay)
        self._steps_done(1, batch.size)

    def train_steps(self, batches: Batch, batch_size: int, lr: float, weight_decay: float = 0.0) -> None:
        """Every step of ``batches`` in one launch: the kernel runs the step's phases once per
        ``batch_size``-row block, a grid barrier between steps, the weights never leaving the GPU's memory."""
        self._train_steps(batches, batch_size, lr, weight_decay)

    def _train_steps(self, batches: Batch, batch_size: int, lr: float, weight_decay: float,
                     phase_clock: bool = False) -> torch.Tensor | None:
        """:meth:`train_steps`; with ``phase_clock``, also block 0's clock at the start and after each phase
        (``1 + steps x phases`` nanosecond values; the cluster kernel: after each step), which it returns."""
        self._start_steps(lr, weight_decay)
        steps = len(self._step_starts(batches, batch_size))
        if not (batches.X.is_contiguous() and batches.T.is_contiguous()):
            raise ValueError("train_steps reads the steps' rows at fixed strides: the batch must be contiguous "
                             "(take() and prepare() make contiguous batches)")
        clock = None
        if phase_clock:  # the grid kernel's clock ticks after each phase, the cluster kernel's after each step
            grid = self._launch_kernel(int(batch_size), steps) == "grid"
            marks = self._plan("step", int(batch_size))[1] if grid else 1
            clock = torch.zeros(1 + steps * marks, dtype=torch.int64, device=self._dev)
        self._launch("step", batches, lr, weight_decay, profile=0 if clock is None else clock.data_ptr(),
                     steps=steps)
        self._steps_done(steps, int(batch_size))
        return clock


@dataclass(frozen=True)
class LaunchPlan:
    """What one cuda-fused launch runs: its kernel (and why), its phases in order (the grid kernel's; the
    cluster kernel has none) and the blocks of its grid."""

    kernel: str
    reason: str
    phases: tuple[Phase, ...]
    blocks: int


class FusedProfiler:
    """Measurements of a :class:`FusedCudaModel`'s launches that the per-stage timers cannot see: the GPU time
    of each phase (block 0's ``%globaltimer`` after each grid barrier), the cost of one grid barrier, and the
    host time of the pieces of a ``train_step`` call. Each measurement trains the model as the calls it times
    would (a phase clock is a real step); the barrier chain writes only the output gradient, so the model needs
    a forward pass before its next backprop."""

    def __init__(self, model: FusedCudaModel) -> None:
        if not isinstance(model, FusedCudaModel):
            raise TypeError(f"FusedProfiler measures a cuda-fused model, got {type(model).__name__}")
        self.model = model

    def plan(self, stage: str, batch_size: int, steps: int = 1) -> LaunchPlan:
        """The kernel, phases and grid of a launch of ``steps`` steps of ``stage`` at ``batch_size`` rows, as
        the model launches them."""
        model = self.model
        kernel, reason = model.kernel_choice(batch_size, steps)
        if kernel == "cluster":
            layout, _ = model._cluster_plan(batch_size)
            return LaunchPlan(kernel, reason, (), layout.ranks)
        _, _, blocks = model._plan(stage, batch_size)
        return LaunchPlan(kernel, reason, fused_plan(model.network, stage, batch_size, model._sm_count), blocks)

    def phase_times(self, batches: Batch, batch_size: int, lr: float, weight_decay: float = 0.0) -> np.ndarray:
        """Microseconds of every phase of ``train_steps(batches, batch_size, ...)`` (one launch of the grid
        kernel), in order: ``steps x phases`` values, each from the end of the previous phase's barrier to the
        end of its own."""
        if self.model.kernel_choice(batch_size, batches.size // batch_size)[0] != "grid":
            raise ValueError("the cluster kernel runs no phases: step_times measures its steps")
        clock = self.model._train_steps(batches, batch_size, lr, weight_decay, phase_clock=True)
        return np.diff(clock.cpu().numpy()).astype(np.float64) / 1e3

    def step_times(self, batches: Batch, batch_size: int, lr: float, weight_decay: float = 0.0) -> np.ndarray:
        """Microseconds of every step of ``train_steps(batches, batch_size, ...)`` (one launch, either kernel)
        by block 0's clock: the first from the kernel's start, each later one from the end of the step before."""
        clock = self.model._train_steps(batches, batch_size, lr, weight_decay, phase_clock=True)
        steps = batches.size // batch_size
        marks = clock.cpu().numpy()[np.arange(steps + 1) * ((len(clock) - 1) // steps)]
        return np.diff(marks).astype(np.float64) / 1e3

    def barrier(self, batch: Batch, blocks: int, repeats: int = 50) -> dict[str, float]:
        """GPU microseconds of a launch of one trivial phase (the output gradient of ``batch``) on ``blocks``
        blocks, and of one grid barrier: the difference to 33 such phases, over 32. Device time only (the
        host's launch cost, which varies by more than 32 barriers take, is left out). Needs a forward pass of
        ``batch`` first (the phase reads its output)."""
        model = self.model
        model._check_batch(batch, need_targets=True)
        if not 1 <= blocks <= model._sm_count:
            raise ValueError(f"blocks: need 1..{model._sm_count} (every block resident), got {blocks}")
        if model._forward_size != batch.size:
            raise RuntimeError("barrier needs a forward pass of the batch first")
        clock = CudaEventClock(device_only=True)
        medians = {}
        for count in (1, 33):
            with self._chain(batch, count, blocks) as launch:
                medians[count] = time_call(launch, repeats=repeats, warmup=5, clock=clock).median * 1e6
        model._pending = model._has_grads = False  # the output gradient was overwritten, nothing else
        return {"one_phase_us": medians[1], "barrier_us": (medians[33] - medians[1]) / 32}

    @contextlib.contextmanager
    def _chain(self, batch: Batch, count: int, blocks: int) -> Iterator[Callable[[], None]]:
        """A launch of the grid kernel running ``count`` trivial phases (the output gradient of ``batch``) on
        ``blocks`` blocks, for the ``with`` block (no phases: the kernel starts, reads its tables and ends)."""
        model = self.model
        table = np.zeros(max(count, 1), dtype=_PHASE_DTYPE)
        table["kind"] = PHASE_OUTPUT_DELTA
        table["layer"] = model.network.n_layers - 1
        model._plans[("chain", batch.size)] = (torch.tensor(table.view(np.uint8), device=model._dev), count, blocks)
        try:
            yield lambda: model._launch("chain", batch)
        finally:
            del model._plans[("chain", batch.size)]

    def step_parts(self, batch: Batch, lr: float, repeats: int = 300, warmup: int = 20) -> dict[str, Stats]:
        """Where one ``train_step`` of ``batch`` goes when it is timed between events, as the sweep times a step
        (the grid kernel's, which ``auto`` runs for one step a launch). In turn, ``repeats`` times: the events
        around the call (``events``: the host's time until the launch is queued, and the device's); device-only
        events around it (``device``); device-only events around a launch of the same kernel on the same grid
        with no phases (``start``: what the GPU spends starting and ending a launch between events); and the
        kernel's own time, its first block's clock from its start to the step's end (``kernel``). Seconds."""
        model = self.model
        model._check_batch(batch, need_targets=True)
        if model.kernel_choice(batch.size)[0] != "grid":
            raise ValueError("step_parts measures the grid kernel's step: this model runs one step on the cluster "
                             "kernel (kernel='cluster')")
        plain, device_only = CudaEventClock(), CudaEventClock(device_only=True)
        step = functools.partial(model.train_step, batch, lr)
        samples: dict[str, list[int]] = {"events": [], "device": [], "start": [], "kernel": []}
        _, _, grid = model._plan("step", batch.size)
        with self._chain(batch, 0, grid) as empty:
            for _ in range(warmup):
                step()
                empty()
            for _ in range(repeats):
                samples["events"].append(plain.measure(step))
                samples["device"].append(device_only.measure(step))
                samples["start"].append(device_only.measure(empty))
                clock = model._train_steps(batch, batch.size, lr, 0.0, phase_clock=True)
                samples["kernel"].append(int((clock[-1] - clock[0]).item()))
        return {part: Stats.from_ns(values) for part, values in samples.items()}

    def host_costs(self, batch: Batch, lr: float, count: int = 300, rounds: int = 5) -> dict[str, float]:
        """Host microseconds per call of ``train_step`` and of what it does: the batch check, setting the
        kernel's arguments and launching, the launch alone (the C library's ``mlp_launch_kernel`` calling the
        driver's ``cuLaunchKernel``, ``cuLaunchKernelEx`` for a cluster).
        ``count`` calls back to back (few enough that the launch queue never fills and throttles the host to
        the GPU), best of ``rounds``."""
        model = self.model
        model.train_step(batch, lr)
        if model.kernel_choice(batch.size)[0] == "cluster":
            layout, _ = model._cluster_plan(batch.size)
            launch = functools.partial(model._cluster.launch, layout.ranks, CLUSTER_THREADS, layout.shared_bytes,
                                       cluster=layout.ranks)
        else:
            _, _, grid = model._plan("step", batch.size)
            launch = functools.partial(model._kernel.launch, grid, FUSED_THREADS, FUSED_SHARED_BYTES)
        candidates = {
            "train_step": lambda: model.train_step(batch, lr),
            "batch check": lambda: model._check_batch(batch, need_targets=True),
            "arguments + launch": lambda: model._launch("step", batch, lr),
            "launch alone": launch,
        }
        costs = {}
        for name, call in candidates.items():
            best = float("inf")
            for _ in range(rounds):
                torch.cuda.synchronize()
                start = time.perf_counter()
                for _ in range(count):
                    call()
                best = min(best, (time.perf_counter() - start) * 1e6 / count)
            costs[name] = best
        torch.cuda.synchronize()
        # A bare launch leaves the parity as it was: it recomputes the same next copy from the current one,
        # so the model stands as the train_step calls left it.
        return costs
