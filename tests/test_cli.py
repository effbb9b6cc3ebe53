"""The `stream-mtl` command, run as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys


def test_demo_prints_the_model_beside_the_mean_baseline_and_writes_a_report(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "stream_mtl.cli", "demo", "--n", "3000", "--report", str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "predict the mean" in result.stdout
    for task in ("a", "b", "c", "flag"):
        assert f"\n{task} " in result.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["n_observations"] == 3000
    assert set(report["metrics"]) == {"a", "b", "c", "flag"}


def test_a_bad_argument_is_an_error_not_a_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "stream_mtl.cli", "demo", "--n", "10", "--every", "0"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "every must be at least 1" in result.stderr
    assert "Traceback" not in result.stderr
