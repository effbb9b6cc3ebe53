"""Named parameter blocks laid out in one flat buffer, and re-laid out when the model grows.

The blocks are the trunk's layers (`trunk.{l}.weight` as inputs x outputs, `trunk.{l}.bias`)
and, for every trunk layer d = 1..L and every task in order, the head on that layer's
output: `head{d}.{task}.weight` (outputs x width of layer d) and `head{d}.{task}.bias`.
At each depth all head weights sit next to each other, then all head biases, so the
heads of every task at one depth read as one (total outputs x width) matrix and one
vector. Both backends use these names and shapes, which makes their state
interchangeable. (The depth-0 heads, on the inputs, are second-order and live apart:
see `second_order`.)
"""

from __future__ import annotations

import math
import typing

import numpy as np


def trunk_shapes(n_inputs: int, hidden: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """Shapes of the trunk's blocks for `n_inputs` features."""
    shapes: dict[str, tuple[int, ...]] = {}
    width = n_inputs
    for layer, units in enumerate(hidden):
        shapes[f"trunk.{layer}.weight"] = (width, units)
        shapes[f"trunk.{layer}.bias"] = (units,)
        width = units
    return shapes


def head_names(depth: int, tasks: typing.Iterable[str]) -> tuple[list[str], list[str]]:
    """The weight and bias block names of the heads at `depth`, task by task."""
    tasks = list(tasks)
    return [f"head{depth}.{t}.weight" for t in tasks], [f"head{depth}.{t}.bias" for t in tasks]


def head_shapes(head_sizes: dict[str, int], hidden: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """Shapes of every head's blocks, depth by depth: at each, all weights, then all biases."""
    shapes: dict[str, tuple[int, ...]] = {}
    for depth, width in enumerate(hidden, start=1):
        weights, biases = head_names(depth, head_sizes)
        for name, size in zip(weights, head_sizes.values()):
            shapes[name] = (size, width)
        for name, size in zip(biases, head_sizes.values()):
            shapes[name] = (size,)
    return shapes


class Layout:
    """Where each named block lives in a flat buffer.

    >>> layout = Layout({"a": (2, 3), "b": (3,)})
    >>> layout.size, layout.offsets["b"]
    (9, 6)
    >>> sorted(layout.views(np.arange(9.0))) == ["a", "b"]
    True
    """

    def __init__(self, shapes: dict[str, tuple[int, ...]]) -> None:
        self.shapes = dict(shapes)
        self.offsets: dict[str, int] = {}
        offset = 0
        for name, shape in self.shapes.items():
            self.offsets[name] = offset
            offset += math.prod(shape)
        self.size = offset

    def span(self, names: list[str]) -> slice:
        """The contiguous range covered by consecutive blocks `names`."""
        start = self.offsets[names[0]]
        last = names[-1]
        return slice(start, self.offsets[last] + math.prod(self.shapes[last]))

    def views(self, buffer: np.ndarray) -> dict[str, np.ndarray]:
        """Each block of `buffer` as an array view of its shape."""
        return {
            name: buffer[self.offsets[name] : self.offsets[name] + math.prod(shape)].reshape(shape)
            for name, shape in self.shapes.items()
        }

    def relayout(self, buffer: typing.Any, new: Layout, out: typing.Any) -> typing.Any:
        """Copy `buffer`'s blocks into `out`, a zeroed buffer for layout `new`; return `out`.

        A block keeps its values in its top-left corner: a grown weight matrix gains
        zero rows (new inputs) or zero rows/columns (new outputs, wider inputs). Works on
        NumPy arrays and torch tensors alike.
        """
        old_views, new_views = self.views(buffer), new.views(out)
        for name, old in old_views.items():
            if name in new_views:
                corner = tuple(slice(0, min(a, b)) for a, b in zip(old.shape, new.shapes[name]))
                new_views[name][corner] = old[corner]
        return out
