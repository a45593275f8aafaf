"""mlpbench: how a fully connected network's training speeds up with OpenMP and CUDA, stage by stage.

Quick use::

    import mlpbench
    net = mlpbench.Network((64, 128, 10), activation="sigmoid", loss="softmax-ce")
    model = mlpbench.load("c-omp", net, seed=0, threads=2)
    loss = model.step(X, y, lr=0.5)
"""

from mlpbench.backends import BACKENDS, BackendUnavailable, Batch, Model, load
from mlpbench.network import PRESETS, Network, resolve

__all__ = ["BACKENDS", "PRESETS", "BackendUnavailable", "Batch", "Model", "Network", "load", "resolve"]
__version__ = "0.1.0"
