"""Smoke tests of the benchmark harnesses: tiny sizes, they exit 0 and report the expected fields."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .helpers import run_cli

TINY = ["--backbone", "convnextv2_atto", "--size", "64", "--threads", "1"]


def test_train_speed_reports_both_variants(tmp_path: Path) -> None:
    out = tmp_path / "train.json"
    proc = run_cli([
        "benchmarks/train_speed.py", *TINY, "--stage", "ssl,finetune", "--steps", "2", "--warmup", "1",
        "--batch", "2", "--baseline-batch", "2", "--baseline-accum", "2", "--json", str(out),
    ], timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for field in ("img/s", "ms/step", "peak MiB", "GFLOP/img", "ours/base"):
        assert field in proc.stdout, field
    results = json.loads(out.read_text())["results"]
    runs = [r for r in results if "variant" in r]
    assert {(r["stage"], r["variant"]) for r in runs} == {
        (s, v) for s in ("ssl", "finetune") for v in ("baseline", "ours")
    }
    for r in runs:
        assert r["images_per_s"] > 0 and r["peak_mem_mb"] > 0 and r["gflop_per_image"] > 0, r
        assert r["images_per_step"] == (2 * 2 if r["variant"] == "baseline" else 2)
    assert sum("ratio_images_per_s" in r for r in results) == 2


def test_predict_speed_counts_folds_and_views(tmp_path: Path) -> None:
    out = tmp_path / "predict.json"
    proc = run_cli([
        "benchmarks/predict_speed.py", *TINY, "--folds", "2", "--tta", "identity,hflip", "--images", "8",
        "--batch", "4", "--json", str(out),
    ], timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "forward img/s" in proc.stdout
    main, reference = json.loads(out.read_text())["results"]
    assert (main["folds"], main["views"], reference["folds"], reference["views"]) == (2, 2, 1, 1)
    assert main["forward_images_per_s"] == pytest.approx(main["images_per_s"] * 4)
    assert main["images_per_s"] > 0 and main["peak_mem_mb"] > 0


def test_input_pipeline_decoders(tmp_path: Path) -> None:
    out = tmp_path / "input.json"
    proc = run_cli([
        "benchmarks/input_pipeline.py", "--make", "16", "--size", "64", "--dir", str(tmp_path / "jpegs"),
        "--batch", "4", "--workers", "0,1", "--threads", "1", "--json", str(out),
    ], timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "fastest decoding path" in proc.stdout
    payload = json.loads(out.read_text())
    assert payload["files"] == 16
    speeds = {(r["method"], r["workers"]): r["images_per_s"] for r in payload["results"]}
    for method in ("torchvision", "pil", "opencv"):
        for workers in (0, 1):
            assert speeds[(method, workers)] > 0, (method, workers)
    assert speeds[("no-decode", "-")] > 0
    assert payload["fastest"]["method"] in ("torchvision", "pil", "opencv", "nvjpeg")
