"""What the CPU and GPU tests of data-parallel training share: the network, a batch for any backend, parameters
as one float64 vector, and two models, one to backprop at once and one to backprop layer by layer."""

import numpy as np

from mlpbench import load
from mlpbench.network import Network

# Ranks get the network by name ("6-16-12-3"): sigmoid hidden layers, as its name resolves.
NET = Network((6, 16, 12, 3), "sigmoid", "softmax-ce")


def batch_for(model, size=8, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((size, model.network.n_inputs)).astype(np.float32)
    return model.prepare(X, rng.integers(0, model.network.n_outputs, size))


def flat(pairs):
    return np.concatenate([np.asarray(a, dtype=np.float64).ravel() for pair in pairs for a in pair])


def backprop_pair(backend, **options):
    """Two models of NET from the same seed after the forward pass of the same batch: ``plain`` has run
    backprop; ``layered`` has not, its gradient buffer filled with NaN, so whatever a layer-by-layer backprop
    leaves unwritten shows. Returns plain, layered, layered's batch and its buffer."""
    plain, layered = (load(backend, NET, seed=2, **options) for _ in range(2))
    batches = {id(model): batch_for(model) for model in (plain, layered)}
    for model in (plain, layered):
        model.forward(batches[id(model)])
    plain.backprop(batches[id(plain)])
    buffer = layered.gradient_buffer()
    buffer.fill_(float("nan"))
    return plain, layered, batches[id(layered)], buffer
