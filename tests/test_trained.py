"""A trained run reopened: calibration, out-of-fold predictions made as prediction makes them, the threshold."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from deepfake_pipeline.artifacts import RunPaths, fold_rows, load_faces
from deepfake_pipeline.config import DiamondsConfig
from deepfake_pipeline.diamonds import select_diamonds
from deepfake_pipeline.predict import check_fake_share
from deepfake_pipeline.trained import (
    Calibration,
    ensemble_logits,
    fit_platt,
    inference_runtime,
    load_run_config,
    oof_is_current,
    read_calibration,
    sigmoid,
)

from .helpers import run_cli, tiny_config

# ----------------------------------------------------------------------------- calibration (pure)


def test_a_label_smoothed_model_becomes_minable_once_calibrated() -> None:
    """Label smoothing 0.1 trains towards 0.95/0.05 (logits of about +-2.9): raw probabilities never pass
    the diamonds thresholds 0.995/0.005. Calibrated on validation faces it separates, they do."""
    logits = np.r_[np.full(240, 2.9), np.full(240, -2.9)]
    targets = np.r_[np.ones(240), np.zeros(240)]
    ids = [f"t{i:03d}" for i in range(480)]
    raw = select_diamonds(pd.DataFrame({"Id": ids, "prob": sigmoid(logits)}), DiamondsConfig())
    assert len(raw) == 0
    calibration = fit_platt(logits, targets)
    calibrated = select_diamonds(pd.DataFrame({"Id": ids, "prob": sigmoid(calibration(logits))}), DiamondsConfig())
    assert len(calibrated) == 480 and (calibrated["target_feature"].to_numpy() == targets[
        [ids.index(i) for i in calibrated["Id"]]]).all()


def test_platt_scaling_recovers_a_temperature_and_leaves_calibrated_logits_alone() -> None:
    rng = np.random.default_rng(0)
    true_logodds = rng.normal(0, 2, 20000)
    y = (rng.random(20000) < sigmoid(true_logodds)).astype(int)
    fitted = fit_platt(true_logodds, y)
    assert fitted.a == pytest.approx(1.0, abs=0.05) and fitted.b == pytest.approx(0.0, abs=0.05)
    hot = fit_platt(true_logodds * 3 + 1, y)  # an overconfident, shifted model
    assert hot.a == pytest.approx(1 / 3, abs=0.02) and hot.b == pytest.approx(-1 / 3, abs=0.05)
    assert fit_platt(np.array([1.0, 2.0]), np.array([1, 1])) == Calibration()  # one class: identity


def test_the_share_called_fake_is_checked_against_the_calibrated_expectation() -> None:
    assert check_fake_share(0.52, 0.50, 600)
    assert not check_fake_share(0.97, 0.50, 600)  # the recorded failure: almost everything called fake
    assert check_fake_share(0.15, 0.05, 20)  # 20 images: 10 points are within the noise


# ----------------------------------------------------------------------------- on a tiny run


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, demo_root: Path) -> Path:
    """A finished 2-fold x 2-epoch run with TTA identity + hflip."""
    base = tmp_path_factory.mktemp("trained")
    shutil.copytree(demo_root, base / "dataset")
    cfg = tiny_config(base, base / "dataset", "finetune: {init: scratch}")
    for args in (["align_faces.py"], ["train.py", "--stage", "finetune"]):
        proc = run_cli([*args, "--config", str(cfg)])
        assert proc.returncode == 0, proc.stderr[-3000:]
    return base / "runs" / "t"


def test_oof_predictions_are_what_prediction_computes(run: Path) -> None:
    """Each out-of-fold probability equals what the predict stage's code gives that face with its fold's
    model: the same TTA views, the same calibration. The threshold is fitted on those."""
    cfg = load_run_config(run)
    paths = RunPaths(run)
    oof = pd.read_csv(paths.oof_csv, dtype={"Id": str})
    threshold = json.loads(paths.threshold_json.read_text())
    assert threshold["tta"] == ["identity", "hflip"] and threshold["n"] == len(oof)
    folds = pd.read_csv(paths.folds_csv, dtype={"Id": str})
    faces = load_faces(cfg)
    for k in (0, 1):
        _, val = fold_rows(folds, faces, k)
        predicted = sigmoid(ensemble_logits(cfg, paths, inference_runtime("cpu"), [k], list(val["path"])))
        recorded = oof[oof["fold"] == k].set_index("Id").loc[val["Id"], "prob"].to_numpy()
        assert np.allclose(predicted, recorded, atol=1e-6)
    # one view alone gives other logits: the OOF are not the one-view validation scores
    one_view = ensemble_logits(cfg, paths, inference_runtime("cpu"), [0], list(fold_rows(folds, faces, 0)[1]["path"]),
                               tta=["identity"])
    assert not np.allclose(sigmoid(one_view), oof[oof["fold"] == 0]["prob"].to_numpy(), atol=1e-6)


def test_new_tta_views_refit_the_calibration_without_retraining(run: Path, tmp_path: Path) -> None:
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    config = copy / "config.yaml"
    config.write_text(config.read_text().replace("- hflip", "- vflip"))
    cfg = load_run_config(copy)
    assert not oof_is_current(cfg, RunPaths(copy))
    weights = (copy / "fold0" / "best.safetensors").stat().st_mtime_ns
    proc = run_cli(["train.py", "--config", str(config), "--stage", "predict", "--set", f"run.dir={copy}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "refitting" in proc.stderr
    assert json.loads((copy / "threshold.json").read_text())["tta"] == ["identity", "vflip"]
    assert oof_is_current(cfg, RunPaths(copy)) and read_calibration(cfg, RunPaths(copy), 0) is not None
    assert (copy / "fold0" / "best.safetensors").stat().st_mtime_ns == weights  # nothing retrained
