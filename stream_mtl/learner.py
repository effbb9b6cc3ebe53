"""MultiTaskLearner: the one object users hold - a shared trunk, a head per task, learning online.

The learner owns everything that is about the data: it checks and encodes
features, scales regression targets, maps class labels to head outputs, asks
the weighting strategy for this step's task weights, and hands plain arrays to
a backend, which owns the parameters and the optimiser.
"""

from __future__ import annotations

import math
import os
import typing
import zlib
from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd
from river import base

from stream_mtl.affinity import TaskAffinity
from stream_mtl.backends import BACKENDS, SHARING, make_backend
from stream_mtl.backends.base import StepResult, target_row
from stream_mtl.backends.flat import OPTIMIZERS
from stream_mtl.backends.guard import FiniteGuard
from stream_mtl.backends.init import ACTIVATIONS, initial_trunk, layer_weights
from stream_mtl.checkpoint import (
    arrays_under,
    load_checkpoint,
    object_from_spec,
    object_to_spec,
    save_checkpoint,
)
from stream_mtl.exceptions import InvalidCheckpoint, InvalidInput, InvalidInputType
from stream_mtl.features import FeatureEncoder
from stream_mtl.outputs import Outputs
from stream_mtl.predictor import Predicting
from stream_mtl.tasks import MULTICLASS, Task
from stream_mtl.version import __version__
from stream_mtl.weighting import DriftAware, WeightingStrategy

DTYPES = ("float32", "float64")
# The largest max_magnitude: the squares of larger values, summed over a long stream,
# would overflow the running variances of features and targets.
MAX_MAGNITUDE_LIMIT = 1e100
# River's checks that learn from a data set (river.checks.common).
RIVER_DATASET_CHECKS = (
    "check_learn_one",
    "check_pickling",
    "check_shuffle_features_no_impact",
    "check_emerging_features",
    "check_disappearing_features",
    "check_radically_disappearing_features",
    "check_predict_one_pure",
    "check_predict_one_before_any_learn",
    "check_no_state_aliasing_with_input",
    "check_clone_is_independent",
    "check_seeding_is_idempotent",
    "check_bounded_memory_growth",
)


class DriftEvent(typing.NamedTuple):
    """A change detected in one task's loss: at which learning step, in which task, by what."""

    step: int
    task: str
    detector: str


class Schema(typing.NamedTuple):
    """Features (name, whether scaled) and classes (task -> labels) in order of arrival."""

    features: list[tuple[str | int, bool]]
    classes: dict[str, list]

    def __bool__(self) -> bool:
        return bool(self.features or self.classes)


class MultiTaskLearner(Predicting, base.MultiTargetRegressor, base.MultiLabelClassifier):
    """An online multi-task model: a shared MLP trunk, and per task a mixture of heads.

    Each task's prediction is a Hedge mixture of heads at every depth (Sahoo et al.,
    IJCAI 2018): linear heads on the scaled inputs learned by a second-order rule
    (recursive least squares with forgetting for regression, an online Newton step for
    classification) - one per forgetting factor, and one shared by all tasks of the
    task's kind - which are good after a few dozen observations; a head on each
    trunk layer's output, learned with the trunk by `optimizer`; and second-order heads
    on the last layer's output, which read out what the trunk has learned (and re-fit
    that read-out after a change) within a few dozen labels. Every head learns from
    every label; the mixture moves toward the combination of heads that lowers the
    task's loss, with a floor that keeps every head within reach: a short stream is
    served by the linear heads, a long one by whatever predicts it best.

    Parameters
    ----------
    tasks
        Task name -> `Regression()`, `Binary()` or `Multiclass()`. More can be added
        at any time with `add_task`.
    hidden
        Widths of the shared trunk's layers; `()` puts the heads on the scaled inputs.
    backend
        `"numpy"` (fast per observation, CPU) or `"torch"` (mini-batches, CPU or GPU).
    device
        For the torch backend: `"cpu"`, `"cuda"`, `"cuda:N"` or `"auto"`.
    optimizer
        `"adam"` or `"sgd"`.
    lr
        Learning rate.
    dtype
        `"float32"`, or `"float64"` for exact cross-backend checks.
    weighting
        A task-weighting strategy; `None` means `DriftAware(DWA())`: loss-ratio weights,
        and a drift detector per task that makes a drifting task re-adapt fast
        without dragging the shared trunk.
    seed
        Seed of the initial weights.
    activation
        `"relu"` or `"tanh"`, for the trunk's layers.
    mixed_precision
        Torch backend only: matrix products in bf16 (autocast), weights in float32.
    forgetting
        One linear head on the inputs per factor, each forgetting its second-order state
        at that rate (1 forgets nothing; 0.999 weighs the last ~1,000 labels of a task
        most, 0.99 the last ~100): the mixture finds the memory each task needs.
    hedge_rate
        How fast each task's mixture moves: after each label a head's weight is
        multiplied by exp(-eta g), g the slope of the mixture's loss along that head and
        eta this rate scaled to the task's recent slopes (see `backends.hedge`).
    hedge_floor
        Share of each task's mixture spread evenly over its heads at least, so that the
        mixture can always move back to a head (every head learns whatever its weight).
    share_linear
        Give every task one more linear head, shared by all tasks of its kind (regression
        or binary) and learned from all their labels; each task's mixture decides how much
        to borrow from it. It helps most where tasks are many and alike, with few labels
        each.
    top_forgetting
        One more head per factor on the last trunk layer's output, learned by the same
        second-order rule as the linear heads (with that forgetting factor) while the
        trunk learns through it: the trunk's features read out by a few dozen labels
        rather than thousands of gradient steps. `()` for none.
    affinity_inputs
        How many inputs (the first, in order of appearance) `task_affinity` takes into
        account; its memory is n_tasks x affinity_inputs^2 floats.
    max_magnitude
        The largest absolute value a numeric feature or a regression label may have; a
        larger one is refused like a NaN (`InvalidInput`), since its square would
        overflow the running variance (about 1e154 and up) or one such value would swamp
        the scale of its feature or task for good. 1e15 by default: beyond it float64
        integers are no longer exact. At most 1e100.
    max_features
        The most distinct features (numeric names and string indicators `"f=v"`) the
        model takes in; an observation that would add more is refused (`InvalidInput`),
        so that no stream can grow the model without bound. The second-order heads
        keep a matrix of (features + 1)^2 floats per task output, about 8 MB each at
        1,000 features; raise it for wider inputs, knowing that.
    sharing
        `"hard"`: one trunk for all tasks. `"soft"`: each task has its own trunk of the
        widths `hidden` (and its own heads), and after every step each trunk moves
        toward the tasks' mean trunk (see `backends.soft`); it costs about one trunk's
        work per labelled task per step.
    soft_strength
        With soft sharing, the strength of the pull toward the mean trunk: each step
        moves a trunk the share min(1, lr * soft_strength) of the way. 0 gives
        independent models; from 1 / lr on, one shared trunk. The default, 1, halves a
        trunk's distance to the mean in about 700 steps. On the synthetic streams of
        `benchmarks/sharing.py` error rose with the strength, from level with separate
        models at 0.01 to well behind them at 100.

    Examples
    --------
    >>> from stream_mtl import MultiTaskLearner, Regression, Binary, Multiclass
    >>> model = MultiTaskLearner(
    ...     tasks={"price": Regression(), "churn": Binary(), "segment": Multiclass()},
    ...     hidden=(16,), seed=0,
    ... )
    >>> for i in range(200):
    ...     x = {"age": i % 7, "plan": "pro" if i % 2 else "free"}
    ...     y = {"price": 10.0 + i % 7, "churn": i % 2 == 0, "segment": "ab"[i % 2]}
    ...     model.learn_one(x, y)
    >>> prediction = model.predict_one({"age": 3, "plan": "pro"})
    >>> list(model.mixture["price"])  # the heads whose mixture the price relies on
    ['linear(0.999)', 'linear(0.99)', 'shared', 'layer1', 'top(0.999)', 'top(0.99)']
    >>> round(prediction["price"]), prediction["churn"], prediction["segment"]
    (13, False, 'b')
    >>> model.n_learned
    {'price': 200, 'churn': 200, 'segment': 200}
    >>> model.learn_one({"age": 1}, {"price": 11.0})  # a label for one task only
    >>> model.n_learned["price"], model.n_learned["churn"]
    (201, 200)
    """

    def __init__(
        self,
        tasks: dict[str, Task] | None = None,
        hidden: tuple[int, ...] = (64, 64),
        backend: str = "numpy",
        device: str = "cpu",
        optimizer: str = "adam",
        lr: float = 1e-3,
        dtype: str = "float32",
        weighting: WeightingStrategy | None = None,
        seed: int | None = None,
        activation: str = "relu",
        mixed_precision: bool = False,
        forgetting: tuple[float, ...] = (0.999, 0.99),
        hedge_rate: float = 1.0,
        hedge_floor: float = 0.01,
        share_linear: bool = True,
        top_forgetting: tuple[float, ...] = (0.999, 0.99),
        affinity_inputs: int = 128,
        max_magnitude: float = 1e15,
        max_features: int = 1000,
        sharing: str = "hard",
        soft_strength: float = 1.0,
    ) -> None:
        self.tasks = dict(tasks or {})
        self.hidden = tuple(hidden)
        self.backend = backend
        self.device = device
        self.optimizer = optimizer
        self.lr = lr
        self.dtype = dtype
        # None stands for the default strategy, which is then what repr, clone and
        # reports show (River's models treat an optimizer=None the same way).
        self.weighting = weighting if weighting is not None else DriftAware()
        self.seed = seed
        self.activation = activation
        self.mixed_precision = mixed_precision
        self.forgetting = tuple(forgetting)
        self.hedge_rate = hedge_rate
        self.hedge_floor = hedge_floor
        self.share_linear = share_linear
        self.top_forgetting = tuple(top_forgetting)
        self.affinity_inputs = affinity_inputs
        self.max_magnitude = max_magnitude
        self.max_features = max_features
        self.sharing = sharing
        self.soft_strength = soft_strength
        self._check_params()

        self._encoder = FeatureEncoder(
            max_magnitude=float(max_magnitude), max_features=max_features
        )
        self._outputs = Outputs(self._grow_classes, max_magnitude=float(max_magnitude))
        self._task_names = self._outputs.names  # the same lists, by task position
        self._task_objects = self._outputs.tasks
        self._n_learned: list[int] = []
        self._n_steps = 0
        self.drift_events: list[DriftEvent] = []
        self._drift_callbacks: list[typing.Callable[[DriftEvent], None]] = []
        self._weighting = self.weighting.clone()
        self._affinity = TaskAffinity(max_inputs=affinity_inputs)
        self._guard = FiniteGuard()
        rng = np.random.default_rng(seed)
        self._backend = make_backend(
            backend, self.hidden, activation, optimizer, float(lr), dtype, device, mixed_precision,
            forgetting=self.forgetting, hedge_rate=float(hedge_rate),
            hedge_floor=float(hedge_floor), share_linear=bool(share_linear),
            top_forgetting=self.top_forgetting, sharing=sharing,
            soft_strength=float(soft_strength),
        )  # fmt: skip
        self._backend.load_trunk(initial_trunk(rng, self.hidden, activation))
        self._feature_seed = int(rng.integers(2**32))
        for name, task in self.tasks.items():
            self._register_task(name, task)

    def _check_params(self) -> None:
        for name, task in self.tasks.items():
            self._check_new_task(name, task, existing=())
        if not all(isinstance(w, int) and w > 0 for w in self.hidden):
            raise InvalidInput(
                f"hidden must be a tuple of positive layer widths, got {self.hidden!r}"
            )
        if self.backend not in BACKENDS:
            raise InvalidInput(f"unknown backend {self.backend!r}; expected one of {BACKENDS}")
        if self.sharing not in SHARING:
            raise InvalidInput(f"unknown sharing {self.sharing!r}; expected one of {SHARING}")
        if self.sharing == "soft" and not self.hidden:
            raise InvalidInput("sharing='soft' needs a trunk: give hidden layer widths")
        if not (
            isinstance(self.soft_strength, int | float)
            and self.soft_strength >= 0
            and math.isfinite(self.soft_strength)
        ):
            raise InvalidInput(f"soft_strength must be a number >= 0, got {self.soft_strength!r}")
        if self.optimizer not in OPTIMIZERS:
            raise InvalidInput(
                f"unknown optimizer {self.optimizer!r}; expected one of {OPTIMIZERS}"
            )
        if not (isinstance(self.lr, int | float) and self.lr > 0 and math.isfinite(self.lr)):
            raise InvalidInput(f"lr must be a positive number, got {self.lr!r}")
        if self.dtype not in DTYPES:
            raise InvalidInput(f"unknown dtype {self.dtype!r}; expected one of {DTYPES}")
        if self.activation not in ACTIVATIONS:
            raise InvalidInput(f"unknown activation {self.activation!r}; expected {ACTIVATIONS}")
        if not self.forgetting or not _factors(self.forgetting):
            raise InvalidInput(
                f"forgetting must be a tuple of factors in [0.5, 1], got {self.forgetting!r}"
            )
        if not _factors(self.top_forgetting):
            raise InvalidInput(
                f"top_forgetting must be a tuple of factors in [0.5, 1], "
                f"got {self.top_forgetting!r}"
            )
        if not (isinstance(self.hedge_rate, int | float) and self.hedge_rate > 0):
            raise InvalidInput(f"hedge_rate must be a positive number, got {self.hedge_rate!r}")
        if isinstance(self.affinity_inputs, bool) or not (
            isinstance(self.affinity_inputs, int) and self.affinity_inputs >= 0
        ):
            raise InvalidInput(
                f"affinity_inputs must be a non-negative integer, got {self.affinity_inputs!r}"
            )
        if isinstance(self.max_magnitude, bool) or not (
            isinstance(self.max_magnitude, int | float)
            and 0 < self.max_magnitude <= MAX_MAGNITUDE_LIMIT
        ):
            raise InvalidInput(
                f"max_magnitude must be a positive number up to {MAX_MAGNITUDE_LIMIT:g} "
                f"(squares of larger values overflow the running variances), got "
                f"{self.max_magnitude!r}"
            )
        if isinstance(self.max_features, bool) or not (
            isinstance(self.max_features, int) and self.max_features > 0
        ):
            raise InvalidInput(
                f"max_features must be a positive integer, got {self.max_features!r}"
            )
        if not 0.0 <= self.hedge_floor < 1.0:
            raise InvalidInput(f"hedge_floor must be in [0, 1), got {self.hedge_floor!r}")
        if not isinstance(self.weighting, WeightingStrategy):
            raise InvalidInputType(
                f"weighting must be a weighting strategy such as Equal(), got {self.weighting!r}"
            )

    @staticmethod
    def _check_new_task(name: object, task: object, existing: typing.Iterable[str]) -> None:
        if not isinstance(name, str) or not name:
            raise InvalidInputType(f"task names must be non-empty strings, got {name!r}")
        if not isinstance(task, Task):
            raise InvalidInputType(
                f"task {name!r} must be Regression(), Binary() or Multiclass(), got {task!r}"
            )
        if name in existing:
            raise InvalidInput(f"task {name!r} already exists")

    def _get_params(self) -> dict[str, typing.Any]:
        params = super()._get_params()
        if params["hidden"] == ():
            # river.base.Base.clone reads param[0] of every tuple parameter, which fails on
            # an empty tuple; a list round-trips through the constructor just as well.
            params["hidden"] = []
        return params

    @classmethod
    def _unit_test_params(cls) -> typing.Iterator[dict]:
        from stream_mtl.tasks import Binary, Regression

        yield {"tasks": {"y": Regression()}, "hidden": (8,), "seed": 42}
        yield {
            "tasks": {"y": Regression(), "flag": Binary()},
            "hidden": (),
            "optimizer": "sgd",
            "lr": 0.01,
            "seed": 1,
        }
        yield {
            "tasks": {"y": Regression(), "flag": Binary()},
            "hidden": (8,),
            "sharing": "soft",
            "seed": 3,
        }

    def _unit_test_skips(self) -> set[str]:
        # River's multi-output data sets name targets (0, 1, 2; "amazed-suprised", ...)
        # that a model built for its own tasks refuses as unknown; its dataset checks run
        # on multi-task streams in tests/test_river_citizenship.py instead.
        return set(RIVER_DATASET_CHECKS)

    # -- tasks -----------------------------------------------------------------------

    def add_task(self, name: str, task: Task) -> None:
        """Add a task with a fresh head; it can be learned from the next observation on.

        >>> from stream_mtl import MultiTaskLearner, Regression
        >>> model = MultiTaskLearner(tasks={"price": Regression()}, hidden=(4,))
        >>> model.add_task("margin", Regression())
        >>> list(model.task_weights)
        ['price', 'margin']
        """
        self._check_new_task(name, task, existing=self._task_names)
        self.tasks[name] = task
        self._register_task(name, task)

    def _register_task(self, name: str, task: Task) -> None:
        self._guard.forget()
        self._outputs.add_task(name, task)
        self._n_learned.append(0)
        self._weighting.add_task(name)
        self._affinity.add_task()
        self._backend.set_head(name, task.kind, self._outputs.n_outputs(len(self._task_names) - 1))

    def _grow_classes(self, task: str, n_classes: int) -> None:
        self._guard.forget()
        self._backend.set_head(task, MULTICLASS, n_classes)

    @property
    def rolled_back(self) -> dict[str, int]:
        """Learning steps that left a parameter non-finite and were undone (`rollbacks`),
        and the steps lost with them (`steps_lost`): see `backends.guard`."""
        return self._guard.state()

    @property
    def task_weights(self) -> dict[str, float]:
        """Each task's loss weight for the next step."""
        weights = self._weighting.step_weights().loss
        return {name: float(w) for name, w in zip(self._task_names, weights)}

    @property
    def mixture(self) -> dict[str, dict[str, float]]:
        """Each task's mixture weight per head - `"linear(f)"`, its linear head on the
        inputs with forgetting factor f; `"shared"`, the linear head it shares with the
        tasks of its kind; `"layer{d}"`, its head on trunk layer d; `"top(f)"`, its
        second-order head on the last trunk layer - which depth its predictions rely on
        now."""
        names = self._backend.head_names
        alpha = self._backend.mixture_weights.tolist()
        return {task: dict(zip(names, row)) for task, row in zip(self._task_names, alpha)}

    @property
    def task_affinity(self) -> pd.DataFrame:
        """How much each pair of tasks depends on the same input directions, in [0, 1].

        A task x task table (see `affinity.TaskAffinity`): near 1, the two tasks'
        predictions move with the same directions of the inputs (one structure serves
        both, which is what a shared trunk exploits); near 0, with disjoint ones; NaN
        for a task whose predictions do not yet move with any input. It is measured on
        the model, from a sample of the observations learned, and does not need the
        tasks to be labelled together.
        """
        return pd.DataFrame(self._affinity.matrix, index=self._task_names, columns=self._task_names)

    def on_drift(self, callback: typing.Callable[[DriftEvent], None]) -> None:
        """Call `callback(event)` for every drift detected from now on.

        Callbacks are not saved in checkpoints; register them again after `load`.
        """
        if not callable(callback):
            raise InvalidInputType(f"the drift callback must be callable, got {callback!r}")
        self._drift_callbacks.append(callback)

    @property
    def n_learned(self) -> dict[str, int]:
        """How many labels each task has learned from."""
        return dict(zip(self._task_names, self._n_learned))

    # -- schema (the features and classes known) -------------------------------------

    def unseen(self, xs: Iterable[dict], ys: Iterable[dict | None]) -> Schema:
        """The features and classes that learning `xs` and `ys` (None: no labels) would
        register, in the order they would get columns; nothing changes. Observations
        that would be refused add nothing. Several learners that must keep one schema
        (workers averaging one model) register each other's with `register`."""
        features: dict = {}
        classes: dict[str, dict] = {}
        multiclass = [
            n for n, t in zip(self._task_names, self._task_objects) if t.kind == MULTICLASS
        ]
        for x, y in zip(xs, ys):
            features.update(self._encoder.unseen(x))
            if y is None or not multiclass:
                continue
            try:
                labels = self._outputs.canonical_labels(y)
            except InvalidInput:
                continue
            for name in multiclass:
                if name in labels and not self._outputs.has_class(name, labels[name]):
                    classes.setdefault(name, {})[labels[name]] = None
        return Schema(
            list(features.items()), {name: list(found) for name, found in classes.items()}
        )

    def register(self, schema: Schema) -> None:
        """Give columns to the features and head outputs to the classes of `schema`, in
        its order (those already known are skipped, those beyond `max_features` or a
        task's `max_classes` left out): learners that register the same schemas in the
        same order keep the same columns."""
        n_before = self._encoder.n_features
        self._encoder.register(schema.features)
        self._grow_inputs(n_before)
        for name, labels in schema.classes.items():
            for label in labels:
                self._outputs.add_class(name, label)

    # -- one observation ---------------------------------------------------------------

    def learn_one(self, x: dict, y: dict) -> None:
        """Learn from one observation; `y` may label any subset of the tasks.

        Everything is checked before anything changes: a rejected call leaves the
        model exactly as it was.
        """
        labels = self._outputs.check_labels(y)
        n_before = self._encoder.n_features
        encoded = self._encoder.learn_one(x)
        self._grow_inputs(n_before)
        if all(label is None for label in labels):
            return  # nothing to learn from; the feature statistics have been updated
        targets = self._outputs.targets_one(labels)
        weights = self._weighting.step_weights()
        self._guard.before_step(self._backend, self._n_steps)
        result = self._backend.step_one(
            encoded, targets, weights.loss, weights.trunk, self._wants_gram()
        )
        if not self._guard.after_step(self._backend, self._n_steps, result.finite):
            return  # rolled back: nothing of this step is kept or counted
        counts = [0 if t is None else 1 for t in targets]
        if self._outputs.tuners:
            row = target_row(targets)
            self._tune_thresholds(row, result.predictions)
        self._after_step(result, counts, counts)
        if self._affinity.due_one():
            self._feed_affinity(encoded[None, :])

    def _tune_thresholds(self, targets: np.ndarray, probabilities: np.ndarray) -> None:
        """Feed each tuned binary threshold the probabilities served before this step."""
        columns = [start for _kind, start, _stop in self._backend.columns.slices]
        self._outputs.tune_thresholds(targets, probabilities, columns)

    def _grow_inputs(self, n_before: int) -> None:
        """Give the backend the features the encoder has registered since `n_before`."""
        n_new = self._encoder.n_features - n_before
        if n_new <= 0:
            return
        self._guard.forget()
        width = self.hidden[0] if self.hidden else 0
        rows = np.zeros((n_new, width))
        if self._n_steps == 0 and self.hidden:
            # Before the first step, input weights are drawn like any layer's, each feature's
            # row from its own name so that the order features arrive in does not matter.
            # Afterwards a new feature starts at zero: it changes no prediction until learned.
            fan_in = self._encoder.n_features
            for row, name in enumerate(self._encoder.names[n_before:]):
                rng = np.random.default_rng([self._feature_seed, zlib.crc32(repr(name).encode())])
                rows[row] = layer_weights(rng, fan_in, width, 1, self.activation)[0]
        self._backend.grow_inputs(rows)

    def _wants_gram(self) -> bool:
        """Whether the next step must report the tasks' gradient Gram matrix."""
        return self._weighting.needs_grad_norms

    def _feed_affinity(self, encoded: np.ndarray) -> None:
        """Hand `TaskAffinity` the Jacobian of the predictions with respect to the first
        inputs at each row of `encoded` (`input_jacobian`, exact: finite differences took
        a forward pass per input, 86 against 40 us a row on the reference model)."""
        n = min(self._backend.n_inputs, self._affinity.max_inputs)
        if n == 0 or not len(encoded):
            return
        column_task = self._backend.columns.column_task
        for jacobian in self._backend.input_jacobian(encoded, n):
            self._affinity.update(jacobian, column_task)
        if self._weighting.needs_affinity:
            self._weighting.observe_affinity(self._affinity.matrix)

    def _after_step(
        self, result: StepResult, labelled: typing.Sequence, counts: typing.Sequence[int]
    ) -> None:
        self._n_steps += 1
        gram, grad_norms = result.gram, None
        if gram is not None:
            grad_norms = np.sqrt(np.maximum(np.diagonal(gram), 0.0))
        detections = self._weighting.update(result.losses, labelled, self._n_steps, grad_norms)
        n_learned = self._n_learned
        for position, count in enumerate(counts):
            n_learned[position] += int(count)
        for position, detector in detections:
            # Only DriftAware detects; it says how much of the mixture to move.
            if self._weighting.mixture_shift:
                self._backend.restart_task(position, self._weighting.mixture_shift)
            event = DriftEvent(self._n_steps, self._task_names[position], detector)
            self.drift_events.append(event)
            for callback in self._drift_callbacks:
                callback(event)

    # -- many observations -------------------------------------------------------------

    def learn_many(self, X: pd.DataFrame | np.ndarray, Y: pd.DataFrame | Mapping) -> None:
        """Learn from a mini-batch in one optimiser step on the mean loss over its rows.

        `Y` has one column per task with NaN (or None) where a row has no label. The
        feature and target statistics are updated row by row, exactly as a loop of
        `learn_one` would; the parameters take one step whose gradient is the mean of
        the rows' gradients (River's convention for mini-batch gradient descent).
        """
        labels = self._outputs.check_label_frame(Y, len(X))
        n_before = self._encoder.n_features
        encoded = self._encoder.learn_many(X)
        self._grow_inputs(n_before)
        targets = self._outputs.targets_many(labels, len(X))
        counts = (~np.isnan(targets)).sum(axis=0)
        if not counts.any():
            return
        weights = self._weighting.step_weights()
        self._guard.before_step(self._backend, self._n_steps)
        result = self._backend.step_many(
            encoded, targets, weights.loss, weights.trunk, self._wants_gram()
        )
        if not self._guard.after_step(self._backend, self._n_steps, result.finite):
            return  # rolled back: nothing of this step is kept or counted
        self._tune_thresholds(targets, result.predictions)
        self._after_step(result, counts > 0, counts)
        labelled_rows = np.flatnonzero(~np.isnan(targets).all(axis=1))
        self._feed_affinity(encoded[labelled_rows[self._affinity.due(len(labelled_rows))]])

    def _scale_lr(self, factor: float) -> None:
        """Step with `factor` times `lr` until the model is rebuilt. `lr`, the model's
        setting that its checkpoints keep, stays as it is: the workers of a
        `DistributedLoop` step with N times it (see `connectors.distributed_loop`)."""
        self._backend.set_lr(self.lr * factor)

    def warm_up(self) -> None:
        """Compile the numba kernels that this model's `predict_one` and `learn_one` call,
        or load them from numba's cache (a first compile takes seconds, once per machine),
        and on the torch backend take a first step on the device (torch loads parts of
        itself on a first backward pass), so that no prediction or observation waits for
        either. A live service and `stream-mtl run` call it as they start."""
        from stream_mtl.backends.numpy import warm_up

        warm_up(self._backend)
        if self.backend == "torch":
            from stream_mtl.backends.torch import warm_up as warm_up_torch

            warm_up_torch(self.device)

    # -- checkpoints -------------------------------------------------------------------

    def save(self, path: str | os.PathLike, extra: dict | None = None) -> None:
        """Write the whole learner to one checkpoint file, atomically (see `checkpoint`).

        `extra` is JSON-able data stored beside it (a stream position, say) and returned
        by `load_with_extra`.
        """
        meta, arrays = self._state()
        meta["extra"] = extra or {}
        save_checkpoint(path, meta, arrays)

    @classmethod
    def load(
        cls, path: str | os.PathLike, backend: str | None = None, device: str | None = None
    ) -> MultiTaskLearner:
        """A learner from a checkpoint, on its own backend or on the one given."""
        return cls.load_with_extra(path, backend=backend, device=device)[0]

    @classmethod
    def load_with_extra(
        cls, path: str | os.PathLike, backend: str | None = None, device: str | None = None
    ) -> tuple[MultiTaskLearner, dict]:
        """Like `load`, also returning the `extra` data given to `save`."""
        meta, arrays = load_checkpoint(path)
        try:
            model = cls._from_state(meta, arrays, backend, device)
        except InvalidInput:
            raise
        except Exception as error:  # whatever a crafted file makes fail: its fault, named
            raise InvalidCheckpoint(
                f"checkpoint {str(path)!r} is incomplete or corrupt: {error!r:.300}"
            ) from None
        return model, meta.get("extra", {})

    def _state(self) -> tuple[dict, dict[str, np.ndarray]]:
        backend_arrays = self._guard.verified_state(self._backend, self._n_steps)  # no NaN
        encoder_meta, encoder_arrays = self._encoder.state()
        outputs_meta, outputs_arrays = self._outputs.state()
        weighting_meta, weighting_arrays = self._weighting.state()
        meta = {
            "library_version": __version__,
            "params": {
                "hidden": list(self.hidden),
                "backend": self.backend,
                "device": self.device,
                "optimizer": self.optimizer,
                "lr": self.lr,
                "dtype": self.dtype,
                "seed": self.seed,
                "activation": self.activation,
                "mixed_precision": self.mixed_precision,
                "forgetting": list(self.forgetting),
                "hedge_rate": self.hedge_rate,
                "hedge_floor": self.hedge_floor,
                "share_linear": self.share_linear,
                "top_forgetting": list(self.top_forgetting),
                "affinity_inputs": self.affinity_inputs,
                "max_magnitude": self.max_magnitude,
                "max_features": self.max_features,
                "sharing": self.sharing,
                "soft_strength": self.soft_strength,
            },
            "tasks": [
                [name, object_to_spec(task)]
                for name, task in zip(self._task_names, self._task_objects)
            ],
            **outputs_meta,
            "n_learned": self._n_learned,
            "n_steps": self._n_steps,
            "feature_seed": self._feature_seed,
            "encoder": encoder_meta,
            "weighting": {"spec": object_to_spec(self._weighting), "state": weighting_meta},
            "drift_events": [list(event) for event in self.drift_events],
            "guard": self._guard.state(),
        }
        arrays = {f"encoder.{k}": v for k, v in encoder_arrays.items()}
        arrays.update(outputs_arrays)
        arrays.update({f"weighting.{k}": v for k, v in weighting_arrays.items()})
        arrays.update({f"affinity.{k}": v for k, v in self._affinity.state().items()})
        arrays.update({f"backend.{k}": v for k, v in backend_arrays.items()})
        return meta, arrays

    @classmethod
    def _from_state(
        cls, meta: dict, arrays: dict[str, np.ndarray], backend: str | None, device: str | None
    ) -> MultiTaskLearner:
        params = dict(meta["params"])
        params["hidden"] = tuple(params["hidden"])
        params["forgetting"] = tuple(params["forgetting"])
        params["top_forgetting"] = tuple(params["top_forgetting"])
        params["backend"] = backend or params["backend"]
        params["device"] = device or (params["device"] if backend is None else "cpu")
        if params["backend"] != "torch":
            params["mixed_precision"] = False  # a torch-only option
        weighting = object_from_spec(meta["weighting"]["spec"])
        tasks = {name: object_from_spec(spec) for name, spec in meta["tasks"]}
        if not all(isinstance(task, Task) for task in tasks.values()):
            raise InvalidCheckpoint("checkpoint tasks must be Regression, Binary or Multiclass")
        _check_declared_structure(params, meta, arrays)
        model = cls(tasks=tasks, weighting=weighting, **params)
        model._feature_seed = int(meta["feature_seed"])

        model._encoder.load_state(meta["encoder"], arrays_under(arrays, "encoder."))
        model._weighting.load_state(meta["weighting"]["state"], arrays_under(arrays, "weighting."))
        model._affinity.load_state(arrays_under(arrays, "affinity."))
        model._outputs.load_state(meta, arrays)  # grows the multiclass heads
        model._backend.load_state(arrays_under(arrays, "backend."))
        model._n_learned = [int(n) for n in meta["n_learned"]]
        model._n_steps = int(meta["n_steps"])
        model.drift_events = [DriftEvent(*event) for event in meta["drift_events"]]
        model._guard.load_state(meta.get("guard", {}))
        if model._backend.n_inputs != model._encoder.n_features:
            raise InvalidCheckpoint(
                f"checkpoint is inconsistent: {model._encoder.n_features} features but "
                f"{model._backend.n_inputs} model inputs"
            )
        return model


def _factors(values: tuple) -> bool:
    """Whether every value is a forgetting factor in [0.5, 1]."""
    return all(isinstance(f, int | float) and 0.5 <= f <= 1.0 for f in values)


def _check_declared_structure(params: dict, meta: dict, arrays: dict) -> None:
    """Refuse a checkpoint whose parameters or arrays declare layers, heads, inputs or
    classes that its arrays do not hold, before a model of that size is built: whatever
    a crafted file says, a load allocates no more than the file stores."""
    hidden, forgetting = params["hidden"], params["forgetting"]
    if not (isinstance(hidden, tuple) and isinstance(forgetting, tuple)):
        raise InvalidCheckpoint("checkpoint parameters hidden and forgetting must be lists")
    soft = params.get("sharing") == "soft"
    # Where the arrays of the trunk before any task, and of each task's model, lie.
    first = "backend.prototype." if soft else "backend."
    owner = {name: f"backend.soft.{name}." if soft else "backend." for name, _ in meta["tasks"]}
    for prefix in {first, *owner.values()}:
        for layer, width in enumerate(hidden):
            stored = arrays.get(f"{prefix}param.trunk.{layer}.weight")
            if stored is None or stored.ndim != 2 or stored.shape[1] != width:
                raise InvalidCheckpoint(
                    f"checkpoint declares a trunk layer {layer} of width {width!r} that its "
                    "arrays do not hold"
                )
    classes = meta["classes"]
    heads = [(f"linear{i}", 1) for i in range(len(forgetting))]
    if hidden:
        heads += [(f"top{i}", hidden[-1] + 1) for i in range(len(params["top_forgetting"]))]
    for name, _spec in meta["tasks"]:
        rows = len(classes[name]) if name in classes else 1
        for group, width in heads:
            stored = arrays.get(f"{owner[name]}{group}.{name}.cov")
            if width == 1 and stored is not None:  # a linear head: as wide as the inputs
                width = arrays[f"{owner[name]}{group}.{name}.weight"].shape[-1]
            if stored is None or stored.shape != (rows, width, width):
                raise InvalidCheckpoint(
                    f"checkpoint declares a head {group} for task {name!r} that its arrays "
                    "do not hold"
                )
    inputs = arrays[f"{first}param.trunk.0.weight"].shape[0] if hidden else None
    for name, _spec in meta["tasks"]:
        linear = arrays[f"{owner[name]}linear0.{name}.weight"]
        if inputs is not None and linear.shape[-1] != inputs + 1:
            raise InvalidCheckpoint("checkpoint declares more inputs than its linear heads hold")
