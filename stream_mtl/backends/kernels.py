"""Compiled kernels of the per-observation path (numba, `@njit(cache=True)`).

Each kernel does, in one call and without temporaries, what its NumPy reference does in
several array operations; NumPy's call overhead, not arithmetic, is what a single
observation costs on small arrays. The NumPy code stays the reference: tests hold each
kernel to it (1e-12 in float64 over long runs). Kernels are compiled on first use and
cached beside this file (or in numba's user cache where that is not writable), so the
compile time (about 6 s here) is paid once per machine; a live service calls `warm_up`
at start, so that no prediction or observation waits for it.
"""

from __future__ import annotations

import numpy as np
from numba import njit


def kernel_array(array: np.ndarray, dtype: type = float) -> np.ndarray:
    """`array` as the kernels take it: C-ordered, float64 (or `dtype`), so that each kernel
    has one compiled version, not a compile (seconds) when a caller hands over another
    layout or type."""
    return np.ascontiguousarray(array, dtype)


@njit(cache=True, fastmath=False)
def linear_outputs(X: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Rows x outputs: X (rows x inputs) times each output's weights (bias first), every
    row summed in the same order, so that a batch gives exactly what its rows give."""
    rows, inputs = X.shape
    out = np.empty((rows, weight.shape[0]))
    for r in range(rows):
        for o in range(weight.shape[0]):
            total = 0.0
            for j in range(inputs):
                total += X[r, j] * weight[o, j + 1]
            out[r, o] = total + weight[o, 0]
    return out


@njit(cache=True, fastmath=False)
def _same_fate(o: int, r: int, labelled: np.ndarray, curvature: np.ndarray) -> bool:
    """Whether one row changes the covariances of outputs o and r alike."""
    return labelled[o] == labelled[r] and (not labelled[o] or curvature[o] == curvature[r])


@njit(cache=True, fastmath=False)
def _part_twins(
    cov: np.ndarray, twin: np.ndarray, labelled: np.ndarray, curvature: np.ndarray
) -> None:
    """Before a row's step: every output that this row changes otherwise than its twin
    gets its own covariance written out; those that part from the same twin alike share
    the first of them."""
    parted = np.full(twin.shape[0], -1)  # per representative: who leads those parting
    for o in range(twin.shape[0]):
        r = twin[o]
        if r < 0 or _same_fate(o, r, labelled, curvature):
            continue
        lead = parted[r]
        if lead >= 0 and _same_fate(o, lead, labelled, curvature):
            twin[o] = lead  # the lead's covariance is r's (written out below), so o's is too
            continue
        cov[o][:, :] = cov[r]
        twin[o] = -1
        if lead < 0:
            parted[r] = o


@njit(cache=True, fastmath=False)
def second_order_row_step(
    cov: np.ndarray,
    weight: np.ndarray,
    x: np.ndarray,
    gradient: np.ndarray,
    curvature: np.ndarray,
    labelled: np.ndarray,
    forgetting: float,
    prior: float,
    twin: np.ndarray,
) -> None:
    """One Newton step of `SecondOrderHeads` from one row `x` (inputs, no bias), in place.

    For each output o that the row labels, with x1 = [1, x]: u = P_o x1,
    s = max(x1' u, 0), d = forgetting + h_o s; P_o <- (P_o - (h_o / d) u u') * (1 / forgetting);
    w_o <- w_o - (g_o / d) u; then where P_o[j, j] > prior, row and column j are scaled
    to P_o[j, j] = prior: entry (i, j) is multiplied by s_i s_j, one product, so that a
    symmetric P_o stays exactly symmetric.

    `twin[o] = r` (r < o, `twin[r] = -1`) says that P_o is P_r, kept in `cov[r]` alone
    (`cov[o]` is out of date; `SecondOrderHeads` writes it out when it is read). Outputs
    that the same rows label with the same curvature - regression tasks labelled
    together - keep the same P whatever their targets, so r's update serves o with the
    same numbers: o takes only its weights' step, with r's u and d.
    """
    size = x.shape[0] + 1
    n_out = labelled.shape[0]
    _part_twins(cov, twin, labelled, curvature)
    x1 = np.empty(size)
    x1[0] = 1.0
    x1[1:] = x
    U = np.empty((n_out, size))
    denominators = np.empty(n_out)
    scale = np.empty(size)
    # times the reciprocal, not divided by the factor: a division per entry of P took
    # half the step (4.5 against 2.4 us for 7 outputs on 20 inputs)
    shrink = 1.0 / forgetting
    for o in range(n_out):
        if not labelled[o]:
            continue
        r = twin[o]
        if r >= 0:
            step = gradient[o] / denominators[r]
            for i in range(size):
                weight[o, i] -= step * U[r, i]
            continue
        P = cov[o]
        u = U[o]
        # u = P x1 summed row by row of P (P is exactly symmetric, see below): each u[i]
        # adds the same products in the same order as a dot product of row i would, and
        # the loop over i runs over contiguous memory with no chain of additions, which
        # the compiler vectorises (a dot product's chain it may not reorder).
        u[:] = 0.0
        for j in range(size):
            xj = x1[j]
            for i in range(size):
                u[i] += P[j, i] * xj
        s = 0.0
        for i in range(size):
            s += u[i] * x1[i]
        s = max(s, 0.0)
        denominator = denominators[o] = forgetting + curvature[o] * s
        c = curvature[o] / denominator
        # The clip's scales come from the diagonal the update leaves, so that the update
        # and the clip are one pass over P.
        clipped = False
        for i in range(size):
            diagonal = (P[i, i] - c * (u[i] * u[i])) * shrink
            if diagonal > prior:
                scale[i] = np.sqrt(prior / diagonal)
                clipped = True
            else:
                scale[i] = 1.0
        if clipped:
            for i in range(size):
                for j in range(size):
                    P[i, j] = (P[i, j] - c * (u[i] * u[j])) * shrink * (scale[i] * scale[j])
        else:
            for i in range(size):
                for j in range(size):
                    P[i, j] = (P[i, j] - c * (u[i] * u[j])) * shrink
        step = gradient[o] / denominator
        for i in range(size):
            weight[o, i] -= step * u[i]


@njit(cache=True, fastmath=False)
def hedge_step(
    alpha: np.ndarray,
    scale: np.ndarray,
    gradient: np.ndarray,
    labelled: np.ndarray,
    rate: float,
    memory: float,
    floor: float,
) -> None:
    """One step of `Hedge.update` on every labelled task, in place: `floor` is the least
    weight of a head (the mixture's floor over the number of heads)."""
    heads = alpha.shape[1]
    log_heads = np.log(heads)
    row = np.empty(heads)
    for k in range(alpha.shape[0]):
        if not labelled[k]:
            continue
        high = gradient[k, 0]
        low = gradient[k, 0]
        for h in range(1, heads):
            high = max(high, gradient[k, h])
            low = min(low, gradient[k, h])
        spread = high - low
        scale[k] = memory * scale[k] + spread * spread
        eta = rate * np.sqrt(log_heads / max(scale[k], 1e-12))
        top = -np.inf
        for h in range(heads):
            row[h] = np.log(alpha[k, h]) - eta * gradient[k, h]
            top = max(top, row[h])
        total = 0.0
        for h in range(heads):
            row[h] = np.exp(row[h] - top)
            total += row[h]
        n_low = 0
        free = 0.0
        for h in range(heads):
            row[h] /= total
            if row[h] < floor:
                n_low += 1
            else:
                free += row[h]
        room = 1.0 - floor * n_low
        for h in range(heads):
            alpha[k, h] = floor if row[h] < floor else row[h] * (room / free)


@njit(cache=True, fastmath=False)
def all_finite(values: np.ndarray) -> bool:
    """Whether no value is NaN or infinite (0 * v is NaN for those, 0 for the rest),
    summed in eight running sums: one waits on each addition before the next."""
    n = values.shape[0]
    sums = np.zeros(8)
    end = n - n % 8
    for i in range(0, end, 8):
        for k in range(8):
            sums[k] += values[i + k] * 0.0
    total = sums.sum()
    for i in range(end, n):
        total += values[i] * 0.0
    return total == 0.0


@njit(cache=True, fastmath=False)
def all_finite_matrices(matrices: tuple) -> bool:
    """`all_finite` of every matrix of a tuple (of float64 matrices), in one call."""
    total = 0.0
    for k in range(len(matrices)):
        matrix = matrices[k]
        for i in range(matrix.shape[0]):
            for j in range(matrix.shape[1]):
                total += matrix[i, j] * 0.0
    return total == 0.0


@njit(cache=True, fastmath=False)
def _welford(
    count: np.ndarray, mean: np.ndarray, m2: np.ndarray, stdev: np.ndarray, j: int, value: float
) -> float:
    """Column j's statistics updated with `value`, in place; `value` standardised."""
    c = count[j] + 1.0
    count[j] = c
    delta = value - mean[j]
    mu = mean[j] + delta / c
    mean[j] = mu
    deviation = value - mu
    q = m2[j] + delta * deviation
    m2[j] = q
    s = np.sqrt(q / c)
    if s == 0.0:
        s = 1.0
    stdev[j] = s
    return deviation / s


@njit(cache=True, fastmath=False)
def welford_step(
    count: np.ndarray, mean: np.ndarray, m2: np.ndarray, stdev: np.ndarray, values: np.ndarray
) -> np.ndarray:
    """`RunningMoments.update_and_scale` of every column, in place: one observation of
    each added, returned standardised, with the same operations in the same order."""
    out = np.empty(values.shape[0])
    for j in range(values.shape[0]):
        out[j] = _welford(count, mean, m2, stdev, j, values[j])
    return out


@njit(cache=True, fastmath=False)
def welford_rows(
    count: np.ndarray,
    mean: np.ndarray,
    m2: np.ndarray,
    stdev: np.ndarray,
    values: np.ndarray,
    present: np.ndarray,
) -> np.ndarray:
    """`welford_step` for each row of `values` (rows x columns) in order, in place; an
    entry where `present` is False is skipped (neither counted nor scaled: 0 out)."""
    rows, columns = values.shape
    out = np.zeros((rows, columns))
    for i in range(rows):
        for j in range(columns):
            if present[i, j]:
                out[i, j] = _welford(count, mean, m2, stdev, j, values[i, j])
    return out


def warm_up() -> None:
    """Compile every kernel now (or load it from the cache), with the argument types of
    the per-observation path, so that nothing compiles when the first observation or
    prediction comes."""
    weight = np.zeros((1, 2))
    linear_outputs(np.zeros((1, 1)), weight)
    cov = np.eye(2)[None].copy()
    second_order_row_step(
        cov,
        weight,
        np.zeros(1),
        np.zeros(1),
        np.zeros(1),
        np.ones(1, bool),
        1.0,
        1.0,
        np.full(1, -1),
    )
    hedge_step(np.full((1, 2), 0.5), np.zeros(1), np.zeros((1, 2)), np.ones(1, bool), 1.0, 1.0, 0.0)
    for dtype in (np.float32, np.float64):  # the trunk's buffer, in the model's dtype
        all_finite(np.zeros(1, dtype))
    welford_step(np.zeros(1), np.zeros(1), np.zeros(1), np.ones(1), np.zeros(1))
    welford_rows(
        np.zeros(1), np.zeros(1), np.zeros(1), np.ones(1), np.zeros((1, 1)), np.ones((1, 1), bool)
    )
