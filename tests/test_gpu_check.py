"""benchmarks/gpu_check.sh --dry-run: the GPU check's every step, on the CPU at tiny sizes.

The first GPU the project meets gets one call of a few minutes; a step that would fail for a reason
a CPU shows (a wrong flag, a moved function, a harness that cannot parse its own output) fails here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO

pytestmark = pytest.mark.slow


def test_gpu_check_dry_run_runs_every_step(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--dry-run"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.log", "results.json", "steps.log", "summary.md"]
    results = json.loads((out / "results.json").read_text())
    for step in ("train", "e2e", "predict", "decode", "memory", "compile"):
        assert results[step]["status"] == "ok", (step, results[step])
    assert set(results["e2e"]["stages"]) == {"data", "align", "ssl", "finetune fold 0",
                                             "predict (safe_inference, 4 TTA views)"}
    # the harnesses' own figures made it into the results
    variants = {(r["stage"], r["variant"]) for r in results["train"]["json"]["results"] if "variant" in r}
    assert variants == {("ssl", "ours"), ("ssl", "baseline"), ("finetune", "ours"), ("finetune", "baseline")}
    assert results["compile"]["json"]["results"][0]["compile"] is True
    assert "nothing to install" in (out / "gpu_check.log").read_text()
    assert "| train | ok |" in (out / "summary.md").read_text()
