"""Runs deep-river's MultiTargetRegressor block by block, for benchmarks/throughput.py.

Started in deep-river's own virtualenv (deep-river 0.3.4 pins River 0.25). Reads the
stream from an .npz file, then on each line "a b" on stdin runs predict_one + learn_one
over rows a..b and prints the seconds it took.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch
from deep_river.regression.multioutput import MultiTargetRegressor
from torch import nn


class SharedMLP(nn.Module):
    def __init__(self, n_features: int, n_outputs: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(n_features, 64),
            nn.ReLU(),
            nn.Linear(64, 64),
            nn.ReLU(),
            nn.Linear(64, n_outputs),
        )

    def forward(self, x):
        return self.net(x)


def main() -> None:
    torch.set_num_threads(1)
    data = np.load(sys.argv[1], allow_pickle=False)
    X, Y = data["X"], data["Y"]
    xs = [{f"x{j}": float(v) for j, v in enumerate(row)} for row in X]
    ys = [{f"t{k}": float(v) for k, v in enumerate(row)} for row in Y]
    model = MultiTargetRegressor(
        module=SharedMLP(X.shape[1], Y.shape[1]), loss_fn="mse", optimizer_fn="adam", lr=1e-3
    )
    print("ready", flush=True)
    for line in sys.stdin:
        start, stop = map(int, line.split())
        began = time.perf_counter()
        for i in range(start, stop):
            model.predict_one(xs[i])
            model.learn_one(xs[i], ys[i])
        print(time.perf_counter() - began, flush=True)


if __name__ == "__main__":
    main()
