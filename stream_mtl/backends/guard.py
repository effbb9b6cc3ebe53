"""FiniteGuard: no learning step may leave a parameter non-finite.

Features and labels are bounded (`max_magnitude`) and standardised, so a step on data
cannot overflow; a setting can (an absurd learning rate), and so could a bug. The guard
checks after every step the parameters that predictions read (the trunk and deep heads,
the second-order heads' weights, the mixture): a handful of reductions. Every `every`
steps, and before a save, it checks the whole state (optimiser moments and covariances
too) and keeps a copy of it. A step found non-finite is undone by going back to that
copy: the steps since the copy are lost with it, and counted. An exact per-step undo
would copy the whole state before every step, several times the cost of the step.
"""

from __future__ import annotations

import logging

import numpy as np

from stream_mtl.backends.base import Backend

logger = logging.getLogger(__name__)


def all_finite(arrays: dict[str, np.ndarray]) -> bool:
    """Whether every floating-point array of a backend's state is finite."""
    return all(np.isfinite(a).all() for a in arrays.values() if a.dtype.kind == "f")


class FiniteGuard:
    """Keeps a backend's parameters finite, by rolling back to a verified copy.

    >>> from stream_mtl.backends.numpy import NumpyBackend
    >>> backend = NumpyBackend(hidden=(2,))
    >>> backend.set_head("price", "regression", 1)
    >>> guard = FiniteGuard(every=10)
    >>> guard.before_step(backend, completed=0)
    >>> backend.hedge.alpha[:] = np.nan  # what a broken step would leave
    >>> guard.after_step(backend, completed=0)
    False
    >>> bool(np.isfinite(backend.hedge.alpha).all()), guard.n_rollbacks, guard.n_steps_lost
    (True, 1, 1)
    """

    def __init__(self, every: int = 256) -> None:
        self.every = every
        self.n_rollbacks = 0
        self.n_steps_lost = 0
        self._copy: dict[str, np.ndarray] | None = None
        self._copied_at = 0

    def forget(self) -> None:
        """Drop the copy: the backend's structure changed (new inputs, tasks, classes)."""
        self._copy = None

    def before_step(self, backend: Backend, completed: int) -> None:
        """Take a verified copy if none is held or the one held is `every` steps old;
        `completed` counts the steps taken so far."""
        if self._copy is None or completed - self._copied_at >= self.every:
            self.verified_state(backend, completed)

    def verified_state(self, backend: Backend, completed: int) -> dict[str, np.ndarray]:
        """The whole state, copied, once it is finite: as it is, or after a roll back to
        the copy held."""
        state = backend.state()
        if not all_finite(state):
            self._roll_back(backend, completed - self._copied_at, completed)
            state = backend.state()
        self._copy, self._copied_at = state, completed
        return state

    def after_step(self, backend: Backend, completed: int, finite: bool | None = None) -> bool:
        """Whether the step just taken, after `completed` earlier ones, left the
        parameters finite (`finite`, where the step said; else `backend.finite()`); if
        not, the backend is back at the last verified copy."""
        if backend.finite() if finite is None else finite:
            return True
        self._roll_back(backend, completed - self._copied_at + 1, completed)
        return False

    def _roll_back(self, backend: Backend, lost: int, completed: int) -> None:
        if self._copy is None:  # no finite state was seen since the structure changed
            raise RuntimeError("the model's parameters are not finite and no finite copy is held")
        backend.load_state(self._copy)
        self._copied_at = completed  # the copy now stands for the steps counted so far
        self.n_rollbacks += 1
        self.n_steps_lost += lost
        logger.warning(
            "a learning step left a parameter non-finite: rolled back %d step(s) "
            "(%d rollbacks so far); is the learning rate too large?",
            lost,
            self.n_rollbacks,
        )

    def state(self) -> dict[str, int]:
        return {"rollbacks": self.n_rollbacks, "steps_lost": self.n_steps_lost}

    def load_state(self, meta: dict) -> None:
        self.n_rollbacks = int(meta.get("rollbacks", 0))
        self.n_steps_lost = int(meta.get("steps_lost", 0))
