"""The "transfer" stage shared by every backend that computes on tensors (PyTorch's and the CUDA kernels'):
a checked host batch copied to the device the backend computes on."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mlpbench.backends.base import Batch
from mlpbench.network import Network


@dataclass(frozen=True)
class TensorBatch(Batch):
    """A batch of tensors made by :func:`tensor_batch` from checked host data (or :meth:`Batch.rows` of one),
    as opposed to one built by hand."""


def tensor_batch(network: Network, X: np.ndarray, T: np.ndarray | None, device: torch.device) -> TensorBatch:
    """A checked host batch as tensors on ``device`` that the batch owns: a host-to-device copy on GPUs, a
    host copy on the CPU (so later changes to ``X`` or ``T`` do not reach it)."""
    X_t = torch.from_numpy(X).to(device, copy=True)
    T_t = None if T is None else torch.from_numpy(T).to(device, copy=True)
    return TensorBatch(X_t, T_t, X.shape[0], network)
