"""Feed: a source that a live service's learner consumes itself, beside its learn queue.

A `LearningThread` (and so `OnlineModel` and `stream-mtl serve`) given a `feed` learns
from it as well as from `learn` calls: the feed consumes on a thread of its own and
`deliver`s what it read; the learner thread then `learn`s each delivery, in order with
the queued observations, and writes the feed's `state()` into every checkpoint beside
the model, so that a service resumed from that checkpoint tells the feed where to go on
(`start(..., state)`), and nothing it delivered is lost or learned twice. Once the
checkpoint is on disk the feed hears of it (`checkpointed`: Kafka commits the offsets
it holds). `stream_mtl.connectors.kafka_feed.KafkaFeed` is the feed of a Kafka topic.

A feed is handed to the learner process by pickling: it must pickle before `start`.
"""

from __future__ import annotations

import typing
from collections.abc import Callable

if typing.TYPE_CHECKING:
    from stream_mtl.stream import StreamStep

__all__ = ["Feed"]


class Feed(typing.Protocol):
    """What a learner needs of a source it consumes itself (see the module's docstring).

    Examples
    --------
    A feed of the rows of a list, whose state is how many of them were learned:

    >>> import tempfile, threading, time
    >>> from pathlib import Path
    >>> from stream_mtl import MultiTaskLearner, Regression
    >>> from stream_mtl.learning_thread import LearningThread, resumed_from
    >>> class ListFeed:
    ...     def __init__(self, rows):
    ...         self.rows, self.learned, self.thread = rows, 0, None
    ...     def start(self, deliver, checkpoint_now, state):
    ...         self.learned = 0 if state is None else state["learned"]
    ...         self.thread = threading.Thread(target=self._consume, args=(deliver,))
    ...         self.thread.start()
    ...     def _consume(self, deliver):
    ...         for row in self.rows[self.learned:]:
    ...             if not deliver(row):
    ...                 return
    ...     def learn(self, row, step):
    ...         step.learn(step.offer(row).ready)
    ...         self.learned += 1
    ...         return 1
    ...     def state(self):
    ...         return {"learned": self.learned}
    ...     def checkpointed(self, state):
    ...         pass
    ...     def stop(self):
    ...         self.thread.join()
    ...     def close(self):
    ...         pass
    ...     def status(self):
    ...         return {"learned": self.learned}
    >>> rows = [({"x": i / 10}, {"y": 2.0 * i / 10}) for i in range(50)]
    >>> path = Path(tempfile.mkdtemp()) / "model.ckpt"
    >>> model = MultiTaskLearner(tasks={"y": Regression()}, hidden=(4,))
    >>> learner = LearningThread(model, checkpoint=path, feed=ListFeed(rows))
    >>> while learner.status()["source"]["learned"] < 50:
    ...     time.sleep(0.01)
    >>> learner.close()
    >>> model, options = resumed_from(path)  # where a resumed learner's feed goes on
    >>> model.n_learned, options["feed_state"]
    ({'y': 50}, {'learned': 50})
    """

    def start(
        self,
        deliver: Callable[[typing.Any], bool],
        checkpoint_now: Callable[[float], bool],
        state: dict | None,
    ) -> None:
        """Begin consuming from `state` (what the last checkpoint held of the feed; None
        for the start), on a thread of the feed's own. `deliver(item)` hands one item to
        the learner and returns False once the learner is closing (stop then);
        `checkpoint_now(timeout)` returns once everything delivered is learned and
        checkpointed (True), or False if that did not happen within `timeout` seconds."""

    def learn(self, item: typing.Any, step: StreamStep) -> int:
        """On the learner thread: learn one delivered item with `step`; the number of
        observations it held."""

    def state(self) -> dict:
        """On the learner thread, just before a checkpoint: where the feed goes on from,
        consistent with what `learn` has learned (what it sent elsewhere is flushed)."""

    def checkpointed(self, state: dict) -> None:
        """A checkpoint holding `state` is on disk."""

    def stop(self) -> None:
        """Stop consuming; returns when the feed's thread has ended."""

    def close(self) -> None:
        """After the last checkpoint: let go of connections."""

    def status(self) -> dict:
        """Counts for a service's status (consumed, learned, set aside, position)."""
