"""A server like `stream-mtl serve --source kafka://...`, whose learner process consumes a
`ReplayFeed` of the serve benchmark's rows instead of a topic: the HTTP turn in which the
learner learns flat out from a feed of its own, with no broker taking the machine's CPU.

Usage: python -m benchmarks._feed_server PORT FOLDER (the checkpoint goes in FOLDER).
SIGTERM stops it as it stops `stream-mtl serve`: the service closes, then it exits.
"""

from __future__ import annotations

import sys
from pathlib import Path

import uvicorn

from benchmarks.replay_feed import ReplayFeed
from stream_mtl.cli import _listen
from stream_mtl.http_app import create_app
from stream_mtl.service import OnlineModel


def main(port: int, folder: Path) -> None:
    from benchmarks.serve_latency import observations, reference_model

    listener = _listen("127.0.0.1", port)
    service = OnlineModel(
        reference_model(),
        process=True,
        feed=ReplayFeed(observations(5000, seed=0)),
        checkpoint=folder / "model.ckpt",
        checkpoint_seconds=3600,
        block_timeout=0,
    )
    try:
        uvicorn.Server(uvicorn.Config(create_app(service), log_level="warning")).run(
            sockets=[listener]
        )
    finally:
        service.close()


if __name__ == "__main__":
    main(int(sys.argv[1]), Path(sys.argv[2]))
