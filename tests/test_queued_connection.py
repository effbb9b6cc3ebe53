"""QueuedConnection: sends that never wait for the reader, bounded, in order."""

from __future__ import annotations

import socket
import threading
from multiprocessing.connection import Connection

import pytest
from conftest import wait_for

from stream_mtl.queued_connection import QueuedConnection, SendQueueFull


def connected(max_bytes: int) -> tuple[QueuedConnection, Connection]:
    ours, theirs = socket.socketpair()
    return QueuedConnection(Connection(ours.detach()), max_bytes), Connection(theirs.detach())


def fill(queued: QueuedConnection, size: int = 100) -> int:
    """Send numbered messages of `size` bytes until refused; how many were taken."""
    sent = 0
    while True:
        try:
            queued.send_bytes(b"%0*d" % (size, sent))
        except SendQueueFull:
            return sent
        sent += 1


def test_a_reader_that_does_not_read_fills_the_socket_then_the_queue_and_senders_are_refused():
    queued, theirs = connected(max_bytes=50_000)
    outcome: list = []
    sender = threading.Thread(target=lambda: outcome.append(fill(queued)), daemon=True)
    sender.start()
    sender.join(60)
    assert not sender.is_alive(), "a send waited for the reader"
    sent = outcome[0]
    assert sent > 50_000 // 104  # the socket's buffer took some before the queue did
    assert 50_000 - 104 < queued.waiting_bytes <= 50_000
    # Everything taken arrives, whole and in order, once the reader reads.
    assert [theirs.recv_bytes() for _ in range(sent)] == [b"%0100d" % i for i in range(sent)]
    wait_for(lambda: queued.waiting_bytes == 0, 10)
    assert not theirs.poll(0.1)  # nothing refused was sent
    queued.close()


def test_a_full_queue_refuses_until_half_of_it_is_written():
    queued, theirs = connected(max_bytes=1_000_000)
    sent = fill(queued)
    received = []

    def read_while(condition) -> None:
        while condition():
            received.append(theirs.recv_bytes())

    # The reader takes some: the writer moves them on, and the queue has room again...
    read_while(lambda: queued.waiting_bytes > 1_000_000 - 1_000)
    assert queued.waiting_bytes > 500_000
    with pytest.raises(SendQueueFull, match="at most 1,000,000"):
        queued.send_bytes(b"refused")  # ...but not before half of it is written
    read_while(lambda: queued.waiting_bytes > 500_000)
    queued.send_bytes(b"taken")
    read_while(lambda: len(received) < sent + 1)
    assert received == [b"%0100d" % i for i in range(sent)] + [b"taken"]
    queued.close()


def test_a_message_larger_than_the_socket_buffer_arrives_whole_and_recv_reads_pickles():
    queued, theirs = connected(max_bytes=10)
    big = bytes(range(256)) * 20_000  # 5 MB: one message larger than the bound is taken
    queued.send_bytes(big)
    assert theirs.recv_bytes() == big
    theirs.send(("an", "answer"))
    assert queued.poll(5) and queued.recv() == ("an", "answer")
    queued.close()


def test_once_the_reader_is_gone_what_waits_is_dropped_and_sends_raise_oserror():
    queued, theirs = connected(max_bytes=50_000)
    fill(queued)  # some wait in the queue, for the writer
    theirs.close()
    wait_for(lambda: queued.waiting_bytes == 0, 10)  # the writer's next write failed
    with pytest.raises(OSError, match="broke") as refused:
        queued.send_bytes(b"x")
    assert not isinstance(refused.value, SendQueueFull)
    queued.close()
    with pytest.raises(OSError, match="broke"):  # the first reason stays
        queued.send_bytes(b"x")


def close_at_once(queued: QueuedConnection, threads: int) -> list[OSError]:
    """`queued.close()` from `threads` threads started together; the errors raised."""
    start, errors = threading.Barrier(threads), []

    def close() -> None:
        start.wait()
        try:
            queued.close()
        except OSError as error:  # a second close: "Bad file descriptor"
            errors.append(error)

    closing = [threading.Thread(target=close) for _ in range(threads)]
    for thread in closing:
        thread.start()
    for thread in closing:
        thread.join()
    return errors


def test_close_from_several_threads_at_once_closes_the_socket_once():
    for _ in range(50):
        queued, theirs = connected(max_bytes=1_000)
        assert close_at_once(queued, 4) == []
        theirs.close()
