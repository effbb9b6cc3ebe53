"""One worker of `benchmarks.scaleout throughput`: learn a topic's share with
`DistributedLoop` (in a `TorchGroup` under torchrun, else a `SoloGroup`), then write
when it first and last learned, and what it learned, to OUT/rank-R.json.

Usage: python -m benchmarks._scaleout_worker BOOTSTRAP TOPIC SYNC_EVERY OUT API_VERSION
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

from stream_mtl import MultiTaskLearner
from stream_mtl.connectors.distributed_loop import DistributedLoop
from stream_mtl.connectors.kafka import KafkaSource, parse_api_version
from stream_mtl.distributed import SoloGroup, TorchGroup
from stream_mtl.tasks import task_from_kind

TASKS = {"y1": "regression", "y2": "regression", "y3": "regression", "flag": "binary"}


def main() -> None:
    bootstrap, topic, sync_every, out, api_version = sys.argv[1:6]
    group = TorchGroup() if "WORLD_SIZE" in os.environ else SoloGroup()
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) > 1:
        os.sched_setaffinity(0, {cores[group.rank % len(cores)]})  # one core a worker
    source = KafkaSource(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"{topic}-group",
        api_version=parse_api_version(api_version),
        share=(group.rank, group.size),
    )
    model = MultiTaskLearner(
        tasks={name: task_from_kind(kind) for name, kind in TASKS.items()}, seed=0
    )
    times = {"first_learned": None, "last_learned": None, "timed": 0}
    checkpoint = Path(tempfile.mkdtemp()) / "model.ckpt"

    def learned(messages: list) -> None:
        now = time.time()
        if times["first_learned"] is None:
            times["first_learned"] = now  # the clock starts after the first poll
        else:
            times["timed"] += len(messages)
        times["last_learned"] = now

    loop = DistributedLoop(
        model,
        source,
        checkpoint,
        group,
        sync_every=int(sync_every),
        sync_seconds=3600.0,
        checkpoint_every=10**9,
        idle_timeout=2.0,
        log_every=3600.0,
        on_learned=learned,
    )
    loop.run()
    stats = loop.stats()
    report = {**times, "learned": stats["learned"], "syncs": stats["syncs"]}
    report["sync_seconds"] = stats["sync_seconds"]
    Path(out, f"rank-{group.rank}.json").write_text(json.dumps(report))
    group.close()


if __name__ == "__main__":
    main()
