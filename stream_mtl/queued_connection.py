"""QueuedConnection: a connection whose sends never make the caller wait for the reader.

A `multiprocessing.connection.Connection` blocks a sender once the socket's buffer is
full, until its reader takes something: a learner process that is stopped, starved of
CPU or busy in a long step would then stall every thread that sends to it, among them
an HTTP server's event loop (a prediction under a key sends its features to be held),
and every prediction with it. Here a send writes what the socket takes at once, without
waiting (`MSG_DONTWAIT`), and queues the rest for a thread of its own to write, in the
order sent; the queue is bounded by `max_bytes`, and a send that would pass it is
refused with `SendQueueFull`, so that a reader that stops costs the senders a refusal
and at most `max_bytes` of memory, never a wait. Once full, the queue refuses until
half of it has been written, so that a reader that comes back is not fed one message
at a time between refusals.

Messages are framed as `Connection.send_bytes` frames them, so that the other end reads
them with `recv_bytes` or `recv`; receiving here is the connection's own.
"""

from __future__ import annotations

import collections
import os
import socket
import struct
import threading
import typing
from multiprocessing.connection import Connection

__all__ = ["QueuedConnection", "SendQueueFull"]

_LONG = 0x7FFFFFFF  # longer messages take an 8-byte length after a -1, as Connection's do


class SendQueueFull(OSError):
    """The bytes waiting to be written would pass `max_bytes`: this message was not sent."""


def framed(message: bytes) -> bytes:
    """`message` as `Connection.send_bytes` puts it on the wire: its length first."""
    if len(message) > _LONG:
        return struct.pack("!iQ", -1, len(message)) + message
    return struct.pack("!i", len(message)) + message


class QueuedConnection:
    """`conn` (on a socket) with sends that never wait: what the socket does not take at
    once is queued, at most `max_bytes`, for a thread of its own to write.

    Parameters
    ----------
    conn
        The connection, on a socket; `recv` and `poll` read it directly.
    max_bytes
        Bytes waiting to be written, at most. One message larger than this is queued
        when nothing else waits.
    name
        The writing thread's name.

    >>> import socket
    >>> from multiprocessing.connection import Connection
    >>> ours, theirs = (Connection(s.detach()) for s in socket.socketpair())
    >>> queued = QueuedConnection(ours, max_bytes=1_000_000)
    >>> sent = 0
    >>> while True:  # nobody reads: the socket's buffer fills, then the queue
    ...     try:
    ...         queued.send_bytes(b"%d" % sent)
    ...     except SendQueueFull:
    ...         break
    ...     sent += 1
    >>> 0 < queued.waiting_bytes <= 1_000_000
    True
    >>> theirs.recv_bytes(), theirs.recv_bytes()  # in order, once the other end reads
    (b'0', b'1')
    >>> queued.close()
    >>> queued.send_bytes(b"again")
    Traceback (most recent call last):
    ...
    OSError: the connection is closed
    """

    def __init__(self, conn: Connection, max_bytes: int, name: str = "stream-mtl-sends") -> None:
        self._conn = conn
        # The same socket, to write with flags; writes never interleave: a send writes
        # only while nothing is queued, holding the lock, and the writer only what is.
        self._socket = socket.socket(fileno=os.dup(conn.fileno()))
        self.max_bytes = max_bytes
        self._waiting: collections.deque[memoryview] = collections.deque()
        self._bytes = 0
        self._changed = threading.Condition()
        self._broken: str | None = None  # why nothing more can be sent
        self._full = False  # refusing until half the queue is written
        self._closed = False
        self._writer = threading.Thread(target=self._write, name=name, daemon=True)
        self._writer.start()

    @property
    def waiting_bytes(self) -> int:
        """Bytes sent and not written yet (with those being written)."""
        return self._bytes

    def send_bytes(self, message: bytes) -> None:
        """Send `message` (as `Connection.send_bytes` does) without waiting; raises
        `SendQueueFull` where it would have to, and OSError once the connection is closed
        or broken."""
        frame = memoryview(framed(message))
        with self._changed:
            if self._broken is not None:
                raise OSError(self._broken)
            if not self._waiting:
                try:
                    frame = frame[self._socket.send(frame, socket.MSG_DONTWAIT) :]
                except BlockingIOError:
                    pass
                except OSError as error:
                    self._stop(f"the connection broke: {error}")
                    raise OSError(self._broken) from None
                if not frame:
                    return
            elif self._full or self._bytes + len(frame) > self.max_bytes:
                self._full = True
                raise SendQueueFull(
                    f"{self._bytes:,} bytes already wait to be sent and the reader is not "
                    f"taking them (at most {self.max_bytes:,})"
                )
            self._waiting.append(frame)
            self._bytes += len(frame)
            self._changed.notify()

    def recv(self) -> typing.Any:
        """What the other end sent next (waits for it)."""
        return self._conn.recv()

    def poll(self, timeout: float | None = 0.0) -> bool:
        """Whether something can be received, waiting `timeout` seconds (None: forever)."""
        return self._conn.poll(timeout)

    def close(self) -> None:
        """Close the connection; what waits to be written is dropped. Once, whichever
        threads call it (a second close of the socket could close a file opened since)."""
        with self._changed:
            if self._closed:
                return
            self._closed = True
        self._stop("the connection is closed")
        self._conn.close()

    def _stop(self, reason: str) -> None:
        with self._changed:
            if self._broken is None:
                self._broken = reason
                # The writer ends: at once if idle, else when its write under way fails
                # (closing does not wake a blocked write; the reader going away does).
                self._socket.close()
            self._waiting.clear()
            self._bytes = 0
            self._changed.notify()

    def _write(self) -> None:
        while True:
            with self._changed:
                while not self._waiting and self._broken is None:
                    self._changed.wait()
                if self._broken is not None:
                    return
                frame = self._waiting[0]
            try:
                self._socket.sendall(frame)
            except OSError as error:
                self._stop(f"the connection broke: {error}")
                return
            with self._changed:
                if self._waiting:  # else closed meanwhile, and emptied
                    self._waiting.popleft()
                    self._bytes -= len(frame)
                    self._full = self._full and self._bytes > self.max_bytes // 2
