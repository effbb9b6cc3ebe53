"""LearningProcess: a live service's learner in a child process, its snapshots in shared memory.

A learning step holds the GIL of the process it runs in; a prediction in that process
waits for it. Here the learner (a `LearningThread`, with its queue, held features,
write-ahead log and checkpoints) runs in a child process, and predictions are computed
in the calling process from the latest snapshot the child published on a
`SnapshotBoard` (`stream_mtl.shared_snapshot`): a read never takes a lock the learner
holds, never sees half a snapshot, and costs a few bytes' read when nothing is new.
New features, classes and tasks reach readers with the next snapshot, since a snapshot
is the whole predicting model. `snapshot_age` says how old it may be: the child
publishes within `snapshot_ms` of learning something, and says "nothing new" as often
when idle. A loader thread of the serving process looks for a new snapshot every
`LOAD_POLL` seconds, loads it (`stream_mtl.snapshot_wire`: mostly a copy of new arrays
into a snapshot no prediction holds any more) and swaps it in whole, so that no
prediction loads one (the swap adds that poll and the load to the age).

`learn` and `learn_label` are sent to the child and answered: a refusal raises in the
caller (the same `InvalidInput` or `Unavailable`), and a return means what the learner
thread's means (queued; with a write-ahead log, on disk). Features predicted under a
key are sent to the child to be held; they reach it before any later message of this
process.

The child is supervised. If it dies (killed, out of memory), learning is refused with
the reason (`unavailable`) while predictions go on from the last snapshot, and the
child is started again, from the checkpoint file if there is one and from the model it
first had otherwise; with a write-ahead log, it then learns again what was acknowledged
after that (`restart=False`: it stays down). A child whose parent died exits at once,
leaving the rest to the log, as a killed service would.

With `listen` (a Unix socket path) the child also takes the calls of other serving
processes: a `LearnerClient` (`OnlineModel.attach`) reads the same board and sends its
calls there, and connects again when the child is restarted (`serve --workers N`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
import typing
from collections.abc import Hashable
from multiprocessing.connection import Client, Connection, Listener
from pathlib import Path

from stream_mtl.exceptions import InvalidInput, InvalidInputType
from stream_mtl.learning_thread import LearningThread, Unavailable, resumed_from
from stream_mtl.pending import writable_key
from stream_mtl.predictor import Snapshot
from stream_mtl.queued_connection import QueuedConnection, SendQueueFull
from stream_mtl.shared_snapshot import SnapshotBoard, SnapshotReader, SnapshotWriter
from stream_mtl.snapshot_wire import SnapshotLoader, encode

if typing.TYPE_CHECKING:
    from stream_mtl.learner import MultiTaskLearner

__all__ = ["LearnerClient", "LearningProcess"]

logger = logging.getLogger(__name__)

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Requests the child answers (on a worker thread where a learn may wait: for room in the
# queue, or for the log's fsync).
CALLS = frozenset({"learn", "learn_label", "status"})
# Seconds a call waits for the child beyond its own time to queue (block_timeout).
ANSWER_GRACE = 30.0
PROTOCOL = pickle.HIGHEST_PROTOCOL
CANNOT_SEND = (
    "the model cannot be sent to a learner process (define its classes in a module it can "
    "import, or use process=False)"
)
SWITCH_INTERVAL = 2e-4  # seconds, in the learner process
# Seconds between a serving process's looks at the board for a newer snapshot: what a
# prediction may lag behind a publication, beside the time to load it.
LOAD_POLL = 1e-3
MAX_RESTART_DELAY = 30.0
NO_ANSWER = "the learner process did not answer in time"
# Seconds a status call waits for its answer, which needs nothing but the learner's CPU:
# a learner that is stalled (stopped, starved) makes /healthz answer 503 after this long.
STATUS_WAIT = 5.0
# Bytes of calls a serving process queues for a learner process that is not reading them
# (stopped, starved, busy), at most: beyond it calls are refused rather than wait.
SEND_MAX_BYTES = 4 * 2**20
# With `listen`, a label whose features are not held yet waits this long for them (by
# default): the features come from the serving process that predicted, on its own
# connection, and a label another serving process forwards at once may arrive first.
LABEL_GRACE = 0.1
# Labels waiting for their features at once, at most, by default (`max_late_labels`);
# beyond, refused. Each waits on a thread of the learner's call pool, which has
# `CALL_THREADS` more for the other calls, so that waiting labels never hold them up.
LATE_LABELS = 16
MAX_LATE_LABELS = 256  # the largest `max_late_labels`: a thread each
CALL_THREADS = 32
LATE_POLL = 2e-3  # seconds between a waiting label's looks for its features


PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)


def _launch() -> tuple[subprocess.Popen, Connection]:
    """A fresh interpreter running this module, and a connection to it.

    Not multiprocessing's spawn or forkserver: those import the caller's main module
    again in the child, which runs a script that lacks `if __name__ == "__main__"`
    twice; and not fork, which copies a process that runs threads (uvicorn's, torch's).
    """
    if os.name != "posix":
        raise InvalidInput("a learner process needs a POSIX system; use process=False")
    ours, theirs = socket.socketpair()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [PACKAGE_ROOT, env.get("PYTHONPATH")]))
    with theirs:
        process = subprocess.Popen(
            [sys.executable, "-m", "stream_mtl.learning_process", str(theirs.fileno())],
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
            env=env,
        )
    return process, Connection(ours.detach())


class _LearnerLink:
    """What a serving process holds of a learner process: the snapshots it publishes,
    and a connection that carries learn, hold and status calls and their answers."""

    def __init__(
        self, board: str, block_timeout: float, checkpointed: bool, send_max_bytes: int
    ) -> None:
        self.block_timeout = block_timeout
        self.send_max_bytes = send_max_bytes
        self._checkpointed = checkpointed  # keys must be writable to a checkpoint
        self._reader = SnapshotReader(board)
        self._snapshot: Snapshot | None = None
        self._version = 0
        self._loading = threading.Lock()  # one thread of this process loads at a time
        self._snapshot_loader = SnapshotLoader()
        self._calls: dict[int, concurrent.futures.Future] = {}
        self._ids = itertools.count(1)
        self._conn: QueuedConnection | None = None
        self._stopped_by: str | None = "the learner process is starting"
        self.n_not_held = 0  # predictions served under a key while the learner was down
        self._not_held_since: str | None = None
        self._closing = False  # close() was called: a learner that goes away is no death
        self._closed = False
        self._loader = threading.Thread(
            target=self._follow_board, name="stream-mtl-snapshots", daemon=True
        )
        self._loader.start()

    @property
    def board(self) -> str:
        """The name of the shared memory the learner publishes its snapshots on."""
        return self._reader.board

    def _down(self) -> str | None:
        """Why the learner process cannot take calls now (None: it can)."""
        return self._stopped_by

    def _open(self, conn: Connection) -> QueuedConnection:
        """`conn` as this link sends on it: a learner that stops reading refuses calls
        (`Unavailable`) once `send_max_bytes` of them wait, and never stalls a sender."""
        return QueuedConnection(conn, self.send_max_bytes, name="stream-mtl-calls")

    def _receive(self, conn: QueuedConnection) -> str:
        """Answers from the learner until its connection closes; then fail the calls
        still waiting, and say why (for the caller to log)."""
        while True:
            try:
                call_id, ok, value = conn.recv()
            except (EOFError, OSError):
                break
            except Exception:  # closed under the read (a TypeError), or an unreadable answer
                if not self._closing:
                    logger.exception("an answer of the learner process could not be read")
                break
            future = self._calls.pop(call_id, None)
            if future is None or not future.set_running_or_notify_cancel():
                continue  # no one waits for it (timed out, or its coroutine was cancelled)
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)
        conn.close()
        return "the learner process went away"

    def _fail_waiting_calls(self, reason: str) -> None:
        for call_id in list(self._calls):
            future = self._calls.pop(call_id, None)
            if future is not None and future.set_running_or_notify_cancel():
                future.set_exception(Unavailable(reason))

    def _post(
        self, op: str, *args: typing.Any, answer: bool = True
    ) -> tuple[int, concurrent.futures.Future]:
        """Send a call; its id and the future of its answer (unused when `answer` is
        False). Raises at once where it cannot be sent."""
        if self._closed:
            raise RuntimeError("this OnlineModel is closed")
        down = self._down()
        if down is not None:
            raise Unavailable(down)
        call_id = next(self._ids) if answer else 0
        future: concurrent.futures.Future = concurrent.futures.Future()
        if answer:
            self._calls[call_id] = future
        try:
            message = pickle.dumps((call_id, op, args), PROTOCOL)
        except Exception as error:
            self._calls.pop(call_id, None)
            raise InvalidInputType(f"cannot be sent to the learner process: {error}") from None
        try:
            self._conn.send_bytes(message)  # type: ignore[union-attr]
        except SendQueueFull as error:
            self._calls.pop(call_id, None)
            raise Unavailable(f"the learner process is not taking calls: {error}") from None
        except (OSError, AttributeError):
            self._calls.pop(call_id, None)
            raise Unavailable(self._down() or "the learner process is gone") from None
        return call_id, future

    @property
    def _answer_wait(self) -> float:
        """Seconds a learn call waits for its answer: its time to queue, and a grace."""
        return self.block_timeout + ANSWER_GRACE

    def _send(
        self, op: str, *args: typing.Any, answer: bool = True, wait: float | None = -1.0
    ) -> typing.Any:
        """Send a call; its answer (or its error, raised), waiting `wait` seconds at most
        (None: as long as it takes; the default: `block_timeout` and a grace)."""
        call_id, future = self._post(op, *args, answer=answer)
        if not answer:
            return None
        if wait is not None and wait < 0:
            wait = self._answer_wait
        try:
            return future.result(wait)
        except concurrent.futures.TimeoutError:
            self._calls.pop(call_id, None)
            raise Unavailable(NO_ANSWER) from None

    async def _send_async(self, op: str, *args: typing.Any) -> typing.Any:
        """`_send` for a coroutine: the answer wakes the event loop; no thread waits."""
        call_id, future = self._post(op, *args)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self._answer_wait)
        except asyncio.TimeoutError:
            raise Unavailable(NO_ANSWER) from None
        finally:
            self._calls.pop(call_id, None)

    # -- predicting -------------------------------------------------------------------------

    @property
    def snapshot(self) -> Snapshot:
        """The latest snapshot this process has loaded from the board. A prediction never
        loads one: the loader thread does, and swaps it in whole (`LOAD_POLL`)."""
        if self._snapshot is None and not self._closed:  # the first: wait for it
            with self._loading:
                self._load()
        return self._snapshot  # type: ignore[return-value]

    def _load(self) -> None:
        """Load the latest snapshot from the board (holding `_loading`)."""
        read = self._reader.read()
        if read is not None and read[0] != self._version:
            self._snapshot, self._version = self._snapshot_loader.load(read[1]), read[0]

    def _follow_board(self) -> None:
        """The loader thread: load each new snapshot the learner publishes, until closed.
        A snapshot that cannot be read (its writer died half-way) is logged, and
        predictions go on from the one before."""
        failed = False
        while not self._closing:
            try:
                if self._reader.version() != self._version:
                    with self._loading:
                        if self._closing:
                            return
                        self._load()
                failed = False
            except Exception:
                if not failed:
                    logger.exception("a snapshot could not be loaded; predicting from the last")
                failed = True
            time.sleep(LOAD_POLL)

    def _stop_loader(self) -> None:
        """Stop the loader thread (called once `_closing` is set, before the reader closes)."""
        if self._loader is not threading.current_thread():
            self._loader.join()

    @property
    def snapshot_age(self) -> float:
        """Seconds since the learner last published, or last said nothing was new (inf
        once closed: there is no learner to be behind)."""
        return float("inf") if self._closed else self._reader.age()

    @property
    def snapshot_loads(self) -> dict[str, int]:
        """Snapshots this process loaded, by how: arrays copied into a spare, or
        unpickled whole (`stream_mtl.snapshot_wire`)."""
        loader = self._snapshot_loader
        return {"copied": loader.n_copied, "unpickled": loader.n_unpickled}

    def predict(self, x: dict, key: Hashable | None = None) -> dict:
        snapshot = self.snapshot
        if key is not None:
            key = writable_key(key) if self._checkpointed else _hashable(key)
        snapshot.check_one(x)
        prediction = snapshot.predict_one(x)
        if key is not None:
            self._hold(key, x, prediction)
        return prediction

    def _hold(self, key: Hashable, x: dict, prediction: dict) -> None:
        """Send `x` to be held under `key`; while the learner is down the prediction is
        still served, and labels sent later for the key find nothing held (404), as for a
        key that expired."""
        try:
            self._send("hold", key, x, prediction, answer=False)
        except Unavailable as error:
            self.n_not_held += 1
            if self._not_held_since is None:  # once an outage, not once a request
                self._not_held_since = str(error)
                logger.warning("predictions under a key are served but not held: %s", error)
        else:
            self._not_held_since = None

    # -- learning ---------------------------------------------------------------------------

    def learn(self, x: dict, y: dict) -> int:
        return self._send("learn", x, y)

    def learn_label(self, key: Hashable, y: dict) -> int:
        return self._send("learn_label", key, y)

    async def learn_async(self, x: dict, y: dict) -> int:
        return await self._send_async("learn", x, y)

    async def learn_label_async(self, key: Hashable, y: dict) -> int:
        return await self._send_async("learn_label", key, y)

    def status(self) -> dict:
        """The learner's counts (`LearningThread.status`, with its pid and restarts);
        `Unavailable` if it does not answer within `STATUS_WAIT` seconds."""
        return self._send("status", wait=STATUS_WAIT)

    @property
    def unavailable(self) -> str | None:
        if self._closed:
            return "closed"
        down = self._down()
        if down is not None:
            return down
        try:
            return self.status()["unavailable"]
        except Unavailable as error:
            return str(error)

    @property
    def alive(self) -> bool:
        return not self._closed and self._down() is None


class LearningProcess(_LearnerLink):
    """The serving side of a learner in a child process that it starts, supervises and
    owns (see the module's docstring).

    Takes the options of `LearningThread`, and: `restart` (start a child that died
    again), `restart_delay` (seconds before the first try; doubled after each failed
    one, up to 30 s), `start_timeout` (seconds to wait for a child's first snapshot),
    `listen` (a Unix socket path where the child also takes other serving processes'
    calls: `LearnerClient`), `label_grace` (with `listen`: seconds a label sent under a
    key whose features are not held yet waits for them, since they come from another
    process on another connection; 0: refused at once), `max_late_labels` (with
    `listen`: labels that wait so at once, at most; beyond, refused at once), `nice`
    (added to the child's nice value, 0 to 19: where the learner and the serving
    processes compete for a core, predictions go first). Used through
    `OnlineModel(..., process=True)`.
    """

    def __init__(
        self,
        model: MultiTaskLearner,
        *,
        restart: bool = True,
        restart_delay: float = 0.5,
        start_timeout: float = 120.0,
        listen: str | os.PathLike | None = None,
        label_grace: float = LABEL_GRACE,
        max_late_labels: int = LATE_LABELS,
        nice: int = 19,
        send_max_bytes: int = SEND_MAX_BYTES,
        **options: typing.Any,
    ) -> None:
        _check_within("nice", nice, 0, 19)
        _check_within("label_grace", label_grace, 0, 60, seconds=True)
        _check_within("max_late_labels", max_late_labels, 0, MAX_LATE_LABELS)
        _check_send_max_bytes(send_max_bytes)
        for name in ("on_snapshot", "on_idle"):
            if options.get(name) is not None:
                raise InvalidInput(f"{name} is not available with the learner in a process")
        self._options = options
        self._checkpoint = options.get("checkpoint")
        self._initial = model  # a restart without a checkpoint file starts from it
        self.restart = restart
        self.restart_delay = restart_delay
        self.start_timeout = start_timeout
        self.listen = None if listen is None else str(listen)
        self.label_grace = float(label_grace)
        self.max_late_labels = max_late_labels
        self.nice = nice
        self.n_restarts = 0
        self._board = SnapshotBoard.create()
        super().__init__(
            self._board.name,
            options.get("block_timeout", 1.0),
            self._checkpoint is not None,
            send_max_bytes,
        )
        self._final: dict | None = None
        self._final_model: MultiTaskLearner | None = None
        self._process: subprocess.Popen | None = None
        try:
            self._start(("model", model))
        except BaseException:
            self._closing = True
            self._stop_loader()
            self._reader.close()
            self._board.unlink()
            raise

    # -- the child's life -------------------------------------------------------------------

    def _start(self, source: tuple[str, typing.Any]) -> None:
        """Start a child learning from `source` and wait for its first snapshot."""
        level = logging.getLogger("stream_mtl").getEffectiveLevel()
        listening = (
            None if self.listen is None else (self.listen, self.label_grace, self.max_late_labels)
        )
        setup = (self.board, source, self._options, level, listening, self.nice, self.n_restarts)
        try:
            message = pickle.dumps(setup, PROTOCOL)
        except Exception as error:
            raise InvalidInputType(f"{CANNOT_SEND}: {error}") from None
        process, conn = _launch()
        try:
            conn.send_bytes(message)
            if not conn.poll(self.start_timeout):
                raise Unavailable(f"the learner process did not start in {self.start_timeout} s")
            ok, value = conn.recv()
        except (EOFError, OSError):
            conn.close()
            raise Unavailable(
                f"the learner process died while starting (exit code {process.wait()})"
            ) from None
        except BaseException:
            process.kill()
            process.wait()
            conn.close()
            raise
        if not ok:
            process.wait()
            conn.close()
            raise value
        if self._closing:  # closed while this restart was starting: end it
            process.kill()
            process.wait()
            conn.close()
            return
        self._process, self._conn = process, self._open(conn)
        self._stopped_by = None
        threading.Thread(
            target=self._supervise,
            args=(self._conn, process),
            name="stream-mtl-answers",
            daemon=True,
        ).start()

    def _supervise(self, conn: QueuedConnection, process: subprocess.Popen) -> None:
        """Answers from the child, until it exits; then start another."""
        self._receive(conn)
        try:
            code: int | str = process.wait(5)
        except subprocess.TimeoutExpired:  # it closed its end but lives on: end it
            process.kill()
            code = f"{process.wait()}, killed: it had closed its connection"
        if self._closing:
            return
        reason = f"the learner process died (exit code {code})"
        self._stopped_by = reason
        self._fail_waiting_calls(reason)
        logger.error("%s; predictions go on from the last snapshot", reason)
        if self.restart:
            self._restart_later(reason)

    def _restart_later(self, reason: str) -> None:
        delay = self.restart_delay
        while not self._closing:
            time.sleep(delay)
            if self._closing:
                return
            resumable = self._checkpoint is not None and Path(self._checkpoint).exists()
            source = ("checkpoint", self._checkpoint) if resumable else ("model", self._initial)
            self._stopped_by = f"{reason}; restarting from {source[0]}"
            self.n_restarts += 1
            try:
                self._start(source)
            except BaseException as error:
                self.n_restarts -= 1
                logger.error("the learner process did not restart: %s", error)
                delay = min(2 * delay, MAX_RESTART_DELAY)
                continue
            if not self._closing:
                logger.warning("the learner process was restarted from its %s", source[0])
            return

    def _down(self) -> str | None:
        if self._stopped_by is not None:
            return self._stopped_by
        code = None if self._process is None else self._process.poll()
        return None if code is None else f"the learner process died (exit code {code})"

    def status(self) -> dict:
        """The learner's counts (`LearningThread.status`); the last ones once closed."""
        if self._final is not None:
            return self._final
        return super().status()

    @property
    def pid(self) -> int | None:
        """The learner process's id (None once closed or while it is down)."""
        if self._closed or self._down() is not None or self._process is None:
            return None
        return self._process.pid

    @property
    def model(self) -> MultiTaskLearner:
        """The learned model, once closed (it learns in the child until then)."""
        if self._final_model is None and self._closed:
            raise RuntimeError(
                "the learner process was down when the service closed: load the model "
                "from its checkpoint"
            )
        if self._final_model is None:
            raise RuntimeError(
                "the model learns in the learner process: predict from `snapshot`, or "
                "close() first to get it back"
            )
        return self._final_model

    def close(self) -> None:
        """The child learns what is queued (within its `close_timeout`), checkpoints and
        hands the model back; then the shared memory is removed."""
        if self._closed:
            return
        self._closing = True
        try:
            if self._down() is None:
                # as long as the queue takes to learn, when no close_timeout bounds it
                limit = self._options.get("close_timeout")
                answer = self._send("close", wait=None if limit is None else limit + ANSWER_GRACE)
                self._final, self._final_model = answer["status"], answer["model"]
                with self._loading:
                    self._load()  # the last snapshot the learner published
        finally:
            self._closed = True
            if self._process is not None:
                try:
                    self._process.wait(10)
                except subprocess.TimeoutExpired:
                    self._process.kill()
                    self._process.wait()
            self._stop_loader()
            self._reader.close()
            self._board.unlink()


class LearnerClient(_LearnerLink):
    """Another serving process's link to a learner process that a `LearningProcess`
    owns (`listen`): its snapshots from the board, its calls over the Unix socket at
    `address`. When the learner is restarted, it connects again; closing it leaves the
    learner to its owner. Used through `OnlineModel.attach`."""

    RECONNECT_SECONDS = 0.1

    def __init__(
        self,
        board: str,
        address: str | os.PathLike,
        block_timeout: float = 1.0,
        checkpointed: bool = True,
        connect_timeout: float = 60.0,
        send_max_bytes: int = SEND_MAX_BYTES,
    ) -> None:
        _check_send_max_bytes(send_max_bytes)
        super().__init__(board, block_timeout, checkpointed, send_max_bytes)
        self.address = str(address)
        deadline = time.monotonic() + connect_timeout
        while not self._connect():
            if time.monotonic() > deadline:
                self._closing = True
                self._stop_loader()
                self._reader.close()
                raise Unavailable(f"no learner process answers at {self.address}")
            time.sleep(self.RECONNECT_SECONDS)

    def _connect(self) -> bool:
        try:
            conn = Client(self.address, family="AF_UNIX")
        except OSError:
            return False
        self._conn, self._stopped_by = self._open(conn), None
        threading.Thread(target=self._follow, args=(self._conn,), daemon=True).start()
        return True

    def _follow(self, conn: QueuedConnection) -> None:
        reason = self._receive(conn)
        if self._closing:
            return
        self._stopped_by = f"{reason}; waiting for it to be restarted"
        self._fail_waiting_calls(self._stopped_by)
        while not self._closing and not self._connect():
            time.sleep(self.RECONNECT_SECONDS)

    def _asked(self, field: str) -> int | None:
        """The learner's own word on `field` of its status (None while it cannot say)."""
        try:
            return self.status()[field]
        except Unavailable:
            return None

    @property
    def pid(self) -> int | None:
        return self._asked("pid")

    @property
    def n_restarts(self) -> int | None:
        return self._asked("restarts")

    @property
    def model(self) -> MultiTaskLearner:
        raise RuntimeError("the model learns in a learner process this one does not own")

    def close(self) -> None:
        """Let go of the learner (its owner closes it)."""
        if self._closed:
            return
        self._closing = True
        self._closed = True
        if self._conn is not None:
            self._conn.close()
        self._stop_loader()
        self._reader.close()


def _check_within(name: str, value: object, low: int, high: int, seconds: bool = False) -> None:
    """Refuse a setting that is not an integer (or, for `seconds`, a number) from `low`
    to `high`."""
    kinds = (int, float) if seconds else int
    if isinstance(value, bool) or not isinstance(value, kinds) or not low <= value <= high:
        what = "seconds" if seconds else "an integer"
        raise InvalidInput(f"{name} must be {what} from {low} to {high}, got {value!r}")


def _check_send_max_bytes(value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidInput(f"send_max_bytes must be a positive integer, got {value!r}")


def _hashable(key: Hashable) -> Hashable:
    try:
        hash(key)
    except TypeError:
        raise InvalidInputType(f"a key must be hashable, got {type(key).__name__}") from None
    return key


# -- the child ------------------------------------------------------------------------------


def _child_main(conn: Connection) -> None:
    """The learner process: a `LearningThread` publishing to the board it is told,
    answering `conn` (its owner) and, with `listen`, other serving processes."""
    try:
        board, source, options, level, listen, nice, restarts = pickle.loads(conn.recv_bytes())
    except Exception as error:
        conn.send((False, InvalidInputType(f"{CANNOT_SEND}: {type(error).__name__}: {error}")))
        return
    # The learner thread holds the GIL in bursts; a call waiting for it would wait the
    # default 5 ms switch interval.
    sys.setswitchinterval(SWITCH_INTERVAL)
    # Below the serving processes: where they compete for a core, predictions go first.
    os.nice(nice)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the group: the parent decides
    logging.basicConfig(level=level, format=LOG_FORMAT)
    writer = SnapshotWriter(board)
    publish = _publisher(writer)
    kind, what = source
    try:
        if kind == "checkpoint":  # a restart: the model, held features and log position in it
            what, resumed = resumed_from(what)
            options = {**options, **resumed}
        what.warm_up()  # before it says it is ready: no observation waits for a compile
        thread = LearningThread(what, on_snapshot=publish, on_idle=writer.touch, **options)
        listener = None if listen is None else _listen(listen[0])
    except BaseException as error:
        conn.send((False, _sendable(error)))
        return
    publish(thread.snapshot)
    conn.send((True, None))
    # Only with several connections can a label overtake its features.
    grace, late = (0.0, 0) if listen is None else listen[1:]
    calls = _Calls(thread, options, {"pid": os.getpid(), "restarts": restarts}, grace, late)
    with calls.pool:
        if listener is not None:
            threading.Thread(target=_accept, args=(listener, calls), daemon=True).start()
        calls.serve(conn, owner=True)
    if listener is not None:
        listener.close()  # and its socket file
    writer.close()


def _listen(address: str) -> Listener:
    """A Unix socket at `address` (one a learner before this one left is replaced)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(address)
    return Listener(address, family="AF_UNIX")


def _accept(listener: Listener, calls: _Calls) -> None:
    while True:
        conn = listener.accept()
        threading.Thread(target=calls.serve, args=(conn, False), daemon=True).start()


class _Calls:
    """The learner process's side of its connections: each call run on the learner
    thread's object, its answer sent back on the connection it came on."""

    def __init__(
        self,
        thread: LearningThread,
        options: dict,
        identity: dict,
        label_grace: float,
        max_late_labels: int,
    ) -> None:
        self.thread = thread
        self.identity = identity
        self.label_grace = label_grace
        self.max_late_labels = max_late_labels
        self.n_late_waiting = 0  # labels waiting for their features, at most max_late_labels
        self._counting = threading.Lock()
        # Without a log to wait for and with a queue that refuses at once when full, a
        # learn never waits: it is answered on the connection's own thread.
        self.never_waits = options.get("wal") is None and options.get("block_timeout", 1.0) == 0
        self.pool = concurrent.futures.ThreadPoolExecutor(
            CALL_THREADS + max_late_labels, thread_name_prefix="learner-call"
        )

    def serve(self, conn: Connection, owner: bool) -> None:
        """Take calls from `conn` until it closes (the owner's: until it says close)."""
        send_lock = threading.Lock()

        def answer(call_id: int, ok: bool, value: typing.Any) -> None:
            with send_lock:
                try:
                    conn.send((call_id, ok, value))
                except OSError:  # that serving process is gone
                    pass
                except Exception as error:  # unpicklable: say so rather than hang the caller
                    conn.send((call_id, False, RuntimeError(f"{error}")))

        def run(call_id: int, op: str, args: tuple, may_wait: bool = True) -> None:
            try:
                if op == "status":
                    value = {**self.thread.status(), **self.identity}
                    value["late_labels_waiting"] = self.n_late_waiting
                elif may_wait and op == "learn_label" and self._arrives_early(args[0]):
                    try:  # it waits on a thread of the pool: this connection goes on
                        self.pool.submit(wait_then_learn, call_id, args)
                    except BaseException:  # the pool is shut down: the learner is closing
                        self._leave()
                        raise
                    return
                else:
                    value = getattr(self.thread, op)(*args)
                answer(call_id, True, value)
            except BaseException as error:
                answer(call_id, False, _sendable(error))

        def wait_then_learn(call_id: int, args: tuple) -> None:
            try:
                self._wait_for_features(args[0])
            finally:
                self._leave()
            run(call_id, "learn_label", args, may_wait=False)

        while True:
            try:
                call_id, op, args = pickle.loads(conn.recv_bytes())
            except (EOFError, OSError):
                if owner:  # the serving process that owns us is gone: stop as it did,
                    os._exit(0)  # leaving the rest to the log
                return
            if op == "hold":  # in order: before any later message of the same process
                try:
                    self.thread.hold(*args)
                except Exception as error:
                    logger.warning("features not held: %s", error)
            elif op in CALLS and (op == "status" or self.never_waits):
                run(call_id, op, args)  # here: a hop to another thread costs GIL hand-offs
            elif op in CALLS:
                self.pool.submit(run, call_id, op, args)
            elif op == "close" and owner:
                try:
                    self.thread.close()
                    status = {**self.thread.status(), **self.identity}
                    answer(call_id, True, {"status": status, "model": self.thread.model})
                except BaseException as error:
                    answer(call_id, False, _sendable(error))
                return
            else:
                answer(call_id, False, InvalidInput(f"the learner process takes no {op!r}"))

    def _arrives_early(self, key: Hashable) -> bool:
        """Whether a label for `key` is to wait for its features: none are held under it
        yet, labels may overtake features (`label_grace`), and one of the `max_late_labels`
        places is free (taken: `_leave` gives it back)."""
        if not self.label_grace or self.thread.holds(key):
            return False
        with self._counting:
            if self.n_late_waiting >= self.max_late_labels:
                return False
            self.n_late_waiting += 1
        return True

    def _leave(self) -> None:
        with self._counting:
            self.n_late_waiting -= 1

    def _wait_for_features(self, key: Hashable) -> None:
        """Return once features are held under `key`, or `label_grace` is over. It only
        looks (every `LATE_POLL`): nothing is claimed, and no refusal is counted."""
        deadline = time.monotonic() + self.label_grace
        while not self.thread.holds(key) and time.monotonic() < deadline:
            time.sleep(LATE_POLL)


def _publisher(writer: SnapshotWriter) -> typing.Callable[[Snapshot], None]:
    def publish(snapshot: Snapshot) -> None:
        writer.publish(encode(snapshot))

    return publish


def _sendable(error: BaseException) -> BaseException:
    """`error` if it survives pickling, else a RuntimeError with its text."""
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")
    return error


if __name__ == "__main__":
    _child_main(Connection(int(sys.argv[1])))
