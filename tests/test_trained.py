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
from deepfake_pipeline.metrics import real_fpr_threshold
from deepfake_pipeline.predict import check_fake_share
from deepfake_pipeline.trained import (
    Calibration,
    crossfit_logodds,
    ensemble_logits,
    fit_platt,
    inference_runtime,
    load_run_config,
    oof_figures,
    oof_is_current,
    read_calibration,
    sigmoid,
    threshold_rule,
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


def test_a_fold_worse_than_chance_is_never_flipped() -> None:
    """A model whose logits rank the validation faces backwards gets slope 0 (its base rate), not a
    negative slope that would turn its vote around."""
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 400)
    backwards = -(2.0 * y - 1) + rng.normal(0, 1.5, 400)  # high logit for reals
    calibration = fit_platt(backwards, y)
    assert calibration.flat and calibration.a == 0.0
    assert calibration.b == pytest.approx(np.log(y.mean() / (1 - y.mean())), abs=1e-6)
    assert np.ptp(calibration(backwards)) == 0.0  # one value for every face: no vote either way
    assert not fit_platt(-backwards, y).flat  # the same faces the right way round keep their slope


def test_crossfit_never_calibrates_an_item_with_its_own_label_or_group(monkeypatch: pytest.MonkeyPatch) -> None:
    from deepfake_pipeline import trained

    rng = np.random.default_rng(2)
    logits = rng.normal(size=60)  # distinct values: each names its item
    targets = np.r_[np.zeros(30, int), np.ones(30, int)]
    groups = np.repeat(np.arange(15), 4)
    seen: list[tuple[set, set]] = []
    real = trained.fit_platt

    def spy(x: np.ndarray, y: np.ndarray) -> Calibration:
        fitted = set(np.round(x, 12))
        calibration = real(x, y)

        class Recorder(Calibration):
            def __call__(self, values: np.ndarray) -> np.ndarray:
                seen.append((fitted, set(np.round(values, 12))))
                return calibration(values)

        return Recorder(calibration.a, calibration.b)

    monkeypatch.setattr(trained, "fit_platt", spy)
    out = trained.crossfit_logodds(logits, targets, groups)
    assert len(seen) == 5 and sum(len(applied) for _, applied in seen) == 60  # every item once
    group_of = dict(zip(np.round(logits, 12), groups))
    for fitted, applied in seen:
        assert not fitted & applied
        assert not {group_of[v] for v in fitted} & {group_of[v] for v in applied}  # whole groups apart
    seen.clear()
    plain = trained.crossfit_logodds(logits, targets)  # no groups: stratified parts
    assert all(not fitted & applied for fitted, applied in seen) and plain.shape == out.shape


def test_crossfitted_oof_is_not_flattered_by_its_own_labels() -> None:
    """Pure-noise logits, stratified folds as make_folds makes them: a calibration fitted on the rows it
    scores lifts the pooled OOF AUC well above chance (it learns each part's labels); cross-fitted, the
    AUC stays at chance. 40 runs of 5 folds x 30 items; the means' standard errors are about 0.008."""
    from deepfake_pipeline.trained import crossfit_logodds, oof_figures

    rng = np.random.default_rng(0)
    insample, crossfit = [], []
    for r in range(40):
        parts = []
        for k in range(5):
            x, y = rng.normal(size=30), rng.permutation(np.r_[np.zeros(15, int), np.ones(15, int)])
            parts.append(pd.DataFrame({"Id": [f"{r}-{k}-{i}" for i in range(30)], "fold": k, "target": y, "logit": x,
                                       "prob": sigmoid(crossfit_logodds(x, y, seed=k)),
                                       "prob_insample": sigmoid(fit_platt(x, y)(x))}))
        figures = oof_figures(pd.concat(parts, ignore_index=True))
        insample.append(figures["insample"]["oof_auc"])
        crossfit.append(figures["oof_auc"])
    assert np.mean(insample) > 0.53  # measured 0.550
    assert np.mean(crossfit) < 0.52  # measured 0.496


def test_heldout_f1_takes_each_folds_threshold_from_the_other_folds() -> None:
    """Fold 1's scores sit lower than fold 0's: the pooled best threshold fits both only because it saw
    both; chosen on fold 0 alone it labels fold 1 badly, and oof_f1_heldout says so."""
    from deepfake_pipeline.trained import oof_figures

    y = np.r_[np.zeros(20, int), np.ones(20, int)]
    p0 = np.where(y == 1, 0.9, 0.6)  # fold 0: fakes 0.9, reals 0.6
    p1 = np.where(y == 1, 0.4, 0.1)  # fold 1: fakes 0.4, reals 0.1
    oof = pd.DataFrame({"Id": [f"i{i}" for i in range(80)], "fold": np.r_[np.zeros(40, int), np.ones(40, int)],
                        "target": np.r_[y, y], "logit": 0.0, "prob": np.r_[p0, p1]})
    figures = oof_figures(oof)
    assert figures["oof_f1"] < 1.0  # no single threshold separates both folds
    assert figures["oof_f1_heldout"] < figures["oof_f1"]
    assert "insample" not in figures  # no prob_insample column: nothing to compare


def test_a_real_fpr_cap_lowers_the_threshold_only_where_f1_sits_above_it() -> None:
    """finetune.max_real_fpr: fakes at 0.9-0.99, reals spread over 0-0.5. F1 alone cuts midway (0.7),
    where a new generator's fakes scoring 0.3-0.5 would all pass as real; capped at 5% of the reals the
    threshold drops to just above the sixth-highest real. Where reals and fakes overlap, F1's threshold
    already calls more than 5% of the reals fake, and the cap leaves it."""
    from deepfake_pipeline.trained import oof_figures

    reals, fakes = np.linspace(0.0, 0.5, 100), np.linspace(0.9, 0.99, 100)
    oof = pd.DataFrame({"Id": [f"i{i}" for i in range(200)], "fold": np.arange(200) % 2,
                        "target": np.r_[np.zeros(100, int), np.ones(100, int)], "logit": 0.0,
                        "prob": np.r_[reals, fakes]})
    plain, capped = oof_figures(oof), oof_figures(oof, max_real_fpr=0.05)
    assert plain["max_real_fpr"] is None and plain["threshold"] == plain["threshold_f1"]
    assert 0.5 < plain["threshold"] < 0.9 and plain["oof_f1"] == 1.0 and plain["oof_real_fpr"] == 0.0
    assert reals[94] < capped["threshold"] <= reals[95] and capped["threshold_f1"] == plain["threshold"]
    assert capped["oof_real_fpr"] == 0.05 and capped["max_real_fpr"] == 0.05
    assert capped["oof_f1"] == pytest.approx(200 / 205)  # 100 fakes, 5 reals called: 2tp / (2tp + fp)
    assert capped["oof_f1_heldout"] < 1.0  # each fold's cap, chosen on the other fold, also calls reals
    assert "capped at the level that 0.05 of the real items reach" in capped["method"]

    overlap = oof.assign(prob=np.r_[np.linspace(0.0, 0.6, 100), np.linspace(0.4, 1.0, 100)])
    f1_only, with_cap = oof_figures(overlap), oof_figures(overlap, max_real_fpr=0.05)
    assert f1_only["oof_real_fpr"] > 0.05 and with_cap["threshold"] == f1_only["threshold"]


def test_a_cap_without_real_items_leaves_the_f1_threshold() -> None:
    from deepfake_pipeline.metrics import best_f1_threshold
    from deepfake_pipeline.trained import choose_threshold

    y, p = np.ones(10, int), np.linspace(0.5, 1.0, 10)
    assert choose_threshold(y, p, 0.05) == best_f1_threshold(y, p)[0] > 0.0  # not "everything is fake"


def test_a_threshold_read_under_another_rule_is_chosen_again_from_the_oof(tmp_path: Path) -> None:
    """safe_inference and --input read threshold.json without predict: a rule changed since is applied
    from oof.csv (no models needed); without a config, or under the same rule, the file's value stands."""
    from types import SimpleNamespace

    from deepfake_pipeline.fallback import threshold_or_default
    from deepfake_pipeline.trained import read_threshold, threshold_and_rule

    reals = np.linspace(0.0, 0.5, 100)
    oof = pd.DataFrame({"Id": [f"i{i}" for i in range(200)], "fold": np.arange(200) % 2,
                        "target": np.r_[np.zeros(100, int), np.ones(100, int)], "logit": 0.0,
                        "prob": np.r_[reals, np.full(100, 0.9)], "made_by": ""})
    oof.to_csv(tmp_path / "oof.csv", index=False)
    (tmp_path / "threshold.json").write_text(json.dumps(oof_figures(oof)))  # chosen without a cap
    paths, capped = RunPaths(tmp_path), SimpleNamespace(finetune=SimpleNamespace(max_real_fpr=0.05))
    f1_only = json.loads(paths.threshold_json.read_text())["threshold"]
    assert 0.5 < f1_only < 0.9 and read_threshold(paths) == f1_only
    assert read_threshold(paths, SimpleNamespace(finetune=SimpleNamespace(max_real_fpr=None))) == f1_only
    assert reals[94] < read_threshold(paths, capped) <= reals[95]
    assert threshold_or_default(paths, capped) == read_threshold(paths, capped)
    assert threshold_and_rule(paths, capped) == (read_threshold(paths, capped), 0.05)

    # export's sidecar records the threshold and the rule it was chosen by ...
    from deepfake_pipeline.export import ExportResult, _write_sidecar

    model = SimpleNamespace(backbone="b", channels=["rgb"])
    result = ExportResult(tmp_path / "m.onnx", "onnx", 0, 64, "matmul", "legacy", 17, "x", 0.0, 0.0, 1e-3, 0.0)
    _write_sidecar(result, SimpleNamespace(finetune=capped.finetune, model=model), paths)
    sidecar = json.loads((tmp_path / "m.onnx.json").read_text())
    assert (sidecar["threshold"], sidecar["max_real_fpr"]) == threshold_and_rule(paths, capped)
    assert "capped where 5% of the OOF real items" in sidecar["threshold_rule"]
    # ... which is threshold.json's own where no oof.csv is left to choose again from
    (tmp_path / "oof.csv").unlink()
    assert threshold_and_rule(paths, capped) == (f1_only, None)
    _write_sidecar(result, SimpleNamespace(finetune=capped.finetune, model=model), paths)
    sidecar = json.loads((tmp_path / "m.onnx.json").read_text())
    assert (sidecar["threshold"], sidecar["max_real_fpr"], sidecar["threshold_rule"]) == (
        f1_only, None, "the OOF F1 threshold")


def test_the_share_called_fake_is_checked_against_the_calibrated_expectation() -> None:
    assert check_fake_share(0.52, 0.50, 600)
    assert not check_fake_share(0.97, 0.50, 600)  # the recorded failure: almost everything called fake
    assert check_fake_share(0.15, 0.05, 20)  # 20 images: 10 points are within the noise


def test_the_fake_share_warning_names_the_threshold_rule(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING"):
        assert not check_fake_share(0.70, 0.40, 600, threshold_rule(0.05))
        assert not check_fake_share(0.70, 0.40, 600, threshold_rule(None))
    capped, f1_only = [r.getMessage() for r in caplog.records]
    assert "capped where 5% of the OOF real items" in capped and "max_real_fpr" in capped
    assert "the OOF F1 threshold may not suit" in f1_only and "capped" not in f1_only


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
    """Each out-of-fold logit is what the predict stage's code gives that face with its fold's model
    (the same TTA views): with the fold's calibration it is ``prob_insample``; ``prob``, which the
    threshold is fitted on, calibrates it by the fold's other faces only (cross-fitted)."""
    cfg = load_run_config(run)
    paths = RunPaths(run)
    oof = pd.read_csv(paths.oof_csv, dtype={"Id": str})
    threshold = json.loads(paths.threshold_json.read_text())
    assert threshold["tta"] == ["identity", "hflip"] and threshold["n"] == len(oof)
    assert threshold == {**threshold, **oof_figures(oof)}  # threshold.json: the figures of oof.csv
    folds = pd.read_csv(paths.folds_csv, dtype={"Id": str})
    faces = load_faces(cfg)
    for k in (0, 1):
        _, val = fold_rows(folds, faces, k)
        predicted = sigmoid(ensemble_logits(cfg, paths, inference_runtime("cpu"), [k], list(val["path"])))
        mine = oof[oof["fold"] == k].set_index("Id").loc[val["Id"]]
        assert np.allclose(predicted, mine["prob_insample"].to_numpy(), atol=1e-6)
        crossfit = crossfit_logodds(mine["logit"].to_numpy(), mine["target"].to_numpy(), seed=cfg.run.seed + k)
        assert np.allclose(sigmoid(crossfit), mine["prob"].to_numpy(), atol=1e-9)
        assert not np.allclose(mine["prob"], mine["prob_insample"], atol=1e-4)
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


def test_a_new_threshold_rule_chooses_the_threshold_again_without_retraining(run: Path, tmp_path: Path) -> None:
    """finetune.max_real_fpr set after fine-tuning: threshold.json was chosen by another rule, so the
    predict stage chooses it again from oof.csv, and the submission's calls follow it. (This tiny model's
    F1 threshold already calls most real faces fake, so here the cap may leave it where it was.)"""
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    before = json.loads((copy / "threshold.json").read_text())
    weights = (copy / "fold0" / "best.safetensors").stat().st_mtime_ns
    proc = run_cli(["train.py", "--config", str(copy / "config.yaml"), "--stage", "predict", "--set", f"run.dir={copy}",
                    "--set", "finetune.max_real_fpr=0.0"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    cfg = load_run_config(copy)
    assert cfg.finetune.max_real_fpr == 0.0 and oof_is_current(cfg, RunPaths(copy))
    after = json.loads((copy / "threshold.json").read_text())
    oof = pd.read_csv(copy / "oof.csv", dtype={"Id": str})
    assert after == {**after, **oof_figures(oof, 0.0)} and after["max_real_fpr"] == 0.0
    assert after["threshold_f1"] == before["threshold"] and "max_real_fpr" in after
    above_reals = real_fpr_threshold(oof["target"], oof["prob"], 0.0)  # just above the highest real
    assert after["threshold"] == min(before["threshold"], above_reals)  # a cap: it only ever lowers
    probs = pd.read_csv(copy / "test_probs.csv", dtype={"Id": str}).set_index("Id")["prob"]
    calls = pd.read_csv(copy / "submission.csv", dtype={"Id": str}).set_index("Id").iloc[:, 0]
    assert ((probs >= after["threshold"]).astype(int) == calls.loc[probs.index]).all()
    assert (copy / "fold0" / "best.safetensors").stat().st_mtime_ns == weights  # nothing retrained
    cfg.finetune.max_real_fpr = None  # the old rule: threshold.json no longer matches it
    assert not oof_is_current(cfg, RunPaths(copy))


def test_a_new_threshold_rule_keeps_the_finished_folds_of_the_finetune_stage(run: Path, tmp_path: Path) -> None:
    """The rule is not in the fold hash: the finetune stage run again with another cap keeps every fold
    (no StaleOutputError, nothing retrained) and only chooses the threshold again."""
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    weights = {k: (copy / f"fold{k}" / "best.safetensors").stat().st_mtime_ns for k in (0, 1)}
    proc = run_cli(["train.py", "--config", str(copy / "config.yaml"), "--stage", "finetune", "--set", f"run.dir={copy}",
                    "--set", "finetune.max_real_fpr=0.5"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((copy / "threshold.json").read_text())["max_real_fpr"] == 0.5
    assert {k: (copy / f"fold{k}" / "best.safetensors").stat().st_mtime_ns for k in (0, 1)} == weights


def test_predict_names_the_rule_its_threshold_was_chosen_by(run: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The fake-share warning is given the rule recorded beside the threshold predict used, not the
    default: a run capped at max_real_fpr 0 must not be told its "OOF F1 threshold" may not suit."""
    from deepfake_pipeline import predict

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    cfg = load_run_config(copy)
    cfg.finetune.max_real_fpr = 0.0
    seen: list[tuple[float, str]] = []
    monkeypatch.setattr(predict, "check_fake_share",
                        lambda called, expected, n, rule: seen.append((called, rule)) or True)
    predict.run_predict(cfg, inference_runtime("cpu"), RunPaths(copy))
    assert json.loads((copy / "threshold.json").read_text())["max_real_fpr"] == 0.0
    calls = pd.read_csv(copy / "submission.csv", dtype={"Id": str})["target_feature"]
    assert seen == [(float(calls.mean()), threshold_rule(0.0))]


def test_a_run_blended_with_its_copy_is_that_run(run: Path, tmp_path: Path) -> None:
    """blend_runs.py reads the run contract as predict writes it: the blend of a finished run and an
    identical copy has the run's own test probabilities, threshold (chosen again on the blended OOF by
    the run's rule) and calls. A blend reading another scale (raw logits, uncalibrated OOF) or another
    threshold rule fails this."""
    first, second = tmp_path / "first", tmp_path / "second"
    shutil.copytree(run, first)
    proc = run_cli(["train.py", "--config", str(first / "config.yaml"), "--stage", "predict", "--set", f"run.dir={first}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    shutil.copytree(first, second)
    proc = run_cli(["blend_runs.py", "--runs", str(first), str(second), "--out", str(tmp_path / "blend")])
    assert proc.returncode == 0, proc.stderr[-3000:]
    own = json.loads((first / "threshold.json").read_text())
    blended = json.loads((tmp_path / "blend" / "threshold.json").read_text())
    assert blended["threshold"] == pytest.approx(own["threshold"], abs=1e-9)
    assert blended["oof_auc"] == pytest.approx(own["oof_auc"], abs=1e-9)
    probs = pd.read_csv(first / "test_probs.csv", dtype={"Id": str})
    blend_probs = pd.read_csv(tmp_path / "blend" / "test_probs.csv", dtype={"Id": str})
    assert list(blend_probs["Id"]) == list(probs["Id"])
    assert np.allclose(blend_probs["prob"], probs["prob"], atol=1e-9)
    calls = pd.read_csv(first / "submission.csv", dtype={"Id": str})
    blend_calls = pd.read_csv(tmp_path / "blend" / "submission.csv", dtype={"Id": str})
    assert blend_calls.equals(calls)  # a test probability within 1e-15 of the threshold could flip: none is
