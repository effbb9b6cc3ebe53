"""Model averaging: one learner's state from the states of workers that learned apart.

Workers that start a round from one state (`base`, the last merged one) and each learn
their own share of a stream are merged into one state, the way mini-batch distributed
online learning merges them (Dekel, Gilad-Bachrach, Shamir & Xiao, 2012): what is an
estimate is averaged, what is a count is added up.

- **Averaged:** every float array of a learner - trunk and head weights, Adam's
  moments, the second-order heads' weights and covariances, the Hedge mixture, the
  weighting strategies' running losses, the F1 thresholds' statistics, the affinity's
  moments. Each worker's array is a step from the same start, so their mean is the step
  of the whole group.
- **Added:** integer counters (Adam's step, the affinity's counts), the learned counts
  and steps of the learner's metadata, rollbacks. Each is the base's value plus every
  worker's increase.
- **Merged exactly:** the running moments of the features and of the regression
  targets (count, mean, sum of squared deviations), from each worker's increase over
  the base (Chan, Golub & LeVeque's pairwise update). A regression target's running
  mean after a merge is the mean of every label learned, on any worker.
- **Taken from the first worker:** flags, which the schema the workers share makes
  equal (whether a feature is scaled); arrays whose length differs between workers
  (the losses each drift detector was fed, which a restored detector replays); and
  metadata that describes rather than counts (the weighting's task list). Drift events are
  the base's and then each worker's new ones.

The workers' schemas must agree (the same features, tasks and classes in the same
order): the distributed loop registers every worker's new features and classes on all
of them before any learns them.
"""

from __future__ import annotations

import copy
import typing

import numpy as np

State = tuple[dict, dict[str, np.ndarray]]  # a learner's (metadata, arrays), as _state gives

MOMENT_GROUPS = ("encoder.moments.", "targets.")  # count, mean, m2: merged exactly


def merge_states(base: State | None, states: typing.Sequence[State]) -> State:
    """One state from workers' `states`, each learned from `base` (None: from nothing).

    >>> from stream_mtl import MultiTaskLearner, Regression
    >>> def model():
    ...     return MultiTaskLearner(tasks={"y": Regression()}, hidden=(4,), seed=0)
    >>> start = model()
    >>> workers = [model(), model()]
    >>> for worker, labels in zip(workers, ([1.0, 2.0], [3.0, 4.0, 5.0])):
    ...     for label in labels:
    ...         worker.learn_one({"x": label}, {"y": label})
    >>> meta, arrays = merge_states(start._state(), [w._state() for w in workers])
    >>> meta["n_learned"], arrays["targets.mean"].tolist(), arrays["targets.count"].tolist()
    ([5], [3.0], [5.0])
    """
    if not states:
        raise ValueError("merge_states needs at least one worker's state")
    base_meta, base_arrays = base if base is not None else ({}, {})
    metas = [meta for meta, _ in states]
    arrays = [array for _, array in states]
    first = arrays[0]
    for meta, other in zip(metas[1:], arrays[1:]):
        for part in ("tasks", "classes", "encoder"):
            if meta[part] != metas[0][part]:
                raise ValueError(
                    f"the workers' states have different {part}: merge needs one schema"
                )
        if other.keys() != first.keys():
            different = sorted(other.keys() ^ first.keys())[:5]
            raise ValueError(f"the workers' states hold different arrays: {different}")
    merged: dict[str, np.ndarray] = {}
    for group in MOMENT_GROUPS:
        merged.update(_merge_moments(group, base_arrays, arrays))
    for name in first:
        if name in merged:
            continue
        values = [worker[name] for worker in arrays]
        if any(value.shape != values[0].shape for value in values):
            merged[name] = values[0].copy()  # a history of its own length: the first's
        elif values[0].dtype.kind in "bu":  # flags (whether a feature is scaled): one schema
            merged[name] = values[0].copy()
        elif values[0].dtype.kind == "i":
            merged[name] = _added(base_arrays.get(name), values)
        else:
            total = np.sum([value.astype(np.float64) for value in values], axis=0)
            merged[name] = (total / len(values)).astype(values[0].dtype)
    return _merge_meta(base_meta, metas), merged


def _added(base: np.ndarray | None, values: list[np.ndarray]) -> np.ndarray:
    """The base's counter plus every worker's increase over it."""
    start = np.zeros_like(values[0]) if base is None else _padded(base, values[0].shape)
    return start + sum(value - start for value in values)


def _padded(array: np.ndarray, shape: tuple) -> np.ndarray:
    """`array` grown with zeros to `shape` (columns that appeared since it was taken)."""
    if array.shape == shape:
        return array
    grown = np.zeros(shape, dtype=array.dtype)
    grown[tuple(slice(0, n) for n in array.shape)] = array
    return grown


def _merge_moments(
    prefix: str, base: dict[str, np.ndarray], workers: list[dict[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """Count, mean and m2 under `prefix`: the base's, updated with each worker's increase."""
    shape = workers[0][prefix + "count"].shape
    count = _padded(base.get(prefix + "count", np.zeros(0)), shape).astype(float)
    mean = _padded(base.get(prefix + "mean", np.zeros(0)), shape).astype(float)
    m2 = _padded(base.get(prefix + "m2", np.zeros(0)), shape).astype(float)
    start_count, start_mean, start_m2 = count.copy(), mean.copy(), m2.copy()
    for worker in workers:
        n, mu, s = worker[prefix + "count"], worker[prefix + "mean"], worker[prefix + "m2"]
        added = n - start_count  # this worker's own observations of each column
        seen = added > 0
        safe = np.where(seen, added, 1.0)
        own_mean = np.where(seen, (n * mu - start_count * start_mean) / safe, 0.0)
        shift = own_mean - start_mean
        own_m2 = s - start_m2 - shift**2 * start_count * added / np.where(seen, n, 1.0)
        own_m2 = np.where(seen, np.maximum(own_m2, 0.0), 0.0)
        total = count + added
        delta = own_mean - mean
        weight = np.where(seen, added / np.where(total > 0, total, 1.0), 0.0)
        mean = mean + delta * weight
        m2 = m2 + own_m2 + delta**2 * count * weight
        count = total
    return {prefix + "count": count, prefix + "mean": mean, prefix + "m2": m2}


def _merge_meta(base: dict, metas: list[dict]) -> dict:
    """The first worker's metadata, with counts added up and drift events joined."""
    merged = copy.deepcopy(metas[0])
    n_tasks = len(merged["n_learned"])
    start = list(base.get("n_learned", [])) + [0] * n_tasks
    merged["n_learned"] = [
        start[k] + sum(meta["n_learned"][k] - start[k] for meta in metas) for k in range(n_tasks)
    ]
    start_steps = base.get("n_steps", 0)
    merged["n_steps"] = start_steps + sum(meta["n_steps"] - start_steps for meta in metas)
    base_guard = base.get("guard", {})
    merged["guard"] = {
        key: base_guard.get(key, 0)
        + sum(meta["guard"].get(key, 0) - base_guard.get(key, 0) for meta in metas)
        for key in metas[0]["guard"]
    }
    known = len(base.get("drift_events", []))
    events = list(base.get("drift_events", []))
    for meta in metas:
        events.extend(meta["drift_events"][known:])
    merged["drift_events"] = events
    return merged
