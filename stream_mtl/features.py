"""FeatureEncoder: River-style feature dicts (or DataFrames) to dense, online-scaled vectors.

Numbers are standardised with a running mean and variance; booleans are 0/1;
a string value `v` of feature `f` becomes the indicator feature `"f=v"`. A
feature never seen before gets the next column (the model's input layer grows
to match); a feature absent from an observation contributes 0, i.e. its mean.
"""

from __future__ import annotations

import math
import numbers
import typing
from collections.abc import Hashable, Mapping

import numpy as np
import pandas as pd

from stream_mtl.exceptions import InvalidInput, InvalidInputType
from stream_mtl.moments import RunningMoments

FeatureName = str | int

_NUMBER_TYPES = frozenset({float, int, np.float64, np.float32, np.int64, np.int32})
_BOOL_TYPES = (bool, np.bool_)


def _indicator(name: Hashable, value: str) -> str:
    return f"{name}={value}"


def _check_name(name: object) -> None:
    if (type(name) is not str and not isinstance(name, numbers.Integral)) or isinstance(name, bool):
        raise InvalidInputType(
            f"feature name {name!r} is a {type(name).__name__}; feature names must be "
            "strings or integers",
            reason="a feature name that is neither a string nor an integer",
        )


class _Parsed(typing.NamedTuple):
    """One observation split into column names, values and whether each is scaled."""

    names: list[FeatureName]
    values: np.ndarray
    scaled: list[bool]


class FeatureEncoder:
    """Turns feature dicts into dense vectors whose length grows with new features.

    A numeric value beyond `max_magnitude` (in absolute value) is refused, as NaN and
    infinity are: its square would overflow the running variance, or one such value
    would swamp a feature's scale for good. An observation that would register more
    than `max_features` distinct features in all is refused (to predict, a feature never
    learned is ignored, so prediction never grows the encoder).

    >>> enc = FeatureEncoder()
    >>> enc.learn_one({"size": 3.0, "colour": "red"}).tolist()
    [0.0, 1.0]
    >>> enc.learn_one({"size": 5.0, "colour": "blue"}).tolist()
    [1.0, 0.0, 1.0]
    >>> enc.names
    ['size', 'colour=red', 'colour=blue']
    >>> enc.transform_one({"size": 3.0, "shape": "round"}).tolist()
    [-1.0, 0.0, 0.0]
    """

    def __init__(self, max_magnitude: float = math.inf, max_features: float = math.inf) -> None:
        self.max_magnitude = max_magnitude
        self.max_features = max_features
        self.names: list[FeatureName] = []
        self._index: dict[FeatureName, int] = {}
        self._scaled = np.zeros(0, dtype=bool)
        self.moments = RunningMoments()
        # Fast path for streams whose observations keep the same numeric schema.
        self._fast_keys: tuple | None = None
        self._fast_columns: np.ndarray | slice = np.zeros(0, dtype=np.intp)
        self._fast_is_all = False
        self._checked_keys: tuple | None = None  # the last all-numeric schema check_one saw

    @property
    def n_features(self) -> int:
        return len(self.names)

    # -- one observation -------------------------------------------------------------

    def check_one(self, x: object) -> None:
        """Raise a `TypeError`/`ValueError` naming the fault if `x` cannot be encoded.

        A stream that keeps one all-numeric schema is checked at the cost of one array.
        """
        if self._fast_values(x, self._checked_keys) is not None:
            return
        parsed = self._parse(x)
        self._check_room(parsed.names)
        if all(parsed.scaled) and type(x) is dict and len(parsed.names) == len(x):
            self._checked_keys = tuple(x)

    def transform_one(self, x: Mapping) -> np.ndarray:
        """Encode `x` with the current statistics; unknown features are ignored."""
        fast = self._fast_values(x, self._fast_keys)
        if fast is not None:
            scaled = self.moments.scale(self._fast_columns, fast)
            return self._dense(self._fast_columns, scaled)
        parsed = self._parse(x)
        index = self._index
        known = [i for i, name in enumerate(parsed.names) if name in index]
        columns = np.array([index[parsed.names[i]] for i in known], dtype=np.intp)
        values = parsed.values[known]
        numeric = self._scaled[columns]
        values[numeric] = self.moments.scale(columns[numeric], values[numeric])
        return self._dense(columns, values)

    def _fast_values(self, x: object, keys: tuple | None) -> np.ndarray | None:
        """The values of `x` as an array when `x` has the all-numeric schema `keys`."""
        if type(x) is not dict or tuple(x) != keys:
            return None
        values = list(x.values())
        if not set(map(type, values)) <= _NUMBER_TYPES:
            return None
        try:
            array = np.array(values, dtype=float)
        except OverflowError:  # an integer too large for a float: checked one by one
            return None
        # Every value is finite and within max_magnitude if the sum of their magnitudes
        # is (NaN fails both comparisons); else each value is checked.
        total = sum(map(abs, values))
        if not total < math.inf or total > self.max_magnitude:
            self._check_values(list(x), array)
        return array

    def _dense(self, columns: np.ndarray | slice, values: np.ndarray) -> np.ndarray:
        if self._fast_is_all and columns is self._fast_columns:
            return values
        out = np.zeros(self.n_features)
        out[columns] = values
        return out

    def learn_one(self, x: Mapping) -> np.ndarray:
        """Update the statistics with `x`, register its new features, return it encoded.

        `x` is checked in full before anything changes, so a rejected `x` leaves the
        encoder as it was.
        """
        fast = self._fast_values(x, self._fast_keys)
        if fast is not None:
            scaled = self.moments.update_and_scale(self._fast_columns, fast)
            return self._dense(self._fast_columns, scaled)
        parsed = self._parse(x)
        self._register(parsed.names, parsed.scaled)
        columns = np.fromiter((self._index[n] for n in parsed.names), np.intp, len(parsed.names))
        values = parsed.values.copy()
        numeric = np.fromiter(parsed.scaled, bool, len(parsed.scaled))
        if numeric.any():
            values[numeric] = self.moments.update_and_scale(columns[numeric], values[numeric])
        if numeric.all() and type(x) is dict and len(parsed.names) == len(x):
            self._fast_keys = tuple(x)
            covers_all = len(columns) == self.n_features and bool(
                (columns == np.arange(len(columns))).all()
            )
            # A slice reads and writes the statistics without fancy indexing.
            self._fast_columns = slice(None) if covers_all else columns
            self._fast_is_all = covers_all
        return self._dense(columns, values)

    def _parse(self, x: object) -> _Parsed:
        if not isinstance(x, Mapping):
            raise InvalidInputType(
                f"features must be a dict of name -> value, got {type(x).__name__}"
            )
        if not x:
            raise InvalidInput("features are empty: an observation needs at least one feature")
        names: list[FeatureName] = []
        values: list[float] = []
        scaled: list[bool] = []
        for name, value in x.items():
            if type(name) is not str and type(name) is not int:
                _check_name(name)
                name = int(name)  # a NumPy integer: the int it equals, which JSON writes
            kind = type(value)
            if kind in _NUMBER_TYPES or (
                isinstance(value, numbers.Real) and not isinstance(value, _BOOL_TYPES)
            ):
                names.append(name)
                values.append(_as_float(name, value))
                scaled.append(True)
            elif isinstance(value, _BOOL_TYPES):
                names.append(name)
                values.append(1.0 if value else 0.0)
                scaled.append(False)
            elif isinstance(value, str):
                names.append(_indicator(name, value))
                values.append(1.0)
                scaled.append(False)
            elif value is None:
                continue
            else:
                raise InvalidInputType(
                    f"feature {name!r} has a value of type {kind.__name__} ({value!r}); "
                    "expected a number, a bool or a string",
                    reason=f"feature {name!r} has a value of an unsupported type",
                )
        array = np.array(values, dtype=float)
        self._check_values(names, array)
        if not names:
            raise InvalidInput("features are empty: every feature value is None")
        return _Parsed(names, array, scaled)

    def _check_values(self, names: list, values: np.ndarray, rows: bool = False) -> None:
        """Raise naming the first value (of a row, or of a column's rows) that is NaN,
        infinite or beyond `max_magnitude`."""
        with np.errstate(invalid="ignore"):
            magnitude = np.abs(values)
            bad = ~(magnitude <= self.max_magnitude) | (magnitude == math.inf)
        if not bad.any():
            return
        at = int(np.flatnonzero(bad)[0])
        name, where = (names[0], f" in row {at}") if rows else (names[at], "")
        value = float(values[at])
        if math.isfinite(value):
            raise InvalidInput(
                f"feature {name!r} is {value:.3g}{where}, beyond max_magnitude="
                f"{self.max_magnitude:g}; rescale it, or raise the model's max_magnitude",
                reason=f"feature {name!r} beyond max_magnitude",
            )
        what = "NaN" if math.isnan(value) else "infinite"
        raise InvalidInput(f"feature {name!r} is {what}{where}; features must be finite numbers")

    def reserve(self, x: Mapping, reserved: dict) -> list[FeatureName]:
        """For observations that wait in a queue before they are learned (a live
        service): refuse `x` if its new features, with those `reserved` (accepted, not
        yet learned), would pass `max_features`; else add them to `reserved` and return
        them. Call it from one thread at a time; names learned since leave `reserved`."""
        if self._fast_values(x, self._fast_keys) is not None:
            return []  # the schema learned last: nothing new
        index = self._index
        new = [name for name in self._parse(x).names if name not in index and name not in reserved]
        if not new:
            return []
        for name in [name for name in reserved if name in index]:
            del reserved[name]
        self._check_room(new, taken=len(reserved))
        reserved.update(dict.fromkeys(new))
        return new

    def unseen(self, x: object) -> list[tuple[FeatureName, bool]]:
        """The features learning `x` would register, each with whether it is scaled
        (nothing for an `x` that would be refused); the encoder does not change."""
        if self._fast_values(x, self._fast_keys) is not None:
            return []
        try:
            parsed = self._parse(x)
        except InvalidInput:
            return []
        index = self._index
        return [(n, s) for n, s in zip(parsed.names, parsed.scaled) if n not in index]

    def register(self, features: typing.Iterable[tuple[FeatureName, bool]]) -> None:
        """Give columns to `features` (name, scaled) in their order, as far as
        `max_features` leaves room; those beyond it stay unknown."""
        new = [(n, s) for n, s in dict(features).items() if n not in self._index]
        room = self.max_features - self.n_features
        if len(new) > room:
            new = new[: max(0, int(room))]
        self._register([n for n, _ in new], [s for _, s in new])

    def _check_room(self, names: typing.Iterable[FeatureName], taken: int = 0) -> None:
        """Refuse names that would take the encoder beyond `max_features` features, when
        `taken` more are promised."""
        new = [name for name in dict.fromkeys(names) if name not in self._index]
        room = self.max_features - self.n_features - taken
        if len(new) > room:
            raise InvalidInput(
                f"feature {new[int(room)]!r} would be distinct feature number "
                f"{self.n_features + taken + int(room) + 1}, beyond max_features="
                f"{self.max_features:g}; raise the model's max_features, or drop or hash "
                "rare features upstream",
                reason="more distinct features than max_features",
            )

    def _register(self, names: typing.Iterable[FeatureName], scaled: typing.Iterable[bool]) -> None:
        new = [(n, s) for n, s in zip(names, scaled) if n not in self._index]
        if not new:
            return
        self._check_room(n for n, _ in new)
        for name, _ in new:
            self._index[name] = len(self.names)
            self.names.append(name)
        self._scaled = np.concatenate([self._scaled, [s for _, s in new]])
        self.moments.grow(self.n_features)
        if self._fast_is_all:
            self._fast_columns = np.arange(self.n_features - len(new), dtype=np.intp)
        self._fast_is_all = False

    # -- many observations -----------------------------------------------------------

    def transform_many(self, X: pd.DataFrame | np.ndarray) -> np.ndarray:
        """Encode the rows of `X` with the current statistics; unknown features are ignored."""
        columns = self._parse_frame(X)
        out = np.zeros((len(X), self.n_features))
        for name, values, _first_row, _scaled in columns:
            column = self._index.get(name)
            if column is not None:
                out[:, column] = (
                    self.moments.scale(column, values) if self._scaled[column] else values
                )
        return out

    def learn_many(self, X: pd.DataFrame | np.ndarray) -> np.ndarray:
        """Encode the rows of `X`, updating the statistics row by row as `learn_one` would.

        New features are registered in the order a loop of `learn_one` would meet them.
        """
        columns = self._parse_frame(X)
        ordered = sorted(range(len(columns)), key=lambda i: (columns[i][2], i))
        self._register((columns[i][0] for i in ordered), (columns[i][3] for i in ordered))
        out = np.zeros((len(X), self.n_features))
        numeric = [c for c in columns if c[3]]
        if numeric:
            index = np.array([self._index[c[0]] for c in numeric], dtype=np.intp)
            values = np.column_stack([c[1] for c in numeric])
            out[:, index] = self.moments.update_and_scale_batch(index, values)
        for name, values, _first_row, scaled in columns:
            if not scaled:
                out[:, self._index[name]] = values
        return out

    def check_frame(self, X: object) -> None:
        """Raise the error `learn_many(X)` would raise, naming the fault; change nothing."""
        self._check_room(column[0] for column in self._parse_frame(X))

    def _parse_frame(self, X: object) -> list[tuple[FeatureName, np.ndarray, int, bool]]:
        """Columns of `X` as (name, values, first row where present, scaled?)."""
        if isinstance(X, np.ndarray):
            if X.ndim != 2:
                raise InvalidInput(f"a feature array must be 2-D (rows x features), got {X.ndim}-D")
            X = pd.DataFrame(X)
        if not isinstance(X, pd.DataFrame):
            raise InvalidInputType(
                f"features must be a pandas DataFrame or a 2-D NumPy array, got {type(X).__name__}"
            )
        if X.shape[1] == 0:
            raise InvalidInput("features are empty: the frame has no columns")
        if all(dtype == np.float64 for dtype in X.dtypes):  # all numbers: one array
            return self._parse_float_frame(X)
        parsed = []
        for name in X.columns:
            _check_name(name)
            column = X[name]
            if pd.api.types.is_bool_dtype(column.dtype):
                parsed.append((name, column.to_numpy(dtype=float), 0, False))
            elif pd.api.types.is_numeric_dtype(column.dtype):
                values = column.to_numpy(dtype=float)
                self._check_values([name], values, rows=True)
                parsed.append((name, values, 0, True))
            else:
                parsed.extend(self._indicator_columns(name, column.to_numpy(dtype=object)))
        return parsed

    def _parse_float_frame(
        self, X: pd.DataFrame
    ) -> list[tuple[FeatureName, np.ndarray, int, bool]]:
        values = X.to_numpy()
        with np.errstate(invalid="ignore"):
            good = np.abs(values) <= self.max_magnitude
        if not good.all():
            column = int(np.nonzero(~good)[1][0])
            self._check_values([X.columns[column]], values[:, column], rows=True)
        for name in X.columns:
            _check_name(name)
        return [(name, values[:, j], 0, True) for j, name in enumerate(X.columns)]

    @staticmethod
    def _indicator_columns(name: FeatureName, values: np.ndarray) -> list:
        columns = []
        for value in dict.fromkeys(values):  # unique, in order of first appearance
            if value is None or (isinstance(value, float) and math.isnan(value)):
                continue
            if not isinstance(value, str):
                raise InvalidInputType(
                    f"feature {name!r} mixes strings with a value of type "
                    f"{type(value).__name__} ({value!r})",
                    reason=f"feature {name!r} mixes strings with other values",
                )
            hits = values == value
            columns.append((_indicator(name, value), hits.astype(float), int(hits.argmax()), False))
        return columns

    # -- checkpoint state --------------------------------------------------------------

    def state(self) -> tuple[dict, dict[str, np.ndarray]]:
        """JSON-able metadata and arrays that `load_state` restores exactly."""
        arrays = {f"moments.{k}": v for k, v in self.moments.state().items()}
        arrays["scaled"] = self._scaled.astype(np.uint8)
        return {"names": list(self.names)}, arrays

    def load_state(self, meta: dict, arrays: dict[str, np.ndarray]) -> None:
        self.names = list(meta["names"])
        self._index = {name: i for i, name in enumerate(self.names)}
        self._scaled = arrays["scaled"].astype(bool)
        self.moments.load_state({k: arrays[f"moments.{k}"] for k in ("count", "mean", "m2")})
        self._fast_keys = None
        if not (len(self._scaled) == len(self.moments) == len(self.names)):
            raise InvalidInput("feature encoder state is inconsistent: array lengths differ")


def _as_float(name: object, value: numbers.Real) -> float:
    """`value` as a float; an integer too large for one (over about 1.8e308) is refused."""
    try:
        return float(value)
    except OverflowError:
        raise InvalidInput(
            f"feature {name!r} is an integer too large for a float (over 1.8e308)",
            reason=f"feature {name!r} too large for a float",
        ) from None
