"""Drift-aware reweighting: a drift detector per task, and a fast, contained re-adaptation."""

from __future__ import annotations

import array
import typing

import numpy as np
from river import base as river_base
from river import drift

from stream_mtl.checkpoint import arrays_under
from stream_mtl.exceptions import InvalidInput, InvalidInputType
from stream_mtl.weighting.base import StepWeights, WeightingStrategy
from stream_mtl.weighting.dwa import DWA

RELAXED = 0.01  # below this a task's damping is over


def check_detector(detector: object, where: str) -> None:
    """Refuse anything but a continuous River drift detector (ADWIN, KSWIN, PageHinkley...)."""
    if isinstance(detector, river_base.BinaryDriftDetector) or not isinstance(
        detector, river_base.DriftDetector
    ):
        raise InvalidInputType(
            f"{where} must be a continuous river.drift detector such as drift.ADWIN(), "
            f"drift.KSWIN() or drift.PageHinkley(), got {detector!r}"
        )


class DriftAware(WeightingStrategy):
    """Wraps a weighting strategy with a drift detector on each task's loss.

    Each task's per-step loss (labelled steps only) feeds its own `river.drift`
    detector. When the detector fires in task k, and k's recent loss is more than
    `min_rise` above its older level (a loss that falls because the model is learning,
    or a small wobble, is not a change to react to):

    - k's gradient into the shared trunk is multiplied by `trunk_damping`, so that k's
      large post-drift errors do not drag the representation the other tasks share;
    - with `mixture_shift` > 0, the learner moves that share of k's mixture onto its
      fastest-forgetting linear head, which re-fits a new concept within about a
      hundred labels by its own second-order rule; by default it does not, and k's
      mixture moves by the heads' losses alone (Hedge moves it toward the heads that
      re-fit first within tens of labels);
    - the base strategy forgets its statistics of k (they describe the old concept);
    - a `DriftEvent` is recorded by the learner, and further detections in k are
      ignored for `cooldown` of k's labels, so one change is not reported twice.

    No learning rate is raised and nothing is reset, so a false alarm costs a short
    damping of k's pull on the trunk (and, with `mixture_shift`, a shift of k's mixture,
    which Hedge takes back if it was worse). The damping stays at full strength until
    k's recent running loss is back within `settle_tolerance` of its level before the
    drift (or for `max_hold` labels at most, for a new concept that is harder than the
    old one), and then relaxes back to 1 by a factor `1 - relax` per label of k.

    Detectors are restored from checkpoints exactly, without pickle: each task keeps
    the losses fed to its detector since it was created, and a restored detector is a
    fresh one fed the same losses. To bound that memory, once `2 * replay` losses
    are kept the detector is rebuilt from the last `replay` of them.

    Parameters
    ----------
    base
        The strategy that sets the loss weights; None means `DWA()`.
    detector
        The detector each task gets a copy of; None means `drift.ADWIN()`.
    detectors
        Per-task overrides: task name -> detector.
    trunk_damping
        Factor on a drifted task's gradient into the trunk, at full strength.
    mixture_shift
        Share of a drifted task's mixture moved onto its fastest-forgetting linear head
        (0: none). `benchmarks/drift.py` measured the shift at 0.5 as no faster to
        recover, and 1.2% worse error than the base alone on a target with rare bursts,
        where it fires on every burst. It is meant for streams whose new concepts a
        linear model fits (not measured here).
    cooldown
        Labels of a task during which a new detection in it is ignored.
    min_rise
        How far (as a share) the recent loss must be above the older one for a detection
        to count.
    settle_tolerance
        How close (as a share) the recent loss must come to its pre-drift level for k to
        count as settled.
    max_hold
        Labels after which the factors relax even if k has not settled.
    relax
        How fast the factors return to 1 once settled (share per label).
    replay
        Losses kept per task to restore its detector (see above).

    >>> import numpy as np
    >>> from river import drift
    >>> strategy = DriftAware(detector=drift.ADWIN(delta=0.01))
    >>> strategy.add_task("steady"); strategy.add_task("drifting")
    >>> rng = np.random.default_rng(0)
    >>> for step in range(1, 2101):
    ...     shift = 3.0 if step > 2000 else 0.0
    ...     losses = np.abs(rng.normal(size=2)) + np.array([0.0, shift])
    ...     for task, detector in strategy.update(losses, np.array([True, True]), step):
    ...         print(f"step {step}: drift in task {task} ({detector})")
    step 2024: drift in task 1 (ADWIN)
    >>> weights = strategy.step_weights()
    >>> float(weights.trunk[0]), bool(weights.trunk[1] < 1.0)
    (1.0, True)
    """

    _per_task: typing.ClassVar[dict[str, float]] = {
        "_damping": 0.0,
        "_cooling": 0.0,
        "_since": 0.0,
        "_recent": 0.0,
        "_older": 0.0,
        "_seen": 0.0,
        "_baseline": 0.0,
    }
    RECENT_RATE = 0.05
    OLDER_RATE = 0.005
    MIN_HOLD = 50  # labels the damping lasts at least

    def __init__(
        self,
        base: WeightingStrategy | None = None,
        detector: river_base.DriftDetector | None = None,
        detectors: dict[str, river_base.DriftDetector] | None = None,
        trunk_damping: float = 0.25,
        mixture_shift: float = 0.0,
        cooldown: int = 500,
        min_rise: float = 0.5,
        settle_tolerance: float = 0.1,
        max_hold: int = 3000,
        relax: float = 0.005,
        replay: int = 1000,
    ) -> None:
        if base is not None and not isinstance(base, WeightingStrategy):
            raise InvalidInputType(f"base must be a weighting strategy such as DWA(), got {base!r}")
        if isinstance(base, DriftAware):
            raise InvalidInputType("DriftAware cannot wrap another DriftAware")
        if detector is not None:
            check_detector(detector, "detector")
        for task, override in (detectors or {}).items():
            check_detector(override, f"the detector of task {task!r}")
        if not 0 <= trunk_damping <= 1:
            raise InvalidInput(f"need 0 <= trunk_damping <= 1, got {trunk_damping}")
        if not 0 <= mixture_shift <= 1:
            raise InvalidInput(f"need 0 <= mixture_shift <= 1, got {mixture_shift}")
        if cooldown < 0 or not 0 < relax <= 1 or replay < 1:
            raise InvalidInput(
                f"need cooldown >= 0, 0 < relax <= 1 and replay >= 1, "
                f"got {cooldown}, {relax} and {replay}"
            )
        super().__init__()
        self.base = base if base is not None else DWA()
        self.detector = detector if detector is not None else drift.ADWIN()
        self.detectors = dict(detectors or {})
        self.trunk_damping = trunk_damping
        self.mixture_shift = mixture_shift
        self.cooldown = cooldown
        self.min_rise = min_rise
        self.settle_tolerance = settle_tolerance
        self.max_hold = max_hold
        self.relax = relax
        self.replay = replay
        self._base = self.base.clone()
        self._ones = np.ones(0)
        self._detectors: list[river_base.DriftDetector] = []
        self._fed: list[array.array] = []  # per task: losses fed since its detector was made

    @property
    def needs_grad_norms(self) -> bool:  # type: ignore[override]
        return self._base.needs_grad_norms

    @property
    def needs_affinity(self) -> bool:  # type: ignore[override]
        return self._base.needs_affinity

    def observe_affinity(self, matrix: np.ndarray) -> None:
        self._base.observe_affinity(matrix)
        self._refresh()

    def _fresh_detector(self, position: int) -> river_base.DriftDetector:
        return self.detectors.get(self.tasks[position], self.detector).clone()

    def add_task(self, task: str) -> None:
        self._base.add_task(task)
        super().add_task(task)
        self._detectors.append(self._fresh_detector(len(self.tasks) - 1))
        self._fed.append(array.array("d"))

    def _update(
        self, losses: list[float], labelled: list[int], grad_norms: list[float]
    ) -> list[tuple[int, str]]:
        detections = [
            (k, type(self._detectors[k]).__name__)
            for k in labelled
            if self._observe_task(k, losses[k])
        ]
        for k, _ in detections:
            self._base.reset_task(k)
        self._base._update(losses, labelled, grad_norms)
        self._refresh()
        return detections

    def _observe_task(self, k: int, loss: float) -> bool:
        """Feed one loss of task k to its statistics and detector; whether it drifted."""
        seen = self._seen[k] = self._seen[k] + 1.0
        self._recent[k] += max(self.RECENT_RATE, 1.0 / seen) * (loss - self._recent[k])
        self._older[k] += max(self.OLDER_RATE, 1.0 / seen) * (loss - self._older[k])
        if self._cooling[k] > 0:
            self._cooling[k] -= 1.0
        if self._damping[k] > 0:
            self._since[k] += 1.0
            settled = self._recent[k] <= self._baseline[k] * (1.0 + self.settle_tolerance)
            if self._since[k] >= self.MIN_HOLD and (settled or self._since[k] >= self.max_hold):
                self._damping[k] *= 1.0 - self.relax
                if self._damping[k] < RELAXED:
                    self._damping[k] = 0.0
        detector = self._detectors[k]
        detector.update(loss)
        self._fed[k].append(loss)
        if not detector.drift_detected:
            if len(self._fed[k]) >= 2 * self.replay:
                self._rebuild_detector(k, self._fed[k][-self.replay :])
            return False
        self._rebuild_detector(k, [])
        if self._cooling[k] > 0 or self._recent[k] <= self._older[k] * (1.0 + self.min_rise):
            return False  # within the cool-down, or no clear rise: not a change to react to
        self._damping[k] = 1.0
        self._cooling[k] = float(self.cooldown)
        self._since[k] = 0.0
        self._baseline[k] = self._older[k]  # the loss level before the drift
        return True

    def _rebuild_detector(self, k: int, losses: typing.Iterable[float]) -> None:
        """A fresh detector for task k fed `losses`; what follows a detection among them."""
        detector = self._fresh_detector(k)
        kept = array.array("d")
        for loss in losses:
            detector.update(loss)
            kept.append(loss)
            if detector.drift_detected:
                detector, kept = self._fresh_detector(k), array.array("d")
        self._detectors[k] = detector
        self._fed[k] = kept

    def _refresh(self) -> None:
        loss = self._base.step_weights().loss
        if len(self._ones) != len(loss):
            self._ones = np.ones(len(loss))
        if not any(self._damping):
            self._weights = StepWeights(loss, self._ones)
            return
        self._weights = StepWeights(
            loss, 1.0 - (1.0 - self.trunk_damping) * np.array(self._damping)
        )

    # -- checkpoints -----------------------------------------------------------------------

    def state(self) -> tuple[dict, dict[str, np.ndarray]]:
        meta, arrays = super().state()
        base_meta, base_arrays = self._base.state()
        meta["base"] = base_meta
        arrays.update({f"base.{name}": value for name, value in base_arrays.items()})
        arrays.update(
            {f"fed.{k}": np.frombuffer(fed, float).copy() for k, fed in enumerate(self._fed)}
        )
        return meta, arrays

    def load_state(self, meta: dict, arrays: dict[str, np.ndarray]) -> None:
        self._base.load_state(meta["base"], arrays_under(arrays, "base."))
        super().load_state(meta, arrays)
        self._detectors = [self._fresh_detector(k) for k in range(len(self.tasks))]
        self._fed = [array.array("d") for _ in self.tasks]
        for k in range(len(self.tasks)):
            self._rebuild_detector(k, arrays[f"fed.{k}"].tolist())
