"""PendingFeatures: features held under a key until their labels arrive, for a bounded wait.

A stream may send an event's features first (to be predicted at once) and its labels
later, under the same key. Whoever joins the two - prequential evaluation, the Kafka
learning loop, the live service - holds the features here. The wait is bounded twice:
a key expires once `max_wait` more features have been held after it, and at most
`max_pending` keys are held (the oldest is dropped first). Expired keys are counted,
never silently lost, and labels for a key that is not held are the caller's to report.
"""

from __future__ import annotations

import collections
import typing
from collections.abc import Hashable

from stream_mtl.exceptions import InvalidInput, InvalidInputType


class Held(typing.NamedTuple):
    """What is held under a key: the features, the caller's extra data, and when it came."""

    x: dict
    extra: typing.Any
    arrival: int


class PendingFeatures:
    """Features waiting for their labels, by key, for at most `max_wait` later arrivals.

    >>> pending = PendingFeatures(max_wait=2)
    >>> pending.hold("a", {"f": 1.0}); pending.hold("b", {"f": 2.0})
    >>> pending.claim("a").x
    {'f': 1.0}
    >>> pending.claim("a") is None     # claimed once only
    True
    >>> pending.hold("c", {"f": 3.0}); pending.hold("d", {"f": 4.0})
    >>> pending.claim("b") is None, pending.n_expired   # two arrivals after b: expired
    (True, 1)
    >>> len(pending)
    2
    """

    def __init__(self, max_wait: int = 100_000, max_pending: int = 100_000) -> None:
        for name, value in (("max_wait", max_wait), ("max_pending", max_pending)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InvalidInput(f"{name} must be a positive integer, got {value!r}")
        self.max_wait = max_wait
        self.max_pending = max_pending
        self._held: collections.OrderedDict[Hashable, Held] = collections.OrderedDict()
        self.n_arrived = 0
        self.n_expired = 0

    def __len__(self) -> int:
        return len(self._held)

    def __contains__(self, key: object) -> bool:
        return key in self._held

    def hold(self, key: Hashable, x: dict, extra: typing.Any = None) -> None:
        """Hold `x` (and `extra`) under `key`; a key held twice keeps the later features."""
        if key is None:
            raise InvalidInput("features held for later labels need a key; got key=None")
        try:
            self._held.pop(key, None)
        except TypeError:
            raise InvalidInputType(f"a key must be hashable, got {type(key).__name__}") from None
        self.n_arrived += 1
        self._held[key] = Held(x, extra, self.n_arrived)
        self._expire()

    def claim(self, key: Hashable) -> Held | None:
        """Take what is held under `key`, or None if nothing is (never came, or expired)."""
        try:
            return self._held.pop(key, None)
        except TypeError:
            return None

    def _expire(self) -> None:
        held = self._held
        while held:
            oldest = next(iter(held.values()))
            if len(held) <= self.max_pending and self.n_arrived - oldest.arrival < self.max_wait:
                return
            held.popitem(last=False)
            self.n_expired += 1

    def state(self) -> dict:
        """JSON-able state (keys and features must be JSON values) for a checkpoint."""
        return {
            "n_arrived": self.n_arrived,
            "n_expired": self.n_expired,
            "held": [[key, h.x, h.extra, h.arrival] for key, h in self._held.items()],
        }

    def load_state(self, state: dict) -> None:
        self.n_arrived = int(state["n_arrived"])
        self.n_expired = int(state["n_expired"])
        self._held = collections.OrderedDict(
            (_hashable(key), Held(x, extra, arrival)) for key, x, extra, arrival in state["held"]
        )


def _hashable(key: typing.Any) -> Hashable:
    """JSON turns tuples into lists; turn them back so that keys still match."""
    return tuple(_hashable(k) for k in key) if isinstance(key, list) else key
