"""PyTorch baselines: ``torch-cpu`` and ``torch-gpu`` (eager).

The network is written the way a PyTorch user writes it (``F.linear`` + activation per layer, the library's
loss functions, autograd, ``torch.optim.SGD``), with the same initial parameters, loss and update rule as
every other backend and IEEE float32 matrix products (no TF32).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

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
from mlpbench.backends.transfer import TensorBatch, tensor_batch
from mlpbench.network import Network
from mlpbench.thread_policy import check_threads, set_torch_threads, usable_cores

__all__ = ["TorchCPUModel", "TorchGPUGraphModel", "TorchGPUModel", "TorchModel", "pin_ieee_float32",
           "require_cuda", "tensor_batch"]

_ACTIVATIONS = {"sigmoid": torch.sigmoid, "tanh": torch.tanh, "relu": torch.relu}


def pin_ieee_float32() -> None:
    """Keep float32 products in IEEE float32 on CPU (oneDNN) and GPU (cuBLAS): no TF32, no bf16."""
    torch.backends.cuda.matmul.fp32_precision = "ieee"
    torch.backends.mkldnn.matmul.fp32_precision = "ieee"


class TorchModel(Model):
    """The PyTorch network on ``self.torch_device``; subclasses choose the device."""

    family = "torch"
    torch_device = "cpu"

    def __init__(self, network: Network, params: Params) -> None:
        super().__init__(network, params)
        pin_ieee_float32()
        # With its index, so a batch's device (always indexed) compares equal to the model's.
        self._dev = torch.device(self.torch_device, torch.cuda.current_device()) if self.torch_device == "cuda" \
            else torch.device(self.torch_device)
        self._weights = []
        self._biases = []
        for weights, bias in check_params(network, params):
            self._weights.append(torch.tensor(weights, device=self._dev, requires_grad=True))
            self._biases.append(torch.tensor(bias, device=self._dev, requires_grad=True))
        self._activation = _ACTIVATIONS[network.activation]
        self._optimizer = torch.optim.SGD([{"params": self._weights, "weight_decay": 0.0},
                                           {"params": self._biases, "weight_decay": 0.0}], lr=0.0)
        self._hidden: list[torch.Tensor] = []
        self._logits: torch.Tensor | None = None
        self._loss: torch.Tensor | None = None
        self._pending_loss: torch.Tensor | None = None  # the loss whose graph backprop has not used yet

    def prepare(self, X: np.ndarray, y: np.ndarray | None = None) -> Batch:
        X, T = check_inputs(self.network, X, y)
        return tensor_batch(self.network, X, T, self._dev)

    def _loss_of(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.network.loss == "softmax-ce":
            return F.cross_entropy(logits, targets)
        return F.binary_cross_entropy_with_logits(logits, targets, reduction="sum") / logits.shape[0]

    def forward(self, batch: Batch) -> None:
        self._check_batch(batch)
        a = batch.X
        hidden = []
        last = self.network.n_layers - 1
        for index, (weights, bias) in enumerate(zip(self._weights, self._biases, strict=True)):
            z = F.linear(a, weights, bias)
            if index < last:
                a = self._activation(z)
                hidden.append(a)
        self._hidden, self._logits = hidden, z
        self._pending_loss = None if batch.T is None else self._loss_of(z, batch.T)
        self._loss = None if self._pending_loss is None else self._pending_loss.detach()
        self._bind(batch)

    def backprop(self, batch: Batch) -> None:
        self._check_batch(batch, need_targets=True)
        self._check_bound(batch)
        if self._pending_loss is None:
            raise RuntimeError("backprop needs a new forward pass on a labelled batch first")
        self._optimizer.zero_grad(set_to_none=False)
        self._pending_loss.backward()
        self._pending_loss = None

    def update(self, lr: float, weight_decay: float = 0.0) -> None:
        lr, weight_decay = check_step_size(lr, weight_decay)
        if self._weights[0].grad is None:
            raise RuntimeError("update before backprop")
        weight_group, bias_group = self._optimizer.param_groups
        weight_group["lr"] = bias_group["lr"] = lr
        weight_group["weight_decay"] = weight_decay
        self._optimizer.step()

    def close(self) -> None:
        """Drop the parameters, gradients and activations (device memory returns to PyTorch's allocator)."""
        self._weights, self._biases, self._hidden = [], [], []
        self._logits = self._loss = self._pending_loss = self._forward_batch = None
        self._optimizer = None

    def synchronize(self) -> None:
        if self._dev.type == "cuda":
            torch.cuda.synchronize(self._dev)

    def loss(self) -> float:
        return float("nan") if self._loss is None else float(self._loss)

    def activations(self) -> list[np.ndarray]:
        if self._logits is None:
            raise RuntimeError("no forward pass yet")
        with torch.no_grad():
            out = (F.softmax(self._logits, dim=1) if self.network.loss == "softmax-ce"
                   else torch.sigmoid(self._logits))
            return [t.detach().cpu().numpy().copy() for t in [*self._hidden, out]]

    def params(self) -> Params:
        return [(w.detach().cpu().numpy().copy(), b.detach().cpu().numpy().copy())
                for w, b in zip(self._weights, self._biases, strict=True)]

    def grads(self) -> Params:
        if self._weights[0].grad is None:
            raise RuntimeError("no gradients yet: call backprop first")
        return [(w.grad.cpu().numpy().copy(), b.grad.cpu().numpy().copy())
                for w, b in zip(self._weights, self._biases, strict=True)]

    overlaps_backprop = True

    def gradient_buffer(self) -> torch.Tensor:
        """The first call moves every ``.grad`` into views of one flat tensor; ``zero_grad(set_to_none=False)``
        zeroes them in place and autograd accumulates into them in place, so they stay views from then on."""
        flat = getattr(self, "_grad_flat", None)
        if flat is None:
            flat = torch.zeros(self.network.n_params, dtype=torch.float32, device=self._dev)
            with torch.no_grad():
                for (weights, bias), views in zip(zip(self._weights, self._biases, strict=True),
                                                  layer_views(self.network, flat), strict=True):
                    for parameter, view in zip((weights, bias), views, strict=True):
                        if parameter.grad is not None:
                            view.copy_(parameter.grad)
                        parameter.grad = view
            self._grad_flat = flat
        return flat

    def backprop_by_layer(self, batch: Batch, on_layer: Callable[[int], None]) -> None:
        """Autograd reports each parameter once its gradient is accumulated (post-accumulate-grad hooks); a layer
        is final when its weight and bias both are. Autograd accumulates a gradient as soon as it is computed,
        so layer ``l`` is reported before the gradients of layer ``l - 1`` are computed."""
        if getattr(self, "_layer_hooks", None) is None:
            self._layer_hooks = [parameter.register_post_accumulate_grad_hook(
                lambda _, layer=layer: self._parameter_done(layer))
                for layer, pair in enumerate(zip(self._weights, self._biases, strict=True), start=1)
                for parameter in pair]
        self._layer_waiting = dict.fromkeys(range(1, self.network.n_layers + 1), 2)
        self._on_layer = on_layer
        try:
            self.backprop(batch)
        finally:
            self._on_layer = None
        if any(self._layer_waiting.values()):
            raise RuntimeError(f"backprop did not report every layer: still waiting for {self._layer_waiting}")

    def _parameter_done(self, layer: int) -> None:
        on_layer = getattr(self, "_on_layer", None)
        if on_layer is None:  # a plain backprop
            return
        self._layer_waiting[layer] -= 1
        if self._layer_waiting[layer] == 0:
            on_layer(layer)


class TorchCPUModel(TorchModel):
    """``torch-cpu``: runs every stage on ``threads`` threads (default: all cores), set before each call."""

    name = "torch-cpu"
    threaded = True

    def __init__(self, network: Network, params: Params, threads: int | None = None) -> None:
        self.threads = usable_cores() if threads is None else check_threads(threads, limit=self.max_threads())
        super().__init__(network, params)

    def _use_threads(self) -> None:
        # One OpenMP runtime serves PyTorch and the C library: never inherit another backend's setting.
        set_torch_threads(self.threads)

    def forward(self, batch: Batch) -> None:
        self._use_threads()
        super().forward(batch)

    def backprop(self, batch: Batch) -> None:
        self._use_threads()
        super().backprop(batch)

    def update(self, lr: float, weight_decay: float = 0.0) -> None:
        self._use_threads()
        super().update(lr, weight_decay)


def require_cuda(backend: str) -> None:
    if not torch.cuda.is_available():
        raise BackendUnavailable(f"{backend}: no CUDA GPU visible to PyTorch on this machine")


class TorchGPUModel(TorchModel):
    """``torch-gpu``: eager PyTorch on the current CUDA device."""

    name = "torch-gpu"
    device = "cuda"
    torch_device = "cuda"

    def __init__(self, network: Network, params: Params) -> None:
        require_cuda(self.name)
        super().__init__(network, params)


class TorchGPUGraphModel(TorchGPUModel):
    """``torch-gpu-graph``: the strongest fair PyTorch baseline. ``train_step`` replays one CUDA graph holding
    the whole training step — forward, loss, ``zero_grad``, backward and ``SGD.step()`` — so a step costs one
    graph launch instead of dozens of kernel launches from Python.

    * A graph is captured per (batch size, lr, weight decay), the first time that combination reaches
      ``train_step`` (lr and decay are constants inside the captured optimizer kernels), and kept for reuse.
      Capture follows PyTorch's recipe: warm-up steps on a side stream, then capture; the parameters are
      saved before the warm-up and restored after, so capturing does not train the network.
    * ``prepare`` gives a batch that owns its device copy, as on ``torch-gpu``; ``train_step`` copies it
      (device to device) into the static input buffers of its size that the graphs read, unless that batch
      is already there, so any batch of this model, :meth:`Batch.rows` slices included, can be replayed.
    * ``forward``, ``backprop`` and ``update`` run eagerly, exactly as ``torch-gpu``: autograd's backward
      cannot be replayed apart from the forward that recorded it, so per-stage graphs would need the forward
      and backward captured as a pair (``torch.cuda.make_graphed_callables``), which is a different program
      from the one a PyTorch user trains with. The stage split of PyTorch is read from the eager stages; what
      the graph saves shows in ``step``. Eager stages and graphs update the same parameter and gradient
      tensors in place, so they can be mixed freely.
    """

    name = "torch-gpu-graph"

    def __init__(self, network: Network, params: Params) -> None:
        super().__init__(network, params)
        self._static_inputs: dict[int, Batch] = {}  # per batch size: the buffers the graphs read
        self._staged_source: dict[int, Batch] = {}  # per batch size: the batch whose data they hold
        self._graphs: dict[tuple[int, float, float], tuple[torch.cuda.CUDAGraph, torch.Tensor,
                                                           list[torch.Tensor], torch.Tensor]] = {}

    def _staged(self, batch: Batch) -> Batch:
        """The static input buffers of ``batch``'s size (which the graphs read), holding ``batch``'s data. A
        prepared batch never changes, so it is copied in (device to device) only when another was there."""
        static = self._static_inputs.get(batch.size)
        if static is None:
            static = Batch(torch.empty_like(batch.X), torch.empty_like(batch.T), batch.size, self.network)
            self._static_inputs[batch.size] = static
        if self._staged_source.get(batch.size) is not batch:
            static.X.copy_(batch.X)
            static.T.copy_(batch.T)
            self._staged_source[batch.size] = batch
        return static

    def train_step(self, batch: Batch, lr: float, weight_decay: float = 0.0) -> None:
        lr, weight_decay = check_step_size(lr, weight_decay)
        self._check_batch(batch, need_targets=True)
        if not isinstance(batch, TensorBatch) or batch.X.device != self._dev:
            raise ValueError("torch-gpu-graph: train_step needs a batch from prepare(X, y) of a model on this "
                             "device, or rows of one")
        static = self._staged(batch)
        key = (batch.size, lr, weight_decay)
        captured = self._graphs.get(key)
        if captured is None:
            captured = self._graphs[key] = self._capture(static, lr, weight_decay)
        graph, loss, hidden, logits = captured
        graph.replay()
        self._loss, self._hidden, self._logits = loss, hidden, logits
        self._pending_loss = None
        self._bind(batch)

    def _eager_step(self, batch: Batch, lr: float, weight_decay: float) -> None:
        self.forward(batch)
        self.backprop(batch)
        self.update(lr, weight_decay)

    def _drop_autograd_graph(self) -> None:
        # A live autograd graph pins the parameters' AccumulateGrad nodes to the stream that recorded it;
        # a backward recorded on another stream then waits on that one, which breaks a capture.
        self._hidden, self._logits, self._pending_loss = [], None, None

    def _capture(self, batch: Batch, lr: float, weight_decay: float) -> tuple[torch.cuda.CUDAGraph, torch.Tensor,
                                                                              list[torch.Tensor], torch.Tensor]:
        parameters = [*self._weights, *self._biases]
        with torch.no_grad():
            saved = [p.detach().clone() for p in parameters]
        self._drop_autograd_graph()
        default = torch.cuda.current_stream()
        side = torch.cuda.Stream()
        side.wait_stream(default)
        try:
            with torch.cuda.stream(side):
                for _ in range(2):
                    self._eager_step(batch, lr, weight_decay)
                self._drop_autograd_graph()
            default.wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._eager_step(batch, lr, weight_decay)
        finally:
            torch.cuda.set_stream(default)  # a failed capture must not leave its stream current
        assert self._loss is not None and self._logits is not None
        outputs = self._loss, [h.detach() for h in self._hidden], self._logits.detach()
        self._drop_autograd_graph()
        with torch.no_grad():
            for p, value in zip(parameters, saved, strict=True):
                p.copy_(value)
        return graph, *outputs

    def gradient_buffer(self) -> torch.Tensor:
        fresh = getattr(self, "_grad_flat", None) is None
        flat = super().gradient_buffer()
        if fresh:
            self._graphs.clear()  # graphs captured before wrote the gradient tensors the buffer replaced
        return flat
