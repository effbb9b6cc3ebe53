"""Versioned bytes in shared memory: one process publishes, any process reads, none waits.

The learner process of a live service publishes each new snapshot of its model here,
and the serving processes read the latest one (`stream_mtl.service`). Nothing is locked:

- The writer never overwrites the slot readers were last sent to: it fills the other of
  two slots (double buffering), then points the header at it.
- Each slot and the header carry a sequence number that the writer makes odd before it
  writes and even after (a seqlock). A reader reads the number, copies, reads it again,
  and keeps the copy only if the number was even and unchanged; otherwise it copies
  again. A CRC-32 of each payload is checked as well, so that a copy is never torn, even
  on a machine that reorders stores.
- A payload larger than the slots moves both slots to a new, larger segment (a new
  *generation*, named after the header); readers follow the header to it, and the
  writer unlinks the old one (mappings already open stay valid).

A board's owner that is killed cannot unlink it; `SnapshotBoard.create` removes the
boards of owners that are gone (where shared memory is a folder, as on Linux).

The header also holds when the writer last published and when it last said "nothing
new" (`touch`), so that a reader knows how old what it reads may be (`age`).

>>> board = SnapshotBoard.create()
>>> writer = SnapshotWriter(board.name)
>>> reader = SnapshotReader(board.name)
>>> reader.read() is None  # nothing published yet
True
>>> writer.publish(b"first")
1
>>> writer.publish(b"second" * 1000)  # larger than the first slots: a new segment
2
>>> version, payload = reader.read()
>>> version, payload[:12], len(payload)
(2, b'secondsecond', 6000)
>>> reader.close(); writer.close(); board.unlink()
"""

from __future__ import annotations

import _posixshmem  # type: ignore[import-not-found]  # shared_memory's own unlink
import contextlib
import itertools
import os
import struct
import threading
import time
import typing
import zlib
from multiprocessing import resource_tracker, shared_memory

__all__ = [
    "SnapshotBoard",
    "SnapshotReader",
    "SnapshotWriter",
    "TornRead",
    "remove_stale_boards",
]

# The header: a sequence number (8 bytes), then generation, slot capacity, slot,
# version, published and fresh (monotonic seconds).
HEADER = struct.Struct("<QQQQdd")
HEADER_SIZE = 8 + HEADER.size
# Each slot: a sequence number, then length, CRC-32 and version; then the payload.
SLOT = struct.Struct("<QQQ")
SLOT_SIZE = 8 + SLOT.size
PREFIX = "smtl-"  # boards are named smtl-<owner pid>-<random>[-<generation>]
FIRST_CAPACITY = 1 << 16
WAIT_SECONDS = 5.0  # a writer that stays half-way longer than this has died there
SPINS = 100  # tries before a reader starts to yield its CPU to the writer


class TornRead(RuntimeError):
    """A reader could not get a whole copy for `WAIT_SECONDS`: the writer's process died
    in the middle of a write."""


# A sequence number is read and written as one aligned 8-byte word (struct.pack_into
# would first zero it, and then write it byte by byte).


def _load_seq(buf: memoryview, offset: int) -> int:
    with buf[offset : offset + 8].cast("Q") as word:
        return word[0]


def _store_seq(buf: memoryview, offset: int, value: int) -> None:
    with buf[offset : offset + 8].cast("Q") as word:
        word[0] = value


def _attempts(what: str) -> typing.Iterator[int]:
    """Tries for a reader: spin, then yield the CPU, then give up after WAIT_SECONDS."""
    deadline = time.monotonic() + WAIT_SECONDS
    for attempt in itertools.count():
        if attempt >= SPINS:
            if time.monotonic() > deadline:
                raise TornRead(f"{what} stayed half-written for {WAIT_SECONDS} s")
            time.sleep(0 if attempt < 2 * SPINS else 1e-4)
        yield attempt


def _open(name: str, size: int = 0) -> shared_memory.SharedMemory:
    """Open segment `name` (make it, `size` bytes, if a size is given), untracked.

    Python 3.11 hands every segment a process opens to that process's resource tracker,
    which unlinks it when the process exits: under the other processes, if the learner
    process exits first. The board's owner removes what it owns instead.
    """
    segment = shared_memory.SharedMemory(name=name, create=size > 0, size=size)
    resource_tracker.unregister(segment._name, "shared_memory")  # type: ignore[attr-defined]
    return segment


def _unlink(segment: shared_memory.SharedMemory) -> None:
    """Close and remove a segment (mappings open elsewhere stay valid)."""
    segment.close()
    # Not segment.unlink(): it would tell the tracker of a segment it does not hold.
    with contextlib.suppress(FileNotFoundError):
        _posixshmem.shm_unlink(segment._name)  # type: ignore[attr-defined]


def remove_stale_boards(folder: str = "/dev/shm") -> list[str]:
    """Remove the segments of boards whose owner process is gone (killed before it could
    unlink them), where shared memory is a folder (Linux); the names removed."""
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    removed = []
    for name in names:
        if not name.startswith(PREFIX):
            continue
        owner = name[len(PREFIX) :].split("-", 1)[0]
        if not owner.isdigit() or _running(int(owner)):
            continue
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(folder, name))
            removed.append(name)
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's: running
        pass
    return True


def _segment_name(board: str, generation: int) -> str:
    return f"{board}-{generation}"


class SnapshotBoard:
    """The header segment: made by the process that owns the board (the server), which
    unlinks it, and whatever data segment it points to, when done."""

    def __init__(self, segment: shared_memory.SharedMemory) -> None:
        self._segment = segment
        self.name = segment.name

    @classmethod
    def create(cls) -> SnapshotBoard:
        remove_stale_boards()
        name = f"{PREFIX}{os.getpid()}-{os.urandom(4).hex()}"
        return cls(_open(name, HEADER_SIZE))  # zeros: nothing published

    def unlink(self) -> None:
        """Remove the header and the current data segment (open mappings stay valid);
        once."""
        if self._segment.buf is None:
            return
        generation = HEADER.unpack_from(self._segment.buf, 8)[0]
        if generation:
            with contextlib.suppress(FileNotFoundError):
                _unlink(_open(_segment_name(self.name, generation)))
        _unlink(self._segment)


class SnapshotWriter:
    """Publishes byte strings to a board; one writer at a time per board."""

    def __init__(self, board: str) -> None:
        self.board = board
        self._header = _open(board)
        self._generation, self._capacity, self._slot, self.version, *_ = HEADER.unpack_from(
            self._header.buf, 8
        )
        self._data: shared_memory.SharedMemory | None = None
        if self._generation:  # a writer before us (a learner that was restarted)
            try:
                self._data = _open(_segment_name(board, self._generation))
            except FileNotFoundError:
                self._capacity = 0

    def publish(self, payload: bytes) -> int:
        """Publish `payload` as the next version; the version."""
        if self._data is None or len(payload) > self._capacity:
            self._grow(len(payload))
            slot = 0
        else:
            slot = 1 - self._slot
        data = self._data
        assert data is not None
        base = slot * (SLOT_SIZE + self._capacity)
        version = self.version + 1
        seq = _load_seq(data.buf, base)
        _store_seq(data.buf, base, seq + 1)  # odd: being written
        data.buf[base + SLOT_SIZE : base + SLOT_SIZE + len(payload)] = payload
        SLOT.pack_into(data.buf, base + 8, len(payload), zlib.crc32(payload), version)
        _store_seq(data.buf, base, seq + 2)  # even again, last of all
        now = time.monotonic()
        self._write_header(self._generation, slot, version, now, now)
        self._slot, self.version = slot, version
        return version

    def touch(self) -> None:
        """Say that the last version is still current (nothing new to publish)."""
        *_, published, _fresh = HEADER.unpack_from(self._header.buf, 8)
        self._write_header(self._generation, self._slot, self.version, published, time.monotonic())

    def _write_header(
        self, generation: int, slot: int, version: int, published: float, fresh: float
    ) -> None:
        buf = self._header.buf
        seq = _load_seq(buf, 0)
        _store_seq(buf, 0, seq + 1)
        HEADER.pack_into(buf, 8, generation, self._capacity, slot, version, published, fresh)
        _store_seq(buf, 0, seq + 2)

    def _grow(self, size: int) -> None:
        capacity = max(FIRST_CAPACITY, 2 * self._capacity)
        while capacity < size:
            capacity *= 2
        old = self._data
        self._generation += 1
        name = _segment_name(self.board, self._generation)
        # A writer that died may have made it before pointing the header at it.
        with contextlib.suppress(FileNotFoundError):
            _unlink(_open(name))
        data = _open(name, 2 * (SLOT_SIZE + capacity))
        self._data, self._capacity = data, capacity
        if old is not None:
            _unlink(old)  # readers still mapping it keep their copy

    def close(self) -> None:
        if self._data is not None:
            self._data.close()
        self._header.close()


class SnapshotReader:
    """Reads the latest version from a board; any number of readers, in any process.

    Safe to share between threads: `read` keeps no state that two threads could tear.
    """

    def __init__(self, board: str) -> None:
        self.board = board
        self._header = _open(board)
        self._data: dict[int, shared_memory.SharedMemory] = {}
        self._lock = threading.Lock()  # readers of this process only: opening segments
        self.retries = 0

    def _read_header(self) -> tuple:
        """(generation, capacity, slot, version, published, fresh), not half-written."""
        buf = self._header.buf
        for _ in _attempts(f"the header of snapshot board {self.board}"):
            seq = _load_seq(buf, 0)
            if seq % 2 == 0:
                header = HEADER.unpack_from(buf, 8)
                if _load_seq(buf, 0) == seq:
                    return header
            self.retries += 1
        raise AssertionError("unreachable")

    def version(self) -> int:
        """The latest version published (0: none yet); cheap (a few bytes)."""
        return self._read_header()[3]

    def age(self) -> float:
        """Seconds since the writer last published or said that nothing was new (inf
        before the first version)."""
        *_, version, published, fresh = self._read_header()
        return time.monotonic() - max(published, fresh) if version else float("inf")

    def read(self) -> tuple[int, bytes] | None:
        """The latest (version, payload), whole; None before the first version."""
        for _ in _attempts(f"snapshot board {self.board}"):
            generation, capacity, slot, version, *_ = self._read_header()
            if not version:
                return None
            data = self._segment(generation)
            if data is None:  # moved on since we read the header
                continue
            base = slot * (SLOT_SIZE + capacity)
            seq = _load_seq(data.buf, base)
            length, crc, slot_version = SLOT.unpack_from(data.buf, base + 8)
            if seq % 2 == 0 and slot_version == version and length <= capacity:
                payload = bytes(data.buf[base + SLOT_SIZE : base + SLOT_SIZE + length])
                if _load_seq(data.buf, base) == seq and zlib.crc32(payload) == crc:
                    return version, payload
            self.retries += 1
        raise AssertionError("unreachable")

    def _segment(self, generation: int) -> shared_memory.SharedMemory | None:
        data = self._data.get(generation)
        if data is not None:
            return data
        with self._lock:
            if generation not in self._data:
                try:  # older ones stay open (another thread may be copying): few, small
                    self._data[generation] = _open(_segment_name(self.board, generation))
                except FileNotFoundError:
                    return None
            return self._data[generation]

    def close(self) -> None:
        with self._lock:
            for data in self._data.values():
                data.close()
            self._data.clear()
        self._header.close()
