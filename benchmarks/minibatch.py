"""Mini-batch throughput: torch learn_many against the NumPy backend's learn_one, side by side.

The reference model of benchmarks/throughput.py (20 features, a (64, 64) trunk, 3
regression tasks, Adam). For each batch size, `learn_many` on DataFrames (the whole
learner: label checks, feature scaling, the copy to the device, the step) on the CPU
and, where CUDA is present, on the GPU; in the same run, the NumPy backend's
`learn_one` rate, and the same MLP in plain torch (`RawTorch`), which `learn_many` is
held to. Systems take turns in rounds; medians are reported. Prints a table,
writes benchmarks/results/minibatch.json.

Usage: python -m benchmarks.minibatch [--rounds 5] [--sizes 32 256 1024 4096 8192]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import pandas as pd
import torch

from benchmarks.throughput import TASKS, make_stream, write_result
from stream_mtl import MultiTaskLearner, Regression

HERE = Path(__file__).resolve().parent


def model(backend: str, device: str = "cpu") -> MultiTaskLearner:
    tasks = {t: Regression() for t in TASKS}
    return MultiTaskLearner(tasks=tasks, hidden=(64, 64), backend=backend, device=device, seed=0)


class RawTorch:
    """The same trunk and deep heads in plain torch: an MLP of (64, 64) with one linear
    head per task on each layer, Adam (lr 1e-3) on the mean squared error of the last
    layer's heads plus the first's, one step per batch from float32 arrays. What the
    learner's `learn_many` is measured against (it adds label checks, feature and target
    scaling, the second-order heads, the mixture, weighting and drift detection)."""

    def __init__(self, device: str) -> None:
        torch.manual_seed(0)
        self.device = device
        self.layers = torch.nn.ModuleList([torch.nn.Linear(20, 64), torch.nn.Linear(64, 64)]).to(
            device
        )
        self.heads = torch.nn.ModuleList(
            [torch.nn.Linear(64, len(TASKS)), torch.nn.Linear(64, len(TASKS))]
        ).to(device)
        parameters = [*self.layers.parameters(), *self.heads.parameters()]
        self.optimizer = torch.optim.Adam(parameters, lr=1e-3)

    def learn(self, X, Y) -> None:
        x = torch.from_numpy(X).to(self.device, non_blocking=True)
        y = torch.from_numpy(Y).to(self.device, non_blocking=True)
        loss = 0.0
        for layer, head in zip(self.layers, self.heads):
            x = torch.relu(layer(x))
            loss = loss + torch.nn.functional.mse_loss(head(x), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()


def mixed_precision_cost(device: str, batch: int = 256, n: int = 16384) -> dict:
    """Held-out error of a model trained in bf16 autocast against one trained in float32."""
    X, Y = make_stream(n + 2048, seed=1)
    columns = [f"x{j}" for j in range(X.shape[1])]
    train_x, test_x = pd.DataFrame(X[:n], columns=columns), pd.DataFrame(X[n:], columns=columns)
    train_y = pd.DataFrame(Y[:n], columns=TASKS)
    errors = {}
    for mixed in (False, True):
        tasks = {t: Regression() for t in TASKS}
        learner = MultiTaskLearner(
            tasks=tasks, hidden=(64, 64), backend="torch", device=device, seed=0,
            mixed_precision=mixed,
        )  # fmt: skip
        for start in range(0, n, batch):
            learner.learn_many(
                train_x.iloc[start : start + batch], train_y.iloc[start : start + batch]
            )
        predictions = learner.predict_many(test_x).to_numpy()
        errors[mixed] = float(
            ((predictions - Y[n:]) ** 2).mean(axis=0).mean() / Y[n:].var(axis=0).mean()
        )
    return {
        "device": device, "batch": batch, "train_observations": n,
        "nmse_float32": errors[False], "nmse_bf16_autocast": errors[True],
        "relative_cost": errors[True] / errors[False] - 1.0,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 128, 512, 1024, 4096, 8192])
    parser.add_argument("--observations", type=int, default=16384, help="per system and round")
    parser.add_argument("--one-observations", type=int, default=2000, help="learn_one per round")
    parser.add_argument("--out", default=str(HERE / "results" / "minibatch.json"))
    args = parser.parse_args(argv)

    X, Y = make_stream(args.observations, seed=0)
    frame_x = pd.DataFrame(X, columns=[f"x{j}" for j in range(X.shape[1])])
    frame_y = pd.DataFrame(Y, columns=TASKS)
    xs = frame_x.to_dict(orient="records")
    ys = frame_y.to_dict(orient="records")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    systems: dict = {("numpy learn_one", "cpu", 1): model("numpy")}
    for device in devices:
        for size in args.sizes:
            systems[("torch learn_many", device, size)] = model("torch", device)
            systems[("raw torch", device, size)] = RawTorch(device)
    X32, Y32 = X.astype("float32"), Y.astype("float32")

    def run(key) -> float:
        name, device, size = key
        learner = systems[key]
        if name == "numpy learn_one":
            began = time.perf_counter()
            for x, y in zip(xs[: args.one_observations], ys[: args.one_observations]):
                learner.learn_one(x, y)
            return args.one_observations / (time.perf_counter() - began)
        n = (args.observations // size) * size
        if device == "cuda":
            torch.cuda.synchronize()
        began = time.perf_counter()
        for start in range(0, n, size):
            if name == "raw torch":
                learner.learn(X32[start : start + size], Y32[start : start + size])
                continue
            learner.learn_many(
                frame_x.iloc[start : start + size], frame_y.iloc[start : start + size]
            )
        if device == "cuda":
            torch.cuda.synchronize()
        return n / (time.perf_counter() - began)

    for key in systems:  # warm-up
        run(key)
    rates: dict = {key: [] for key in systems}
    for _ in range(args.rounds):
        for key in systems:
            rates[key].append(run(key))

    baseline = rates[("numpy learn_one", "cpu", 1)]
    rows = []
    for key, values in rates.items():
        name, device, size = key
        ratios = [mine / base for mine, base in zip(values, baseline)]
        rows.append({
            "system": name, "device": device, "batch": size,
            "observations_per_second": statistics.median(values),
            "us_per_observation": 1e6 / statistics.median(values),
            "x_numpy_learn_one": statistics.median(ratios),
        })  # fmt: skip
    print(f"\nlearning rate of the reference model, median of {args.rounds} interleaved rounds")
    print(f"{'system':<18}{'device':<8}{'batch':>7}{'obs/s':>12}{'us/obs':>9}{'x learn_one':>13}")
    for row in rows:
        print(
            f"{row['system']:<18}{row['device']:<8}{row['batch']:>7}"
            f"{row['observations_per_second']:>12,.0f}{row['us_per_observation']:>9.2f}"
            f"{row['x_numpy_learn_one']:>13.1f}"
        )
    print("\ntorch learn_many's time per observation over raw torch's (issue 14: <= 1.5x)")
    raw = {(r["device"], r["batch"]): r for r in rows if r["system"] == "raw torch"}
    for row in rows:
        if row["system"] == "torch learn_many":
            plain = raw[row["device"], row["batch"]]
            row["x_raw_torch_time"] = row["us_per_observation"] / plain["us_per_observation"]
            print(f"{row['device']:<8}{row['batch']:>7}{row['x_raw_torch_time']:>10.2f}x")
    costs = [mixed_precision_cost(device) for device in devices]
    print("\nbf16 autocast: held-out normalised MSE after one pass (batch 256)")
    for cost in costs:
        print(
            f"{cost['device']:<8} float32 {cost['nmse_float32']:.4f}   bf16 "
            f"{cost['nmse_bf16_autocast']:.4f}   cost {cost['relative_cost']:+.1%}"
        )
    threads = torch.get_num_threads()
    print(f"torch threads: {threads}")
    result = {"config": vars(args), "torch_threads": threads, "rows": rows, "bf16": costs}
    return write_result(result, args.out)


if __name__ == "__main__":
    main()
