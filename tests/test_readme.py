"""Every Python example of the README runs as written (each on its own, in a fresh folder)."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = [
    textwrap.dedent(match.group(2))
    for match in re.finditer(r"^( *)```python\n(.*?)^\1```", README.read_text(), re.M | re.S)
]


def test_the_readme_has_python_examples():
    assert len(BLOCKS) >= 4


@pytest.mark.parametrize("block", BLOCKS, ids=[b.splitlines()[0][:40] for b in BLOCKS])
def test_a_readme_example_runs_as_written(block, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(block, str(README), "exec"), {"__name__": "readme"})
