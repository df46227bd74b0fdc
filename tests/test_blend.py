"""Blending finished runs (stage 4b): the log-odds mean, the checks that refuse mismatched runs, the
threshold chosen on the blended out-of-fold rows, and the CLI's errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from deepfake_pipeline.blend import blend_runs, logodds
from deepfake_pipeline.errors import PipelineError
from deepfake_pipeline.trained import oof_figures, sigmoid
from tests.helpers import run_cli


def fake_run(root: Path, oof: pd.DataFrame, test: pd.DataFrame, max_real_fpr: float | None = None) -> Path:
    """The prediction files of a finished run (what ``blend`` reads), without models."""
    root.mkdir(parents=True)
    oof = oof.assign(logit=logodds(oof["prob"].to_numpy()), prob_insample=oof["prob"])
    if "made_by" not in oof:
        oof["made_by"] = ""
    oof.to_csv(root / "oof.csv", index=False)
    test.to_csv(root / "test_probs.csv", index=False)
    (root / "threshold.json").write_text(json.dumps({"threshold": 0.5, "max_real_fpr": max_real_fpr}))
    return root


def two_runs(tmp_path: Path, n: int = 400, seed: int = 0) -> tuple[Path, Path, np.ndarray]:
    """Two runs whose OOF log-odds are the label plus independent noise, on the same rows and test set."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    ids = [f"r{i:04d}" for i in range(n)]
    ids[:3] = ["0007", "100195", "NA"]  # Ids a CSV reader would turn into numbers or NaN
    test_ids = [f"t{i:03d}" for i in range(50)]
    test_ids[:3] = ["0042", "733105", "NA"]
    runs = []
    for k in range(2):
        score = 1.5 * y + rng.normal(size=n)
        oof = pd.DataFrame({"Id": ids, "fold": np.arange(n) % 3, "target": y, "prob": sigmoid(score)})
        test = pd.DataFrame({"Id": test_ids, "prob": sigmoid(rng.normal(size=50))})
        runs.append(fake_run(tmp_path / f"run{k}", oof, test))
    return runs[0], runs[1], y


def read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"Id": str}, keep_default_na=False)


def test_the_blend_is_the_weighted_mean_of_the_runs_log_odds(tmp_path: Path) -> None:
    a, b, _ = two_runs(tmp_path)
    pa = read(a / "test_probs.csv")["prob"].to_numpy()
    pb = read(b / "test_probs.csv")["prob"].to_numpy()
    read(b / "test_probs.csv").iloc[::-1].to_csv(b / "test_probs.csv", index=False)  # another order: matched by Id
    blend_runs([a, b], tmp_path / "even")
    even = read(tmp_path / "even" / "test_probs.csv")
    assert list(even["Id"]) == list(read(a / "test_probs.csv")["Id"]) and list(even["Id"][:3]) == ["0042", "733105", "NA"]
    assert list(read(tmp_path / "even" / "submission.csv")["Id"]) == list(even["Id"])
    assert np.allclose(even["prob"], sigmoid((logodds(pa) + logodds(pb)) / 2), atol=1e-12)
    assert not np.allclose(even["prob"], (pa + pb) / 2, atol=1e-4)  # log-odds, not probabilities
    blend_runs([a, b], tmp_path / "tilted", weights=[3, 1])
    tilted = read(tmp_path / "tilted" / "test_probs.csv")
    assert np.allclose(tilted["prob"], sigmoid(0.75 * logodds(pa) + 0.25 * logodds(pb)), atol=1e-12)
    assert json.loads((tmp_path / "tilted" / "blend.json").read_text())["weights"] == [0.75, 0.25]


def test_the_threshold_is_chosen_on_the_blended_oof_and_labels_the_submission(tmp_path: Path) -> None:
    a, b, y = two_runs(tmp_path)
    summary = blend_runs([a, b], tmp_path / "blend")
    oof = read(tmp_path / "blend" / "oof.csv")
    la = logodds(read(a / "oof.csv")["prob"].to_numpy())
    lb = logodds(read(b / "oof.csv")["prob"].to_numpy())
    assert list(oof["Id"][:3]) == ["0007", "100195", "NA"]
    assert np.allclose(oof["logit"], (la + lb) / 2) and (oof["n_runs"] == 2).all()
    record = json.loads((tmp_path / "blend" / "threshold.json").read_text())
    assert record["threshold"] == oof_figures(oof.drop(columns="n_runs"))["threshold"] == summary["threshold"]
    assert record["blend_basis"] == "the 400 rows every run validated" and "insample" not in record
    probs = read(tmp_path / "blend" / "test_probs.csv")
    calls = read(tmp_path / "blend" / "submission.csv")
    assert list(calls.columns) == ["Id", "target_feature"]
    assert (calls["target_feature"] == (probs["prob"] >= record["threshold"]).astype(int)).all()
    # Each run's AUC and the blend's, on the same rows: independent noise, so the blend ranks better.
    assert summary["run_oof_auc"] == pytest.approx([roc_auc_score(y, la), roc_auc_score(y, lb)])
    assert summary["blend_oof_auc"] == pytest.approx(roc_auc_score(y, la + lb))
    assert summary["blend_oof_auc"] > max(summary["run_oof_auc"]) + 0.02
    assert abs(summary["logodds_correlation"][0][1]) < 0.8


def test_rows_only_some_runs_validated_keep_those_runs_log_odds(tmp_path: Path) -> None:
    """Speech runs with other self-made fakes share the real clips only: each made row keeps its own
    run's score, and the rows every run scored are counted apart."""
    real = pd.DataFrame({"Id": ["c1", "c2", "c3"], "fold": [0, 1, 2], "target": 0, "prob": [0.1, 0.2, 0.3],
                         "made_by": ""})
    test = pd.DataFrame({"Id": ["t1", "t2"], "prob": [0.4, 0.9]})
    made_a = pd.DataFrame({"Id": ["c1~a", "c2~a"], "fold": [0, 1], "target": 1, "prob": [0.95, 0.97], "made_by": "a"})
    made_b = pd.DataFrame({"Id": ["c1~b", "c3~b"], "fold": [0, 2], "target": 1, "prob": [0.6, 0.8], "made_by": "b"})
    a = fake_run(tmp_path / "a", pd.concat([real, made_a]), test)
    b = fake_run(tmp_path / "b", pd.concat([real.assign(prob=[0.3, 0.2, 0.1]), made_b]), test)
    summary = blend_runs([a, b], tmp_path / "blend")
    oof = read(tmp_path / "blend" / "oof.csv").set_index("Id")
    assert oof.loc["c1~a", "prob"] == pytest.approx(0.95) and oof.loc["c3~b", "prob"] == pytest.approx(0.8)
    assert oof.loc["c1", "prob"] == pytest.approx(sigmoid((logodds(0.1) + logodds(0.3)) / 2))
    assert oof.loc["c1~b", "made_by"] == "b" and oof.loc["c1~a", "n_runs"] == 1 and oof.loc["c2", "n_runs"] == 2
    assert summary["oof_rows"] == 7 and summary["rows_every_run_scored"] == 3
    assert summary["run_oof_auc"] == [None, None]  # the shared rows are all real: no AUC to report
    assert summary["oof_auc"] == 1.0  # every made fake scores above every real clip
    assert summary["blend_basis"] == "every row (4 of 7 scored by some runs only)"


def test_the_threshold_is_chosen_on_the_rows_every_run_validated(tmp_path: Path) -> None:
    """A row only one run validated (another extra set) must not move the threshold the blended test
    items are labelled by: with it left out, the threshold is the one of the shared rows alone."""
    a, b, _ = two_runs(tmp_path)
    extra = pd.DataFrame({"Id": [f"x{i}" for i in range(100)], "fold": 0, "target": 0, "prob": 0.97, "made_by": ""})
    oof = read(b / "oof.csv")
    pd.concat([oof, extra.assign(logit=logodds(extra["prob"].to_numpy()), prob_insample=extra["prob"])]).to_csv(
        b / "oof.csv", index=False)
    summary = blend_runs([a, b], tmp_path / "blend")
    blended = read(tmp_path / "blend" / "oof.csv")
    shared = blended[blended["n_runs"] == 2].drop(columns="n_runs")
    assert len(blended) == 500 and summary["threshold"] == oof_figures(shared)["threshold"]
    assert summary["threshold"] != oof_figures(blended.drop(columns="n_runs"))["threshold"]  # 100 reals at 0.97


def test_runs_that_do_not_match_are_refused_with_the_reason(tmp_path: Path) -> None:
    a, b, _ = two_runs(tmp_path)
    with pytest.raises(PipelineError, match="at least two"):
        blend_runs([a], tmp_path / "one")
    with pytest.raises(PipelineError, match="must not be one of them"):
        blend_runs([a, b], a)
    blend_runs([a, b], tmp_path / "first")
    before = {p.name: p.read_bytes() for p in (tmp_path / "first").iterdir()}
    test = read(b / "test_probs.csv")
    test.loc[7, "Id"] = "elsewhere"
    test.to_csv(b / "test_probs.csv", index=False)
    with pytest.raises(PipelineError, match="different test sets .*'t007' only in .*run0"):
        blend_runs([a, b], tmp_path / "blend")
    with pytest.raises(PipelineError, match="different test sets"):
        blend_runs([a, b], tmp_path / "first")  # a refused rerun leaves the earlier blend whole
    assert {p.name: p.read_bytes() for p in (tmp_path / "first").iterdir()} == before

    c, d, _ = two_runs(tmp_path / "labels")
    oof = read(d / "oof.csv")
    oof.loc[3, "target"] = 1 - oof.loc[3, "target"]
    oof.to_csv(d / "oof.csv", index=False)
    with pytest.raises(PipelineError, match="disagree on the label of training row 'r0003'"):
        blend_runs([c, d], tmp_path / "blend")

    e, f, _ = two_runs(tmp_path / "rules")
    (f / "threshold.json").write_text(json.dumps({"threshold": 0.5, "max_real_fpr": 0.05}))
    with pytest.raises(PipelineError, match="different rules"):
        blend_runs([e, f], tmp_path / "blend")
    capped = blend_runs([e, f], tmp_path / "capped", max_real_fpr=0.5)  # lowers the F1 threshold
    oof = read(tmp_path / "capped" / "oof.csv").drop(columns="n_runs")
    assert capped["threshold"] == oof_figures(oof, 0.5)["threshold"] != oof_figures(oof)["threshold"]
    assert json.loads((tmp_path / "capped" / "threshold.json").read_text())["max_real_fpr"] == 0.5

    g, h, _ = two_runs(tmp_path / "made")
    oof = read(h / "oof.csv")
    oof.loc[5, "made_by"] = "hifigan16"
    oof.to_csv(h / "oof.csv", index=False)
    with pytest.raises(PipelineError, match="disagree on the made_by .* 'r0005'"):
        blend_runs([g, h], tmp_path / "blend")
    (h / "threshold.json").write_text("{not json")
    with pytest.raises(PipelineError, match="threshold.json is not a threshold record"):
        blend_runs([g, h], tmp_path / "blend")
    (h / "oof.csv").write_text("")
    with pytest.raises(PipelineError, match="oof.csv is not a readable CSV"):
        blend_runs([g, h], tmp_path / "blend")

    (f / "test_probs.csv").unlink()
    with pytest.raises(PipelineError, match="test_probs.csv: finish its finetune and predict"):
        blend_runs([e, f], tmp_path / "blend")
    assert not (tmp_path / "blend").exists()  # nothing half-written by a refused blend


def test_a_training_run_folder_is_never_overwritten(tmp_path: Path) -> None:
    a, b, _ = two_runs(tmp_path)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.yaml").write_text("run: {name: other}\n")
    with pytest.raises(PipelineError, match="is a training run"):
        blend_runs([a, b], tmp_path / "other")


def test_the_cli_writes_the_blend_and_reports_errors_in_one_line(tmp_path: Path) -> None:
    a, b, _ = two_runs(tmp_path)
    proc = run_cli(["blend_runs.py", "--runs", str(a), str(b), "--weights", "1", "1", "--out", str(tmp_path / "blend")])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "blend: 2 runs" in proc.stderr and (tmp_path / "blend" / "submission.csv").is_file()
    proc = run_cli(["blend_runs.py", "--runs", str(a), str(tmp_path / "missing"), "--out", str(tmp_path / "x")])
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error: blend:") and "Traceback" not in proc.stderr
    proc = run_cli(["blend_runs.py", "--runs", str(a), str(b), "--max-real-fpr", "1.5", "--out", str(tmp_path / "x")])
    assert proc.returncode == 2 and "a share in [0, 1) or none" in proc.stderr
