"""The mixture of each task's heads: Hedge on the mixture's linearised loss.

Each task's prediction mixes its heads - the linear heads on the inputs (depth 0) and
the head on each trunk layer - with weights alpha[k, h] that sum to 1 (Hedge
Backpropagation: Sahoo, Pham, Lu & Hoi, "Online Deep Learning: Learning Deep Neural
Networks on the Fly", IJCAI 2018). A task starts with its weight spread over its linear
heads, the ones that are good soonest, but for the floor.

After each step every labelled task's weights take a Hedge step,
alpha[k, h] <- alpha[k, h] * exp(-eta_k g[k, h]), then are renormalised and floored at
`floor / heads`. The paper uses a fixed eta (its discount beta = exp(-eta)); here eta_k
adapts to the scale of task k's g, as AdaHedge does (de Rooij, van Erven, Grunwald &
Koolen (2014), "Follow the leader if you can, hedge if you must"):
eta_k = rate * sqrt(ln(heads) / S_k), with S_k a running sum of the squared range of
g[k, :] over k's labels, discounted by `memory` so that eta never decays to nothing and
the mixture can follow a change. A task with few labels moves its mixture fast; one
with many, steadily; and the rate means the same on every scale of loss. The paper
feeds Hedge each head's own loss, which makes the mixture
select one head. Here g[k, h] is the derivative of the loss of the *mixed* prediction
with respect to alpha[k, h] - the exponentiated-gradient algorithm of Kivinen &
Warmuth (1997), "Exponentiated gradient versus gradient descent for linear
predictors" - so that the mixture moves toward the heads whose predictions lower its
loss and converges to the best convex combination of them, not only to the best head
(on the SARCOS stream, with one linear head of forgetting 0.99 and two deep heads:
normalised MSE 0.063, against 0.067 when Hedge is fed each head's own loss). For a
mini-batch g is summed over its rows.

Unlike the paper, where head h learns from alpha[k, h] times its loss, every head here
learns from its own full loss whatever its weight (only the trunk's gradient is mixed
by alpha), so a head that is behind on a short stream keeps learning and takes over
when it gets ahead. The floor therefore only keeps every weight within reach, so that
the mixture can move back after a change; each point of it on a poor head costs error,
so it is small.
"""

from __future__ import annotations

import math

import numpy as np

from stream_mtl.backends.kernels import hedge_step, kernel_array


class Hedge:
    """Per-task mixture weights over `n_heads` heads; the first `n_first` start with them.

    >>> hedge = Hedge(n_heads=3, floor=0.3, n_first=1)
    >>> hedge.add_task()
    >>> hedge.alpha.round(3).tolist()
    [[0.8, 0.1, 0.1]]
    >>> for _ in range(20):  # the mixture's loss falls fastest along head 1
    ...     hedge.update(np.array([[1.0, -0.5, 0.5]]), np.array([True]))
    >>> hedge.alpha.round(3).tolist()
    [[0.1, 0.8, 0.1]]
    """

    def __init__(
        self,
        n_heads: int,
        rate: float = 1.0,
        floor: float = 0.01,
        n_first: int = 1,
        memory: float = 0.999,
        compiled: bool = True,
    ) -> None:
        self.n_heads = n_heads
        self.compiled = compiled  # `update` by `kernels.hedge_step`, else NumPy (its reference)
        self.rate = rate
        self.floor = floor
        self.n_first = max(1, min(n_first, n_heads))
        self.memory = memory
        self.alpha = np.zeros((0, n_heads))
        self.scale = np.zeros(0)  # per task: S_k, the discounted sum of squared ranges

    def add_task(self) -> None:
        fresh = np.zeros((1, self.n_heads))
        fresh[0, : self.n_first] = 1.0 / self.n_first
        self.alpha = np.vstack([self.alpha, fresh])
        self.scale = np.append(self.scale, 0.0)
        self._set(np.array([len(self.alpha) - 1]), fresh)

    def update(self, gradient: np.ndarray, labelled: np.ndarray) -> None:
        """One Hedge step on each labelled task's loss gradient (tasks x heads)."""
        if self.n_heads == 1 or not labelled.any():
            return
        if self.compiled:
            hedge_step(
                self.alpha,
                self.scale,
                kernel_array(gradient),
                kernel_array(labelled, bool),
                float(self.rate),
                float(self.memory),
                self.floor / self.n_heads,
            )
            return
        rows = np.flatnonzero(labelled)
        g = gradient[rows]
        spread = g.max(axis=1) - g.min(axis=1)
        self.scale[rows] = self.memory * self.scale[rows] + spread * spread
        eta = self.rate * np.sqrt(math.log(self.n_heads) / np.maximum(self.scale[rows], 1e-12))
        log_alpha = np.log(self.alpha[rows]) - eta[:, None] * g
        log_alpha -= log_alpha.max(axis=1, keepdims=True)
        alpha = np.exp(log_alpha)
        alpha /= alpha.sum(axis=1, keepdims=True)
        self._set(rows, alpha)

    def favour(self, task: int, head: int, share: float) -> None:
        """Move `share` of a task's mixture onto one head (after a drift, say)."""
        alpha = self.alpha[task] * (1.0 - share)
        alpha[head] += share
        self._set(np.array([task]), alpha[None, :])

    def _set(self, rows: np.ndarray, alpha: np.ndarray) -> None:
        """Store normalised `alpha` with every weight below the floor raised to it, the
        others scaled down to make room."""
        floor = self.floor / self.n_heads
        low = alpha < floor
        free = np.where(low, 0.0, alpha)
        room = 1.0 - floor * low.sum(axis=1)
        self.alpha[rows] = np.where(low, floor, free * (room / free.sum(axis=1))[:, None])
