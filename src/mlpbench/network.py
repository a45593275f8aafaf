"""The network under study: layer widths, activation, loss, seeded initialisation and FLOP counts.

Conventions shared by every backend:

* a batch ``X`` is float32, shape ``(B, sizes[0])``, one sample per row;
* layer ``l`` holds ``W_l`` of shape ``(sizes[l+1], sizes[l])`` (PyTorch's layout) and ``b_l`` of shape
  ``(sizes[l+1],)``; its pre-activation is ``Z_l = A_{l-1} @ W_l.T + b_l``;
* hidden layers apply ``activation``; the output layer applies softmax (``loss="softmax-ce"``) or a
  sigmoid (``loss="sigmoid-bce"``);
* the loss is the mean over the batch of the per-sample loss, so the output gradient is
  ``dZ_L = (P - T) / B`` for both losses (the original study's ``pred - label``, averaged);
* the SGD update is ``W -= lr * (dW + weight_decay * W)``, ``b -= lr * db`` (no decay on biases).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ACTIVATIONS = ("sigmoid", "tanh", "relu")
LOSSES = ("softmax-ce", "sigmoid-bce")


@dataclass(frozen=True)
class Network:
    """A fully connected network: ``sizes[0]`` inputs, ``sizes[-1]`` outputs, any number of hidden layers."""

    sizes: tuple[int, ...]
    activation: str = "sigmoid"
    loss: str = "softmax-ce"

    def __post_init__(self) -> None:
        sizes = tuple(self.sizes)
        object.__setattr__(self, "sizes", sizes)
        if len(sizes) < 2:
            raise ValueError(f"a network needs at least an input and an output size, got sizes={sizes}")
        for width in sizes:
            if isinstance(width, bool) or not isinstance(width, int | np.integer) or width < 1:
                raise ValueError(f"layer sizes must be positive integers, got sizes={sizes}")
        object.__setattr__(self, "sizes", tuple(int(w) for w in sizes))
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; choose one of {ACTIVATIONS}")
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; choose one of {LOSSES}")
        if self.loss == "softmax-ce" and self.sizes[-1] < 2:
            raise ValueError("softmax cross-entropy needs at least 2 outputs; use loss='sigmoid-bce'")

    @classmethod
    def parse(cls, text: str, activation: str = "sigmoid", loss: str | None = None) -> Network:
        """Build from ``"784-1024-10"``; a single output defaults to ``sigmoid-bce``, more to ``softmax-ce``."""
        try:
            sizes = tuple(int(part) for part in text.split("-"))
        except ValueError:
            raise ValueError(f"network sizes must look like '64-128-10', got {text!r}") from None
        if loss is None:
            loss = "sigmoid-bce" if sizes[-1] == 1 else "softmax-ce"
        return cls(sizes, activation, loss)

    @property
    def name(self) -> str:
        return "-".join(str(w) for w in self.sizes)

    @property
    def n_layers(self) -> int:
        return len(self.sizes) - 1

    @property
    def n_inputs(self) -> int:
        return self.sizes[0]

    @property
    def n_outputs(self) -> int:
        return self.sizes[-1]

    @property
    def layer_shapes(self) -> list[tuple[int, int]]:
        """``(fan_out, fan_in)`` of each weight matrix."""
        return list(zip(self.sizes[1:], self.sizes[:-1], strict=True))

    @property
    def n_params(self) -> int:
        return sum(n_out * n_in + n_out for n_out, n_in in self.layer_shapes)

    def init_params(self, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
        """Float32 ``(W, b)`` per layer, identical for a given seed on every machine.

        Glorot (Xavier) uniform for sigmoid and tanh, He (Kaiming) uniform for ReLU:
        ``W ~ U(-r, r)`` with ``r = sqrt(6 / (fan_in + fan_out))`` (Glorot), ``r = sqrt(6 / fan_in)`` (He);
        biases start at zero. Draws come from NumPy's PCG64 generator, in float64, rounded to float32.
        """
        rng = np.random.Generator(np.random.PCG64(seed))
        params = []
        for n_out, n_in in self.layer_shapes:
            if self.activation == "relu":
                bound = np.sqrt(6.0 / n_in)
            else:
                bound = np.sqrt(6.0 / (n_in + n_out))
            weights = rng.uniform(-bound, bound, size=(n_out, n_in)).astype(np.float32)
            params.append((weights, np.zeros(n_out, dtype=np.float32)))
        return params

    def flops(self, batch: int) -> dict[str, int]:
        """Floating-point operations per stage for one batch (multiply-add = 2; element-wise ops counted once).

        forward:  one product per layer (2·B·in·out), bias + activation (2·B·out), and the output
                  softmax/sigmoid + loss (about 4·B·out for the last layer);
        backprop: the weight-gradient product of every layer (2·B·in·out), the input-gradient product of
                  every layer but the first (2·B·in·out) with the activation derivative (3·B·in), and the
                  bias-gradient sums (B·out);
        update:   3 per weight (decay, scale, subtract) and 2 per bias.
        """
        forward = backprop = 0
        for index, (n_out, n_in) in enumerate(self.layer_shapes):
            forward += 2 * batch * n_in * n_out + 2 * batch * n_out
            backprop += 2 * batch * n_in * n_out + batch * n_out
            if index > 0:
                backprop += 2 * batch * n_in * n_out + 3 * batch * n_in
        forward += 4 * batch * self.n_outputs
        update = sum(3 * n_out * n_in + 2 * n_out for n_out, n_in in self.layer_shapes)
        return {"forward": forward, "backprop": backprop, "update": update,
                "step": forward + backprop + update}


def authors_5h300() -> Network:
    """The original study's benchmark network "5h300": 2 -> 300, five 300 -> 300, 300 -> 1, sigmoid."""
    return Network((2, *([300] * 6), 1), activation="sigmoid", loss="sigmoid-bce")


# Named networks used by the sweep, the notebooks and the report.
PRESETS: dict[str, Network] = {
    "moons-5h300": authors_5h300(),
    "digits": Network((64, 128, 10), "sigmoid", "softmax-ce"),
    "mnist": Network((784, 1024, 10), "sigmoid", "softmax-ce"),
    "large": Network((1024, 4096, 4096, 1024), "sigmoid", "softmax-ce"),
}


def resolve(network: Network | str) -> Network:
    """A :class:`Network`, a preset name, or sizes such as ``"64-128-10"``."""
    if isinstance(network, Network):
        return network
    if network in PRESETS:
        return PRESETS[network]
    return Network.parse(network)
