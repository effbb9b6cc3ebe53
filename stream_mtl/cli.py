"""The `stream-mtl` command. The one core module that may import connectors."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from stream_mtl import Binary, MultiTaskLearner, Regression
from stream_mtl.evaluate import MeanPredictor, prequential

logger = logging.getLogger("stream_mtl")


def _demo(args: argparse.Namespace) -> int:
    from connectors.synthetic import SyntheticStream

    kinds = {"regression": Regression, "binary": Binary}
    stream = SyntheticStream(n=args.n, label_share=args.label_share, seed=args.seed)
    tasks = {name: kinds[kind]() for name, kind in stream.tasks.items()}
    print(
        f"Prequential run on a synthetic stream: {args.n:,} observations, "
        f"{len(tasks)} tasks sharing a non-linear structure, "
        f"{args.label_share:.0%} of tasks labelled per observation."
    )
    model = MultiTaskLearner(tasks=tasks, hidden=(64, 64), backend=args.backend, seed=args.seed)
    report = prequential(model, stream, every=args.every, progress=False)
    baseline = prequential(MeanPredictor(tasks), stream, every=args.every, progress=False)

    print(f"\n{'task':<8}{'metric':<10}{'model':>12}{'predict the mean':>19}")
    for name in tasks:
        for metric, value in report.metrics[name].items():
            print(f"{name:<8}{metric:<10}{value:>12.4f}{baseline.metrics[name][metric]:>19.4f}")
    print(f"\nmodel throughput: {report.throughput:,.0f} observations/s (test then train)")
    path = report.save(Path(args.report))
    print(f"report written to {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stream-mtl", description="Online multi-task learning on data streams."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo", help="prequential evaluation on a built-in multi-task stream"
    )
    demo.add_argument("--n", type=int, default=20_000, help="observations (default 20,000)")
    demo.add_argument(
        "--label-share",
        type=float,
        default=0.5,
        help="share of tasks labelled in each observation (default 0.5)",
    )
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--backend", default="numpy", choices=["numpy", "torch"])
    demo.add_argument("--every", type=int, default=1000, help="rolling-window length")
    demo.add_argument("--report", default="reports/demo", help="folder for report.json")
    demo.set_defaults(run=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    try:
        return args.run(args)
    except (ValueError, TypeError, FileNotFoundError) as error:
        print(f"stream-mtl: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
