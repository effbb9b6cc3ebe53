"""ReplayFeed: rows delivered to a live service's learner round and round, as a topic's polls.

A module of its own so that a learner process can import it (`serve_latency` runs as
`__main__`, whose classes the child cannot find).
"""

from __future__ import annotations

import itertools
import threading

POLL = 16  # rows delivered at once: KafkaFeed's default max_poll_records


class ReplayFeed:
    """A feed (`stream_mtl.feed`) that delivers `rows` round and round, POLL at a time, as
    `KafkaFeed` delivers a topic's polls: the learner process consumes it flat out by
    itself, as with `serve --source kafka://...`, and no other process feeds it."""

    def __init__(self, rows: list) -> None:
        self.rows, self.n_learned = rows, 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __getstate__(self) -> dict:
        return {"rows": self.rows}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["rows"])

    def start(self, deliver, checkpoint_now, state) -> None:
        self._thread = threading.Thread(target=self._consume, args=(deliver,), daemon=True)
        self._thread.start()

    def _consume(self, deliver) -> None:
        for start in itertools.count(0, POLL):
            poll = [self.rows[(start + i) % len(self.rows)] for i in range(POLL)]
            if self._stop.is_set() or not deliver(poll):
                return

    def learn(self, poll: list, step) -> int:
        step.learn([row for event in poll for row in step.offer(event).ready])  # learn_poll's way
        self.n_learned += len(poll)
        return len(poll)

    def state(self) -> dict:
        return {"learned": self.n_learned}

    def checkpointed(self, state: dict) -> None:
        pass

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def close(self) -> None:
        pass

    def status(self) -> dict:
        return {"learned": self.n_learned}
