"""Snapshots in shared memory: readers in one process, a writer in another, nothing torn."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from stream_mtl.shared_snapshot import (
    SnapshotBoard,
    SnapshotReader,
    SnapshotWriter,
    remove_stale_boards,
)

WORD = struct.Struct("<Q")

# A writer in its own process publishing as fast as it can: version v is the 8-byte word
# v repeated, in sizes that cycle from 8 bytes to 512 KiB, so that the slots move to
# larger segments while the readers read.
WRITER = textwrap.dedent(
    """
    import struct, sys, time
    from stream_mtl.shared_snapshot import SnapshotWriter
    writer = SnapshotWriter(sys.argv[1])
    deadline = time.monotonic() + float(sys.argv[2])
    version = writer.version
    while time.monotonic() < deadline:
        version += 1
        words = 1 << (version % 17)
        assert writer.publish(struct.pack("<Q", version) * words) == version
    print(version)
    """
)


@pytest.fixture
def board():
    board = SnapshotBoard.create()
    yield board
    board.unlink()


def test_eight_readers_never_see_a_torn_payload_while_another_process_publishes(board):
    reader = SnapshotReader(board.name)
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, board.name, "3"], stdout=subprocess.PIPE, text=True
    )
    while reader.read() is None:
        time.sleep(0.001)
    reads, torn, backwards = [0] * 8, [0] * 8, [0] * 8
    errors: list[BaseException] = []

    def read(slot: int) -> None:
        try:
            read_until_the_writer_exits(slot)
        except BaseException as error:  # fails the test below
            errors.append(error)

    def read_until_the_writer_exits(slot: int) -> None:
        last = 0
        while writer.poll() is None:
            version, payload = reader.read()
            words = {w for (w,) in WORD.iter_unpack(payload)}
            torn[slot] += words != {version} or len(payload) != 8 << (version % 17)
            backwards[slot] += version < last
            last = version
            reads[slot] += 1

    threads = [threading.Thread(target=read, args=(slot,)) for slot in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    published = int(writer.communicate()[0])
    reader.close()

    assert not errors
    assert writer.returncode == 0
    assert published > 1000 and sum(reads) > 1000
    assert sum(torn) == 0 and sum(backwards) == 0
    assert reader.retries > 0, "the writer never overlapped a read: the test proved nothing"


def test_a_new_writer_goes_on_from_the_last_version(board):
    first = SnapshotWriter(board.name)
    first.publish(b"a")
    first.publish(b"b" * 100_000)
    first.close()  # a learner process that died
    second = SnapshotWriter(board.name)
    assert second.publish(b"c") == 3
    reader = SnapshotReader(board.name)
    assert reader.read() == (3, b"c")
    reader.close()
    second.close()


def test_the_age_counts_from_the_last_publication_or_touch(board):
    writer, reader = SnapshotWriter(board.name), SnapshotReader(board.name)
    assert reader.age() == float("inf")  # nothing published
    writer.publish(b"model")
    time.sleep(0.2)
    assert reader.age() >= 0.2
    writer.touch()  # nothing new: what readers have is current
    assert reader.age() < 0.1 and reader.version() == 1
    reader.close()
    writer.close()


def test_unlinking_the_board_removes_its_segments(board):
    writer = SnapshotWriter(board.name)
    writer.publish(b"x" * 200_000)
    writer.close()
    board.unlink()
    with pytest.raises(FileNotFoundError):
        SnapshotReader(board.name)


def test_boards_of_owners_that_are_gone_are_removed_when_a_board_is_made(tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a process id that no process has now
    for name in (f"smtl-{gone.pid}-0a0b0c0d", f"smtl-{gone.pid}-0a0b0c0d-1"):
        (tmp_path / name).write_bytes(b"left by a killed server")
    mine = tmp_path / f"smtl-{os.getpid()}-01020304"
    mine.write_bytes(b"a live owner's")
    (tmp_path / "other-123").write_bytes(b"not a board")
    removed = remove_stale_boards(str(tmp_path))
    assert sorted(removed) == [f"smtl-{gone.pid}-0a0b0c0d", f"smtl-{gone.pid}-0a0b0c0d-1"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other-123", mine.name]
