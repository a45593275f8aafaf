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
)
from mlpbench.network import Network

#: Rows a model holds activations for unless ``max_batch`` says otherwise.
DEFAULT_MAX_BATCH = 1024

_FLOAT32_MAX = float(np.finfo(np.float32).max)

_ACTIVATIONS = {"sigmoid": 0, "tanh": 1, "relu": 2}
_LOSSES = {"softmax-ce": 0, "sigmoid-bce": 1}


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

    variant: ClassVar[str]

    def __init__(self, network: Network, params: Params, *, threads: int | None, kernel: int = 3,
                 max_batch: int = DEFAULT_MAX_BATCH, isa: str = "auto") -> None:
        super().__init__(network, params)
        self._lib = lib = native.library(self.variant)
        self.threads = native.resolve_threads(lib, self.variant, threads)
        self.kernel = native.resolve_kernel(kernel)
        if isinstance(max_batch, bool) or not isinstance(max_batch, int | np.integer) or max_batch < 1:
            raise ValueError(f"max_batch: expected a positive integer, got {max_batch!r}")
        self.max_batch = int(max_batch)
        isa_code = native.resolve_isa(lib, isa)
        params = check_params(network, params)

        sizes = native.ffi.new("int[]", list(network.sizes))
        handle = native.ffi.new("mlp_model **")
        status = lib.mlp_model_create(handle, network.n_layers, sizes, _ACTIVATIONS[network.activation],
                                      _LOSSES[network.loss], self.max_batch, self.threads, self.kernel,
                                      isa_code)
        native.raise_for_status(lib, status, "mlp_model_create")
        self._model = handle[0]
        # Frees the C model when this object is collected, or at close(); runs once either way.
        self._finalizer = weakref.finalize(self, lib.mlp_model_destroy, self._model)
        self.isa = native.ISA_NAMES[lib.mlp_model_isa(self._model)]
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

    # ------------------------------------------------------------------ batches

    def prepare(self, X: np.ndarray, y: np.ndarray | None = None) -> Batch:
        self._require_open()
        X, T = check_inputs(self.network, X, y)
        self._check_batch_size(X.shape[0])
        return NativeBatch(X, T, X.shape[0], self.network)

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
        self._valid_step_size = _validate_step_size(lr, weight_decay)
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

    def backprop(self, batch: Batch) -> None:
        x_ptr, t_ptr = self._pointers(batch, need_targets=True)
        if self._batch_size != batch.size:
            raise RuntimeError("backprop needs a forward pass on this batch first")
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

    def close(self) -> None:
        """Free the C model (idempotent; also done when the object is collected)."""
        finalizer = getattr(self, "_finalizer", None)
        if finalizer is not None and finalizer.alive:
            # Views into C memory must not outlive it.
            self._weights = self._biases = self._grad_weights = self._grad_biases = self._outputs = []
            finalizer()

    overlaps_backprop = True

    def gradient_buffer(self) -> Any:
        """The C model's own gradient block, shared without a copy; valid until :meth:`close`."""
        import torch

        return torch.from_numpy(native.gradient_block(self))

    def backprop_by_layer(self, batch: Batch, on_layer: Callable[[int], None]) -> None:
        for layer in range(self.network.n_layers, 0, -1):
            native.backprop_layer(self, batch, layer)
            on_layer(layer)


def _validate_step_size(lr: float, weight_decay: float) -> tuple[float, float]:
    """Validated step sizes that stay finite in float32, the type C computes with."""
    lr, weight_decay = check_step_size(lr, weight_decay)
    for name, value in (("lr", lr), ("weight_decay", weight_decay)):
        if value > _FLOAT32_MAX:
            raise ValueError(f"{name}: {value} overflows float32")
    return lr, weight_decay


class SerialCModel(NativeCModel):
    """``c-serial``: the library built without OpenMP."""

    name = "c-serial"
    variant = "serial"

    def __init__(self, network: Network, params: Params, *, kernel: int = 3,
                 max_batch: int = DEFAULT_MAX_BATCH, isa: str = "auto") -> None:
        super().__init__(network, params, threads=1, kernel=kernel, max_batch=max_batch, isa=isa)


class OpenMPCModel(NativeCModel):
    """``c-omp``: the OpenMP build on ``threads`` threads (default: every core this process may use)."""

    name = "c-omp"
    variant = "omp"

    def __init__(self, network: Network, params: Params, *, threads: int | None = None, kernel: int = 3,
                 max_batch: int = DEFAULT_MAX_BATCH, isa: str = "auto") -> None:
        super().__init__(network, params, threads=threads, kernel=kernel, max_batch=max_batch, isa=isa)


class BlasCModel(NativeCModel):
    """``c-blas``: the library built with every matrix product done by OpenBLAS's ``cblas_sgemm`` (the
    ``scipy-openblas32`` wheel) and the project's own epilogues; the optimised-library rung of the CPU ladder.
    ``threads`` is OpenBLAS's thread count, set on every call; the epilogues run on the calling thread."""

    name = "c-blas"
    variant = "blas"

    def __init__(self, network: Network, params: Params, *, threads: int | None = None,
                 max_batch: int = DEFAULT_MAX_BATCH, isa: str = "auto") -> None:
        super().__init__(network, params, threads=threads, max_batch=max_batch, isa=isa)
