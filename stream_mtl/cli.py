"""The `stream-mtl` command. The one core module that may import connectors.

- `stream-mtl demo`: prequential runs, with baselines, on a built-in drifting stream
  and on the real data sets bundled with the library (`stream_mtl.datasets`);
- `stream-mtl evaluate --source jsonl:PATH|csv:PATH --task NAME:KIND ...`: the same on
  a user's own file;
- `stream-mtl run --source kafka://HOST:PORT/TOPIC --group G --task NAME:KIND ...
  --checkpoint PATH`: learn from a Kafka topic until stopped, checkpointing as it goes;
  with `--workers N`, N processes (torch.distributed) learn one model together.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import typing
from collections.abc import Sequence
from pathlib import Path

from stream_mtl.tasks import TASK_KINDS, task_from_kind
from stream_mtl.version import __version__

# The model, River's metrics and pandas load when a command runs, not for `--help`.
if typing.TYPE_CHECKING:
    from stream_mtl import MultiTaskLearner
    from stream_mtl.evaluate import Report

logger = logging.getLogger("stream_mtl")
STOP_GRACE_SECONDS = 30.0  # a worker told to stop exits after this, done or not
LEARN_TOKEN_VARIABLE = "STREAM_MTL_LEARN_TOKEN"  # serve: the bearer token /learn needs


def _prequential(
    tasks: dict[str, str], stream, args: argparse.Namespace, every: int
) -> tuple[MultiTaskLearner, Report]:
    from stream_mtl.evaluate import prequential

    model = _model_for(tasks, args)
    report = prequential(
        model,
        stream,
        every=every,
        progress=not args.no_progress,
        on_error="skip",
        batch_size=args.batch_size,
    )
    return model, report


def _show_and_save(title: str, report: Report, folder: Path) -> None:
    print(f"\n== {title}")
    print(report.table())
    print(report.verdict())
    print(
        f"{report.n_observations:,} observations in {report.seconds:.1f} s; the model "
        f"alone {report.throughput:,.0f} obs/s, {report.memory_bytes / 1024:,.0f} KiB"
    )
    if report.drift_events:
        events = ", ".join(f"{e.task} at {e.step}" for e in report.drift_events)
        print(f"drifts detected: {events}")
    if report.rejected:
        print(f"set aside: {sum(report.rejected.values())} ({dict(report.rejected)})")
    path = report.save(folder)
    print(f"report and plots in {path.parent}/")


def _demo(args: argparse.Namespace) -> int:
    from stream_mtl import datasets
    from stream_mtl.connectors.synthetic import DEFAULT_TASKS, Drift, SyntheticStream

    started = time.perf_counter()
    real = {  # name: (data set, title, report every)
        "sarcos": (
            datasets.SARCOS,
            "SARCOS test file: 7 joint torques, all labelled, file order",
            250,
        ),
        "landmine": (
            datasets.Landmine,
            "Landmine: 29 fields, binary, one field per row, shuffled",
            1000,
        ),
        "school": (
            datasets.School,
            "School: 139 schools, exam scores, one school per row, shuffled",
            1000,
        ),
    }
    unknown = set(args.sets) - {"synthetic", *real}
    if unknown:
        raise ValueError(f"unknown --sets {sorted(unknown)}; expected synthetic or {list(real)}")
    root = Path(args.report)
    drift_at = args.n // 2
    stream = SyntheticStream(
        n=args.n,
        label_share=args.label_share,
        seed=_given(args, "seed"),
        drifts=[Drift("c", drift_at)],
    )
    title = (
        f"synthetic: {args.n:,} observations, {len(DEFAULT_TASKS)} tasks sharing a non-linear "
        f"structure, {args.label_share:.0%} of tasks labelled per observation, "
        f"abrupt drift of task 'c' at {drift_at:,}"
    )
    if "synthetic" in args.sets:
        _, report = _prequential(DEFAULT_TASKS, stream, args, args.every)
        _show_and_save(title, report, root / "synthetic")
    for name in (name for name in real if name in args.sets):
        loader, title, every = real[name]
        dataset = loader()
        _, report = _prequential(dataset.tasks, dataset, args, every)
        _show_and_save(title, report, root / name)
    print(f"\ndemo finished in {time.perf_counter() - started:.0f} s; reports in {root}/")
    return 0


def _task_option(text: str) -> tuple[str, str]:
    name, _, kind = text.partition(":")
    if not name or kind not in TASK_KINDS:
        raise argparse.ArgumentTypeError(
            f"expected NAME:KIND with KIND one of {sorted(TASK_KINDS)}, got {text!r}"
        )
    return name, kind


def _tasks(options: list[tuple[str, str]]) -> dict[str, str]:
    """The `--task` options as name -> kind; a name given twice is an error."""
    names = [name for name, _ in options]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ValueError(f"--task {twice} given more than once")
    return dict(options)


def _hidden_option(text: str) -> list[int]:
    try:
        widths = [int(w) for w in text.split(",") if w]
    except ValueError:
        widths = [0]
    if any(w <= 0 for w in widths):
        raise argparse.ArgumentTypeError(f"expected widths such as 64,64, got {text!r}")
    return widths


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _evaluate(args: argparse.Namespace) -> int:
    from stream_mtl.connectors.files import open_source

    tasks = _tasks(args.task)
    source = open_source(
        args.source, labels=list(tasks), features=args.features, exclude=args.exclude or ()
    )
    every = args.every if args.every is not None else _window_for(source.path)
    model, report = _prequential(tasks, source, args, every)
    problem = _nothing_measured(args.source, report, model, source)
    if problem:
        print(f"stream-mtl: error: {problem}", file=sys.stderr)
        return 1
    report.config["features"] = source.feature_names
    _show_and_save(args.source, report, Path(args.report))
    print(f"features ({len(source.feature_names)}): {', '.join(source.feature_names)}")
    if source.rejected:
        print(f"unreadable lines: {sum(source.rejected.values())} ({dict(source.rejected)})")
    return 0


def _window_for(path: Path) -> int:
    """A rolling window that draws about twenty points of the file's rows, 50 to 1,000."""
    with path.open("rb") as file:
        rows = sum(1 for line in file if line.strip())
    return min(1000, max(50, rows // 20))


def _nothing_measured(name: str, report: Report, model: MultiTaskLearner, source) -> str | None:
    """Why a run measured nothing for some task (and would print zeros), or None."""
    learned = model.n_learned
    if not any(learned.values()):
        if report.rejected:
            why = f"every observation was set aside ({dict(report.rejected)})"
        elif source.rejected:
            why = f"{sum(source.rejected.values())} unreadable line(s) ({dict(source.rejected)})"
        elif not report.n_observations:
            why = "the file has no data"
        else:
            why = f"none of its {report.n_observations:,} observations labels a task"
        return f"nothing was learned from {name}: {why}"
    absent = [task for task, n in learned.items() if not n]
    if absent:
        fields = ", ".join(source.feature_names[:20]) or "none"
        return (
            f"task(s) {absent} have no label in {name}: no row has a field of that name "
            f"(the fields met, as features: {fields})"
        )
    return None


def _names_option(text: str) -> list[str]:
    return [name for name in text.split(",") if name]


# --seed, --backend and --hidden when given for a new model; None means "not given", so a
# resumed model can tell an option that conflicts with its checkpoint from a default.
MODEL_DEFAULTS = {
    "seed": 0,
    "backend": "numpy",
    "hidden": [64, 64],
    "max_features": 1000,
    "sharing": "hard",
    "soft_strength": 1.0,
}


def _model_for(tasks: dict[str, str], args: argparse.Namespace) -> MultiTaskLearner:
    from stream_mtl import MultiTaskLearner

    options = {name: _given(args, name) for name in MODEL_DEFAULTS}
    return MultiTaskLearner(
        tasks={name: task_from_kind(kind) for name, kind in tasks.items()},
        hidden=tuple(options["hidden"]),
        backend=options["backend"],
        device=getattr(args, "device", "cpu"),
        seed=options["seed"],
        max_features=options["max_features"],
        sharing=options["sharing"],
        soft_strength=options["soft_strength"],
    )


def _given(args: argparse.Namespace, name: str) -> typing.Any:
    value = getattr(args, name)
    return MODEL_DEFAULTS[name] if value is None else value


def _check_resumed(
    model: MultiTaskLearner, tasks: dict[str, str], args: argparse.Namespace
) -> None:
    """A resumed model takes the `--task`s it lacks; an option it contradicts is an error.

    `--backend` is not checked: a checkpoint loads into either backend.
    """
    for name, given, held in (
        ("hidden", _as_option(args.hidden), _as_option(model.hidden)),
        ("seed", args.seed, model.seed),
        ("max-features", args.max_features, model.max_features),
        ("sharing", args.sharing, model.sharing),
        ("soft-strength", args.soft_strength, model.soft_strength),
    ):
        if given is not None and given != held:
            raise ValueError(
                f"checkpoint {args.checkpoint!r} holds a model with {name} {held}; "
                f"--{name} {given} needs a new checkpoint file (or leave the option out "
                "to resume)"
            )
    for name, kind in tasks.items():
        known = model.tasks.get(name)
        if known is None:
            model.add_task(name, task_from_kind(kind))
        elif known.kind != kind:
            raise ValueError(f"task {name!r} is {known.kind} in the checkpoint, not {kind}")


def _as_option(widths: typing.Sequence[int] | None) -> str | None:
    """Trunk widths as `--hidden` spells them: 64,64."""
    return None if widths is None else ",".join(map(str, widths))


def _kafka_source_options(args: argparse.Namespace) -> tuple[str, dict]:
    """The topic of `--source kafka://HOST:PORT/TOPIC`, and the `KafkaSource` options of
    the command line."""
    from stream_mtl.connectors.kafka import parse_api_version, parse_kafka_url

    servers, topic = parse_kafka_url(args.source)
    return topic, {
        "bootstrap_servers": servers,
        "group_id": args.group,
        "decoder": args.format,
        "api_version": parse_api_version(args.api_version),
        "dead_letter_topic": args.dead_letter_topic,
        "max_message_bytes": args.max_message_bytes,
        "bootstrap_timeout_ms": int(args.connect_timeout * 1000),
        **_session_options(args.session_timeout),
    }


def _session_options(seconds: float | None) -> dict:
    """How long the group waits for a silent member (a crashed one) before reassigning."""
    if seconds is None:
        return {}
    milliseconds = int(seconds * 1000)
    return {"session_timeout_ms": milliseconds, "heartbeat_interval_ms": milliseconds // 3}


def _run(args: argparse.Namespace) -> int:
    from kafka.errors import KafkaError

    from stream_mtl.connectors.kafka import KafkaSink, KafkaSource

    if args.workers is not None and args.workers > 1 and not _in_worker_group():
        return _launch_workers(args)
    topic, options = _kafka_source_options(args)
    servers, api_version = options["bootstrap_servers"], options["api_version"]
    tasks = _tasks(args.task or [])
    if not tasks and not Path(args.checkpoint).exists():
        raise ValueError("give the tasks with --task NAME:KIND (or a --checkpoint to resume)")
    if _in_worker_group() and args.device == "cuda":  # one GPU a worker
        args.device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    group = _worker_group(args.device) if _in_worker_group() else None
    share = None if group is None else (group.rank, group.size)
    try:
        source = KafkaSource(topic, idle_timeout=args.idle_exit, share=share, **options)
    except KafkaError as error:
        raise ValueError(f"no Kafka broker answers at {servers}: {error}") from None
    sink = (
        KafkaSink(args.predictions_topic, servers, api_version=api_version)
        if args.predictions_topic
        else None
    )
    loop_options = {
        "checkpoint_every": args.checkpoint_every,
        "sink": sink,
        "label_wait": args.label_wait,
        "label_max_age": args.label_max_age,
        "label_max_bytes": args.label_max_bytes,
        "log_every": args.log_every,
        "backend": args.backend,
        "device": args.device,
    }
    if group is None:
        from stream_mtl.connectors.learning_loop import LearningLoop

        loop = LearningLoop.resume_or_start(
            args.checkpoint, lambda: _model_for(tasks, args), source, **loop_options
        )
    else:
        from stream_mtl.connectors.distributed_loop import DistributedLoop

        loop = DistributedLoop.resume_or_start(
            args.checkpoint,
            lambda: _model_for(tasks, args),
            source,
            group=group,
            sync_every=args.sync_every,
            sync_seconds=args.sync_seconds,
            idle_timeout=args.idle_exit,
            lr_scaling=args.lr_scaling,
            **loop_options,
        )
    if loop.resumed:
        _check_resumed(loop.model, tasks, args)

    def stop(number: int, _frame: object) -> None:
        logger.info("%s: checkpointing and stopping", signal.Signals(number).name)
        loop.stop()
        if group is not None:  # a worker whose peer is gone cannot end its round: exit
            deadline = threading.Timer(STOP_GRACE_SECONDS, os._exit, (1,))
            deadline.daemon = True  # never what keeps a finished worker alive
            deadline.start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    logger.info(
        "learning from %s as group %r; checkpoint %s", args.source, args.group, args.checkpoint
    )
    try:
        loop.run()
    finally:
        if group is not None:
            group.close()
    stats = loop.stats()
    logger.info(
        "stopped: %s consumed, %s learned, %s set aside; checkpoint %s",
        f"{stats['consumed']:,}",
        f"{stats['learned']:,}",
        f"{stats['set_aside']:,}",
        args.checkpoint,
    )
    return 0


def _in_worker_group() -> bool:
    """Whether this process is one of the workers torchrun started."""
    return all(name in os.environ for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR"))


def _worker_group(device: str):
    from stream_mtl.distributed import TorchGroup

    group = TorchGroup(device=device)
    for handler in logging.getLogger().handlers:  # say which worker says what
        handler.setFormatter(
            logging.Formatter(
                f"%(asctime)s %(levelname)s [worker {group.rank}/{group.size}] "
                "%(name)s: %(message)s"
            )
        )
    return group


def _launch_workers(args: argparse.Namespace) -> int:
    """`run --workers N`: this command again, as N workers under torchrun (one machine;
    restarted together from the last aligned checkpoint when one dies)."""
    if importlib.util.find_spec("torch") is None:
        raise ImportError("--workers needs torch: pip install 'stream-mtl[torch]'")
    argv = sys.argv[1:]
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={args.workers}",
        f"--max-restarts={args.max_restarts}",
        "-m",
        "stream_mtl",
        *argv,
    ]
    logger.info("starting %d workers: %s", args.workers, " ".join(command))
    launcher = subprocess.Popen(command)

    def stop(number: int, _frame: object) -> None:
        # To the workers, not to torchrun: each stops at the end of its round, the
        # group writes an aligned checkpoint, and torchrun sees them all finish.
        logger.info("%s: stopping the workers", signal.Signals(number).name)
        for pid in _children(launcher.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    return launcher.wait()


def _children(pid: int) -> list[int]:
    """The processes `pid` started (Linux)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(child) for child in text.split()]


def _serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from stream_mtl.http_app import create_app
    except ImportError as error:
        raise ValueError(
            f"stream-mtl serve needs the serve extra ({error.name} is missing): "
            "pip install 'stream-mtl[serve]'"
        ) from None
    from stream_mtl.http_limits import Limits
    from stream_mtl.learning_thread import resumed_from

    path = Path(args.checkpoint)
    tasks = _tasks(args.task or [])
    # held features, the log's records learned, the topic's position at the last checkpoint
    resumed: dict = {"checkpoint": path}
    if path.exists():
        model, resumed = resumed_from(path, backend=args.backend)
        _check_resumed(model, tasks, args)
    elif tasks:
        model = _model_for(tasks, args)
    else:
        raise ValueError(f"no checkpoint at {str(path)!r}: give the tasks with --task NAME:KIND")
    feed = _kafka_feed(args) if args.source else None
    if args.workers > 1 and args.learner != "process":
        raise ValueError("--workers needs --learner process: the workers share its snapshots")
    if args.learner_nice is not None and args.learner != "process":
        raise ValueError("--learner-nice needs --learner process: a thread shares the server's")
    for option, value in (
        ("--label-grace", args.label_grace),
        ("--max-late-labels", args.max_late_labels),
    ):
        if value is not None and args.workers == 1:
            raise ValueError(f"{option} needs --workers 2 or more: with one, no label overtakes")
    listener = _listen(args.host, args.port)  # before anything starts or writes
    folder = Path(tempfile.mkdtemp(prefix="stream-mtl-serve-"))  # the workers' rendezvous
    # block_timeout=0: a full learn queue answers 503 at once; the event loop never waits.
    try:
        service = _start_service(
            model,
            feed,
            process=args.learner == "process",
            **({} if args.learner_nice is None else {"nice": args.learner_nice}),
            checkpoint_seconds=args.checkpoint_seconds,
            checkpoint_every=args.checkpoint_every,
            block_timeout=0,
            label_wait=args.label_wait,
            label_max_age=args.label_max_age,
            label_max_bytes=args.label_max_bytes,
            close_timeout=args.close_timeout,
            wal=None if args.no_wal else path.with_name(path.name + ".wal"),
            **resumed,
            **({"listen": folder / "learner.sock"} if args.workers > 1 else {}),
            **({} if args.label_grace is None else {"label_grace": args.label_grace}),
            **({} if args.max_late_labels is None else {"max_late_labels": args.max_late_labels}),
        )
    except BaseException:
        listener.close()
        shutil.rmtree(folder, ignore_errors=True)
        raise
    logger.info(
        "serving %s on http://%s:%d (%d worker(s))",
        sorted(model.tasks),
        args.host,
        args.port,
        args.workers,
    )
    limits = Limits(
        args.max_body_bytes, args.max_rows, args.max_row_features, args.max_string_length
    )
    token = args.learn_token or os.environ.get(LEARN_TOKEN_VARIABLE) or None
    try:
        if args.workers == 1:
            # uvicorn turns SIGTERM and SIGINT into a shutdown, which closes the service:
            # the queue is learned and a checkpoint written before the process exits.
            app = create_app(service, limits, learn_token=token)
            uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[listener])
        else:
            _serve_workers(service, folder, listener, limits, token, args.workers)
    finally:
        service.close()  # (once the workers are gone) learns what is queued, checkpoints
        shutil.rmtree(folder, ignore_errors=True)
    logger.info("stopped; checkpoint %s", path)
    return 0


def _start_service(model: MultiTaskLearner, feed, **options: typing.Any):
    """An `OnlineModel` learning `model` (and the topic of `feed`, if any)."""
    from stream_mtl.service import OnlineModel

    if feed is None:
        return OnlineModel(model, **options)
    from kafka.errors import KafkaError

    try:
        return OnlineModel(model, feed=feed, **options)
    except KafkaError as error:
        servers = feed.source_options["bootstrap_servers"]
        raise ValueError(f"no Kafka broker answers at {servers}: {error!r}") from None


def _kafka_feed(args: argparse.Namespace):
    """serve --source: the topic the learner consumes while the service serves."""
    from stream_mtl.connectors.kafka_feed import KafkaFeed

    topic, options = _kafka_source_options(args)
    return KafkaFeed(topic, predictions_topic=args.predictions_topic, **options)


def _serve_workers(service, folder: Path, listener, limits, token, workers: int) -> None:
    """uvicorn's worker processes on `listener`, each with its own link to the learner
    process of `service` (`http_app.worker_app`); returns once SIGTERM stopped them."""
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    from stream_mtl.http_app import WORKER_SETUP

    metrics = folder / "metrics"  # prometheus_client's multiprocess mode: one file each
    metrics.mkdir()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics)  # the workers inherit both
    os.environ[WORKER_SETUP] = json.dumps(
        {
            "board": service.board,
            "address": str(folder / "learner.sock"),
            "limits": limits._asdict(),
            "learn_token": token,
        }
    )
    config = uvicorn.Config(
        "stream_mtl.http_app:worker_app", factory=True, workers=workers, log_level="warning"
    )
    Multiprocess(config, sockets=[listener]).run()


def _listen(host: str, port: int) -> socket.socket:
    """A socket bound to (host, port), or a clear error when the port is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Answers go out at once: without it, a response written in two parts waits for the
    # client's delayed ACK of the first (40 ms on Linux) on a kept-alive connection.
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        listener.bind((host, port))
    except OSError as error:
        listener.close()
        raise ValueError(f"cannot listen on {host}:{port}: {error.strerror}") from None
    return listener


def _model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, help="seed of a new model's weights (default 0)")
    parser.add_argument(
        "--backend",
        choices=["numpy", "torch"],
        help="numpy (default) or torch; a checkpoint loads into either",
    )
    parser.add_argument("--hidden", type=_hidden_option, help="trunk widths (default 64,64)")
    parser.add_argument(
        "--max-features",
        type=_positive_int,
        help="most distinct features a new model takes in; more are refused (default 1000)",
    )
    parser.add_argument(
        "--sharing",
        choices=["hard", "soft"],
        help="hard: one trunk for all tasks (default); soft: a trunk per task, pulled "
        "toward their mean",
    )
    parser.add_argument(
        "--soft-strength",
        type=float,
        help="with --sharing soft, the pull toward the mean trunk (default 1; 0: "
        "independent models)",
    )


def _common_options(parser: argparse.ArgumentParser, every: int | None, report: str) -> None:
    _model_options(parser)
    parser.add_argument(
        "--every",
        type=int,
        default=every,
        help=f"rolling-window length (default {every or 'a twentieth of the file, 50 to 1,000'})",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        help="evaluate in mini-batches of this many observations, each predicted then "
        "learned with learn_many (for the torch backend; default: one by one)",
    )
    parser.add_argument("--report", default=report, help=f"report folder (default {report})")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stream-mtl", description="Online multi-task learning on data streams."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    parser.add_argument("--version", action="version", version=f"stream-mtl {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    # -v after the command as well: given there, it sets what the top-level option set
    verbosity = argparse.ArgumentParser(add_help=False)
    verbosity.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log progress"
    )

    demo = commands.add_parser(
        "demo",
        parents=[verbosity],
        help="prequential runs on a built-in drifting stream and the bundled data sets",
    )
    demo.add_argument("--n", type=int, default=20_000, help="synthetic observations (20,000)")
    demo.add_argument(
        "--label-share",
        type=float,
        default=0.5,
        help="share of tasks labelled in each synthetic observation (default 0.5)",
    )
    demo.add_argument(
        "--sets",
        type=lambda text: text.split(","),
        default=["synthetic", "sarcos", "landmine", "school"],
        help="which runs, comma-separated (default synthetic,sarcos,landmine,school)",
    )
    _common_options(demo, every=1000, report="reports/demo")
    demo.set_defaults(run=_demo)

    evaluate = commands.add_parser(
        "evaluate",
        parents=[verbosity],
        help="prequential run, with baselines, on a JSON Lines or CSV file",
    )
    evaluate.add_argument("--source", required=True, help="jsonl:PATH or csv:PATH")
    evaluate.add_argument(
        "--task",
        type=_task_option,
        action="append",
        required=True,
        help="NAME:KIND, one per task (KIND: regression, binary, multiclass)",
    )
    evaluate.add_argument(
        "--features",
        type=_names_option,
        help="comma-separated fields to use as features (default: every field not a task's "
        "label or excluded)",
    )
    evaluate.add_argument(
        "--exclude",
        type=_names_option,
        help="comma-separated fields that are neither features nor labels (for example the "
        "labels of tasks not evaluated)",
    )
    _common_options(evaluate, every=None, report="reports/evaluate")
    evaluate.set_defaults(run=_evaluate)

    run = commands.add_parser(
        "run",
        parents=[verbosity],
        help="learn from a Kafka topic until stopped, with checkpoints and exactly-once",
    )
    run.add_argument("--source", required=True, help="kafka://HOST:PORT/TOPIC")
    run.add_argument(
        "--task",
        type=_task_option,
        action="append",
        help="NAME:KIND, one per task; not needed to resume from a checkpoint",
    )
    run.add_argument("--checkpoint", required=True, help="checkpoint file, resumed if present")
    run.add_argument(
        "--checkpoint-every",
        type=int,
        default=10_000,
        help="messages between checkpoints (default 10,000); also on idle and on stop",
    )
    _kafka_options(run)
    _label_options(run, max_age=None)
    run.add_argument(
        "--idle-exit", type=float, help="stop after the topic is idle this many seconds"
    )
    run.add_argument("--log-every", type=float, default=10.0, help="seconds between log lines")
    _model_options(run)
    run.add_argument("--device", default="cpu", help="torch backend: cpu, cuda, cuda:N, auto")
    workers = run.add_argument_group(
        "several workers, one model (torch.distributed; see docs/scaling.md)"
    )
    workers.add_argument(
        "--workers",
        type=_positive_int,
        help="learn with N worker processes on this machine, each reading the partitions "
        "p with p %% N == its rank (runs torchrun; default: one process, no torch needed)",
    )
    workers.add_argument(
        "--sync-every",
        type=_positive_int,
        default=2_000,
        help="a worker that learned this many messages makes the workers average their "
        "models (default 2,000)",
    )
    workers.add_argument(
        "--sync-seconds",
        type=float,
        default=5.0,
        help="... as do this many seconds since the last average (default 5)",
    )
    workers.add_argument(
        "--lr-scaling",
        choices=("linear", "none"),
        default="linear",
        help="linear: each worker steps with N times the model's learning rate, so that "
        "the averaged model learns as much per message as one worker would (default); "
        "none: with the model's own",
    )
    workers.add_argument(
        "--max-restarts",
        type=int,
        default=3,
        help="times torchrun starts the workers again from the last aligned checkpoint "
        "when one dies (default 3)",
    )
    run.set_defaults(run=_run)

    serve = commands.add_parser(
        "serve",
        parents=[verbosity],
        help="an HTTP service that predicts and keeps learning (needs the serve extra)",
    )
    serve.add_argument("--checkpoint", required=True, help="checkpoint file, loaded if present")
    serve.add_argument(
        "--task", type=_task_option, action="append", help="NAME:KIND, for a new model"
    )
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--checkpoint-seconds",
        type=float,
        default=60.0,
        help="seconds between checkpoints (default 60); also on stop",
    )
    serve.add_argument(
        "--checkpoint-every",
        type=_positive_int,
        help="also checkpoint after this many observations learned: with --no-wal, a "
        "kill loses at most this many learned ones and what is queued",
    )
    serve.add_argument(
        "--no-wal",
        action="store_true",
        help="no write-ahead log: a 202 is then in memory only until the next checkpoint "
        "(default: the log is the folder CHECKPOINT.wal, and a 202 means on disk)",
    )
    serve.add_argument(
        "--close-timeout",
        type=float,
        default=25.0,
        help="seconds a stop may spend learning what is queued; the rest is logged as lost "
        "(default 25, inside a 30 s grace period)",
    )
    serve.add_argument(
        "--learn-token",
        help="POST /learn then needs 'Authorization: Bearer TOKEN'; the environment "
        f"variable {LEARN_TOKEN_VARIABLE} does the same without showing it to ps",
    )
    serve.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        help="server processes, each predicting from the one learner process's snapshots "
        "(default 1)",
    )
    serve.add_argument(
        "--label-grace",
        type=float,
        metavar="SECONDS",
        help="with --workers: how long a label that reaches the learner before the features "
        "its key was predicted with (sent by another worker) waits for them (default 0.1)",
    )
    serve.add_argument(
        "--max-late-labels",
        type=int,
        metavar="N",
        help="with --workers: labels that wait so at once, at most (default 16, up to 256); "
        "beyond, one is refused at once",
    )
    serve.add_argument(
        "--learner",
        choices=["process", "thread"],
        default="process",
        help="learn in a child process, so that predictions never wait for the GIL "
        "(default), or on a thread of the server's process",
    )
    serve.add_argument(
        "--learner-nice",
        type=int,
        choices=range(20),
        metavar="0-19",
        help="added to the learner process's nice value (default 19, the lowest priority: "
        "where learning and serving compete for a core, predictions go first)",
    )
    serve.add_argument(
        "--source",
        help="kafka://HOST:PORT/TOPIC: also learn this topic while serving, each message "
        "once across restarts (its offsets are kept in the checkpoint)",
    )
    _kafka_options(serve)
    _label_options(serve, max_age=3600.0)
    _request_limits(serve)
    _model_options(serve)
    serve.set_defaults(run=_serve)
    return parser


def _kafka_options(parser: argparse.ArgumentParser) -> None:
    """How to read a Kafka topic: the same in run and serve --source."""
    parser.add_argument("--group", default="stream-mtl", help="consumer group (default stream-mtl)")
    parser.add_argument("--predictions-topic", help="send each prediction here, key preserved")
    parser.add_argument("--dead-letter-topic", help="send malformed messages here, with the reason")
    parser.add_argument("--api-version", help="broker version, e.g. 0.9 (default: detected)")
    parser.add_argument("--format", default="json", choices=["json", "msgpack"])
    parser.add_argument(
        "--max-message-bytes",
        type=int,
        default=1_000_000,
        help="larger messages go to the dead-letter topic unread (default 1,000,000; it "
        "also sets the fetch size)",
    )
    parser.add_argument(
        "--connect-timeout",
        type=float,
        default=30.0,
        help="seconds to wait for the broker at start (default 30)",
    )
    parser.add_argument(
        "--session-timeout",
        type=float,
        help="seconds before the group gives a silent member's partitions to another "
        "(default: kafka-python's)",
    )


def _request_limits(parser: argparse.ArgumentParser) -> None:
    """What one HTTP request may hold (`http_app.Limits`)."""
    from stream_mtl.http_limits import Limits

    for field, what in (
        ("body_bytes", "bytes in a request body (413 beyond)"),
        ("rows", "rows in one /predict (413 beyond)"),
        ("row_features", "features in one row, or labels in one request (413 beyond)"),
        ("string_length", "characters in a name, key, label or string value (422 beyond)"),
    ):
        default = Limits._field_defaults[field]
        parser.add_argument(
            f"--max-{field.replace('_', '-')}",
            dest=f"max_{field}",
            type=_positive_int,
            default=default,
            help=f"most {what}; default {default:,}",
        )


def _label_options(parser: argparse.ArgumentParser, max_age: float | None) -> None:
    """How long features sent under a key wait for their labels: the same in run and serve."""
    parser.add_argument(
        "--label-wait",
        type=int,
        default=100_000,
        help="features held under a key expire after this many later ones (default 100,000)",
    )
    parser.add_argument(
        "--label-max-age",
        type=float,
        default=max_age,
        help="seconds features held under a key wait for their labels "
        f"(default {'no limit' if max_age is None else f'{max_age:g}'})",
    )
    parser.add_argument(
        "--label-max-bytes",
        type=_positive_int,
        default=100_000_000,
        help="memory that features held under keys may take, oldest expiring first "
        "(default 100,000,000)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    verbose = args.verbose or args.command in ("run", "serve")  # long-running: log progress
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("kafka").setLevel(logging.WARNING)  # its INFO is per connection
    try:
        return args.run(args)
    except (ValueError, TypeError, FileNotFoundError, ImportError) as error:
        print(f"stream-mtl: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
