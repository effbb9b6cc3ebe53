"""Initial parameter values, drawn in NumPy so that every backend starts from the same numbers."""

from __future__ import annotations

import numpy as np

ACTIVATIONS = ("relu", "tanh")


def layer_weights(
    rng: np.random.Generator, fan_in: int, fan_out: int, n_rows: int, activation: str
) -> np.ndarray:
    """`n_rows` input rows of a (fan_in x fan_out) weight matrix.

    Kaiming-uniform for ReLU, Glorot-uniform for tanh; the bound depends on the
    layer's full fan-in even when only some of its rows are drawn.
    """
    if activation == "relu":
        bound = np.sqrt(6.0 / max(fan_in, 1))
    else:
        bound = np.sqrt(6.0 / max(fan_in + fan_out, 1))
    return rng.uniform(-bound, bound, size=(n_rows, fan_out))


def initial_trunk(
    rng: np.random.Generator, hidden: tuple[int, ...], activation: str
) -> dict[str, np.ndarray]:
    """The trunk before any feature is known: layer 0 has no input rows yet."""
    arrays: dict[str, np.ndarray] = {}
    width = 0
    for layer, units in enumerate(hidden):
        if layer == 0:
            arrays["trunk.0.weight"] = np.zeros((0, units))
        else:
            arrays[f"trunk.{layer}.weight"] = layer_weights(rng, width, units, width, activation)
        arrays[f"trunk.{layer}.bias"] = np.zeros(units)
        width = units
    return arrays
