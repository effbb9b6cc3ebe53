"""PendingFeatures: features held under a key until their labels arrive, for a bounded wait.

A stream may send an event's features first (to be predicted at once) and its labels
later, under the same key. The stream step (`stream_mtl.stream`) holds the features here,
with the prediction that was served for them, so that the labels score what the client
was told. The wait is bounded four ways: a key expires once `max_wait` more features have
been held after it (by count), once it has waited `max_age` seconds (by age, when set),
at most `max_pending` keys are held (the oldest goes first, counted by count), and what
is held takes at most `max_bytes` of memory (the oldest goes first, counted by bytes; a
held row's size is what `sys.getsizeof` says of its dicts, keys and values, a close lower
bound of what Python spends on it). Every expiry is counted, by cause; labels for a key
that is not held are the caller's to report.
"""

from __future__ import annotations

import collections
import math
import sys
import time
import typing
from collections.abc import Callable, Hashable

from stream_mtl.exceptions import InvalidInput, InvalidInputType

# How deeply tuples may nest in a key.
MAX_KEY_DEPTH = 8


class Held(typing.NamedTuple):
    """What is held under a key: the features, the prediction served for them (None if
    none was), their arrival number and the clock's time when they came."""

    x: dict
    served: dict | None
    arrival: int
    time: float
    size: int = 0


class PendingFeatures:
    """Features waiting for their labels, by key: at most `max_wait` later arrivals, at
    most `max_age` seconds (None: no limit), at most `max_pending` keys, at most
    `max_bytes` bytes.

    >>> pending = PendingFeatures(max_wait=2)
    >>> pending.hold("a", {"f": 1.0}, served={"y": 0.5}); pending.hold("b", {"f": 2.0})
    >>> pending.claim("a")[:2]
    ({'f': 1.0}, {'y': 0.5})
    >>> pending.claim("a") is None     # claimed once only
    True
    >>> pending.hold("c", {"f": 3.0}); pending.hold("d", {"f": 4.0})
    >>> pending.claim("b") is None, pending.n_expired_by_count   # two arrivals after b
    (True, 1)
    >>> len(pending)
    2
    """

    def __init__(
        self,
        max_wait: int = 100_000,
        max_pending: int = 100_000,
        max_age: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        max_bytes: int = 100_000_000,
    ) -> None:
        limits = (("max_wait", max_wait), ("max_pending", max_pending), ("max_bytes", max_bytes))
        for name, value in limits:
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InvalidInput(f"{name} must be a positive integer, got {value!r}")
        if max_age is not None and not (isinstance(max_age, int | float) and max_age > 0):
            raise InvalidInput(f"max_age must be a positive number of seconds, got {max_age!r}")
        self.max_wait = max_wait
        self.max_pending = max_pending
        self.max_age = max_age
        self.max_bytes = max_bytes
        self.clock = clock
        self._held: collections.OrderedDict[Hashable, Held] = collections.OrderedDict()
        self.n_bytes = 0
        self.n_arrived = 0
        self.n_expired_by_count = 0
        self.n_expired_by_age = 0
        self.n_expired_by_bytes = 0

    def __len__(self) -> int:
        return len(self._held)

    def __contains__(self, key: object) -> bool:
        return key in self._held

    @property
    def n_expired(self) -> int:
        """Keys that expired unclaimed, by count, by age and by bytes."""
        return self.n_expired_by_count + self.n_expired_by_age + self.n_expired_by_bytes

    def expired(self) -> dict[str, int]:
        """Keys that expired unclaimed, by cause (ages are checked now)."""
        self.expire()
        return {
            "count": self.n_expired_by_count,
            "age": self.n_expired_by_age,
            "bytes": self.n_expired_by_bytes,
        }

    def hold(self, key: Hashable, x: dict, served: dict | None = None) -> None:
        """Hold `x` (and the prediction `served` for it) under `key`; a key held twice
        keeps the later features."""
        if key is None:
            raise InvalidInput("features held for later labels need a key; got key=None")
        try:
            self._forget(self._held.pop(key, None))
        except TypeError:
            raise InvalidInputType(f"a key must be hashable, got {type(key).__name__}") from None
        self.n_arrived += 1
        self._put(key, x, served, self.n_arrived, self.clock())
        self.expire()

    def _put(self, key: Hashable, x: dict, served: dict | None, arrival: int, at: float) -> None:
        size = _size(key) + _size(x) + (0 if served is None else _size(served))
        self._held[key] = Held(x, served, arrival, at, size)
        self.n_bytes += size

    def claim(self, key: Hashable) -> Held | None:
        """Take what is held under `key`, or None if nothing is (never came, or expired)."""
        self.expire()
        try:
            held = self._held.pop(key, None)
        except TypeError:
            return None
        self._forget(held)
        return held

    def _forget(self, held: Held | None) -> None:
        if held is not None:
            self.n_bytes -= held.size

    def expire(self) -> None:
        """Drop (and count) the keys held too long; holding and claiming call it."""
        held = self._held
        oldest_time = None if self.max_age is None else self.clock() - self.max_age
        while held:
            oldest = next(iter(held.values()))
            if oldest_time is not None and oldest.time < oldest_time:
                self.n_expired_by_age += 1
            elif len(held) > self.max_pending or self.n_arrived - oldest.arrival >= self.max_wait:
                self.n_expired_by_count += 1
            elif self.n_bytes > self.max_bytes:
                self.n_expired_by_bytes += 1
            else:
                return
            self._forget(held.popitem(last=False)[1])

    def state(self) -> dict:
        """JSON-able state (keys, features and predictions must be JSON values) for a
        checkpoint; times are kept as ages, so that they mean the same in a new process."""
        now = self.clock()
        return {
            "n_arrived": self.n_arrived,
            "n_expired_by_count": self.n_expired_by_count,
            "n_expired_by_age": self.n_expired_by_age,
            "n_expired_by_bytes": self.n_expired_by_bytes,
            "held": [
                [key, h.x, h.served, h.arrival, now - h.time] for key, h in self._held.items()
            ],
        }

    def load_state(self, state: dict) -> None:
        """Go on from `state()`; a state of 0.1's loops (no ages, one expiry count) loads
        with every age 0 and its expiries counted by count."""
        now = self.clock()
        self.n_arrived = int(state["n_arrived"])
        self.n_expired_by_count = int(state.get("n_expired_by_count", state.get("n_expired", 0)))
        self.n_expired_by_age = int(state.get("n_expired_by_age", 0))
        self.n_expired_by_bytes = int(state.get("n_expired_by_bytes", 0))
        self._held = collections.OrderedDict()
        self.n_bytes = 0
        for row in state["held"]:
            age = row[4] if len(row) > 4 else 0
            self._put(_hashable(row[0]), row[1], row[2], row[3], now - age)
        self.expire()


def writable_scalar(value: object) -> bool:
    """Whether JSON writes `value` back as it is: a string, a 64-bit integer (or a bool)
    or a finite float."""
    if isinstance(value, str) or (isinstance(value, int) and -(2**63) <= value < 2**64):
        return True
    return isinstance(value, float) and math.isfinite(value)


def writable_key(key: object, depth: int = 0) -> Hashable:
    """`key` if a checkpoint can write it (JSON): a string, a 64-bit integer, a finite
    float or a bool, or a tuple of those; else `InvalidInput`."""
    if writable_scalar(key):
        return key
    if isinstance(key, tuple) and depth < MAX_KEY_DEPTH:
        for part in key:
            writable_key(part, depth + 1)
        return key
    raise InvalidInputType(
        f"a key must be a string, a 64-bit integer, a finite float or a tuple of those, "
        f"got {type(key).__name__} {key!r:.80}",
        reason="a key that a checkpoint cannot write",
    )


def _size(value: object) -> int:
    """Bytes Python spends on a key, or on a flat dict with its keys and values."""
    if type(value) is not dict:
        return sys.getsizeof(value)
    return (
        sys.getsizeof(value)
        + sum(map(sys.getsizeof, value))
        + sum(map(sys.getsizeof, value.values()))
    )


def _hashable(key: typing.Any) -> Hashable:
    """JSON turns tuples into lists; turn them back so that keys still match."""
    return tuple(_hashable(k) for k in key) if isinstance(key, list) else key
