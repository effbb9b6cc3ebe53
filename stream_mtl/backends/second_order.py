"""Depth-0 heads: a linear model per head output on the scaled inputs, learned second-order.

Every output o keeps weights w_o over [1, x] and a matrix P_o, the inverse of its
running, exponentially forgotten loss curvature. One observation with gradient g and
curvature h of the loss at the current output z = w_o . [1, x] (see `heads`) takes
one Newton step:

    u = P_o x,   s = x' u
    P_o <- (P_o - h u u' / (lambda + h s)) * (1 / lambda)
    w_o <- w_o - g u / (lambda + h s)          (= w_o - g P_o x with the new P_o)

For regression (h = 1, g = z - t) this is exactly recursive least squares with
forgetting factor lambda. For binary and multiclass outputs it is an online Newton
step on the logistic (cross-entropy) loss with the exact per-output curvature p (1 - p),
which is the extended Kalman filter for logistic regression; a multiclass head keeps
one P per class (the block-diagonal part of the softmax Hessian). It converges in a
few dozen observations where first-order SGD needs thousands, and its probabilities
stay calibrated.

Forgetting makes conventional RLS unstable in two ways, both handled here. P grows
without bound in directions the inputs stop exciting ("wind-up"; a feature that stays
constant): no coordinate may become more uncertain than under the prior, so after each
step, where P_o[j, j] > prior, row and column j are scaled by sqrt(prior / P_o[j, j]), a
congruence that keeps P_o positive definite. And rounding makes P_o slightly
asymmetric, after which its antisymmetric part grows like lambda^-t (the update only
subtracts symmetric terms) until P_o is indefinite and the weights explode (seen after
4,400 steps with lambda = 0.99): the rank-one step keeps a symmetric P_o exactly
symmetric (it subtracts a multiple of u u', whose (i, j) and (j, i) entries are the
same product, and the clip multiplies entry (i, j) by the product s_i s_j), and P_o is
symmetrised after a batch's step (a matrix inverse is symmetric only up to rounding).
All of this runs in float64 whatever the model's dtype. One row's step and the outputs
run as compiled kernels (`kernels`); this NumPy code is their reference (`compiled=False`).

A mini-batch takes one Newton step with the batch's curvature in information form:
A_o = lambda^m P_o^-1 + sum_i h_i x_i x_i' over the m rows labelling o, P_o = A_o^-1,
w_o <- w_o - P_o sum_i g_i x_i. For one row it equals the rank-one step above; for
regression with lambda = 1 it equals row-by-row RLS exactly.

References: Haykin, *Adaptive Filter Theory*, ch. 10 (RLS with forgetting); Hazan,
Agarwal & Kale (2007), "Logarithmic regret algorithms for online convex
optimization" (the online Newton step).
"""

from __future__ import annotations

import numpy as np

from stream_mtl.backends.kernels import kernel_array, linear_outputs, second_order_row_step


class SecondOrderHeads:
    """The depth-0 head of every output, with its curvature state (see the module).

    >>> heads = SecondOrderHeads(forgetting=1.0, prior=100.0)
    >>> heads.resize(n_inputs=1, old=[], new=[(0, 1)])
    >>> rng = np.random.default_rng(0)
    >>> for _ in range(20):
    ...     x = rng.normal(size=(1, 1))
    ...     z = heads.outputs(x)
    ...     g = z - (3.0 * x - 1.0)  # gradient of 0.5 (z - t)^2
    ...     heads.step(x, g, np.ones((1, 1)), np.ones((1, 1), bool))
    >>> heads.weight.round(3).tolist()  # bias, slope
    [[-1.0, 3.0]]
    """

    def __init__(
        self, forgetting: float = 0.999, prior: float = 1.0, compiled: bool = True
    ) -> None:
        self.forgetting = float(forgetting)
        self.prior = float(prior)
        self.compiled = compiled  # one row: `kernels.second_order_row_step`, else NumPy
        self.weight = np.zeros((0, 1))  # outputs x (1 + inputs); column 0 is the bias
        self.cov = np.zeros((0, 1, 1))  # outputs x (1 + inputs) x (1 + inputs)

    # Outputs whose covariances are equal share one while the compiled step runs: see
    # `kernels.second_order_row_step`. `_twin[o] = r` means that o's covariance is held
    # in r's place alone; `cov` writes them out when read. After a read (the caller may
    # write) or a NumPy step, the twins are found again, by comparing the covariances,
    # before the next compiled step.

    @property
    def cov(self) -> np.ndarray | None:
        """Per output, the inverse curvature (outputs x (1 + inputs) x (1 + inputs))."""
        if self._cov is not None and self._twins_known:
            followers = np.flatnonzero(self._twin >= 0)
            self._cov[followers] = self._cov[self._twin[followers]]
            self._twin[:] = -1
            self._twins_known = False
        return self._cov

    @cov.setter
    def cov(self, value: np.ndarray | None) -> None:
        self._cov = value
        self._twin = np.full(0 if value is None else len(value), -1)
        self._twins_known = False

    def learning_only(self) -> list[np.ndarray | None]:
        """What only learning reads (left out of a predicting copy), as it is held."""
        return [self._cov]

    def compiled_state(self) -> tuple[np.ndarray, np.ndarray]:
        """The covariances and their twins, for the compiled step."""
        if not self._twins_known:
            self._twin = _twins(self._cov)
            self._twins_known = True
        return self._cov, self._twin

    def resize(self, n_inputs: int, old: list[tuple[int, int]], new: list[tuple[int, int]]) -> None:
        """Lay out for `n_inputs` inputs and the outputs `new` (start, stop per task); the
        tasks of `old` keep their state, in the first rows of their new range. New
        inputs start with weight 0 and prior variance; new outputs start fresh."""
        size = n_inputs + 1
        n_out = new[-1][1] if new else 0
        weight = np.zeros((n_out, size))
        cov = np.zeros((n_out, size, size))
        cov[:, np.arange(size), np.arange(size)] = self.prior
        keep = min(size, self.weight.shape[1])
        for (old_start, old_stop), (start, _) in zip(old, new):
            rows = slice(start, start + old_stop - old_start)
            weight[rows, :keep] = self.weight[old_start:old_stop, :keep]
            cov[rows, :keep, :keep] = self.cov[old_start:old_stop, :keep, :keep]
        self.weight, self.cov = weight, cov

    def outputs(self, X: np.ndarray) -> np.ndarray:
        """Raw outputs (rows x outputs) for encoded inputs X (rows x inputs)."""
        if self.compiled:
            return linear_outputs(kernel_array(X), self.weight)
        # einsum sums each row in the same order whatever the number of rows, so that a
        # batch predicts exactly what its rows would one by one.
        return np.einsum("nd,od->no", X, self.weight[:, 1:]) + self.weight[:, 0]

    def step(self, X: np.ndarray, G: np.ndarray, H: np.ndarray, labelled: np.ndarray) -> None:
        """One Newton step from rows X with per-output gradients G and curvatures H
        (rows x outputs); `labelled` (rows x outputs) marks the rows each output learns."""
        if len(X) == 1 and self.compiled:
            cov, twin = self.compiled_state()
            second_order_row_step(
                cov,
                self.weight,
                kernel_array(X[0]),
                kernel_array(G[0]),
                kernel_array(H[0]),
                kernel_array(labelled[0], bool),
                self.forgetting,
                self.prior,
                twin,
            )
            return
        X1 = np.empty((len(X), X.shape[1] + 1))
        X1[:, 0] = 1.0
        X1[:, 1:] = X
        counts = labelled.sum(axis=0)
        outputs = np.flatnonzero(counts)
        if not len(outputs):
            return
        every = len(outputs) == len(counts)
        P = self.cov if every else self.cov[outputs]
        if len(X) == 1:
            # The rank-one step and the clip keep a symmetric P exactly symmetric (u u' and
            # the clip's scales s s' are).
            P, change = self._rank_one(P, X1[0], G[0, outputs], H[0, outputs])
            _clip_variance(P, self.prior)
        else:
            P, change = self._information_form(
                P, X1, G[:, outputs], H[:, outputs], labelled[:, outputs], counts[outputs]
            )
            _clip_variance(P, self.prior)
            P += np.swapaxes(P, 1, 2).copy()  # the inverse is symmetric only up to rounding
            P *= 0.5
        if P is not self.cov:  # a copy (some outputs) or a new matrix (a batch)
            self.cov[outputs] = P
        if every:
            self.weight -= change
        else:
            self.weight[outputs] -= change

    def _rank_one(
        self, P: np.ndarray, x: np.ndarray, g: np.ndarray, h: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        lam = self.forgetting
        u = P @ x  # outputs x size
        s = np.maximum(u @ x, 0.0)
        denominator = lam + h * s
        P -= (h / denominator)[:, None, None] * (u[:, :, None] * u[:, None, :])
        if lam != 1.0:
            P *= 1.0 / lam  # as the compiled step does (a division per entry costs more)
        return P, (g / denominator)[:, None] * u

    def _information_form(
        self,
        P: np.ndarray,
        X1: np.ndarray,
        G: np.ndarray,
        H: np.ndarray,
        labelled: np.ndarray,
        counts: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        weights = np.where(labelled, H, 0.0)  # rows x outputs
        gradient = np.where(labelled, G, 0.0).T @ X1  # outputs x size
        alike = bool((weights[:, :1] == weights).all())
        if alike and (counts[0] == counts).all() and (P[:1] == P).all():
            # Regression outputs labelled on the same rows keep the same covariance: one
            # update serves them all (the same numbers as one each).
            P = np.repeat(self._updated(P[:1], X1, weights[:, :1], counts[:1]), len(P), axis=0)
        else:
            P = self._updated(P, X1, weights[:, :1] if alike else weights, counts)
        return P, np.einsum("ode,oe->od", P, gradient)

    def _updated(
        self, P: np.ndarray, X1: np.ndarray, weights: np.ndarray, counts: np.ndarray
    ) -> np.ndarray:
        """Each covariance after the batch, (forgetting^count P^-1 + sum_i w_i x_i x_i')^-1,
        with one column of row weights per covariance, or one for them all."""
        A = np.linalg.inv(P)
        A *= (self.forgetting ** counts.astype(float))[:, None, None]
        if weights.shape[1] == 1:
            A += (X1.T * weights[:, 0]) @ X1
        else:  # (outputs x size x rows) @ (rows x size): one batched product (BLAS)
            A += (weights.T[:, None, :] * X1.T) @ X1
        return np.linalg.inv(A)

    def state(self) -> dict[str, np.ndarray]:
        return {"weight": self.weight, "cov": self.cov}


def _twins(cov: np.ndarray) -> np.ndarray:
    """Per output, the first output before it whose covariance is equal, or -1."""
    twin = np.full(len(cov), -1)
    first: dict[bytes, list[int]] = {}
    for o, P in enumerate(cov):
        found = first.setdefault(P[0].tobytes(), [])  # a row tells most apart
        twin[o] = next((r for r in found if np.array_equal(cov[r], P)), -1)
        if twin[o] < 0:
            found.append(o)
    return twin


def _clip_variance(P: np.ndarray, prior: float) -> None:
    """Scale row and column j of each P where P[j, j] > prior, so that P[j, j] = prior:
    entry (i, j) times s_i s_j, one product, which keeps a symmetric P symmetric."""
    diagonal = np.diagonal(P, axis1=1, axis2=2)
    if diagonal.max(initial=0.0) <= prior:
        return
    scale = np.sqrt(np.minimum(1.0, prior / np.maximum(diagonal, prior)))
    P *= scale[:, :, None] * scale[:, None, :]
