"""The docstring examples of the connectors, run as the installed package names them.

`connectors/` installs as `stream_mtl.connectors` (see pyproject.toml), so pytest's own
doctest collection, which would import it as a top-level `connectors`, is not used.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import stream_mtl.connectors

MODULES = [
    f"stream_mtl.connectors.{info.name}"
    for info in pkgutil.iter_modules(stream_mtl.connectors.__path__)
]


def test_every_connector_module_is_collected_and_its_examples_found():
    assert {"stream_mtl.connectors.files", "stream_mtl.connectors.kafka"} <= set(MODULES)
    files = importlib.import_module("stream_mtl.connectors.files")
    assert doctest.testmod(files, optionflags=doctest.ELLIPSIS).attempted >= 3


@pytest.mark.parametrize("name", MODULES)
def test_a_connectors_examples_run(name):
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    result = doctest.testmod(importlib.import_module(name), optionflags=flags)
    assert result.failed == 0
