"""Checkpoint files: one file, written atomically, arrays in NPZ and everything else in JSON.

A file is a header line naming the format and its version, a line with the SHA-256 of
the rest, and an NPZ archive whose `__meta__` array holds the JSON. Loading refuses
anything but what this module wrote, before it is parsed or allocated:

- the checksum is checked over the whole archive first (a flipped byte is refused);
- every array's declared size must fit in the bytes that hold it (a crafted header cannot
  make a load allocate more than the file holds);
- nothing is pickled, and objects such as a weighting strategy are stored as a spec
  (class name and parameters) rebuilt only from an allow-list of exactly the classes the
  library writes (`allowed_classes()`), with parameter names and value types checked
  before anything is constructed.

Every refusal is an `InvalidCheckpoint` (a `ValueError`) naming the problem. A save
killed half-way leaves a temporary file beside the checkpoint; the next save removes
those older than a minute.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import inspect
import io
import json
import math
import os
import tempfile
import time
import types
import typing
import zipfile
from pathlib import Path

import numpy as np
from river import base

from stream_mtl.exceptions import InvalidCheckpoint, InvalidInput, InvalidInputType

FORMAT = "stream-mtl-checkpoint"
FORMAT_VERSION = 5  # 2: heads at every depth, second-order heads, Hedge mixture; 3: top heads;
# 4: task affinity by input sensitivity; 5: a header line and a whole-file checksum
LEGACY_VERSION = 4  # a bare NPZ archive, read without a checksum
_META_KEY = "__meta__"
_MAGIC = f"{FORMAT} {FORMAT_VERSION}\n".encode()
_ORPHAN_SECONDS = 60.0  # a temporary file older than this is a killed save's
MAX_SPEC_DEPTH = 8
MAX_PARAM_TEXT = 1000  # characters of a text parameter
MAX_PARAM_ITEMS = 1000  # items of a list or dict parameter


def arrays_under(arrays: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """The arrays whose names start with `prefix`, named without it: one part's state.

    >>> sorted(arrays_under({"encoder.mean": 1, "encoder.var": 2, "backend.w": 3}, "encoder."))
    ['mean', 'var']
    """
    return {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}


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
    archive = buffer.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_orphans(path)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(_MAGIC + f"sha256 {hashlib.sha256(archive).hexdigest()}\n".encode())
            file.write(archive)
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


def _remove_orphans(path: Path) -> None:
    """Remove the temporary files of saves of `path` killed more than a minute ago."""
    now, prefix = time.time(), f".{path.name}."
    for orphan in path.parent.iterdir():
        if not orphan.name.startswith(prefix):
            continue
        try:
            if now - orphan.stat().st_mtime > _ORPHAN_SECONDS:
                orphan.unlink()
        except OSError:  # gone already, or another writer's
            pass


def load_checkpoint(path: str | os.PathLike) -> tuple[dict, dict[str, np.ndarray]]:
    """Read a checkpoint; an `InvalidCheckpoint` says why a file is not a usable one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {str(path)!r}")
    return read_checkpoint(path.read_bytes(), repr(str(path)))


def read_checkpoint(data: bytes, name: str = "the checkpoint") -> tuple[dict, dict]:
    """`load_checkpoint` of a file's bytes; `name` is how errors call it."""
    if data.startswith(_MAGIC):
        archive = _verified_archive(data, name)
        version = FORMAT_VERSION
    elif data.startswith(b"PK"):  # a bare archive, as version 4 wrote
        archive, version = data, LEGACY_VERSION
    elif data.startswith(FORMAT.encode()):
        found = data[: data.find(b"\n")][len(FORMAT) + 1 : len(FORMAT) + 20]
        raise InvalidCheckpoint(
            f"checkpoint {name} has format version {found.decode(errors='replace')!r}; "
            f"this version of stream-mtl reads versions {LEGACY_VERSION} and {FORMAT_VERSION}"
        )
    elif data[:1] == b"\x80":  # the first byte of a pickle
        raise InvalidCheckpoint(
            f"{name} is not a stream-mtl checkpoint: it holds pickled Python objects, which "
            "stream-mtl never loads (they can run code)"
        )
    else:
        raise InvalidCheckpoint(f"{name} is not a stream-mtl checkpoint (no header)")
    arrays = _arrays(archive, name)
    if _META_KEY not in arrays:
        raise InvalidCheckpoint(f"{name} is not a stream-mtl checkpoint (no metadata)")
    try:
        meta = json.loads(arrays.pop(_META_KEY).tobytes().decode())
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise InvalidCheckpoint(f"{name} has corrupt checkpoint metadata: {error}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise InvalidCheckpoint(f"{name} is not a stream-mtl checkpoint (format is not {FORMAT!r})")
    if meta.get("format_version") != version:
        raise InvalidCheckpoint(
            f"checkpoint {name} has format version {meta.get('format_version')!r}; this "
            f"version of stream-mtl reads versions {LEGACY_VERSION} and {FORMAT_VERSION}"
        )
    return meta, arrays


def _verified_archive(data: bytes, name: str) -> bytes:
    """The archive after the header lines, once its SHA-256 matches the one written."""
    start = len(_MAGIC)
    end = data.find(b"\n", start)
    line = data[start:end] if end != -1 else b""
    if not line.startswith(b"sha256 ") or len(line) != 7 + 64:
        raise InvalidCheckpoint(f"checkpoint {name} is corrupt: no checksum line")
    archive = data[end + 1 :]
    if hashlib.sha256(archive).hexdigest().encode() != line[7:]:
        raise InvalidCheckpoint(
            f"checkpoint {name} is corrupt: its checksum does not match its content "
            "(damaged on disk or in transfer, or changed by hand)"
        )
    return archive


def _arrays(archive: bytes, name: str) -> dict[str, np.ndarray]:
    try:
        with zipfile.ZipFile(io.BytesIO(archive)) as members:
            _check_declared_sizes(members, name)
        with np.load(io.BytesIO(archive), allow_pickle=False) as npz:
            return {member: npz[member] for member in npz.files}
    except InvalidCheckpoint:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError, TypeError) as error:
        if "pickle" in str(error):  # NumPy's advice (allow_pickle) is not for our users
            raise InvalidCheckpoint(
                f"{name} is not a stream-mtl checkpoint: it holds pickled Python "
                "objects, which stream-mtl never loads (they can run code)"
            ) from None
        raise InvalidCheckpoint(
            f"{name} is not a stream-mtl checkpoint (unreadable: {error})"
        ) from None


def _check_declared_sizes(members: zipfile.ZipFile, name: str) -> None:
    """Refuse an array whose header declares more bytes than the archive holds for it."""
    for info in members.infolist():
        with members.open(info) as member:
            version = np.lib.format.read_magic(member)
            read_header = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, _fortran, dtype = read_header(member)
            declared = math.prod(shape) * dtype.itemsize
            if dtype.hasobject or declared > info.file_size:
                raise InvalidCheckpoint(
                    f"checkpoint {name} is corrupt: array {info.filename!r} declares "
                    f"{declared:,} bytes in {info.file_size:,}"
                    + (" of Python objects" if dtype.hasobject else "")
                )


@functools.cache
def allowed_classes() -> dict[str, type]:
    """The classes a checkpoint may name, by dotted name: the task kinds, the weighting
    strategies and River's drift detectors - exactly what the library writes."""
    from river import drift
    from river.drift import binary

    from stream_mtl import tasks, weighting

    classes = [
        tasks.Regression,
        tasks.Binary,
        tasks.Multiclass,
        *(getattr(weighting, n) for n in ("DWA", "DriftAware", "Equal", "GradNorm", "Uncertainty")),
        *(
            k
            for module in (drift, binary)
            for k in vars(module).values()
            if isinstance(k, type) and issubclass(k, base.DriftDetector | base.BinaryDriftDetector)
        ),
    ]
    relatedness = getattr(weighting, "Relatedness", None)
    if relatedness is not None:
        classes.append(relatedness)
    return {f"{k.__module__}.{k.__qualname__}": k for k in classes}


def object_to_spec(obj: base.Base) -> dict:
    """A JSON-able description of a River-style object: its class and its parameters.

    Only the classes of `allowed_classes()` can be stored (and so loaded back); see
    `describe` for any object.

    >>> from river import drift
    >>> object_to_spec(drift.ADWIN(delta=0.01))["class"]
    'river.drift.adwin.ADWIN'
    """
    return _spec(type(obj), obj._get_params(), storable=True)


def describe(obj: base.Base) -> dict:
    """`object_to_spec` of any River-style object, whether a checkpoint may hold it or
    not: what a report shows of a model.

    >>> from river import linear_model
    >>> describe(linear_model.LinearRegression(l2=0.1))["params"]["l2"]
    0.1
    """
    return _spec(type(obj), obj._get_params(), storable=False)


def _spec(klass: type, params: dict, storable: bool) -> dict:
    class_name = f"{klass.__module__}.{klass.__qualname__}"
    if storable and class_name not in allowed_classes():
        raise InvalidInputType(
            f"{class_name} cannot be stored in a checkpoint: it holds only the library's task "
            "kinds and weighting strategies and River's drift detectors"
        )
    return {
        "class": class_name,
        "params": {name: _value_to_spec(value, name, storable) for name, value in params.items()},
    }


def _value_to_spec(value: object, name: str, storable: bool) -> object:
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], dict):
        return _spec(value[0], value[1], storable)  # River's form of a nested object
    if isinstance(value, base.Base):
        return _spec(type(value), value._get_params(), storable)
    if isinstance(value, dict):
        return {"dict": {str(k): _value_to_spec(v, k, storable) for k, v in value.items()}}
    if isinstance(value, tuple | list | collections.deque):
        return {"list": [_value_to_spec(v, name, storable) for v in value]}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise InvalidInputType(f"parameter {name!r} = {value!r} cannot be stored in a checkpoint")


def object_from_spec(spec: object, depth: int = 0) -> base.Base:
    """Rebuild an object from `object_to_spec`'s output: only a class of
    `allowed_classes()`, with only its own parameter names, each a plain JSON value (or an
    allowed object's spec), all checked before anything is constructed."""
    if not (isinstance(spec, dict) and isinstance(spec.get("class"), str)):
        raise InvalidCheckpoint("checkpoint holds an object spec without a class name")
    klass = allowed_classes().get(spec["class"])
    if klass is None:
        raise InvalidCheckpoint(
            f"checkpoint names class {spec['class'][:200]!r}, which is not one that "
            "stream-mtl writes"
        )
    params = spec.get("params")
    if not isinstance(params, dict):
        raise InvalidCheckpoint(f"checkpoint holds {spec['class']} without its parameters")
    accepted = inspect.signature(klass).parameters
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise InvalidCheckpoint(
            f"checkpoint gives {spec['class']} parameters it does not have: {unknown[:10]}"
        )
    values = {name: _value_from_spec(value, depth + 1) for name, value in params.items()}
    for name, value in values.items():
        if value is not None:
            _check_type(klass, name, value)
    try:
        return klass(**values)
    except (ValueError, TypeError) as error:  # a value of the right type out of range
        raise InvalidCheckpoint(
            f"checkpoint gives {spec['class']} parameters it refuses: {error}"
        ) from None


def _check_type(klass: type, name: str, value: object) -> None:
    """Refuse a value whose type is not the parameter's: its annotation's, or else its
    default's (a number where a number goes, a detector where a detector goes)."""
    try:
        expected = typing.get_type_hints(klass.__init__).get(name)
    except Exception:  # annotations that do not resolve: judge by the default
        expected = None
    if expected is None:
        default = inspect.signature(klass).parameters[name].default
        if default is inspect.Parameter.empty or default is None:
            return
        expected = base.Base if isinstance(default, base.Base) else type(default)
    if not _matches(value, expected):
        raise InvalidCheckpoint(
            f"checkpoint gives {klass.__qualname__} parameter {name!r} a "
            f"{type(value).__name__}, where it takes {expected}"
        )


def _matches(value: object, expected: typing.Any) -> bool:
    origin = typing.get_origin(expected)
    if origin is typing.Union or origin is types.UnionType:
        return any(_matches(value, option) for option in typing.get_args(expected))
    if origin is typing.Literal:
        return value in typing.get_args(expected)
    if expected is typing.Any:
        return True
    if expected is float:  # an int is a float here, a bool is not
        return isinstance(value, int | float) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    try:
        return isinstance(value, origin or expected)
    except TypeError:  # an annotation isinstance cannot judge: let the class judge
        return True


def _value_from_spec(value: object, depth: int) -> object:
    if depth > MAX_SPEC_DEPTH:
        raise InvalidCheckpoint("checkpoint holds parameters nested too deeply")
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        if not -(2**63) <= value < 2**63:
            raise InvalidCheckpoint("checkpoint holds an integer parameter beyond 64 bits")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidCheckpoint("checkpoint holds a parameter that is not finite")
        return value
    if isinstance(value, str):
        if len(value) > MAX_PARAM_TEXT:
            raise InvalidCheckpoint(f"checkpoint holds a text parameter of {len(value):,} chars")
        return value
    if isinstance(value, dict) and "class" in value:
        return object_from_spec(value, depth)
    if isinstance(value, dict) and len(value) == 1:
        ((kind, inner),) = value.items()
        if kind == "dict" and isinstance(inner, dict) and len(inner) <= MAX_PARAM_ITEMS:
            return {k: _value_from_spec(v, depth + 1) for k, v in inner.items()}
        if kind == "list" and isinstance(inner, list) and len(inner) <= MAX_PARAM_ITEMS:
            return tuple(_value_from_spec(v, depth + 1) for v in inner)
    raise InvalidCheckpoint(f"checkpoint holds a parameter of an unexpected shape: {value!r:.100}")
