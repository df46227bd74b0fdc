"""The package installs with pip: `pip install .` (a notebook imports it), the CLIs as commands, and the
same dependency list as requirements.txt."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from .conftest import REPO


def _names(lines: list[str]) -> dict[str, str]:
    out = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line:
            name = re.split(r"[<>=!~ ]", line, maxsplit=1)[0].lower().replace("_", "-")
            out[name] = line.replace(" ", "")
    return out


def test_pyproject_dependencies_are_requirements_txt_runtime_lines() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    runtime = (REPO / "requirements.txt").read_text().split("# Tests", 1)[0].splitlines()
    assert _names(project["dependencies"]) == _names(runtime)
    tests = (REPO / "requirements.txt").read_text().split("# Tests", 1)[1].splitlines()
    assert _names(project["optional-dependencies"]["test"]) == _names(tests)


@pytest.mark.slow
def test_the_wheel_installs_imports_and_runs_its_commands(tmp_path: Path) -> None:
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                            "-w", str(tmp_path / "dist"), str(REPO)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("deepfake_pipeline-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for module in ("deepfake_pipeline/trained.py", "deepfake_pipeline/engine.py", "train.py", "align_faces.py",
                   "safe_inference.py", "make_diamonds.py"):
        assert module in names, module
    assert not any(n.startswith(("tests/", "benchmarks/")) for n in names)
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "dfp-train = train:entry" in zipfile.ZipFile(wheel).read(entry).decode()

    # An offline install from a folder of wheels (here: only the project's; its dependencies are in .venv).
    site = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps",
                              "--find-links", str(tmp_path / "dist"), "--target", str(site), "deepfake-pipeline"],
                             capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-3000:]
    env = {**os.environ, "PYTHONPATH": str(site)}
    probe = subprocess.run([sys.executable, "-c", "import deepfake_pipeline.trained as t, train; print(t.__file__)"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert probe.returncode == 0 and probe.stdout.startswith(str(site)), probe.stderr[-2000:]
    command = subprocess.run([sys.executable, str(site / "bin" / "dfp-train"), "--help"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=300)
    assert command.returncode == 0 and "--stage" in command.stdout, command.stderr[-2000:]
    bad = subprocess.run([sys.executable, str(site / "bin" / "dfp-train"), "--config", "missing.yaml", "--stage", "ssl"],
                         cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "missing.yaml" in bad.stderr and "Traceback" not in bad.stderr
