"""What 100,000 distinct feature names posted to `/learn` do to a live server.

`stream-mtl serve` (one regression task, the default model and bounds) learns a warm-up
of the reference stream (20 features), then a client posts `--flood` observations that
each carry the 20 features and one feature name never sent before: a client trying to
grow the model. Before and after, it measures the server's resident memory, the rate at
which it learns the reference stream, and the checkpoint's size. With `max_features`
(1,000 by default) the flood can add at most 980 features; the rest is refused with 422.

Requests go from `--clients` threads at once, each with its own keep-alive connection:
one client alone waits about 40 ms per request on TCP's delayed acknowledgement (its
POST goes out as two segments), which would measure the network, not the server.

Usage: python -m benchmarks.feature_flood [--flood 100000] [--warmup 2000] [--probe 1000]
       [--clients 16]
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
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


def post_all(url: str, bodies: list[dict], clients: int) -> collections.Counter:
    """POST every body to /learn from `clients` threads; the count of each status (a 503,
    a full queue, is sent again)."""

    def send(share: list[dict]) -> collections.Counter:
        statuses: collections.Counter = collections.Counter()
        with httpx.Client(base_url=url, timeout=60) as client:
            for body in share:
                while (status := client.post("/learn", json=body).status_code) == 503:
                    time.sleep(0.01)
                statuses[status] += 1
        return statuses

    with ThreadPoolExecutor(clients) as pool:
        return sum(
            pool.map(send, [bodies[i::clients] for i in range(clients)]),
            start=collections.Counter(),
        )


def learning_rate(url: str, rows: list[tuple[dict, dict]], clients: int) -> float:
    """Observations learned per second: post them all, wait until all are learned."""
    with httpx.Client(base_url=url, timeout=60) as client:
        before = learned(client)
        started = time.perf_counter()
        post_all(url, [{"x": x, "y": {"a": y["t0"]}} for x, y in rows], clients)
        while learned(client) < before + len(rows):
            time.sleep(0.01)
    return len(rows) / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flood", type=int, default=100_000)
    parser.add_argument("--warmup", type=int, default=2_000)
    parser.add_argument("--probe", type=int, default=1_000)
    parser.add_argument("--clients", type=int, default=16)
    args = parser.parse_args(argv)
    rows = observations(args.warmup + 2 * args.probe, seed=0)
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = Path(folder) / "model.ckpt"
        process, url = start_server(checkpoint, "a:regression")
        learning_rate(url, rows[: args.warmup], args.clients)
        before = {
            "rss_mib": resident_mib(process.pid),
            "learned_per_s": learning_rate(url, rows[args.warmup : -args.probe], args.clients),
        }
        x, y = rows[0]
        flood = [{"x": {**x, f"flood-{i}": 1.0}, "y": {"a": y["t0"]}} for i in range(args.flood)]
        started = time.perf_counter()
        statuses = dict(post_all(url, flood, args.clients))
        flood_seconds = time.perf_counter() - started
        after = {
            "rss_mib": resident_mib(process.pid),
            "learned_per_s": learning_rate(url, rows[-args.probe :], args.clients),
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
