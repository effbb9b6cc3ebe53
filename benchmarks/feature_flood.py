"""What 100,000 distinct feature names posted to `/learn` do to a live server.

`stream-mtl serve` (one regression task, the default model and bounds) learns a warm-up
of the reference stream (20 features), then a client posts `--flood` observations that
each carry the 20 features and one feature name never sent before: a client trying to
grow the model. Before and after, it measures the server's resident memory, the rate at
which it learns the reference stream, and the checkpoint's size. With `max_features`
(1,000 by default) the flood can add at most 980 features; the rest is refused with 422.

Usage: python -m benchmarks.feature_flood [--flood 100000] [--warmup 2000] [--probe 1000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks.serve_latency import observations
from benchmarks.throughput import write_result

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from serve_process import start_server, stop_server  # noqa: E402  (shared with the tests)


def resident_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc")


def learned(client: httpx.Client) -> int:
    return client.get("/tasks").json()["tasks"]["a"]["labels_learned"]


def learning_rate(client: httpx.Client, rows: list[tuple[dict, dict]]) -> float:
    """Observations learned per second: post them all, wait until all are learned."""
    before = learned(client)
    started = time.perf_counter()
    for x, y in rows:
        while client.post("/learn", json={"x": x, "y": {"a": y["t0"]}}).status_code == 503:
            time.sleep(0.01)
    while learned(client) < before + len(rows):
        time.sleep(0.01)
    return len(rows) / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flood", type=int, default=100_000)
    parser.add_argument("--warmup", type=int, default=2_000)
    parser.add_argument("--probe", type=int, default=1_000)
    args = parser.parse_args(argv)
    rows = observations(args.warmup + 2 * args.probe, seed=0)
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = Path(folder) / "model.ckpt"
        process, url = start_server(checkpoint, "a:regression")
        with httpx.Client(base_url=url, timeout=60) as client:
            learning_rate(client, rows[: args.warmup])
            before = {
                "rss_mib": resident_mib(process.pid),
                "learned_per_s": learning_rate(client, rows[args.warmup : -args.probe]),
            }
            statuses: dict[int, int] = {}
            started = time.perf_counter()
            x, y = rows[0]
            for i in range(args.flood):
                body = {"x": {**x, f"flood-{i}": 1.0}, "y": {"a": y["t0"]}}
                status = client.post("/learn", json=body).status_code
                statuses[status] = statuses.get(status, 0) + 1
            flood_seconds = time.perf_counter() - started
            after = {
                "rss_mib": resident_mib(process.pid),
                "learned_per_s": learning_rate(client, rows[-args.probe :]),
            }
        assert stop_server(process)
        after["checkpoint_mb"] = checkpoint.stat().st_size / 1e6
    result = {
        "flood": args.flood,
        "statuses": statuses,
        "flood_requests_per_s": args.flood / flood_seconds,
        "before": before,
        "after": after,
    }
    print(
        f"{args.flood:,} distinct names posted at {result['flood_requests_per_s']:,.0f}/s: "
        f"{statuses}\n"
        f"resident memory {before['rss_mib']:.0f} -> {after['rss_mib']:.0f} MiB; learning "
        f"{before['learned_per_s']:,.0f} -> {after['learned_per_s']:,.0f} obs/s; "
        f"checkpoint {after['checkpoint_mb']:.1f} MB"
    )
    write_result(result, str(HERE / "results" / "feature_flood.json"))


if __name__ == "__main__":
    main()
