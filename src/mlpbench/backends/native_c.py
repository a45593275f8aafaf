"""``c-serial`` and ``c-omp``: the network in the C library (``native/``), called through cffi.

Both backends are one class over two builds of the same sources: ``c-serial`` loads the library compiled
without OpenMP, ``c-omp`` the OpenMP one with an explicit thread count on every call (PyTorch and the library
share one OpenMP runtime, so a global setting would leak between them).

The C model owns every buffer, allocated once for ``max_batch`` rows. Per stage call the Python side does only
O(1) work: batches from :meth:`NativeCModel.prepare` carry their C pointers, taken once.
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from mlpbench import native
from mlpbench.backends.base import (
    Batch,
    Model,
    Params,
    check_inputs,
    check_params,
    check_step_size,
    owned_host_batch,
)
from mlpbench.network import Network

#: Rows a model holds activations for unless ``max_batch`` says otherwise.
DEFAULT_MAX_BATCH = 1024

#: Largest layer width, batch capacity and layer count the C model accepts (``SIZE_LIMIT`` in
#: ``native/src/model.c``; a test reads it there), checked here so a ValueError comes before C.
C_SIZE_LIMIT = 1 << 24

#: One timeline event as :meth:`NativeCModel.timeline` returns it (``mlp_event`` of ``native/include/mlp.h``):
#: times in nanoseconds since the stage call began; ``kind`` a code of :func:`timeline_kinds`.
TIMELINE_DTYPE = np.dtype([("start_ns", "<i8"), ("end_ns", "<i8"), ("pack_ns", "<i8"), ("work", "<i8"),
                           ("kind", "<i4"), ("layer", "<i4"), ("thread", "<i4"), ("team", "<i4")])


def timeline_kinds() -> dict[int, str]:
    """The header's ``enum mlp_event_kind`` as {code: name}: ``{0: "fork", 1: "forward", ...}``."""
    native.library("omp")  # declares the header's API
    return {code: name.removeprefix("MLP_EV_").lower()
            for name, code in native.ffi.typeof("enum mlp_event_kind").relements.items()}


def header_code(lib: Any, name: str) -> int:
    """The header's enum value for an activation or loss name: ``"tanh"`` -> ``MLP_TANH``,
    ``"softmax-ce"`` -> ``MLP_SOFTMAX_CE``."""
    return getattr(lib, "MLP_" + name.upper().replace("-", "_"))


@dataclasses.dataclass(frozen=True)
class NativeBatch(Batch):
    """A :class:`Batch` with the C pointers to its arrays, taken once (``x_ptr``, ``t_ptr``)."""

    x_ptr: Any = dataclasses.field(init=False, repr=False, compare=False)
    t_ptr: Any = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        x_ptr, t_ptr = _batch_pointers(self)
        object.__setattr__(self, "x_ptr", x_ptr)
        object.__setattr__(self, "t_ptr", t_ptr)


def _batch_pointers(batch: Batch) -> tuple[Any, Any]:
    """Check that a batch's arrays have the layout C reads, then point at them."""
    network = batch.network
    X = native.check_float32_matrix("X", batch.X)
    if X.shape != (batch.size, network.n_inputs):
        raise ValueError(f"X: expected shape {(batch.size, network.n_inputs)}, got {X.shape}")
    if batch.T is None:
        return native.float_pointer(X), native.ffi.NULL
    T = native.check_float32_matrix("T", batch.T)
    if T.shape != (batch.size, network.n_outputs):
        raise ValueError(f"T: expected shape {(batch.size, network.n_outputs)}, got {T.shape}")
    return native.float_pointer(X), native.float_pointer(T)


class NativeCModel(Model):
    """The network in C; subclasses choose the library build (``variant``). One call at a time: the C model's
    buffers are shared by its stages."""

    family = "c"
    variant: ClassVar[str]

    def __init__(self, network: Network, params: Params, *, threads: int | None, kernel: int = 3,
                 max_batch: int = DEFAULT_MAX_BATCH, isa: str = "auto") -> None:
        super().__init__(network, params)
        self._lib = lib = native.library(self.variant)
        self.threads = native.resolve_threads(lib, self.variant, threads)
        self.kernel = native.resolve_kernel(kernel)
        if isinstance(max_batch, bool) or not isinstance(max_batch, int | np.integer) or max_batch < 1:
            raise ValueError(f"max_batch: expected a positive integer, got {max_batch!r}")
        if max_batch > C_SIZE_LIMIT:
            raise ValueError(f"max_batch: at most {C_SIZE_LIMIT} rows in the C library, got {max_batch}")
        if max(network.sizes) > C_SIZE_LIMIT or network.n_layers > C_SIZE_LIMIT:
            raise ValueError(f"network {network.name}: the C library takes widths and layer counts up to "
                             f"{C_SIZE_LIMIT}")
        self.max_batch = int(max_batch)
        isa_code = native.resolve_isa(lib, isa)
        params = check_params(network, params)

        sizes = native.ffi.new("int[]", list(network.sizes))
        handle = native.ffi.new("mlp_model **")
        status = lib.mlp_model_create(handle, network.n_layers, sizes, header_code(lib, network.activation),
                                      header_code(lib, network.loss), self.max_batch, self.threads, self.kernel,
                                      isa_code)
        native.raise_for_status(lib, status, "mlp_model_create")
        self._model = handle[0]
        # Frees the C model when this object is collected, or at close(); runs once either way.
        self._finalizer = weakref.finalize(self, lib.mlp_model_destroy, self._model)
        self.isa = native.ISA_NAMES[lib.mlp_model_isa(self._model)]
        #: The fused step's plan on many threads (``mlp_model_plan``: the change of native/SCALING.md that
        #: introduced it, 12 by default, a rule choosing 8 or 16 per step; ``MLP_STEP_PLAN`` at creation picks
        #: another: 8, 11 or 16). Results do not depend on it.
        self.plan = int(lib.mlp_model_plan(self._model))
        for layer, (weights, bias) in enumerate(params, start=1):
            native.raise_for_status(lib, lib.mlp_model_set_layer(self._model, layer, native.float_pointer(weights),
                                                                 native.float_pointer(bias)),
                                    "mlp_model_set_layer")
        self._make_views()
        self._loss_out = native.ffi.new("double *", float("nan"))
        self._loss = float("nan")
        self._batch_size = 0  # rows of the last forward; 0 before any
        self._has_grads = False
        self._valid_step_size = (float("nan"), float("nan"))  # the last (lr, weight_decay) that passed

    def _make_views(self) -> None:
        """NumPy views of the C model's buffers (internal: callers only ever get copies)."""
        lib, model = self._lib, self._model
        self._weights, self._biases, self._grad_weights, self._grad_biases, self._outputs = [], [], [], [], []
        for layer, (n_out, n_in) in enumerate(self.network.layer_shapes, start=1):
            self._weights.append(native.buffer_view(lib.mlp_model_buffer(model, lib.MLP_BUF_WEIGHTS, layer),
                                                    (n_out, n_in)))
            self._biases.append(native.buffer_view(lib.mlp_model_buffer(model, lib.MLP_BUF_BIAS, layer),
                                                   (n_out,)))
            self._grad_weights.append(native.buffer_view(
                lib.mlp_model_buffer(model, lib.MLP_BUF_GRAD_WEIGHTS, layer), (n_out, n_in)))
            self._grad_biases.append(native.buffer_view(
                lib.mlp_model_buffer(model, lib.MLP_BUF_GRAD_BIAS, layer), (n_out,)))
            self._outputs.append(native.buffer_view(
                lib.mlp_model_buffer(model, lib.MLP_BUF_ACTIVATION, layer), (self.max_batch, n_out)))

    def step_plan(self, batch_size: int | None = None) -> int:
        """The plan a ``train_step`` on ``batch_size`` rows (default ``max_batch``) runs on this model's threads
        (``mlp_step_plan``): 11 (the hidden layers transposed, each thread its own rows), 16 (11 with W^T
        packed by the owners of W's rows) or 8."""
        self._require_open()
        rows = self.max_batch if batch_size is None else int(batch_size)
        self._check_batch_size(rows)
        return int(self._lib.mlp_step_plan(self._model, self.threads, rows))

    # ------------------------------------------------------------------ batches
    def max_rows(self) -> int:
        return self.max_batch

    def prepare(self, X: np.ndarray, y: np.ndarray | None = None) -> Batch:
        """A checked batch with read-only copies of its data and their C pointers. It may hold more rows than
        ``max_batch`` (a whole data set): the stages then take :meth:`Batch.rows` slices of it."""
        self._require_open()
        X, T = check_inputs(self.network, X, y)
        owned = owned_host_batch(self.network, X, T)
        return NativeBatch(owned.X, owned.T, owned.size, self.network)

    def _check_batch_size(self, size: int) -> None:
        if size > self.max_batch:
            raise ValueError(f"batch of {size} rows exceeds max_batch={self.max_batch} of this model; "
                             f"create it with a larger max_batch")

    def _pointers(self, batch: Batch, need_targets: bool = False) -> tuple[Any, Any]:
        """The batch's C pointers after every check C relies on; O(1) for batches from :meth:`prepare`."""
        self._require_open()
        if type(batch) is NativeBatch and batch.network is self.network:
            # Checked when it was made: only what may differ between calls is left to check.
            if need_targets and batch.T is None:
                raise ValueError("batch has no labels: call prepare(X, y) with y to train")
            self._check_batch_size(batch.size)
            return batch.x_ptr, batch.t_ptr
        self._check_batch(batch, need_targets)
        self._check_batch_size(batch.size)
        return _batch_pointers(batch)

    def _require_open(self) -> None:
        if not self._finalizer.alive:
            raise RuntimeError(f"{self.name} model is closed")

    def _step_size(self, lr: Any, weight_decay: Any) -> tuple[float, float]:
        """Checked step sizes; a training loop repeats the same two floats, so those skip the checks."""
        if type(lr) is float and type(weight_decay) is float and (lr, weight_decay) == self._valid_step_size:
            return lr, weight_decay
        self._valid_step_size = check_step_size(lr, weight_decay)
        return self._valid_step_size

    def _raise(self, status: int, where: str) -> None:
        native.raise_for_status(self._lib, status, where)

    # ------------------------------------------------------------------ stages

    def forward(self, batch: Batch) -> None:
        x_ptr, t_ptr = self._pointers(batch)
        status = self._lib.mlp_forward(self._model, self.threads, batch.size, x_ptr, t_ptr, self._loss_out)
        if status:
            self._raise(status, "forward")
        self._batch_size = batch.size
        self._loss = self._loss_out[0]
        self._bind(batch)

    def backprop(self, batch: Batch) -> None:
        x_ptr, t_ptr = self._pointers(batch, need_targets=True)
        self._check_bound(batch)
        status = self._lib.mlp_backprop(self._model, self.threads, batch.size, x_ptr, t_ptr)
        if status:
            self._raise(status, "backprop")
        self._has_grads = True

    def update(self, lr: float, weight_decay: float = 0.0) -> None:
        self._require_open()
        lr, weight_decay = self._step_size(lr, weight_decay)
        if not self._has_grads:
            raise RuntimeError("update before backprop")
        status = self._lib.mlp_update(self._model, self.threads, lr, weight_decay)
        if status:
            self._raise(status, "update")

    def train_step(self, batch: Batch, lr: float, weight_decay: float = 0.0) -> None:
        """Forward, backprop and update in one C call and one parallel region."""
        x_ptr, t_ptr = self._pointers(batch, need_targets=True)
        lr, weight_decay = self._step_size(lr, weight_decay)
        status = self._lib.mlp_train_step(self._model, self.threads, batch.size, x_ptr, t_ptr, lr,
                                          weight_decay, self._loss_out)
        if status:
            self._raise(status, "train_step")
        self._batch_size = batch.size
        self._loss = self._loss_out[0]
        self._has_grads = True
        self._bind(batch)

    # ------------------------------------------------------------------ read-backs

    def loss(self) -> float:
        return self._loss

    def activations(self) -> list[np.ndarray]:
        self._require_forward()
        return [view[:self._batch_size].copy() for view in self._outputs]

    def output(self) -> np.ndarray:
        self._require_forward()
        return self._outputs[-1][:self._batch_size].copy()

    def params(self) -> Params:
        self._require_open()
        return [(w.copy(), b.copy()) for w, b in zip(self._weights, self._biases, strict=True)]

    def grads(self) -> Params:
        self._require_open()
        if not self._has_grads:
            raise RuntimeError("no gradients yet: call backprop first")
        return [(w.copy(), b.copy()) for w, b in zip(self._grad_weights, self._grad_biases, strict=True)]

    def _require_forward(self) -> None:
        self._require_open()
        if not self._batch_size:
            raise RuntimeError("no forward pass yet")

    def poison(self) -> None:
        """NaN into every buffer the next stage writes (C keeps what that stage reads: see ``mlp_poison``)."""
        self._require_open()
        status = self._lib.mlp_poison(self._model)
        if status:
            self._raise(status, "poison")

    # ------------------------------------------------------------------ timeline

    def enable_timeline(self, events_per_thread: int = 4096) -> None:
        """Record a per-thread timeline of every later stage call (see :meth:`timeline`), keeping up to
        ``events_per_thread`` events of each thread per call. Off again with :meth:`disable_timeline`."""
        self._require_open()
        if isinstance(events_per_thread, bool) or not isinstance(events_per_thread, int | np.integer):
            raise TypeError(f"events_per_thread: expected an integer, got {type(events_per_thread).__name__}")
        if not 1 <= events_per_thread <= C_SIZE_LIMIT:
            raise ValueError(f"events_per_thread: expected 1..{C_SIZE_LIMIT}, got {events_per_thread}")
        status = self._lib.mlp_timeline_enable(self._model, int(events_per_thread))
        if status:
            self._raise(status, "enable_timeline")

    def disable_timeline(self) -> None:
        """Stop recording and free the timeline (no cost beyond a branch per piece of work when off)."""
        self._require_open()
        status = self._lib.mlp_timeline_enable(self._model, 0)
        if status:
            self._raise(status, "disable_timeline")

    def timeline(self) -> np.ndarray:
        """The last stage call's events (forward, backprop, backprop_layer, update or train_step) as a
        structured array of :data:`TIMELINE_DTYPE`, ordered by thread then time: each thread's share of every
        product (with its packing time), output rows, bias gradients, updates, and each barrier wait.
        ``RuntimeError`` if the timeline is off or events were dropped (enable with more events)."""
        self._require_open()
        count, dropped = native.ffi.new("int *"), native.ffi.new("int *")
        status = self._lib.mlp_timeline_read(self._model, native.ffi.NULL, 0, count, dropped)
        if status == self._lib.MLP_ERR_STATE:
            raise RuntimeError("timeline is off: call enable_timeline() first")
        if status not in (self._lib.MLP_OK, self._lib.MLP_ERR_SIZE):
            self._raise(status, "timeline")
        if dropped[0]:
            raise RuntimeError(f"timeline: {dropped[0]} events did not fit; enable_timeline with more events")
        events = np.zeros(count[0], dtype=TIMELINE_DTYPE)
        if count[0]:
            pointer = native.ffi.cast("mlp_event *", native.ffi.from_buffer(events))
            self._raise(self._lib.mlp_timeline_read(self._model, pointer, count[0], count, dropped), "timeline")
        return events

    def close(self) -> None:
        """Free the C model (idempotent; also done when the object is collected)."""
        finalizer = getattr(self, "_finalizer", None)
        if finalizer is not None and finalizer.alive:
            # Views into C memory must not outlive it.
            self._weights = self._biases = self._grad_weights = self._grad_biases = self._outputs = []
            finalizer()

    overlaps_backprop = True

    def gradient_block(self) -> np.ndarray:
        """A float32 view of the gradients as one flat block ``[dW_1, db_1, ..., dW_L, db_L]`` (each ``dW``
        row-major, layers in order): what a data-parallel all-reduce averages in one call, in place. Writing
        into it changes the gradients the next ``update`` applies; valid while the model is open."""
        self._require_open()
        count = native.ffi.new("long long *")
        pointer = self._lib.mlp_model_gradient_block(self._model, count)
        return native.buffer_view(pointer, (int(count[0]),))

    def gradient_buffer(self) -> Any:
        """The C model's own gradient block, shared without a copy; valid until :meth:`close`."""
        import torch

        return torch.from_numpy(self.gradient_block())

    def backprop_layer(self, batch: Batch, layer: int) -> None:
        """Backprop of one layer, so its gradients can be all-reduced while the layers below are computed:
        after ``forward(batch)``, call it for ``layer = n_layers, ..., 1`` in that order. The gradients equal,
        bit for bit, those of ``backprop(batch)``; ``update`` is accepted once layer 1 is done. Out of order
        raises ``RuntimeError``."""
        if isinstance(layer, bool) or not isinstance(layer, int | np.integer):
            raise TypeError(f"layer: expected an integer, got {type(layer).__name__}")
        if not 1 <= layer <= self.network.n_layers:
            raise ValueError(f"layer: expected 1..{self.network.n_layers}, got {layer}")
        x_ptr, t_ptr = self._pointers(batch, need_targets=True)
        if self._batch_size != batch.size:
            raise RuntimeError("backprop needs a forward pass on this batch first")
        self._check_bound(batch)
        status = self._lib.mlp_backprop_layer(self._model, self.threads, batch.size, x_ptr, t_ptr, int(layer))
        if status:
            self._raise(status, f"backprop of layer {layer}")
        if layer == 1:
            self._has_grads = True

    def backprop_by_layer(self, batch: Batch, on_layer: Callable[[int], None]) -> None:
        self._check_bound(batch)
        for layer in range(self.network.n_layers, 0, -1):
            self.backprop_layer(batch, layer)
            on_layer(layer)


class SerialCModel(NativeCModel):
    """``c-serial``: the library built without OpenMP."""

    name = "c-serial"
    variant = "serial"
    fixed_threads = 1

    def __init__(self, network: Network, params: Params, *, kernel: int = 3,
                 max_batch: int = DEFAULT_MAX_BATCH, isa: str = "auto") -> None:
        super().__init__(network, params, threads=1, kernel=kernel, max_batch=max_batch, isa=isa)


class OpenMPCModel(NativeCModel):
    """``c-omp``: the OpenMP build on ``threads`` threads (default: every core this process may use)."""

    name = "c-omp"
    variant = "omp"
    threaded = True

    @classmethod
    def max_threads(cls) -> int:
        """The C library's own limit (``MLP_THREADS_LIMIT``): every thread gets its own packing workspace, so
        a count above the cores only oversubscribes them, which the thread study may measure on purpose."""
        return int(native.library(cls.variant).MLP_THREADS_LIMIT)

    def __init__(self, network: Network, params: Params, *, threads: int | None = None, kernel: int = 3,
                 max_batch: int = DEFAULT_MAX_BATCH, isa: str = "auto") -> None:
        super().__init__(network, params, threads=threads, kernel=kernel, max_batch=max_batch, isa=isa)


class BlasCModel(NativeCModel):
    """``c-blas``: the library built with every matrix product done by OpenBLAS's ``cblas_sgemm`` (the
    ``scipy-openblas32`` wheel) and the project's own epilogues; the optimised-library rung of the CPU ladder.
    ``threads`` is OpenBLAS's thread count, set on every call; the epilogues run on the calling thread."""

    name = "c-blas"
    variant = "blas"
    threaded = True

    def __init__(self, network: Network, params: Params, *, threads: int | None = None,
                 max_batch: int = DEFAULT_MAX_BATCH, isa: str = "auto") -> None:
        super().__init__(network, params, threads=threads, max_batch=max_batch, isa=isa)
