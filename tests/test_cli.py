"""The `stream-mtl` command, run as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys


def _cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "stream_mtl.cli", *args], capture_output=True, text=True, check=check
    )


def test_demo_prints_the_model_beside_its_baselines_and_writes_report_and_plots(tmp_path):
    result = _cli(
        "demo", "--n", "3000", "--sets", "synthetic", "--report", str(tmp_path), "--no-progress"
    )
    assert "single_task" in result.stdout and "river_linear" in result.stdout
    for task in ("a", "b", "c", "flag"):
        assert f"\n{task} " in result.stdout
    folder = tmp_path / "synthetic"
    report = json.loads((folder / "report.json").read_text())
    assert next(iter(report)) == "config"
    assert report["n_observations"] == 3000
    assert set(report["metrics"]) == {"a", "b", "c", "flag"}
    assert set(report["baselines"]) == {"single_task", "linear", "river_linear"}
    for plot in ("rolling_metrics.png", "task_weights.png", "depth.png", "task_affinity.png"):
        assert (folder / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_bad_argument_is_an_error_not_a_traceback(tmp_path):
    result = _cli("demo", "--n", "10", "--every", "0", "--sets", "synthetic", check=False)
    assert result.returncode == 2
    assert "every must be a positive integer" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_data_folder_without_the_data_sets_is_named(tmp_path):
    result = _cli("demo", "--data", str(tmp_path), "--sets", "school", check=False)
    assert result.returncode == 2
    assert "lacks" in result.stderr and "school.npz" in result.stderr


def test_evaluate_runs_on_a_users_file_and_counts_its_bad_rows(tmp_path):
    lines = []
    for i in range(600):
        x = {"u": (i % 17) / 17, "plan": "ab"[i % 2]}
        lines.append(json.dumps({"x": x, "y": {"price": 3.0 * x["u"], "vip": i % 3 == 0}}))
    lines[10] = "{not json"
    lines[20] = json.dumps({"x": {"u": 0.5}, "y": {"vip": "maybe"}})  # a label of the wrong type
    lines[30] = json.dumps({"x": {"u": 0.5}, "y": {"colour": 1.0}})  # an unknown task
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines) + "\n")
    result = _cli(
        "evaluate", "--source", f"jsonl:{path}", "--task", "price:regression",
        "--task", "vip:binary", "--report", str(tmp_path / "report"), "--every", "100",
        "--no-progress",
    )  # fmt: skip
    assert "unreadable lines: 1" in result.stdout
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["n_observations"] == 597
    assert sum(report["rejected"].values()) == 2
    assert any("vip" in reason for reason in report["rejected"])
    assert any("colour" in reason for reason in report["rejected"])


def test_evaluate_refuses_a_malformed_task_option(tmp_path):
    result = _cli("evaluate", "--source", "csv:x.csv", "--task", "price", check=False)
    assert result.returncode == 2
    assert "expected NAME:KIND" in result.stderr
