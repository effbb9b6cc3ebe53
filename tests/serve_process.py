"""`stream-mtl serve` in a subprocess on a free loopback port, for the tests and benchmarks."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
from kafka_broker import free_port


def start_server(
    checkpoint: Path, *tasks: str, options: Sequence[str] = ()
) -> tuple[subprocess.Popen, str]:
    """Start the server (log beside the checkpoint) and wait until /healthz answers."""
    port = free_port()
    command = [sys.executable, "-m", "stream_mtl.cli", "serve", "--checkpoint", str(checkpoint)]
    command += ["--port", str(port), "--checkpoint-seconds", "3600", *options]
    for task in tasks:
        command += ["--task", task]
    return started(command, port, checkpoint.with_suffix(f".{port}.log"))


def started(command: list[str], port: int, log: Path) -> tuple[subprocess.Popen, str]:
    """Run `command`, a server that will listen on loopback `port` (its output in `log`),
    and wait until its /healthz answers."""
    with log.open("w") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/healthz").status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"the server did not answer in 60 s:\n{log.read_text()}")


def stop_server(process: subprocess.Popen) -> bool:
    """SIGTERM; whether the server shut down by it (uvicorn re-raises the signal once it
    has shut down gracefully, so the exit status is the signal's)."""
    process.send_signal(signal.SIGTERM)
    return process.wait(30) in (0, -signal.SIGTERM)
