"""Stream messages: the wire form of an observation, how to decode it, and how to check it.

A message is an object `{"x": {...}, "y": {...}, "key": ..., "time": ...}`:

- `x` and `y` both: an observation, predicted then learned;
- `x` alone: features to predict now; with a `key`, held until their labels come;
- `y` alone, with a `key`: labels that join the features sent earlier under that key.

Messages are JSON by default (decoded by orjson, with the standard library as the
fallback that reads `NaN`), or msgpack; any `bytes -> object` callable can decode them.
A message that cannot be decoded or has the wrong shape raises `MalformedMessage`,
whose text is the reason a dead-letter record carries.
"""

from __future__ import annotations

import json
import typing
from collections.abc import Callable

import msgpack
import orjson

from stream_mtl.exceptions import InvalidInput
from stream_mtl.observation import Observation
from stream_mtl.pending import MAX_KEY_DEPTH, writable_scalar

Decoder = Callable[[bytes], object]
Encoder = Callable[[object], bytes]
FIELDS = ("x", "y", "key", "time")


class MalformedMessage(InvalidInput):
    """A message that is not an observation; the text says why, `reason` says it without
    the offending value (what dead letters are counted by)."""


def decode_json(raw: bytes) -> object:
    """JSON, fast; the standard library reads what orjson refuses (`NaN`, `Infinity`).

    >>> decode_json(b'{"x": {"a": NaN}}')
    {'x': {'a': nan}}
    """
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(raw)
    except RecursionError:
        raise MalformedMessage(
            "not valid JSON: nested too deeply", reason="JSON nested too deeply"
        ) from None
    except ValueError as error:  # also an integer of more than 4,300 digits
        raise MalformedMessage(f"not valid JSON: {error}", reason="not valid JSON") from None


def decode_msgpack(raw: bytes) -> object:
    """msgpack, maps with string keys.

    >>> decode_msgpack(encode_msgpack({"x": {"a": 1.5}}))
    {'x': {'a': 1.5}}
    """
    try:
        return msgpack.unpackb(raw, raw=False, strict_map_key=False)
    except (ValueError, RecursionError, msgpack.UnpackException) as error:
        raise MalformedMessage(f"not valid msgpack: {error}", reason="not valid msgpack") from None


def encode_json(value: object) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)


def encode_msgpack(value: object) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


DECODERS: dict[str, Decoder] = {"json": decode_json, "msgpack": decode_msgpack}
ENCODERS: dict[str, Encoder] = {"json": encode_json, "msgpack": encode_msgpack}


def codec(name: str | Callable, table: dict) -> Callable:
    """A decoder or encoder by name (`"json"`, `"msgpack"`), or the callable given."""
    if callable(name):
        return name
    if name not in table:
        raise ValueError(f"unknown message format {name!r}; expected one of {sorted(table)}")
    return table[name]


def observation_from_message(message: object, key: typing.Any = None) -> Observation:
    """The observation a decoded message holds; `key` is used when the message has none.

    >>> observation_from_message({"x": {"a": 1.0}, "y": {"price": 2.0}, "key": "o-1"})
    Observation(x={'a': 1.0}, y={'price': 2.0}, key='o-1', time=None)
    >>> observation_from_message({"y": {"price": 2.0}})
    Traceback (most recent call last):
    ...
    stream_mtl.connectors.messages.MalformedMessage: labels without features need a "key"
    """
    if not isinstance(message, dict):
        raise MalformedMessage(
            f"a message must be an object, got {type(message).__name__}",
            reason="a message that is not an object",
        )
    unknown = [name for name in message if name not in FIELDS]
    if unknown:
        raise MalformedMessage(
            f"unknown field(s) {unknown}; a message has {list(FIELDS)}",
            reason="unknown message fields",
        )
    x, y = message.get("x"), message.get("y")
    for name, value in (("x", x), ("y", y)):
        if value is not None and not isinstance(value, dict):
            raise MalformedMessage(
                f'"{name}" must be an object, got {type(value).__name__}',
                reason=f'"{name}" that is not an object',
            )
    if x is None and not y:
        raise MalformedMessage('a message needs features "x", labels "y", or both')
    key = _key(message.get("key", key))
    if x is None and key is None:
        raise MalformedMessage('labels without features need a "key"')
    time = message.get("time")
    if time is not None and (isinstance(time, bool | str) or not writable_scalar(time)):
        raise MalformedMessage(
            f'"time" must be a finite number, got {time!r:.80}',
            reason='"time" that is not a finite number',
        )
    return Observation(x, y or None, key, time)


def message_from_observation(obs: Observation) -> dict:
    """The message form of an observation (fields that are None are left out).

    >>> message_from_observation(Observation({"a": 1.0}, key="o-1"))
    {'x': {'a': 1.0}, 'key': 'o-1'}
    """
    return {name: value for name, value in zip(FIELDS, obs) if value is not None}


def _key(key: object, depth: int = 0) -> typing.Hashable:
    """A message's key as a hashable that a checkpoint and a prediction record can write
    back: a string, a 64-bit integer, a finite number or a bool, or a list of those (as a
    tuple, nested at most `MAX_KEY_DEPTH`)."""
    if (key is None and depth == 0) or writable_scalar(key):
        return key
    if isinstance(key, list) and depth < MAX_KEY_DEPTH:
        return tuple(_key(part, depth + 1) for part in key)
    raise MalformedMessage(
        f'"key" must be a string, a finite number or a list of those, got '
        f"{type(key).__name__}" + ("" if isinstance(key, list) else f" {key!r:.80}"),
        reason='"key" that is not a string, a number or a list of those',
    )
