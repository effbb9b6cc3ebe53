"""How a snapshot travels from a learner process to the processes that predict from it.

A `Snapshot` is pickled (protocol 5) with its arrays out of band (a torch model's
tensors on the CPU as the NumPy arrays that share their memory): the *frame* says what
the objects are (feature names, layout, tasks: everything not in an array) and the
arrays' bytes travel beside it; the counts and weights it reports (`n_learned`,
`mixture`, ...) travel in a small pickle of their own. A learner that only learned
between two snapshots changed numbers in arrays, not the frame, so the frames of the
two are the same bytes.

`SnapshotLoader` turns payloads back into snapshots for a serving process. A full load
unpickles every object of the model, which takes 0.3 to 0.5 ms with cold caches and
holds the GIL all along: a prediction waits for it. So the loader keeps the snapshot
it made before the current one, and when a payload's frame is that snapshot's frame
and nothing outside the loader still holds it (no prediction in flight, no caller that
kept it), it copies the new arrays' bytes into that snapshot instead, and gives it the
new report: one copy of the arrays' bytes (13 us against a full load's 85 to 130 us
for the reference model with warm caches; 75 us against 230 to 430 us with cold ones).
The result is what a full load would give, since the frame is the same and an
object's state is its frame and its arrays. That holds because a snapshot's objects
never change once made: nothing in them caches what it works out from their arrays
later (`Outputs.frozen_copy` works the thresholds out at once). A snapshot a caller
holds is never changed. The price is memory: a serving process holds two snapshots,
the one it predicts from and the spare.

>>> from stream_mtl import MultiTaskLearner, Regression
>>> from stream_mtl.predictor import Snapshot
>>> model = MultiTaskLearner(tasks={"price": Regression()}, hidden=(4,), seed=0)
>>> loader = SnapshotLoader()
>>> probe = {"size": 1.0}
>>> for i in range(4):
...     model.learn_one({"size": float(i)}, {"price": 2.0 * i})
...     snapshot = loader.load(encode(Snapshot(model)))
...     print(snapshot.n_learned, snapshot.predict_one(probe) == model.predict_one(probe))
...     del snapshot  # as a prediction lets go of it: the next load but one may reuse it
{'price': 1} True
{'price': 2} True
{'price': 3} True
{'price': 4} True
>>> loader.n_unpickled, loader.n_copied
(2, 2)
"""

from __future__ import annotations

import io
import pickle
import struct
import sys

import numpy as np

from stream_mtl.predictor import Snapshot

__all__ = ["SnapshotLoader", "encode"]

PROTOCOL = 5  # the first with out-of-band buffers
# The head: the lengths of the report and the frame, and the number of arrays; then
# each array's length in bytes, the report, the frame and the arrays, each array
# starting ALIGN bytes after the one before (rounded up), so that the arrays of equal
# frames lie alike and one copy moves them all.
HEAD = struct.Struct("<III")
ALIGN = 64


def encode(snapshot: Snapshot) -> bytes:
    """The bytes that `SnapshotLoader.load` turns back into `snapshot`."""
    buffers: list[pickle.PickleBuffer] = []
    parts = tuple(getattr(snapshot, name) for name in Snapshot.PARTS)
    out = io.BytesIO()
    _Pickler(out, PROTOCOL, buffer_callback=buffers.append).dump(parts)
    frame = out.getvalue()
    report = pickle.dumps(_report(snapshot), PROTOCOL)
    raws = [buffer.raw() for buffer in buffers]
    sizes = [raw.nbytes for raw in raws]
    pieces = [HEAD.pack(len(report), len(frame), len(raws)), _lengths(len(raws)).pack(*sizes)]
    pieces += [report, frame]
    for raw in raws:
        pieces += [raw, bytes(-raw.nbytes % ALIGN)]
    return b"".join(pieces)


class _Pickler(pickle.Pickler):
    """Pickles a torch tensor on the CPU as the NumPy array that shares its memory (out
    of band, as any array), rebuilt by `torch.from_numpy` on the loaded bytes: so the
    frames of a torch model's snapshots are alike too, and a load copies their arrays
    into the spare, whose tensors see the new numbers. Tensors elsewhere (a GPU) keep
    torch's own pickling, in the frame: each of their loads is a full one."""

    def reducer_override(self, obj: object) -> object:
        torch = sys.modules.get("torch")
        if torch is None or not isinstance(obj, torch.Tensor) or obj.device.type != "cpu":
            return NotImplemented
        try:
            array = obj.detach().numpy()
        except (TypeError, RuntimeError):  # a dtype NumPy lacks (bfloat16)
            return NotImplemented
        return torch.from_numpy, (array if array.flags.c_contiguous else array.copy(),)


def _lengths(n_arrays: int) -> struct.Struct:
    """The arrays' lengths in bytes, after the head."""
    return struct.Struct(f"<{n_arrays}Q")


def _offsets(sizes: tuple[int, ...]) -> list[int]:
    """Where each array starts in the arrays' region."""
    offsets, at = [], 0
    for size in sizes:
        offsets.append(at)
        at += size + (-size % ALIGN)
    return offsets


def _report(snapshot: Snapshot) -> dict:
    """What a snapshot holds beside its predicting parts: its counts and weights."""
    return {name: value for name, value in vars(snapshot).items() if name not in Snapshot.PARTS}


def _unpickle(
    frame: memoryview, arena: np.ndarray, sizes: tuple[int, ...], report: dict
) -> Snapshot:
    """A new snapshot of `frame`'s objects, their arrays living in `arena`."""
    offsets = _offsets(sizes)
    buffers = [memoryview(arena[at : at + size]) for at, size in zip(offsets, sizes)]
    parts = pickle.loads(frame, buffers=buffers)
    snapshot = Snapshot.__new__(Snapshot)
    vars(snapshot).update(zip(Snapshot.PARTS, parts), **report)
    return snapshot


class _Held:
    """A snapshot this loader made, its frame, and the bytes its arrays live in."""

    __slots__ = ("arena", "frame", "references", "snapshot")

    def __init__(self, snapshot: Snapshot, frame: bytes, arena: np.ndarray) -> None:
        self.snapshot = snapshot
        self.frame = frame
        self.arena = arena
        # The parts' references while only the snapshot holds them (more than one where
        # other objects of the model point back at them).
        self.references = self._count()[1:]

    def _count(self) -> tuple[int, ...]:
        parts = vars(self.snapshot)
        return (
            sys.getrefcount(self.snapshot),
            *(sys.getrefcount(parts[n]) for n in Snapshot.PARTS),
        )

    def free(self) -> bool:
        """Whether nothing outside the loader holds the snapshot or one of its parts."""
        count = self._count()
        return count[0] == 2 and count[1:] == self.references  # 2: this and the call's own


class SnapshotLoader:
    """Snapshots from `encode`'s payloads; copies new arrays into a spare where it can.

    Not thread-safe: one thread loads at a time (a serving process's loader thread).
    `n_unpickled` counts full loads, `n_copied` loads that copied arrays into the spare.
    """

    def __init__(self) -> None:
        self._current: _Held | None = None
        self._spare: _Held | None = None
        self.n_unpickled = 0
        self.n_copied = 0

    def load(self, payload: bytes) -> Snapshot:
        """The snapshot `payload` holds (the spare with new arrays, or a new one)."""
        view = memoryview(payload)
        report_size, frame_size, n_arrays = HEAD.unpack_from(view)
        lengths = _lengths(n_arrays)
        sizes = lengths.unpack_from(view, HEAD.size)
        at = HEAD.size + lengths.size
        report = pickle.loads(view[at : at + report_size])
        at += report_size
        frame = view[at : at + frame_size]
        at += frame_size
        arrays = np.frombuffer(view, np.uint8, len(payload) - at, at)
        spare = self._spare
        if spare is not None and spare.frame == frame and spare.free():
            spare.arena[:] = arrays
            vars(spare.snapshot).update(report)
            held = spare
            self.n_copied += 1
        else:
            arena = arrays.copy()
            held = _Held(_unpickle(frame, arena, sizes, report), bytes(frame), arena)
            self.n_unpickled += 1
        self._spare, self._current = self._current, held
        return held.snapshot
