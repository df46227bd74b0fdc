"""plot_training_curves.py: every figure from a finished tiny run, partial runs, torn metrics lines."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from deepfake_pipeline.cli import run_main
from deepfake_pipeline.plots import FIGURES, load_run, make_plots, read_jsonl

from .helpers import run_cli, tiny_config

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, demo_root: Path) -> Path:
    """SSL (1 epoch), 2 folds x 2 epochs, predict: every file the plots read."""
    base = tmp_path_factory.mktemp("plots")
    cfg = tiny_config(base, demo_root, "ssl: {epochs: 1, save_every: 0}")
    for args in (["align_faces.py", "--config", str(cfg)], ["train.py", "--config", str(cfg), "--stage", "all"]):
        proc = run_cli(args)
        assert proc.returncode == 0, proc.stderr
    return base / "runs" / "t"


@pytest.fixture
def run_copy(tiny_run: Path, tmp_path: Path) -> Path:
    """A private copy of the run (without its plots) that a test may damage."""
    dest = tmp_path / "run"
    shutil.copytree(tiny_run, dest, ignore=shutil.ignore_patterns("plots", "*.pt", "*.safetensors"))
    for k in (0, 1):  # finished folds are recognised by their weights file; its content is not read
        (dest / f"fold{k}" / "best.safetensors").write_bytes(b"")
    return dest


def assert_png(path: Path) -> None:
    assert path.is_file(), f"{path.name} missing"
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert 10_000 < path.stat().st_size < 2_000_000, f"{path.name}: {path.stat().st_size} bytes"
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.width >= 500 and img.height >= 400, img.size


def test_every_figure_and_the_report(tiny_run: Path) -> None:
    proc = run_cli(["plot_training_curves.py", "--run", str(tiny_run)])
    assert proc.returncode == 0, proc.stderr
    plots = tiny_run / "plots"
    for name in FIGURES:
        assert_png(plots / name)
    report = (plots / "report.html").read_text()
    for name in FIGURES:
        assert f"src='{name}'" in report
    threshold = json.loads((tiny_run / "threshold.json").read_text())
    assert f"{threshold['threshold']:.4f}" in report
    assert f"{threshold['oof_f1']:.4f}" in report and f"{threshold['oof_auc']:.4f}" in report
    for key in ("OOF F1", "OOF AUC", "OOF log-loss", "OOF accuracy", "SSL final loss", "folds finished"):
        assert key in report
    assert "<td>2/2</td>" in report  # folds finished
    assert "Nothing missing" in report
    assert not list(plots.glob(".*.tmp"))


def test_partial_run_draws_what_exists(run_copy: Path) -> None:
    plots = run_copy / "plots"
    plots.mkdir()
    for name in FIGURES:  # figures of an earlier, complete pass: those that lose their inputs must go
        (plots / name).write_bytes(PNG_SIGNATURE)
    shutil.rmtree(run_copy / "fold1")
    (run_copy / "oof.csv").unlink()
    result = make_plots(run_copy)
    assert sorted(p.name for p in result.figures) == ["folds.png", "ssl.png", "test_hist.png"]
    for name in ("folds.png", "ssl.png", "test_hist.png"):
        assert_png(plots / name)
    for name in ("roc_pr.png", "confusion.png", "oof_hist.png"):
        assert not (plots / name).exists(), f"stale {name} left behind"
    report = (plots / "report.html").read_text()
    assert "fold1: not started" in report
    assert "oof.csv: written when every fold has finished (1/2 finished)" in report
    assert "<td>1/2</td>" in report
    assert "roc_pr.png" not in report


def test_ssl_only_run(run_copy: Path) -> None:
    for name in ("fold0", "fold1"):
        shutil.rmtree(run_copy / name)
    for name in ("oof.csv", "threshold.json", "test_probs.csv", "submission.csv"):
        (run_copy / name).unlink()
    result = make_plots(run_copy)
    assert [p.name for p in result.figures] == ["ssl.png"]
    report = (run_copy / "plots" / "report.html").read_text()
    assert "SSL final loss" in report and "0/2" in report
    assert "test_probs.csv: the predict stage has not run" in report


def test_torn_metrics_line_is_skipped(run_copy: Path) -> None:
    path = run_copy / "fold0" / "metrics.jsonl"
    before, skipped = read_jsonl(path)
    assert skipped == 0 and [r["epoch"] for r in before] == [0, 1]
    with open(path, "a") as fh:
        fh.write('{"stage": "fold0", "epoch": 2, "step": 6, "lr": 0.00')  # a kill mid-write
    after, skipped = read_jsonl(path)
    assert after == before and skipped == 1
    result = make_plots(run_copy)
    assert "folds.png" in [p.name for p in result.figures]
    assert "1 unreadable metrics line(s) skipped" in (run_copy / "plots" / "report.html").read_text()
    assert load_run(run_copy).skipped_lines == 1


def test_missing_run_dir_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import plot_training_curves

    assert run_main(plot_training_curves.main, ["--run", str(tmp_path / "nope")]) == 2
    assert "run directory not found" in capsys.readouterr().err
