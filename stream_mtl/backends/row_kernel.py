"""One observation's whole prediction, and whole step, as one compiled call each.

`row_predict` and `row_step` do for one row what `FlatBackend.forward_many` and
`FlatBackend.step_many` (with `NumpyBackend`'s trunk) do for a batch: the trunk's
forward pass, every head's raw output (the second-order linear heads, the shared one,
the head on each trunk layer, the second-order heads on the last layer), links, losses,
gradients and curvatures, the Hedge mixture and, in a step, backpropagation with
SGD or Adam on the flat buffer, the heads' Newton steps and the mixture's Hedge step,
in that order and on the state from before the step, as the batched code does it.

They read the backend's own arrays (nothing is copied), so the NumPy code stays the
reference and the state is the same by construction: tests hold these kernels to it at
1e-12 in float64. Where the trunk is float32, its products are summed in float64 and
stored in float32, and Adam's moments and step are computed in float32, as the
reference computes them; every sum runs in a fixed order, so a float32 model is
bit-for-bit the same on every run.

numba keys each cached kernel on its own file only: after an edit of `kernels.py`,
delete the `*.nbi` and `*.nbc` files under `backends/__pycache__`, or these kernels go on
calling the cached copy of the old one (an installed release rewrites every file, and
so starts afresh).

The second-order heads come as tuples of arrays (one per forgetting factor, see
`second_order`), so a model with other numbers of them compiles its own version once.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from stream_mtl.backends.flat import ADAM_BETAS, ADAM_EPS
from stream_mtl.backends.kernels import (
    all_finite,
    all_finite_matrices,
    hedge_step,
    second_order_row_step,
)

# Task kinds as the kernels take them (`NumpyBackend` codes them from `HeadSpec.kind`).
REGRESSION_CODE, BINARY_CODE, MULTICLASS_CODE = 0, 1, 2
_TINY = 1e-12
_BETA1, _BETA2 = ADAM_BETAS
# Adam's moments below this are stored as 0 (see `_descend`); float32's least normal is 1.2e-38
_SUBNORMAL = 1e-30


@njit(cache=True, fastmath=False)
def _linear(weight: np.ndarray, rows: np.ndarray, x: np.ndarray, out: np.ndarray) -> None:
    """Outputs `rows` of a second-order head (bias first) at inputs x, into `out`.

    Each output's sum runs over the inputs in order, as a dot product would; the outputs'
    sums advance together, one input at a time, so that the processor works on several
    chains of additions at once instead of waiting on one.
    """
    out[:] = 0.0
    for j in range(x.shape[0]):
        xj = x[j]
        for o in range(rows.shape[0]):
            out[o] += xj * weight[rows[o], j + 1]
    for o in range(rows.shape[0]):
        out[o] += weight[rows[o], 0]


@njit(cache=True, fastmath=False)
def _raw_outputs(
    x, param, widths, trunk_at, heads_at, relu, linear_w, shared_w, shared_row, has_shared,
    top_w, acts, Z,
) -> None:  # fmt: skip
    """Every head's raw output for one row into Z (heads x outputs, mixture order), and
    the trunk's layer outputs into `acts` (in the trunk's dtype, their widths end to
    end, the inputs first)."""
    n_in = widths[0]
    for j in range(n_in):
        acts[j] = x[j]
    n_linear = len(linear_w)
    every = np.arange(Z.shape[1])
    for i in range(n_linear):
        _linear(linear_w[i], every, x, Z[i])
    if has_shared:
        _linear(shared_w, shared_row, x, Z[n_linear])
    first_deep = n_linear + (1 if has_shared else 0)
    start = 0
    for layer in range(len(widths) - 1):
        width_in, width = widths[layer], widths[layer + 1]
        w_at, b_at = trunk_at[layer, 0], trunk_at[layer, 1]
        out = start + width_in
        # Each unit's sum runs over the inputs in order, as a dot product would; the loop
        # over units within it runs over a contiguous row of the weights (in x out), which
        # the compiler vectorises. Inner loops index slices, not the flat buffer at an
        # offset (`param[row + j]`), which the compiler did not vectorise: the trunk's two
        # layers took 4.1 us that way and 0.8 us this way, with the same numbers.
        total = np.zeros(width)
        for i in range(width_in):
            a = acts[start + i]
            row = param[w_at + i * width : w_at + (i + 1) * width]
            for j in range(width):
                total[j] += a * row[j]
        bias = param[b_at : b_at + width]
        layer_out = acts[out : out + width]
        for j in range(width):
            a = total[j] + bias[j]
            a = max(a, 0.0) if relu else np.tanh(a)
            layer_out[j] = a  # rounded to the trunk's dtype, as NumPy's layers are
        hw_at, hb_at = heads_at[layer, 0], heads_at[layer, 1]
        deep = Z[first_deep + layer]
        deep[:] = 0.0
        for j in range(width):  # the outputs' sums advance together, as in `_linear`
            a = layer_out[j]
            for o in range(Z.shape[1]):
                deep[o] += a * param[hw_at + o * width + j]
        for o in range(Z.shape[1]):
            deep[o] += param[hb_at + o]
        start = out
    top = acts[start:]
    first_top = first_deep + len(widths) - 1
    for t in range(len(top_w)):
        _linear(top_w[t], every, top, Z[first_top + t])


@njit(cache=True, fastmath=False)
def _link(Z, task_kind, task_start, task_stop, P) -> None:
    """Predictions from raw outputs, head by head: the value, P(True) or softmax."""
    for h in range(Z.shape[0]):
        for k in range(task_kind.shape[0]):
            a, b = task_start[k], task_stop[k]
            if task_kind[k] == BINARY_CODE:
                P[h, a] = 0.5 * (1.0 + np.tanh(0.5 * Z[h, a]))
            elif task_kind[k] == MULTICLASS_CODE:
                if b == a:
                    continue
                top = Z[h, a]
                for c in range(a + 1, b):
                    top = max(top, Z[h, c])
                total = 0.0
                for c in range(a, b):
                    P[h, c] = np.exp(Z[h, c] - top)
                    total += P[h, c]
                for c in range(a, b):
                    P[h, c] /= total
            else:
                P[h, a] = Z[h, a]


@njit(cache=True, fastmath=False)
def _mix(P, alpha, column_task, mixed) -> None:
    for o in range(P.shape[1]):
        total = 0.0
        for h in range(P.shape[0]):
            total += P[h, o] * alpha[column_task[o], h]
        mixed[o] = total


@njit(cache=True, fastmath=False)
def _heads(
    x, param, widths, trunk_at, heads_at, relu, linear_w, shared_w, shared_row, has_shared,
    top_w, column_task, task_kind, task_start, task_stop, alpha,
):  # fmt: skip
    """The trunk's layer outputs, every head's prediction (heads x outputs) and their
    mixture (outputs,) for one row."""
    n_out = column_task.shape[0]
    n_heads = alpha.shape[1]
    acts = np.empty(widths.sum(), param.dtype)
    Z = np.empty((n_heads, n_out))
    _raw_outputs(
        x, param, widths, trunk_at, heads_at, relu, linear_w, shared_w, shared_row,
        has_shared, top_w, acts, Z,
    )  # fmt: skip
    P = np.empty((n_heads, n_out))
    _link(Z, task_kind, task_start, task_stop, P)
    mixed = np.empty(n_out)
    _mix(P, alpha, column_task, mixed)
    return acts, P, mixed


@njit(cache=True, fastmath=False)
def row_predict(
    x, param, widths, trunk_at, heads_at, relu, linear_w, shared_w, shared_row, has_shared,
    top_w, column_task, task_kind, task_start, task_stop, alpha,
) -> np.ndarray:  # fmt: skip
    """Mixed predictions (outputs,) for one encoded row x: `forward_many` of one row."""
    return _heads(
        x, param, widths, trunk_at, heads_at, relu, linear_w, shared_w, shared_row,
        has_shared, top_w, column_task, task_kind, task_start, task_stop, alpha,
    )[2]  # fmt: skip


@njit(cache=True, fastmath=False)
def _add_slope(G, W, p, alpha, task_kind, task_start, task_stop) -> None:
    """G (outputs x width) += d mixed / d z times W, for one head: W (outputs x width)
    the slopes of its raw outputs z, p (outputs) its predictions, alpha (tasks) its
    mixture weights; each link's slope: 1, p (1 - p), or softmax's p_c (delta - p_c')."""
    width = W.shape[1]
    for k in range(task_kind.shape[0]):
        a, b, w = task_start[k], task_stop[k], alpha[k]
        if task_kind[k] == MULTICLASS_CODE:
            for c in range(a, b):
                f = w * p[c]
                for j in range(width):
                    G[c, j] += f * W[c, j]
                for c2 in range(a, b):
                    f2 = f * p[c2]
                    for j in range(width):
                        G[c, j] -= f2 * W[c2, j]
        elif task_kind[k] == BINARY_CODE:
            f = w * (p[a] * (1.0 - p[a]))
            for j in range(width):
                G[a, j] += f * W[a, j]
        else:
            for j in range(width):
                G[a, j] += w * W[a, j]


@njit(cache=True, fastmath=False)
def row_jacobian(
    x, param, widths, trunk_at, heads_at, relu, linear_w, shared_w, shared_row, has_shared,
    top_w, column_task, task_kind, task_start, task_stop, alpha, n_inputs,
) -> np.ndarray:  # fmt: skip
    """d prediction / d input (outputs x the first `n_inputs` inputs) of the mixed
    predictions at one encoded row x: `FlatBackend.input_jacobian` for one row."""
    acts, P, _ = _heads(
        x, param, widths, trunk_at, heads_at, relu, linear_w, shared_w, shared_row,
        has_shared, top_w, column_task, task_kind, task_start, task_stop, alpha,
    )  # fmt: skip
    n_out = column_task.shape[0]
    n_layers = len(widths) - 1
    n_linear = len(linear_w)
    first_deep = n_linear + (1 if has_shared else 0)
    first_top = first_deep + n_layers
    ends = np.cumsum(widths)
    G = np.zeros((n_out, widths[n_layers]))
    for t in range(len(top_w)):
        _add_slope(
            G, top_w[t][:, 1:], P[first_top + t], alpha[:, first_top + t], task_kind,
            task_start, task_stop,
        )  # fmt: skip
    for layer in range(n_layers - 1, -1, -1):
        width_in, width = widths[layer], widths[layer + 1]
        hw_at = heads_at[layer, 0]
        heads = param[hw_at : hw_at + n_out * width].reshape((n_out, width))
        _add_slope(
            G, heads, P[first_deep + layer], alpha[:, first_deep + layer], task_kind,
            task_start, task_stop,
        )  # fmt: skip
        layer_out = acts[ends[layer] : ends[layer] + width]
        for j in range(width):
            h = layer_out[j]
            slope = (1.0 if h > 0.0 else 0.0) if relu else 1.0 - h * h
            for o in range(n_out):
                G[o, j] *= slope
        w_at = trunk_at[layer, 0]
        weight = param[w_at : w_at + width_in * width].reshape((width_in, width))
        below = np.empty((n_out, width_in))
        for o in range(n_out):
            for i in range(width_in):
                total = 0.0
                for j in range(width):
                    total += G[o, j] * weight[i, j]
                below[o, i] = total
        G = below
    J = np.ascontiguousarray(G[:, :n_inputs])
    for i in range(n_linear):
        _add_slope(
            J, linear_w[i][:, 1 : n_inputs + 1], P[i], alpha[:, i], task_kind, task_start,
            task_stop,
        )  # fmt: skip
    if has_shared:
        rows = np.empty((n_out, n_inputs))
        for o in range(n_out):
            rows[o, :] = shared_w[shared_row[o], 1 : n_inputs + 1]
        _add_slope(J, rows, P[n_linear], alpha[:, n_linear], task_kind, task_start, task_stop)
    return J


@njit(cache=True, fastmath=False)
def _evaluate(P, targets, task_kind, task_start, task_stop, G, H) -> None:
    """Gradient and curvature of each head's loss at its raw output (0 if unlabelled)."""
    G[:] = 0.0
    H[:] = 0.0
    for k in range(task_kind.shape[0]):
        t = targets[k]
        if np.isnan(t):
            continue
        a, b = task_start[k], task_stop[k]
        for h in range(P.shape[0]):
            if task_kind[k] == MULTICLASS_CODE:
                for c in range(a, b):
                    p = P[h, c]
                    G[h, c] = p - 1.0 if c - a == int(t) else p
                    H[h, c] = p * (1.0 - p)
            elif task_kind[k] == BINARY_CODE:
                p = P[h, a]
                G[h, a] = p - t
                H[h, a] = p * (1.0 - p)
            else:
                G[h, a] = P[h, a] - t
                H[h, a] = 1.0


@njit(cache=True, fastmath=False)
def _losses_and_mixture_gradient(
    P, mixed, targets, task_kind, task_start, losses, gradient, labelled
) -> None:
    """Each task's loss of its mixed prediction (NaN if unlabelled), and d loss / d alpha
    (tasks x heads), as `prediction_losses` and `mixture_gradient` give them."""
    for k in range(task_kind.shape[0]):
        t = targets[k]
        gradient[k, :] = 0.0
        labelled[k] = not np.isnan(t)
        if not labelled[k]:
            losses[k] = np.nan
            continue
        a = task_start[k]
        if task_kind[k] == MULTICLASS_CODE:
            c = a + int(t)
            p = max(mixed[c], _TINY)
            losses[k] = -np.log(p)
            for h in range(P.shape[0]):
                gradient[k, h] = -(P[h, c] / p)
        elif task_kind[k] == BINARY_CODE:
            p = min(max(mixed[a], _TINY), 1.0 - _TINY)
            losses[k] = -(t * np.log(p) + (1.0 - t) * np.log1p(-p))
            slope = (p - t) / (p * (1.0 - p))
            for h in range(P.shape[0]):
                gradient[k, h] = slope * P[h, a]
        else:
            residual = mixed[a] - t
            losses[k] = 0.5 * residual * residual
            for h in range(P.shape[0]):
                gradient[k, h] = residual * P[h, a]


@njit(cache=True, fastmath=False)
def _backward(
    param, widths, trunk_at, heads_at, relu, acts, dZ, factor, grad,
) -> None:  # fmt: skip
    """The gradient (into `grad`, laid out as `param`) of the heads on the trunk's layers
    from dZ (depths x outputs) at their outputs, and of the trunk, which takes dZ times
    `factor`."""
    n_layers = len(widths) - 1
    n_out = dZ.shape[1]
    widest = widths.max()
    dH = np.zeros(widest)
    dA = np.empty(widest)
    ends = np.cumsum(widths)
    for layer in range(n_layers - 1, -1, -1):
        width_in, width = widths[layer], widths[layer + 1]
        out, start = ends[layer], ends[layer] - width_in
        hw_at, hb_at = heads_at[layer, 0], heads_at[layer, 1]
        layer_out = acts[out : out + width]
        # (Inner loops index slices, as in `_raw_outputs`, so that they vectorise.)
        for o in range(n_out):
            dz = dZ[layer, o]
            head_grad = grad[hw_at + o * width : hw_at + (o + 1) * width]
            for j in range(width):
                head_grad[j] = dz * layer_out[j]
            grad[hb_at + o] = dz
        # Each unit's sum over the outputs in order, as one loop over outputs per unit did.
        total = np.zeros(width)
        for o in range(n_out):
            scaled = dZ[layer, o] * factor[layer, o]
            row = param[hw_at + o * width : hw_at + (o + 1) * width]
            for j in range(width):
                total[j] += scaled * row[j]
        for j in range(width):
            dH[j] = total[j] if layer == n_layers - 1 else dH[j] + total[j]
        for j in range(width):
            h = layer_out[j]
            if relu:
                dA[j] = dH[j] if h > 0.0 else 0.0
            else:
                dA[j] = dH[j] * (1.0 - h * h)
        w_at, b_at = trunk_at[layer, 0], trunk_at[layer, 1]
        dA_layer = dA[:width]
        for i in range(width_in):
            a = acts[start + i]
            weight_grad = grad[w_at + i * width : w_at + (i + 1) * width]
            for j in range(width):
                weight_grad[j] = a * dA_layer[j]
        bias_grad = grad[b_at : b_at + width]
        for j in range(width):
            bias_grad[j] = dA_layer[j]
        if layer:
            # dH = W dA, each unit's sum over j in order; four units' sums advance together
            # (as in `_linear`), the rest one by one.
            weight = param[w_at : w_at + width_in * width]
            quads = width_in - width_in % 4
            for i in range(0, quads, 4):
                t0 = t1 = t2 = t3 = 0.0
                for j in range(width):
                    d = dA_layer[j]
                    t0 += d * weight[i * width + j]
                    t1 += d * weight[(i + 1) * width + j]
                    t2 += d * weight[(i + 2) * width + j]
                    t3 += d * weight[(i + 3) * width + j]
                dH[i], dH[i + 1], dH[i + 2], dH[i + 3] = t0, t1, t2, t3
            for i in range(quads, width_in):
                row = weight[i * width : (i + 1) * width]
                total_i = 0.0
                for j in range(width):
                    total_i += dA_layer[j] * row[j]
                dH[i] = total_i


@njit(cache=True, fastmath=False)
def _descend(param, m, v, grad, adam, lr, root_bias2, step) -> None:
    """SGD, or Adam as `torch.optim.Adam` computes it (see `FlatBackend._adam_scalars`),
    on the whole flat buffer; m and v in the buffer's dtype, as the reference keeps them."""
    if not adam:
        for i in range(param.shape[0]):
            param[i] = param[i] - lr * grad[i]
        return
    # in the buffer's dtype, as NumPy's in-place reference computes it
    cast = param.dtype.type
    rate, eps = cast(lr * step), cast(ADAM_EPS * root_bias2)
    keep_m, keep_v = cast(1.0 - _BETA1), cast(1.0 - _BETA2)
    tiny = cast(_SUBNORMAL)
    for i in range(param.shape[0]):
        g = cast(grad[i])
        mi = m[i] + (g - m[i]) * keep_m
        vi = v[i] + (g * g - v[i]) * keep_v
        # A parameter whose gradient stays 0 (a dead unit's) has its m decay by 0.9 a
        # step into subnormal numbers, where every operation takes a hundred cycles:
        # such moments are 0 for any step Adam can take, and are stored as 0.
        m[i] = mi if abs(mi) >= tiny else cast(0.0)
        v[i] = vi if vi >= tiny else cast(0.0)
    # an array expression, which numba vectorises: a loop calls sqrt once per element
    # (10.6 against 1.2 us for the reference model's 5,894 parameters); each element
    # takes the same IEEE operations either way
    param -= m / (np.sqrt(v) + eps) * rate


@njit(cache=True, fastmath=False)
def row_step(
    x, targets, loss_weight, trunk_scale, param, moments, widths, trunk_at, heads_at, relu,
    adam, lr, root_bias2, step, linear_w, linear_cov, linear_twin, linear_forgetting,
    linear_prior, shared_w, shared_cov, shared_twin, shared_forgetting, shared_prior, shared_row,
    has_shared, top_w, top_cov, top_twin, top_forgetting, top_prior, column_task, task_kind,
    task_start, task_stop, alpha, hedge_scale, hedge_rate, hedge_memory, hedge_floor, losses,
) -> np.ndarray:  # fmt: skip
    """One step of `step_many` on one row (targets per task, NaN where unlabelled),
    every array updated in place; each task's loss into `losses`; returns the mixed
    predictions made before the step, and whether the step left the parameters finite."""
    n_out = column_task.shape[0]
    n_heads = alpha.shape[1]
    n_tasks = task_kind.shape[0]
    n_linear = len(linear_w)
    first_deep = n_linear + (1 if has_shared else 0)
    n_layers = len(widths) - 1
    first_top = first_deep + n_layers
    acts, P, mixed = _heads(
        x, param, widths, trunk_at, heads_at, relu, linear_w, shared_w, shared_row,
        has_shared, top_w, column_task, task_kind, task_start, task_stop, alpha,
    )  # fmt: skip
    G = np.empty((n_heads, n_out))
    H = np.empty((n_heads, n_out))
    _evaluate(P, targets, task_kind, task_start, task_stop, G, H)
    mixture_gradient = np.empty((n_tasks, n_heads))
    labelled = np.empty(n_tasks, np.bool_)
    _losses_and_mixture_gradient(
        P, mixed, targets, task_kind, task_start, losses, mixture_gradient, labelled
    )
    labelled_outputs = np.empty(n_out, np.bool_)
    for o in range(n_out):
        labelled_outputs[o] = labelled[column_task[o]]
    # The trunk and the heads on its layers: each deep head's gradient times its task's
    # loss weight; the trunk's share of it is the head's mixture weight (the top heads'
    # counted as the last layer's) times the task's trunk scale.
    dZ = np.empty((n_layers, n_out))
    factor = np.empty((n_layers, n_out))
    for o in range(n_out):
        k = column_task[o]
        for layer in range(n_layers):
            dZ[layer, o] = G[first_deep + layer, o] * loss_weight[k]
            factor[layer, o] = alpha[k, first_deep + layer] * trunk_scale[k]
        tops = 0.0
        for t in range(len(top_w)):
            tops += alpha[k, first_top + t] * trunk_scale[k]
        factor[n_layers - 1, o] += tops
    top_x = acts[acts.shape[0] - widths[n_layers] :].astype(np.float64)
    grad = np.empty(param.shape[0])
    _backward(param, widths, trunk_at, heads_at, relu, acts, dZ, factor, grad)
    _descend(param, moments[0], moments[1], grad, adam, lr, root_bias2, step)
    for i in range(n_linear):
        second_order_row_step(
            linear_cov[i], linear_w[i], x, G[i], H[i], labelled_outputs,
            linear_forgetting[i], linear_prior[i], linear_twin[i],
        )  # fmt: skip
    for t in range(len(top_w)):
        second_order_row_step(
            top_cov[t], top_w[t], top_x, G[first_top + t], H[first_top + t], labelled_outputs,
            top_forgetting[t], top_prior[t], top_twin[t],
        )  # fmt: skip
    if has_shared:
        # One Newton step on the sum of the losses of the outputs each row serves, each
        # scaled by its task's trunk scale; the last row serves no one and never learns.
        rows = shared_w.shape[0]
        g = np.zeros(rows)
        h = np.zeros(rows)
        served = np.zeros(rows)
        for o in range(n_out):
            r = shared_row[o]
            if r == rows - 1:
                continue
            share = trunk_scale[column_task[o]]
            g[r] += G[n_linear, o] * share
            h[r] += H[n_linear, o] * share
            served[r] += share if labelled_outputs[o] else 0.0
        second_order_row_step(
            shared_cov,
            shared_w,
            x,
            g,
            h,
            served > 0.0,
            shared_forgetting,
            shared_prior,
            shared_twin,
        )
    hedge_step(
        alpha, hedge_scale, mixture_gradient, labelled, hedge_rate, hedge_memory, hedge_floor
    )
    # What `FlatBackend.finite` checks, while it is at hand: the flat buffer, the
    # mixture and every second-order head's weights.
    finite = all_finite(param) and all_finite_matrices((alpha, shared_w))
    for i in range(n_linear):
        finite = finite and all_finite(linear_w[i].ravel())
    for t in range(len(top_w)):
        finite = finite and all_finite(top_w[t].ravel())
    return mixed, finite
