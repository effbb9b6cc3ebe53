"""What a user installs: a wheel with the data sets inside, and no torch unless asked for."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_the_numpy_path_the_cli_and_the_data_sets_never_import_torch(tmp_path):
    code = (
        "import sys\n"
        "from stream_mtl import MultiTaskLearner, Regression\n"
        "from stream_mtl.datasets import SARCOS\n"
        "import stream_mtl.cli, stream_mtl.evaluate\n"
        "tasks = {name: Regression() for name in SARCOS.tasks}\n"
        "model = MultiTaskLearner(tasks=tasks, hidden=(8,), seed=0)\n"
        "for obs in list(SARCOS())[:20]: model.learn_one(obs.x, obs.y)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))\n"
    )
    result = _python(code, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_every_public_name_resolves_and_help_loads_neither_river_metrics_nor_pandas(tmp_path):
    code = (
        "import sys, stream_mtl\n"
        "missing = [n for n in stream_mtl.__all__ if getattr(stream_mtl, n, None) is None]\n"
        "assert not missing, missing\n"
        "assert set(stream_mtl.__all__) <= set(dir(stream_mtl))\n"
        "for name in list(sys.modules):\n"
        "    if name.startswith(('stream_mtl', 'river', 'pandas')):\n"
        "        del sys.modules[name]\n"
        "import stream_mtl.cli\n"
        "try:\n"
        "    stream_mtl.cli.main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(sorted(m for m in ('river.metrics', 'pandas') if m in sys.modules))\n"
    )
    result = _python(code, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_asking_for_the_torch_backend_without_torch_says_how_to_install_it(tmp_path):
    code = (
        "import importlib.abc, sys\n"
        "class NoTorch(importlib.abc.MetaPathFinder):  # as if torch were not installed\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] == 'torch':\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, NoTorch())\n"
        "from stream_mtl import MultiTaskLearner\n"
        "MultiTaskLearner(backend='torch')\n"
    )
    result = _python(code, tmp_path)
    assert result.returncode == 1
    assert "pip install 'stream-mtl[torch]'" in result.stderr
    assert "download.pytorch.org/whl/cpu" in result.stderr


@pytest.mark.slow
def test_the_wheel_ships_the_data_sets_and_installs_into_a_fresh_virtualenv(tmp_path):
    # Built from a copy of the sources, as from a fresh clone: no build/ left from before.
    source = tmp_path / "source"
    shutil.copytree(
        ROOT, source, ignore=shutil.ignore_patterns(".*", "build", "*.egg-info", "reports")
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path / "wheel"), str(source)],
        check=True, timeout=300,
    )  # fmt: skip
    (wheel,) = (tmp_path / "wheel").glob("stream_mtl-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for data in ("school.npz", "landmine.npz", "sarcos_inv_test.npz"):
        assert f"stream_mtl/datasets/data/{data}" in names
    # one top-level package, holding every package of the repository
    assert {name.split("/")[0] for name in names if name.endswith(".py")} == {"stream_mtl"}
    packages = {str(p.parent.relative_to(ROOT)) for p in ROOT.glob("stream_mtl/**/__init__.py")}
    packages.add("stream_mtl/connectors")  # the repository's connectors/ folder
    assert packages <= {name.rsplit("/", 1)[0] for name in names if name.endswith("__init__.py")}
    # A fresh virtualenv that sees this one's packages (the dependencies; a .pth line does
    # not run the editable install's hooks) but not the repository: the data sets load
    # from the installed wheel alone.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = next(p for p in sys.path if p.endswith("site-packages"))
    venv_site = next((venv / "lib").glob("python*/site-packages"))
    (venv_site / "deps.pth").write_text(site + "\n")
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", str(wheel)],
        check=True,
        timeout=300,
    )
    code = (
        "import stream_mtl.datasets as d, pathlib\n"
        f"print(pathlib.Path(d.__file__).is_relative_to(pathlib.Path(r'{venv}')), "
        "len(list(d.School())), len(list(d.Landmine())), len(list(d.SARCOS())))\n"
    )
    result = subprocess.run(
        [str(python), "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "15362", "14820", "4449"]
