"""An HTTP load generator for the serve benchmarks, run in a process of its own.

Two modes, both on kept-alive HTTP/1.1 connections written with asyncio streams (no
client library: the generator's own cost per request is small and stays out of the
server's process):

- `open_loop`: request i is due at start + i / rate whatever happened before (an open
  loop, so that a slow answer does not delay the next request and hide itself); it goes
  out on a free connection (a new one if none is free, up to `connections`), and its
  latency counts from when it was due to when its whole answer came back.
- `saturate`: `connections` clients each send their next request as soon as the last
  one is answered, for `seconds`; the answers per second is the server's throughput.

`run(mode, ...)` runs one in a fresh process and returns its result.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time

import numpy as np


def _request(host: str, path: str, body: bytes) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def _answer(reader: asyncio.StreamReader) -> int:
    """Read one whole response; its status."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = next(
        int(line.split(":", 1)[1]) for line in lines if line.lower().startswith("content-length")
    )
    await reader.readexactly(length)
    return status


async def _open_loop(
    host: str, port: int, path: str, bodies: list[bytes], rate: float, n: int, connections: int
) -> dict:
    free: asyncio.Queue = asyncio.Queue()
    opened = 0
    latencies = np.full(n, np.nan)
    failed = 0

    async def connection() -> tuple:
        nonlocal opened
        if free.empty() and opened < connections:
            opened += 1
            return await asyncio.open_connection(host, port)
        return await free.get()

    async def one(i: int, due: float) -> None:
        nonlocal failed
        reader, writer = await connection()
        writer.write(_request(host, path, bodies[i % len(bodies)]))
        status = await _answer(reader)
        latencies[i] = time.perf_counter() - due
        failed += status != 200
        free.put_nowait((reader, writer))

    tasks = []
    start = time.perf_counter() + 0.05
    for i in range(n):
        due = start + i / rate
        wait = due - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)
        tasks.append(asyncio.create_task(one(i, due)))
    await asyncio.gather(*tasks)
    while not free.empty():
        _reader, writer = free.get_nowait()
        writer.close()
    return {"latencies": latencies.tolist(), "failed": failed, "connections": opened}


async def _saturate(
    host: str, port: int, path: str, bodies: list[bytes], connections: int, seconds: float
) -> dict:
    deadline = time.perf_counter() + seconds
    counts = [0] * connections

    async def client(slot: int) -> None:
        reader, writer = await asyncio.open_connection(host, port)
        i = slot
        while time.perf_counter() < deadline:
            writer.write(_request(host, path, bodies[i % len(bodies)]))
            if 200 <= await _answer(reader) < 300:  # /learn answers 202
                counts[slot] += 1
            i += connections
        writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(client(slot) for slot in range(connections)))
    return {"per_second": sum(counts) / (time.perf_counter() - started)}


def main(mode: str, kwargs: dict, **more: object) -> dict:
    """Run one mode in this process (`kwargs` and `more` are its keyword arguments)."""
    kwargs = {**kwargs, **more}
    if mode == "open_loop":
        return asyncio.run(_open_loop(**kwargs))
    return asyncio.run(_saturate(**kwargs))


def run(mode: str, **kwargs: object) -> dict:
    """Run `open_loop` or `saturate` (keyword arguments as above) in a fresh process."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(main, (mode, kwargs))
