"""Checkpoint files: one file, written atomically, arrays in NPZ and everything else in JSON.

Nothing is pickled: loading a checkpoint reads numbers and JSON and never runs code.
Objects such as a weighting strategy are stored as a spec (class name and parameters)
and rebuilt only from classes of this library and of `river`.
"""

from __future__ import annotations

import collections
import importlib
import io
import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from river import base

from stream_mtl.exceptions import InvalidCheckpoint, InvalidInput, InvalidInputType

FORMAT = "stream-mtl-checkpoint"
FORMAT_VERSION = 4  # 2: heads at every depth, second-order heads, Hedge mixture; 3: top heads;
# 4: task affinity by input sensitivity
_META_KEY = "__meta__"
_SPEC_MODULES = ("stream_mtl.", "river.")


def save_checkpoint(path: str | os.PathLike, meta: dict, arrays: dict[str, np.ndarray]) -> None:
    """Write `meta` (JSON-able) and `arrays` to `path` atomically.

    The file is written beside `path` under a temporary name, flushed to disk and
    renamed over `path`, so a crash leaves either the old checkpoint or the new one.

    >>> import tempfile, os
    >>> folder = tempfile.mkdtemp()
    >>> save_checkpoint(os.path.join(folder, "m.ckpt"), {"a": 1}, {"w": np.arange(3.0)})
    >>> meta, arrays = load_checkpoint(os.path.join(folder, "m.ckpt"))
    >>> meta["a"], arrays["w"].tolist()
    (1, [0.0, 1.0, 2.0])
    """
    path = Path(path)
    if _META_KEY in arrays:
        raise InvalidInput(f"array name {_META_KEY!r} is reserved")
    header = {"format": FORMAT, "format_version": FORMAT_VERSION, **meta}
    payload = {_META_KEY: np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)}
    payload.update({name: np.asarray(value) for name, value in arrays.items()})
    for name, value in payload.items():
        if value.dtype == object:
            raise InvalidInputType(
                f"array {name!r} holds Python objects; checkpoints store numbers only"
            )
    buffer = io.BytesIO()
    np.savez(buffer, **payload)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(buffer.getvalue())
            file.flush()
            os.fsync(file.fileno())
        # mkstemp made it readable by its owner only; give it the mode a new file gets
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def load_checkpoint(path: str | os.PathLike) -> tuple[dict, dict[str, np.ndarray]]:
    """Read a checkpoint; a `ValueError` says why a file is not a usable checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {str(path)!r}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as error:
        if "pickle" in str(error):  # NumPy's advice (allow_pickle) is not for our users
            raise InvalidCheckpoint(
                f"{str(path)!r} is not a stream-mtl checkpoint: it holds pickled Python "
                "objects, which stream-mtl never loads (they can run code)"
            ) from None
        raise InvalidCheckpoint(
            f"{str(path)!r} is not a stream-mtl checkpoint (unreadable: {error})"
        ) from None
    if _META_KEY not in arrays:
        raise InvalidCheckpoint(f"{str(path)!r} is not a stream-mtl checkpoint (no metadata)")
    try:
        meta = json.loads(arrays.pop(_META_KEY).tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InvalidCheckpoint(f"{str(path)!r} has corrupt checkpoint metadata: {error}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise InvalidCheckpoint(
            f"{str(path)!r} is not a stream-mtl checkpoint (format is not {FORMAT!r})"
        )
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise InvalidCheckpoint(
            f"checkpoint {str(path)!r} has format version {version!r}; this version of "
            f"stream-mtl reads version {FORMAT_VERSION}"
        )
    return meta, arrays


def object_to_spec(obj: base.Base) -> dict:
    """A JSON-able description of a River-style object: its class and its parameters.

    >>> from river import drift
    >>> object_to_spec(drift.ADWIN(delta=0.01))["class"]
    'river.drift.adwin.ADWIN'
    """
    params = {}
    for name, value in obj._get_params().items():
        params[name] = _value_to_spec(value, name)
    return {"class": f"{type(obj).__module__}.{type(obj).__qualname__}", "params": params}


def _value_to_spec(value: object, name: str) -> object:
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], dict):
        klass, params = value
        return {
            "class": f"{klass.__module__}.{klass.__qualname__}",
            "params": {k: _value_to_spec(v, k) for k, v in params.items()},
        }
    if isinstance(value, base.Base):
        return object_to_spec(value)
    if isinstance(value, dict):
        return {"dict": {str(k): _value_to_spec(v, k) for k, v in value.items()}}
    if isinstance(value, tuple | list | collections.deque):
        return {"list": [_value_to_spec(v, name) for v in value]}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise InvalidInputType(f"parameter {name!r} = {value!r} cannot be stored in a checkpoint")


def object_from_spec(spec: dict) -> base.Base:
    """Rebuild an object from `object_to_spec`'s output, from allowed modules only."""
    module_name, _, class_name = spec["class"].rpartition(".")
    if not module_name.startswith(_SPEC_MODULES):
        raise InvalidCheckpoint(
            f"checkpoint names class {spec['class']!r} outside stream_mtl and river"
        )
    klass = getattr(importlib.import_module(module_name), class_name, None)
    if not (isinstance(klass, type) and issubclass(klass, base.Base)):
        raise InvalidCheckpoint(
            f"checkpoint names {spec['class']!r}, which is not a River-style class"
        )
    params = {name: _value_from_spec(value) for name, value in spec["params"].items()}
    return klass(**params)


def _value_from_spec(value: object) -> object:
    if isinstance(value, dict):
        if "class" in value:
            return object_from_spec(value)
        if "dict" in value:
            return {k: _value_from_spec(v) for k, v in value["dict"].items()}
        if "list" in value:
            return tuple(_value_from_spec(v) for v in value["list"])
    return value
