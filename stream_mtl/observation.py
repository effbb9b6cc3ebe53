"""Observation: one element of a stream - features, labels, and the key that joins late labels."""

from __future__ import annotations

import typing


class Observation(typing.NamedTuple):
    """Features `x` and labels `y` of one event; either may be missing.

    A label that arrives later than its features comes as an `Observation` with
    `x=None`, the `key` its features were sent with, and `y`.

    >>> Observation({"a": 1.0}, {"price": 3.0}, key="order-17")
    Observation(x={'a': 1.0}, y={'price': 3.0}, key='order-17', time=None)
    """

    x: dict | None
    y: dict | None = None
    key: typing.Hashable | None = None
    time: float | None = None
