"""The `stream-mtl` command, run as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


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


def test_the_command_has_a_version_and_runs_as_a_module():
    result = subprocess.run(
        [sys.executable, "-m", "stream_mtl", "--version"], capture_output=True, text=True
    )
    assert result.returncode == 0 and result.stdout.startswith("stream-mtl 0.")


def test_an_unknown_demo_run_is_named():
    result = _cli("demo", "--sets", "synthetic,schools", check=False)
    assert result.returncode == 2
    assert "unknown --sets ['schools']" in result.stderr


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


def test_evaluate_learns_a_soft_sharing_model_when_asked(tmp_path):
    lines = [
        json.dumps({"x": {"u": i / 300}, "y": {"price": 3.0 * i / 300, "cost": i / 300}})
        for i in range(300)
    ]
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines) + "\n")
    _cli(
        "evaluate", "--source", f"jsonl:{path}", "--task", "price:regression",
        "--task", "cost:regression", "--hidden", "8", "--sharing", "soft",
        "--soft-strength", "5", "--report", str(tmp_path / "report"), "--no-progress",
    )  # fmt: skip
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    params = report["config"]["model"]["params"]
    assert params["sharing"] == "soft" and params["soft_strength"] == 5.0
    assert report["metrics"]["price"] and report["metrics"]["cost"]


def test_evaluate_refuses_a_malformed_task_option(tmp_path):
    result = _cli("evaluate", "--source", "csv:x.csv", "--task", "price", check=False)
    assert result.returncode == 2
    assert "expected NAME:KIND" in result.stderr


def _write_flat(path, rows: int = 300) -> None:
    lines = [
        json.dumps({"u": (i % 13) / 13, "target_b": i % 5, "price": 3.0 * (i % 13)})
        for i in range(rows)
    ]
    path.write_text("\n".join(lines) + "\n")


def _evaluate(tmp_path, path, *options, every: str | None = "100"):
    window = ["--every", every] if every else []
    return _cli(
        "evaluate", "--source", f"jsonl:{path}", "--report", str(tmp_path / "report"),
        *window, "--no-progress", "--hidden", "8", *options, check=False,
    )  # fmt: skip


def test_evaluate_refuses_a_task_that_no_row_labels(tmp_path):
    path = tmp_path / "flat.jsonl"
    _write_flat(path)
    result = _evaluate(tmp_path, path, "--task", "price:regression", "--task", "prize:regression")
    assert result.returncode == 1
    assert "task(s) ['prize'] have no label" in result.stderr
    assert "0.0000" not in result.stdout  # no table of zeros
    assert not (tmp_path / "report" / "report.json").exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "the file has no data"),
        ("{not json\n[1, 2]\n", "2 unreadable line(s)"),
        ('{"u": 1.0, "price": "high"}\n', "every observation was set aside"),
        ('{"u": 1.0}\n', "none of its 1 observations labels a task"),
    ],
)
def test_evaluate_refuses_a_source_it_learned_nothing_from(tmp_path, content, message):
    path = tmp_path / "events.jsonl"
    path.write_text(content)
    result = _evaluate(tmp_path, path, "--task", "price:regression")
    assert result.returncode == 1
    assert message in result.stderr


def test_evaluate_chooses_features_and_reports_them(tmp_path):
    path = tmp_path / "flat.jsonl"
    _write_flat(path)
    result = _evaluate(tmp_path, path, "--task", "price:regression", "--exclude", "target_b")
    assert result.returncode == 0, result.stderr
    assert "features (1): u" in result.stdout
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["config"]["features"] == ["u"]
    chosen = _evaluate(tmp_path, path, "--task", "price:regression", "--features", "target_b")
    assert "features (1): target_b" in chosen.stdout


def test_evaluates_window_fits_the_files_length(tmp_path):
    path = tmp_path / "flat.jsonl"
    _write_flat(path, rows=2000)
    options = ("--task", "price:regression", "--exclude", "target_b")
    result = _evaluate(tmp_path, path, *options, every=None)
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["config"]["every"] == 100  # a twentieth of 2,000 rows, not 1,000
    assert len(report["windows"]) == 20, result.stdout


def test_a_task_given_twice_is_an_error(tmp_path):
    path = tmp_path / "flat.jsonl"
    _write_flat(path)
    result = _evaluate(tmp_path, path, "--task", "price:regression", "--task", "price:binary")
    assert result.returncode == 2
    assert "--task ['price'] given more than once" in result.stderr


def test_serve_refuses_a_task_whose_kind_differs_from_the_checkpoint(tmp_path):
    from stream_mtl import MultiTaskLearner, Regression

    path = tmp_path / "live.ckpt"
    MultiTaskLearner(tasks={"price": Regression()}, hidden=(4,), seed=0).save(path)
    result = _cli("serve", "--checkpoint", str(path), "--task", "price:binary", check=False)
    assert result.returncode == 2
    assert "task 'price' is regression in the checkpoint, not binary" in result.stderr


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--hidden", "8"], "holds a model with hidden 4; --hidden 8 needs a new checkpoint"),
        (["--seed", "3"], "holds a model with seed 0; --seed 3 needs a new checkpoint"),
        (["--sharing", "soft"], "holds a model with sharing hard; --sharing soft needs a new"),
    ],
)
def test_serve_refuses_an_option_that_contradicts_the_checkpoint(tmp_path, option, message):
    from stream_mtl import MultiTaskLearner, Regression

    path = tmp_path / "live.ckpt"
    MultiTaskLearner(tasks={"price": Regression()}, hidden=(4,), seed=0).save(path)
    before = path.read_bytes()
    result = _cli("serve", "--checkpoint", str(path), *option, "--port", "1", check=False)
    assert result.returncode == 2
    assert message in result.stderr
    assert path.read_bytes() == before


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--learner", "thread", "--learner-nice", "5"], "--learner-nice needs --learner process"),
        (["--learner-nice", "20"], "argument --learner-nice: invalid choice: 20"),
        (["--label-grace", "0.5"], "--label-grace needs --workers 2 or more"),
        (["--workers", "2", "--label-grace", "-1"], "label_grace must be seconds from 0 to 60"),
        (["--max-late-labels", "4"], "--max-late-labels needs --workers 2 or more"),
        (
            ["--workers", "2", "--max-late-labels", "300"],
            "max_late_labels must be an integer from 0 to 256",
        ),
    ],
)
def test_serve_refuses_learner_options_it_cannot_honour(tmp_path, options, message):
    path = tmp_path / "live.ckpt"
    result = _cli(
        "serve", "--checkpoint", str(path), "--task", "a:regression", *options, "--port", "1",
        check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert message in result.stderr
    assert not path.exists()


def test_serve_on_a_busy_port_fails_before_it_starts_or_writes_anything(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _cli(
            "serve", "--checkpoint", str(tmp_path / "live.ckpt"), "--task", "a:regression",
            "--port", str(port), check=False,
        )  # fmt: skip
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "serving" not in result.stderr
    assert not (tmp_path / "live.ckpt").exists()
