"""Pseudo-label mining: the selection rules, and make_diamonds.py on a tiny finished run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

import make_diamonds
from deepfake_pipeline.artifacts import RunPaths, fold_rows, load_faces
from deepfake_pipeline.cli import run_main
from deepfake_pipeline.config import DiamondsConfig, load_config
from deepfake_pipeline.diamonds import balanced_counts, class_cap, run_diamonds, select_diamonds
from deepfake_pipeline.errors import ConfigError
from deepfake_pipeline.finetune import prepare_folds
from deepfake_pipeline.runtime import Runtime

from .helpers import run_cli, tiny_config

# ----------------------------------------------------------------------------- selection (pure)


def probs_frame(values: list[float]) -> pd.DataFrame:
    return pd.DataFrame({"Id": [f"t{i:02d}" for i in range(len(values))], "prob": values})


def ids(frame: pd.DataFrame, target: int) -> list[str]:
    return list(frame.loc[frame["target_feature"] == target, "Id"])


def test_thresholds_are_strict_and_most_confident_first() -> None:
    p = probs_frame([0.999, 0.995, 0.9999, 0.5, 0.005, 0.001, 0.0001, 0.2, 0.996])
    out = select_diamonds(p, DiamondsConfig(high=0.995, low=0.005))
    assert ids(out, 1) == ["t02", "t00", "t08"]  # 0.995 itself is not > high
    assert ids(out, 0) == ["t06", "t05"]  # 0.005 itself is not < low
    assert list(out.columns) == ["Id", "target_feature", "prob"]
    assert out.loc[out["Id"] == "t02", "prob"].item() == pytest.approx(0.9999)


def test_logits_rank_when_probs_saturate() -> None:
    p = probs_frame([1.0, 1.0, 1.0]).assign(logit=[40.0, 60.0, 50.0])
    out = select_diamonds(p, DiamondsConfig(high=0.99, low=0.01, max_per_class=2))
    assert ids(out, 1) == ["t01", "t02"]


def test_caps_keep_the_most_confident() -> None:
    fakes = [0.999, 0.9999, 0.9991, 0.99999, 0.9995]  # t00..t04
    reals = [0.001, 0.0001, 0.002, 0.00001]  # t05..t08
    p = probs_frame(fakes + reals + [0.5] * 11)  # 20 test images
    out = select_diamonds(p, DiamondsConfig(max_per_class=2))
    assert ids(out, 1) == ["t03", "t01"] and ids(out, 0) == ["t08", "t06"]
    out = select_diamonds(p, DiamondsConfig(max_fraction=0.15))  # floor(0.15 * 20) = 3 per class
    assert ids(out, 1) == ["t03", "t01", "t04"] and ids(out, 0) == ["t08", "t06", "t05"]
    out = select_diamonds(p, DiamondsConfig(max_per_class=4, max_fraction=0.1))  # the smaller cap wins
    assert len(ids(out, 1)) == 2 and len(ids(out, 0)) == 2
    out = select_diamonds(p, DiamondsConfig(max_fraction=0.15), n_test=100)  # share of the whole test set
    assert len(ids(out, 1)) == 5 and len(ids(out, 0)) == 4
    assert class_cap(DiamondsConfig(), 10) is None and class_cap(DiamondsConfig(max_fraction=0.25), 10) == 2


def test_balance_keeps_the_train_prior() -> None:
    fakes = [0.999 + i * 1e-5 for i in range(8)]  # t00..t07, t07 most confident
    reals = [0.001 - i * 1e-5 for i in range(2)]  # t08, t09 (t09 most confident)
    p = probs_frame(fakes + reals)
    out = select_diamonds(p, DiamondsConfig(balance=True), prior=0.5)
    assert ids(out, 1) == ["t07", "t06"] and ids(out, 0) == ["t09", "t08"]
    out = select_diamonds(p, DiamondsConfig(balance=True), prior=0.75)  # 3 fakes per real
    assert ids(out, 1) == ["t07", "t06", "t05", "t04", "t03", "t02"] and len(ids(out, 0)) == 2
    out = select_diamonds(p, DiamondsConfig(balance=True, max_per_class=1), prior=0.5)  # caps first, then ratio
    assert len(ids(out, 1)) == 1 and len(ids(out, 0)) == 1
    assert balanced_counts(10, 10, 0.2) == (2, 10)
    assert balanced_counts(1, 10, 0.2) == (1, 4)
    assert balanced_counts(5, 0, 0.5) == (0, 0)
    assert balanced_counts(5, 3, 0.0) == (0, 3) and balanced_counts(5, 3, 1.0) == (5, 0)
    with pytest.raises(ValueError, match="prior"):
        select_diamonds(p, DiamondsConfig(balance=True))


def test_bad_settings_are_refused() -> None:
    p = probs_frame([0.9])
    with pytest.raises(ConfigError, match="max_fraction"):
        select_diamonds(p, DiamondsConfig(max_fraction=1.5))
    with pytest.raises(ConfigError, match="max_per_class"):
        select_diamonds(p, DiamondsConfig(max_per_class=-1))
    with pytest.raises(ConfigError, match="low/high"):
        load_config(None, ["run.name=x", "diamonds.high=0.5"])


# ----------------------------------------------------------------------------- on a tiny run


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, demo_root: Path) -> dict:
    """One finished 2-fold x 1-epoch run; its test set also holds a copy of a train image (same Id)."""
    base = tmp_path_factory.mktemp("diamonds")
    data = base / "dataset"
    shutil.copytree(demo_root, data)
    labels = pd.read_csv(data / "train_solution.csv", dtype={"Id": str})
    clash = labels["Id"].iloc[0]
    shutil.copy(data / "train_images" / f"{clash}.jpg", data / "test_images" / f"{clash}.jpg")
    cfg = tiny_config(base, data, "finetune: {init: scratch, epochs: 1}")
    for args in (["align_faces.py"], ["train.py", "--stage", "finetune"]):
        proc = run_cli([*args, "--config", str(cfg)])
        assert proc.returncode == 0, proc.stderr[-3000:]
    test_ids = sorted(p.stem for p in (data / "test_images").iterdir())
    return {"base": base, "data": data, "config": cfg, "run": base / "runs" / "t", "labels": labels,
            "clash": clash, "test_ids": test_ids}


def test_make_diamonds_end_to_end(tiny_run: dict, tmp_path: Path) -> None:
    out = tmp_path / "train_diamond.csv"
    # Thresholds around 0.5 so that a 1-epoch model mines something.
    proc = run_cli(["make_diamonds.py", "--run", str(tiny_run["run"]), "--out", str(out),
                    "--set", "diamonds.high=0.5000001", "--set", "diamonds.low=0.4999999"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2/2 fold(s) finished" in proc.stderr
    frame = pd.read_csv(out, dtype={"Id": str})
    assert list(frame.columns) == ["Id", "target_feature", "is_pseudo", "prob", "fold", "source_run", "config_hash"]
    labels, clash = tiny_run["labels"], tiny_run["clash"]
    original = frame[frame["is_pseudo"] == 0]
    assert list(original["Id"]) == list(labels["Id"]) and original["prob"].isna().all()
    assert list(original["target_feature"]) == list(labels["target_feature"])
    run_folds = pd.read_csv(tiny_run["run"] / "folds.csv", dtype={"Id": str}).set_index("Id")["fold"]
    assert (original["fold"].to_numpy() == run_folds.loc[original["Id"]].to_numpy()).all()  # the run's folds
    pseudo = frame[frame["is_pseudo"] == 1]
    assert not set(pseudo["Id"]) & set(labels["Id"]), "diamonds never include train Ids"
    assert set(pseudo["Id"]) <= set(tiny_run["test_ids"]) - {clash}
    # Per fold: each fold model mines for its own fold. A 1-epoch fold that ranks its validation faces no
    # better than chance is calibrated flat: one probability (its validation base rate) for every face.
    flat = {k for k in (0, 1)
            if json.loads((tiny_run["run"] / f"fold{k}" / "calibration.json").read_text())["fits"][-1]["flat"]}
    assert flat != {0, 1} and set(pseudo["fold"]) >= {0, 1} - flat
    for k in flat:
        assert pseudo.loc[pseudo["fold"] == k, "prob"].nunique() <= 1
    for k in {0, 1} - flat:
        mined = pseudo[pseudo["fold"] == k]
        assert len(mined) >= len(tiny_run["test_ids"]) - 3  # all but the clash (and a rare p within 1e-7 of 0.5)
        assert ((mined["prob"] > 0.5) == (mined["target_feature"] == 1)).all()
    header = (tiny_run["run"] / "config.yaml").read_text().splitlines()
    finetune_hash = next(line.split(": ")[1] for line in header if line.startswith("# finetune settings hash"))
    assert (pseudo["config_hash"] == finetune_hash).all() and (pseudo["source_run"] == str(tiny_run["run"])).all()
    n_fake, n_real = int(pseudo["target_feature"].sum()), int((pseudo["target_feature"] == 0).sum())
    assert f"{n_fake + n_real} rows mined on {len(tiny_run['test_ids'])} test images" in proc.stdout
    assert f"fake {n_fake} (" in proc.stdout and f"real {n_real} (" in proc.stdout

    # The next round takes it through data.pseudo_labels: the same folds, and fold k's diamonds train
    # fold k only: they come from the round-1 model that never saw fold k's validation rows.
    cfg = load_config(tiny_run["config"], [f"data.pseudo_labels={out}", f"run.dir={tmp_path / 'round2'}"])
    folds = prepare_folds(cfg, RunPaths(tmp_path / "round2"), Runtime(torch.device("cpu")), force=False)
    extra = folds[folds["is_pseudo"] == 1]
    assert len(extra) == len(pseudo) and (extra["fold"] == -1).all()
    labelled = folds[folds["is_pseudo"] == 0].set_index("Id")["fold"]
    assert labelled.loc[run_folds.index].equals(run_folds)  # round 1's folds kept
    faces = load_faces(cfg)
    for k in (0, 1):
        train, val = fold_rows(folds, faces, k)
        used = train[train["is_pseudo"] == 1]
        assert sorted(used["Id"]) == sorted(pseudo.loc[pseudo["fold"] == k, "Id"])
        assert (used["pseudo_fold"] == k).all() and not set(val["Id"]) & set(used["Id"])

    # Caps from another (current) config's diamonds section; the models still come from the run's config.
    # Mined by the whole ensemble this time (per_fold false): one set for every fold.
    current = tmp_path / "round2.yaml"
    current.write_text("run: {name: round2, device: cpu, workers: 0, progress: false}\n"
                       "model: {backbone: convnextv2_nano}\n"
                       "diamonds: {high: 0.5000001, low: 0.4999999, max_per_class: 2, per_fold: false}\n")
    capped = tmp_path / "capped.csv"
    summary = run_diamonds(tiny_run["run"], config=current, out=capped)
    kept = pd.read_csv(capped, dtype={"Id": str}).query("is_pseudo == 1")
    assert (kept["fold"] == -1).all() and len(kept) == summary.total
    assert summary.kept["fake"] <= 2 and summary.kept["real"] <= 2 and summary.total >= 2


def test_nothing_mined_fails_loudly_and_writes_nothing(tiny_run: dict, tmp_path: Path) -> None:
    out = tmp_path / "d.csv"
    proc = run_cli(["make_diamonds.py", "--run", str(tiny_run["run"]), "--out", str(out),
                    "--set", "diamonds.high=1.0", "--set", "diamonds.low=0.0"])
    assert proc.returncode == 2 and "no diamonds" in proc.stderr and "--allow-empty" in proc.stderr
    assert not out.exists()
    proc = run_cli(["make_diamonds.py", "--run", str(tiny_run["run"]), "--out", str(out), "--allow-empty",
                    "--set", "diamonds.high=1.0", "--set", "diamonds.low=0.0"])
    assert proc.returncode == 0 and "no diamonds" in proc.stderr
    assert (pd.read_csv(out)["is_pseudo"] == 0).all()


def test_overrides_never_change_the_models_that_mine(tiny_run: dict, tmp_path: Path) -> None:
    """--set may move the run or tune the mining; one that changes what the run's models are (here the
    input channels) would mine with other models than were trained: refused before any prediction."""
    from deepfake_pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match="fine-tuning settings"):
        run_diamonds(tiny_run["run"], overrides=["model.channels=[rgb]"], out=tmp_path / "d.csv")
    assert not (tmp_path / "d.csv").exists()


def test_refuses_without_finished_folds(tiny_run: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(tiny_run["run"] / "config.yaml", run / "config.yaml")
    shutil.copytree(tiny_run["run"] / "fold0", run / "fold0", ignore=shutil.ignore_patterns("done.json"))
    code = run_main(make_diamonds.main, ["--run", str(run), "--out", str(tmp_path / "d.csv")])
    assert code == 2
    assert "no finished folds" in capsys.readouterr().err
    assert not (tmp_path / "d.csv").exists()
