"""WriteAheadLog: accepted observations on disk before they are acknowledged.

A live service acknowledges an observation (HTTP 202) before it learns it. With a log,
the acknowledgement waits until the observation is in the log and the log is on disk:
records are appended by any thread, and one thread writes and fsyncs what came in the
last `group_seconds` as one group (group commit: one fsync for many records, so a
busy service pays a fraction of an fsync per record, and a caller waits about
`group_seconds` plus one fsync). Every record has a sequence number. A checkpoint
stores the sequence number of the last record the model had learned; after a crash,
the service replays the records after it, so that every acknowledged observation is
learned exactly once in the model's count. The log is kept in segments, a new one
begun at every checkpoint; a segment whose records are all in a checkpoint is deleted.

Records are JSON lines (orjson) `[seq, x, y, served]`, with `x` as a list of
`[name, value]` pairs so that integer feature names stay integers. A torn last line
(the process killed mid-write) was never acknowledged: replay stops there.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
import typing
from collections.abc import Iterator
from pathlib import Path

import orjson

_SEGMENT = "wal-{:012d}.jsonl"


class WriteAheadLog:
    """An append-only, group-committed log of records in `folder`.

    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> log = WriteAheadLog(folder)
    >>> last = log.append([({"a": 1.0, 7: 2.0}, {"price": 3.0}, None)])
    >>> log.wait(last)
    >>> log.close()
    >>> [(seq, x) for seq, x, _y, _served in WriteAheadLog(folder).replay(after=0)]
    [(1, {'a': 1.0, 7: 2.0})]
    """

    def __init__(
        self, folder: str | os.PathLike, group_seconds: float = 0.005, start_after: int = 0
    ) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.group_seconds = group_seconds
        self.n_fsyncs = 0
        segments = self._segments()
        # Numbers are never reused: past every record, every segment's first number and
        # the checkpoint's (`start_after`), even when the old segments are gone.
        self._next = max(
            1 + max((seq for seq, *_ in self._read(segments)), default=0),
            max((_first(path) for path in segments), default=1),
            start_after + 1,
        )
        self._synced = self._next - 1
        self._buffer: list[bytes] = []
        self._buffered_to = self._synced
        self._error: BaseException | None = None
        self._closed = False
        self._changed = threading.Condition()
        self._file = self._open_segment()
        self._writer = threading.Thread(target=self._write_loop, name="stream-mtl-wal", daemon=True)
        self._writer.start()

    @property
    def last(self) -> int:
        """The sequence number of the last record appended."""
        return self._next - 1

    def append(self, records: typing.Iterable[tuple[dict, dict, dict | None]]) -> int:
        """Add `(x, y, served)` records; the sequence number of the last one (wait on it)."""
        lines = []
        with self._changed:
            if self._error is not None:
                raise OSError(f"the write-ahead log cannot be written: {self._error}")
            for x, y, served in records:
                record = [self._next, [[name, value] for name, value in x.items()], y, served]
                lines.append(orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n")
                self._next += 1
            self._buffer.extend(lines)
            self._buffered_to = self._next - 1
            self._changed.notify_all()
            return self._next - 1

    def wait(self, seq: int, timeout: float | None = None) -> None:
        """Block until record `seq` is on disk; `OSError` if the log cannot be written."""
        with self._changed:
            if not self._changed.wait_for(
                lambda: self._synced >= seq or self._error is not None, timeout
            ):
                raise TimeoutError(f"record {seq} not on disk after {timeout} s")
            if self._synced < seq:
                raise OSError(f"the write-ahead log cannot be written: {self._error}")

    def _write_loop(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._buffer or self._closed)
                if not self._buffer and self._closed:
                    return
            time.sleep(self.group_seconds)  # let a group gather: one fsync for all of it
            with self._changed:
                lines, self._buffer = self._buffer, []
                upto = self._buffered_to
            try:
                self._file.write(b"".join(lines))
                self._file.flush()
                os.fsync(self._file.fileno())
            except BaseException as error:  # a full disk: every waiter hears of it
                with self._changed:
                    self._error = error
                    self._changed.notify_all()
                return
            with self._changed:
                self._synced = upto
                self.n_fsyncs += 1
                self._changed.notify_all()

    def rotate(self) -> int:
        """Begin a new segment (a checkpoint is being written); the last sequence number
        in the old ones."""
        with self._changed:
            self._changed.wait_for(
                lambda: self._synced >= self._buffered_to or self._error is not None
            )
            old = self._file
            self._file = self._open_segment()
            old.close()
            return self._next - 1

    def forget(self, upto: int) -> None:
        """Delete the segments whose records all have sequence numbers <= `upto` (they
        are in a checkpoint); the segment being written is kept."""
        segments = self._segments()
        for path, following in itertools.pairwise(segments):
            if _first(following) - 1 <= upto:
                path.unlink(missing_ok=True)

    def replay(self, after: int) -> Iterator[tuple[int, dict, dict, dict | None]]:
        """The records with sequence numbers above `after`, in order."""
        for seq, x, y, served in self._read(self._segments()):
            if seq > after:
                yield seq, x, y, served

    def close(self) -> None:
        """Write what is buffered, then stop the writer."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        self._writer.join()
        self._file.close()

    def _open_segment(self) -> typing.BinaryIO:
        path = self.folder / _SEGMENT.format(self._next)
        file = path.open("ab")
        _fsync_folder(self.folder)
        return file

    def _segments(self) -> list[Path]:
        return sorted(self.folder.glob("wal-*.jsonl"), key=_first)

    @staticmethod
    def _read(segments: list[Path]) -> Iterator[tuple[int, dict, dict, dict | None]]:
        for path in segments:
            with path.open("rb") as file:
                for line in file:
                    try:
                        seq, pairs, y, served = orjson.loads(line)
                    except (orjson.JSONDecodeError, ValueError):
                        break  # a torn last line (killed mid-write): never acknowledged
                    yield seq, {name: value for name, value in pairs}, y, served


def _first(path: Path) -> int:
    return int(path.stem.split("-")[1])


def _fsync_folder(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
