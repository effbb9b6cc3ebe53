"""File sources: JSON Lines and CSV files as observation streams.

A JSON Lines file holds one object per line, either in the message form
`{"x": {...}, "y": {...}, "key": ..., "time": ...}` or flat (`{"age": 3, "price": 9.5}`),
in which case `labels` names the fields that are task labels, `features` (default:
every other field) those that are features, and `exclude` fields that are neither (the
labels of tasks not evaluated, say: in a flat file nothing else tells them from
features). A CSV file is always flat: numbers are read as floats, other text as
strings, and an empty cell is a missing value. Both may start with a UTF-8 byte-order
mark. `feature_names` lists the features met so far (the first `max_feature_names`).

A line that cannot be read (bad JSON, not an object, a row of the wrong length) does not
stop the stream: it is counted in `rejected` by reason and kept, with its line number,
in `dead_letters` (the first `keep_dead_letters` of them).
"""

from __future__ import annotations

import collections
import csv
import json
import os
import typing
from collections.abc import Iterator
from pathlib import Path

from stream_mtl.observation import Observation


class _FileSource:
    def __init__(
        self,
        path: str | os.PathLike,
        labels: typing.Sequence[str] = (),
        features: typing.Sequence[str] | None = None,
        key: str | None = None,
        keep_dead_letters: int = 100,
        exclude: typing.Sequence[str] = (),
        max_feature_names: int = 1000,
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no such file: {str(self.path)!r}")
        self.labels = list(labels)
        self.features = None if features is None else list(features)
        both = set(self.labels) & set(self.features or ())
        if both:
            raise ValueError(f"{sorted(both)} cannot be both labels and features")
        self.key = key
        self.keep_dead_letters = keep_dead_letters
        self.exclude = list(exclude)
        self.max_feature_names = max_feature_names
        self.rejected: collections.Counter = collections.Counter()
        self.dead_letters: list[tuple[int, str, str]] = []
        self._feature_names: dict[str, None] = {}  # insertion-ordered set

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, labels={self.labels})"

    def _reject(self, line: int, reason: str, raw: str) -> None:
        self.rejected[reason] += 1
        if len(self.dead_letters) < self.keep_dead_letters:
            self.dead_letters.append((line, reason, raw[:500]))

    @property
    def feature_names(self) -> list[str]:
        """The features met so far, in order of appearance (the first `max_feature_names`)."""
        return list(self._feature_names)

    def _saw(self, x: dict) -> None:
        names = self._feature_names
        if len(names) < self.max_feature_names:
            for name in x:
                names[name] = None

    def _flat(self, record: dict) -> Observation:
        """An observation from a flat record, by the label/feature mapping."""
        skip = {*self.labels, *self.exclude, *([self.key] if self.key else [])}
        y = {name: record[name] for name in self.labels if record.get(name) is not None}
        names = self.features if self.features is not None else record.keys()
        x = {
            name: record[name]
            for name in names
            if name not in skip and record.get(name) is not None
        }
        self._saw(x)
        return Observation(x, y or None, key=record.get(self.key) if self.key else None)


class JSONLinesSource(_FileSource):
    """Observations from a JSON Lines file (message form or flat, see the module).

    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "events.jsonl"
    >>> _ = path.write_text(
    ...     '{"x": {"age": 3}, "y": {"price": 9.5}}\\n'
    ...     'not json\\n'
    ...     '{"age": 4, "price": 11.0}\\n'
    ... )
    >>> source = JSONLinesSource(path, labels=["price"])
    >>> [(obs.x, obs.y) for obs in source]
    [({'age': 3}, {'price': 9.5}), ({'age': 4}, {'price': 11.0})]
    >>> dict(source.rejected)
    {'not valid JSON': 1}
    """

    def __iter__(self) -> Iterator[Observation]:
        with self.path.open(encoding="utf-8-sig") as lines:
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    self._reject(number, "not valid JSON", line)
                    continue
                if not isinstance(record, dict):
                    self._reject(number, "not a JSON object", line)
                    continue
                if isinstance(record.get("x"), dict) or record.get("x", 0) is None:
                    y = record.get("y")
                    if y is not None and not isinstance(y, dict):
                        self._reject(number, '"y" is not an object', line)
                        continue
                    if record["x"] is not None:
                        self._saw(record["x"])
                    yield Observation(record["x"], y, record.get("key"), record.get("time"))
                else:
                    yield self._flat(record)


def _cell(text: str) -> float | str | None:
    if text == "":
        return None
    try:
        return float(text)
    except ValueError:
        return text


class CSVSource(_FileSource):
    """Observations from a CSV file with a header row; `labels` names the label columns.

    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "events.csv"
    >>> _ = path.write_text("age,plan,price\\n3,pro,9.5\\n4,free,\\n5,pro\\n")
    >>> source = CSVSource(path, labels=["price"])
    >>> [(obs.x, obs.y) for obs in source]
    [({'age': 3.0, 'plan': 'pro'}, {'price': 9.5}), ({'age': 4.0, 'plan': 'free'}, None)]
    >>> dict(source.rejected)
    {'row has 2 fields, the header 3': 1}
    """

    def __iter__(self) -> Iterator[Observation]:
        with self.path.open(encoding="utf-8-sig", newline="") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None:
                return
            missing = [
                name for name in (*self.labels, *(self.features or ())) if name not in header
            ]
            if missing:
                raise ValueError(f"{self.path.name}: no column(s) {missing} in {header}")
            for row in reader:
                if not row:
                    continue
                if len(row) != len(header):
                    reason = f"row has {len(row)} fields, the header {len(header)}"
                    self._reject(reader.line_num, reason, ",".join(row))
                    continue
                yield self._flat({name: _cell(value) for name, value in zip(header, row)})


def open_source(spec: str, labels: typing.Sequence[str] = (), **options) -> _FileSource:
    """A source from `jsonl:PATH` or `csv:PATH`.

    >>> open_source("parquet:x.pq")
    Traceback (most recent call last):
    ...
    ValueError: unknown source 'parquet:x.pq'; expected jsonl:PATH or csv:PATH
    """
    kind, _, path = spec.partition(":")
    sources = {"jsonl": JSONLinesSource, "csv": CSVSource}
    if kind not in sources or not path:
        raise ValueError(f"unknown source {spec!r}; expected jsonl:PATH or csv:PATH")
    return sources[kind](path, labels=labels, **options)
