"""What one request to the HTTP service may hold; kept apart from `http_app` so that the
command line can offer the limits without the serve extra installed."""

from __future__ import annotations

import typing


class Limits(typing.NamedTuple):
    """Bounds on one request to `stream-mtl serve` (see `stream_mtl.http_app`).

    >>> Limits(rows=100)
    Limits(body_bytes=1000000, rows=100, row_features=1000, string_length=1000)
    """

    body_bytes: int = 1_000_000
    rows: int = 1_000
    row_features: int = 1_000
    string_length: int = 1_000
