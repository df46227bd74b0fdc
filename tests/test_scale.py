"""Smoke test of benchmarks/scale.py (the competition-scale bookkeeping harness) at a tiny scale."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pandas as pd
import pytest

from .conftest import REPO
from .helpers import run_cli

PARTS = ["validation", "align", "resume", "merge", "folds", "fingerprint", "loader_w0", "loader_w2", "diamonds",
         "predict_csv"]


def _harness():
    spec = importlib.util.spec_from_file_location("scale_harness", REPO / "benchmarks" / "scale.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module


def test_scale_harness_times_every_part(tmp_path: Path) -> None:
    """Two tiny scales (200 and 300 training images): every part has a finite time and a peak RSS, the
    stages did their work (aligned every image, the resume scan redid none), and the layout is reused."""
    out, results = tmp_path / "scale.json", tmp_path / "results.md"
    args = ["benchmarks/scale.py", "--scales", "200,300", "--root", str(tmp_path / "scale"), "--skip-kill",
            "--json", str(out), "--results", str(results)]
    proc = run_cli(args, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    payload = json.loads(out.read_text())
    parts = {p["part"]: p for p in payload["parts"]}
    assert list(parts) == PARTS
    for name, part in parts.items():
        for n in ("200", "300"):
            seconds, rss = part["seconds"][n], part["peak_rss_mib"][n]
            assert seconds is not None and math.isfinite(seconds) and seconds > 0, (name, n, seconds)
            assert rss is not None and rss > 50, (name, n, rss)  # an interpreter with torch, at least
        assert part["exponent"] is not None and math.isfinite(part["exponent"]), name
        assert not any("ERROR" in f or ":" in f for f in part["flags"]), (name, part["flags"])

    raw = payload["raw"]
    test_counts = {"200": 69, "300": 103}  # the competition's 20k/58k test share
    for n, n_test in test_counts.items():
        assert raw["align"][n]["processed"] == int(n) + n_test
        assert raw["resume"][n]["processed"] == 0 and raw["resume"][n]["reused"] == int(n) + n_test
        assert raw["diamonds"][n]["mined"] > 0
        assert raw["loader_w2"][n]["batch"][0] == 32  # finetune.batch_size faces, decoded
    faces = pd.read_csv(tmp_path / "scale" / "n300" / "faces" / "faces.csv", dtype={"Id": str})
    assert len(faces) == 403 and not faces.duplicated(["split", "Id"]).any()
    submission = pd.read_csv(tmp_path / "scale" / "n300" / "run" / "submission.csv", dtype={"Id": str})
    assert sorted(submission["Id"]) == sorted(faces.loc[faces["split"] == "test", "Id"])
    assert payload["kill"] is None and not payload["layouts"]["200"]["reused"]

    text = results.read_text()
    assert "## Competition scale (bookkeeping)" in text and "benchmarks/scale.py" in text
    assert "| 2. validation" in text and "| **total** |" in text
    assert "| part | s @200 | s @300 |" in proc.stdout

    again = run_cli([*args[:-4], "--parts", "validation", "--json", str(out)], timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    rerun = json.loads(out.read_text())
    assert rerun["layouts"]["200"]["reused"] and rerun["layouts"]["300"]["reused"]
    assert [p["part"] for p in rerun["parts"]] == ["validation"]


def test_growth_exponent_and_flags() -> None:
    scale = _harness()
    assert scale.growth_exponent({5000: 1.0, 20000: 4.0, 58000: 11.6}) == pytest.approx(1.0, rel=1e-3)
    assert scale.growth_exponent({20000: 1.0, 58000: 8.41}) == pytest.approx(2.0, rel=1e-3)  # (58/20)^2 = 8.41
    assert scale.growth_exponent({58000: 3.0}) is None
    results = {"validation": {20000: {"seconds": 1.0}, 58000: {"seconds": 8.41}},
               "align": {20000: {"seconds": 30.0}, 58000: {"seconds": 87.0}}}
    rows = {r["part"]: r for r in scale.summarize(results, [20000, 58000])}
    assert rows["validation"]["flags"] == ["grows faster than linear"]
    assert rows["align"]["flags"] == ["over 60 s at 58k"]

