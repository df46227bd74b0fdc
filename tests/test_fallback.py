"""safe_inference.py: a complete submission from whatever a run has, whatever breaks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import safe_inference
from deepfake_pipeline import fallback
from deepfake_pipeline.artifacts import RunPaths, load_faces, usable_faces
from deepfake_pipeline.cli import run_main
from deepfake_pipeline.config import Config
from deepfake_pipeline.errors import PipelineError
from deepfake_pipeline.images import save_jpeg
from deepfake_pipeline.trained import ensemble_logits, inference_runtime, load_run_config, sigmoid

from .helpers import run_cli, tiny_config

GARBAGE = b"this is not an image\x00\xff" * 10


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, demo_root: Path) -> Path:
    """One finished 2-fold x 1-epoch run (whole-image 64 px faces); tests work on copies of it."""
    base = tmp_path_factory.mktemp("fallback")
    shutil.copytree(demo_root, base / "dataset")
    cfg = tiny_config(base, base / "dataset", "finetune: {init: scratch, epochs: 1}")
    for args in (["align_faces.py"], ["train.py", "--stage", "finetune"]):
        proc = run_cli([*args, "--config", str(cfg)])
        assert proc.returncode == 0, proc.stderr[-3000:]
    return base


def workspace(base: Path, tmp_path: Path) -> tuple[Path, list[str]]:
    """Copies of the dataset, the faces and the run (weights only): (run dir, --set overrides).

    The run's calibrations for the one-view (fast) TTA are fitted first, as the reference fits them:
    a copy without the aligned training faces could not fit them itself."""
    reference(base, [0, 1])
    for name in ("dataset", "faces"):
        shutil.copytree(base / name, tmp_path / name)
    run = tmp_path / "run"
    shutil.copytree(base / "runs" / "t", run, ignore=shutil.ignore_patterns("last.pt", "*.jsonl"))
    return run, [f"data.root={tmp_path / 'dataset'}", f"align.out={tmp_path / 'faces'}"]


_REFERENCE: dict[tuple, pd.Series] = {}


def reference(base: Path, folds: list[int], fast: bool = True) -> pd.Series:
    """What the predict stage's code computes on the intact aligned faces: Id -> prob (cached)."""
    key = (base, tuple(folds), fast)
    if key not in _REFERENCE:
        cfg = load_run_config(base / "runs" / "t")
        faces = usable_faces(load_faces(cfg), "test")
        logits = ensemble_logits(cfg, RunPaths(base / "runs" / "t"), inference_runtime("cpu"), folds,
                                 list(faces["path"]), tta=["identity"] if fast else None)
        _REFERENCE[key] = pd.Series(sigmoid(logits), index=faces["Id"])
    return _REFERENCE[key]


def run_safe(run: Path, overrides: list[str], out: Path, fast: bool = True) -> fallback.SafeResult:
    cfg: Config = load_run_config(run, overrides)
    return fallback.safe_inference(cfg, RunPaths(run), inference_runtime("cpu"), out, fast=fast)


def check_complete(submission: pd.DataFrame, dataset: Path) -> None:
    test_ids = sorted(p.stem for p in (dataset / "test_images").iterdir())
    assert sorted(submission["Id"]) == test_ids and not submission["Id"].duplicated().any()
    assert submission["target_feature"].isin([0, 1]).all()


def test_intact_run_matches_the_predict_stage(tiny_run: Path, tmp_path: Path) -> None:
    result = run_safe(tiny_run / "runs" / "t", [], tmp_path / "sub.csv", fast=False)  # with the run's TTA
    ref = reference(tiny_run, [0, 1], fast=False)
    probs = result.probs.set_index("Id")["prob"]
    assert np.allclose(probs.loc[ref.index], ref, atol=1e-6)
    assert result.problems.empty and (result.probs["source"] == "aligned").all()
    assert result.folds == [0, 1] and result.halvings == []
    expected = (probs >= result.threshold).astype(int)
    written = pd.read_csv(tmp_path / "sub.csv", dtype={"Id": str}).set_index("Id")["target_feature"]
    assert written.equals(expected.loc[written.index])
    check_complete(written.reset_index(), tiny_run / "dataset")
    assert pd.read_csv(tmp_path / "problems.csv").empty


def test_broken_inputs_and_a_deleted_fold(tiny_run: Path, tmp_path: Path) -> None:
    run, overrides = workspace(tiny_run, tmp_path)
    raw, faces = tmp_path / "dataset" / "test_images", tmp_path / "faces" / "test"
    ids = sorted(p.stem for p in raw.iterdir())
    dead, deleted, corrupt, raw_only = ids[:4]
    (raw / f"{dead}.jpg").write_bytes(GARBAGE)  # unreadable raw image and no aligned face: prior
    (faces / f"{dead}.jpg").unlink()
    (faces / f"{deleted}.jpg").unlink()  # aligned on the fly from the raw image
    (faces / f"{corrupt}.jpg").write_bytes(GARBAGE)  # corrupt aligned file: realigned from the raw image
    (raw / f"{raw_only}.jpg").write_bytes(GARBAGE)  # the aligned face is still good
    shutil.copy(raw / f"{ids[5]}.jpg", raw / "late_arrival.jpg")  # not in faces.csv
    (run / "fold1" / "best.safetensors").unlink()  # answers from fold 0
    (run / "threshold.json").unlink()  # 0.5, with a warning
    out = tmp_path / "out" / "submission.csv"
    sets = [x for o in overrides for x in ("--set", o)]
    proc = run_cli(["safe_inference.py", "--run", str(run), "--out", str(out), "--device", "cpu", "--fast", *sets])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "folds [0]" in proc.stdout and "threshold 0.5000" in proc.stdout
    assert "default threshold 0.5" in proc.stderr
    submission = pd.read_csv(out, dtype={"Id": str})
    check_complete(submission, tmp_path / "dataset")
    problems = pd.read_csv(out.parent / "problems.csv", dtype={"Id": str})
    assert list(problems["Id"]) == [dead] and "unreadable" in problems["reason"].item()
    labels = pd.read_csv(tmp_path / "dataset" / "train_solution.csv")
    prior = labels["target_feature"].mean()
    assert problems["target_feature"].item() == int(prior >= 0.5) and problems["prob"].item() == pytest.approx(prior)
    probs = pd.read_csv(out.parent / "submission_probs.csv", dtype={"Id": str}).set_index("Id")
    assert probs.loc[dead, "source"] == "prior"
    assert (probs.loc[[deleted, corrupt, "late_arrival"], "source"] == "realigned").all()
    assert probs.loc[raw_only, "source"] == "aligned"
    # Realigned with the run's own policy: the same crop, the same prediction as the aligned face had.
    ref = reference(tiny_run, [0])
    assert np.allclose(probs.loc[ids[1:], "prob"], ref.loc[ids[1:]], atol=1e-5)
    assert probs.loc["late_arrival", "prob"] == pytest.approx(ref.loc[ids[5]], abs=1e-5)
    assert not list((out.parent).glob(".safe_faces_*")), "temporary crops removed"


def test_no_aligned_faces_at_all(tiny_run: Path, tmp_path: Path) -> None:
    run, overrides = workspace(tiny_run, tmp_path)
    shutil.rmtree(tmp_path / "faces")
    raw = tmp_path / "dataset" / "test_images"
    ids = sorted(p.stem for p in raw.iterdir())
    (raw / f"{ids[0]}.jpg").write_bytes(b"")  # zero-byte file
    result = run_safe(run, overrides, tmp_path / "sub.csv")
    check_complete(result.submission, tmp_path / "dataset")
    assert list(result.problems["Id"]) == [ids[0]] and "zero-byte" in result.problems["reason"].item()
    probs = result.probs.set_index("Id")
    assert (probs.loc[ids[1:], "source"] == "realigned").all()
    assert np.allclose(probs.loc[ids[1:], "prob"], reference(tiny_run, [0, 1]).loc[ids[1:]], atol=1e-5)


def test_out_of_memory_halves_the_batch(tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = tiny_run / "runs" / "t"
    overrides = ["predict.batch_size=16"]
    real = fallback.model_logits
    sizes: list[int] = []

    def limited(model, images, *args, **kwargs):  # a device that fits 4 images at most
        sizes.append(images.shape[0])
        if images.shape[0] > 4:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(model, images, *args, **kwargs)

    monkeypatch.setattr(fallback, "model_logits", limited)
    result = run_safe(run, overrides, tmp_path / "oom.csv")
    assert result.halvings == [16, 8] and result.batch_size == 4
    assert max(sizes[2:]) == 4  # after two halvings, never more than 4 again (both folds)
    probs = result.probs.set_index("Id")["prob"]
    plain = reference(tiny_run, [0, 1])  # the un-OOM'd prediction
    assert np.allclose(probs.loc[plain.index], plain, atol=1e-6) and result.problems.empty
    labels = result.submission.set_index("Id")["target_feature"]
    assert labels.loc[plain.index].equals((plain >= result.threshold).astype(int))

    def always(model, images, *args, **kwargs):
        raise RuntimeError("CUDA error: out of memory")

    monkeypatch.setattr(fallback, "model_logits", always)
    with pytest.raises(PipelineError, match="even at batch size 1"):
        run_safe(run, overrides, tmp_path / "never.csv")
    assert not (tmp_path / "never.csv").exists()


def test_a_failing_image_is_isolated(tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run, overrides = workspace(tiny_run, tmp_path)
    ids = sorted(p.stem for p in (tmp_path / "faces" / "test").iterdir())
    save_jpeg(tmp_path / "faces" / "test" / f"{ids[3]}.jpg", np.zeros((64, 64, 3), np.uint8))
    real = fallback.model_logits

    def fragile(model, images, *args, **kwargs):  # fails on any batch holding the black face
        if (images.flatten(1).amax(1) == 0).any():
            raise ValueError("simulated kernel failure")
        return real(model, images, *args, **kwargs)

    monkeypatch.setattr(fallback, "model_logits", fragile)
    result = run_safe(run, overrides, tmp_path / "sub.csv")
    check_complete(result.submission, tmp_path / "dataset")
    assert list(result.problems["Id"]) == [ids[3]] and "simulated kernel failure" in result.problems["reason"].item()
    others = [i for i in ids if i != ids[3]]
    probs = result.probs.set_index("Id")["prob"]
    assert np.allclose(probs.loc[others], reference(tiny_run, [0, 1]).loc[others], atol=1e-6)

    def broken(model, images, *args, **kwargs):  # every image fails: the model is broken, not the data
        raise ValueError("simulated broken kernel")

    monkeypatch.setattr(fallback, "model_logits", broken)
    with pytest.raises(PipelineError, match="fails on every image"):
        run_safe(run, overrides, tmp_path / "broken.csv")


def test_refuses_without_finished_folds(tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(tiny_run / "runs" / "t" / "config.yaml", run / "config.yaml")
    code = run_main(safe_inference.main, ["--run", str(run), "--out", str(tmp_path / "sub.csv")])
    assert code == 2 and "no finished folds" in capsys.readouterr().err
    assert not (tmp_path / "sub.csv").exists()


def test_input_folder_of_photos(tiny_run: Path, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    raw = sorted((tiny_run / "dataset" / "test_images").iterdir())[:3]
    for path in raw:
        shutil.copy(path, photos / path.name)
    (photos / "broken.jpg").write_bytes(GARBAGE)
    out = tmp_path / "answers.csv"
    # MTCNN on (the run itself was trained on whole images; this exercises the detector path).
    proc = run_cli(["safe_inference.py", "--run", str(tiny_run / "runs" / "t"), "--input", str(photos),
                    "--out", str(out), "--fast", "--set", "align.enabled=true"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1 + 4
    for name in ["broken.jpg", *(p.name for p in raw)]:
        assert sum(line.startswith(name) for line in lines) == 1
    frame = pd.read_csv(out).set_index("Id")
    assert frame.loc["broken.jpg", "status"] == "unreadable" and pd.isna(frame.loc["broken.jpg", "prob"])
    good = frame.drop(index="broken.jpg")
    assert good["status"].isin(["face", "fallback"]).all()
    assert good["prob"].between(0, 1).all() and good["label"].isin([0, 1]).all()


def test_a_fold_failing_on_an_image_is_a_recorded_partial_answer(tiny_run: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """One fold fails on one face: that face is judged by the other fold alone, and problems.csv says
    so (which folds answered, why the other did not); it is never passed off as a whole answer."""
    run, overrides = workspace(tiny_run, tmp_path)
    ids = sorted(p.stem for p in (tmp_path / "faces" / "test").iterdir())
    black = tmp_path / "faces" / "test" / f"{ids[3]}.jpg"
    save_jpeg(black, np.zeros((64, 64, 3), np.uint8))
    real = fallback.SafePredictor._call

    def fold1_fragile(self, model, images):  # fold 1 fails on any batch holding the black face
        if model is self.models[1] and (images.flatten(1).amax(1) == 0).any():
            raise ValueError("simulated fold-1 failure")
        return real(self, model, images)

    monkeypatch.setattr(fallback.SafePredictor, "_call", fold1_fragile)
    result = run_safe(run, overrides, tmp_path / "sub.csv")
    check_complete(result.submission, tmp_path / "dataset")
    problems = result.problems.set_index("Id")
    assert list(problems.index) == [ids[3]] and problems.loc[ids[3], "answer"] == "partial"
    assert "folds 0 of 2 answered" in problems.loc[ids[3], "reason"]
    assert "simulated fold-1 failure" in problems.loc[ids[3], "reason"]
    cfg = load_run_config(run, overrides)
    fold0 = sigmoid(ensemble_logits(cfg, RunPaths(run), inference_runtime("cpu"), [0], [str(black)],
                                    tta=["identity"]))[0]
    probs = result.probs.set_index("Id")
    assert probs.loc[ids[3], "prob"] == pytest.approx(fold0, abs=1e-6) and probs.loc[ids[3], "source"] == "aligned"
    written = pd.read_csv(tmp_path / "problems.csv", dtype={"Id": str})
    assert list(written["answer"]) == ["partial"]


def test_unanswerable_inputs_get_one_label_from_predict_and_safe_inference(tiny_run: Path, tmp_path: Path) -> None:
    """An input nothing could judge gets the training prior as its probability and the label any
    probability gets: prior >= threshold. The predict stage and safe inference agree (they used to
    label it with the OOF threshold and with 0.5)."""
    from deepfake_pipeline.predict import run_predict
    from deepfake_pipeline.submission import prior_answer

    assert prior_answer(0.6, 0.7) == (0.6, 0) and prior_answer(0.6, 0.5) == (0.6, 1)
    run, overrides = workspace(tiny_run, tmp_path)
    record = json.loads((run / "threshold.json").read_text())
    record["threshold"] = 0.99  # above the prior: the prior's label is 0, not int(prior >= 0.5)
    (run / "threshold.json").write_text(json.dumps(record))
    ids = sorted(p.stem for p in (tmp_path / "dataset" / "test_images").iterdir())
    dead = ids[0]
    (tmp_path / "dataset" / "test_images" / f"{dead}.jpg").write_bytes(GARBAGE)
    faces_csv = tmp_path / "faces" / "faces.csv"
    manifest = pd.read_csv(faces_csv, dtype={"Id": str}, keep_default_na=False)
    manifest.loc[(manifest["Id"] == dead) & (manifest["split"] == "test"), ["status", "path"]] = ["unreadable", ""]
    manifest.to_csv(faces_csv, index=False)
    prior = pd.read_csv(tmp_path / "dataset" / "train_solution.csv")["target_feature"].mean()
    assert 0.5 <= prior < 0.99

    cfg = load_run_config(run, overrides)
    run_predict(cfg, inference_runtime("cpu"), RunPaths(run))
    predicted = pd.read_csv(run / "submission.csv", dtype={"Id": str}).set_index("Id")["target_feature"]
    problems = pd.read_csv(run / "predict_problems.csv", dtype={"Id": str}).set_index("Id")
    assert predicted.loc[dead] == 0 and problems.loc[dead, "target_feature"] == 0
    assert problems.loc[dead, "prob"] == pytest.approx(prior)
    safe = run_safe(run, overrides, tmp_path / "safe.csv", fast=False)
    assert safe.submission.set_index("Id").loc[dead, "target_feature"] == 0
    assert safe.problems.set_index("Id").loc[dead, "answer"] == "prior"
    assert safe.probs.set_index("Id").loc[dead, "prob"] == pytest.approx(prior)
    assert "-> class 0" in safe.line()
    # predict.json: what the ensemble mean did to the labels against each fold's own call
    agreement = json.loads((run / "predict.json").read_text())
    assert len(agreement["fold_fake_share"]) == 2 and agreement["n"] == len(ids) - 1


def test_predict_checks_each_fold_models_scores_for_a_shift(tiny_run: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The score-shift check gets one row of calibrated probabilities per fold model (single models,
    as the OOF scores are), not the ensemble's mean; the rows are the ones the ensemble averages, and
    each row's fold number comes with it (compared with the OOF scores that fold's model made)."""
    from deepfake_pipeline import predict

    run, overrides = workspace(tiny_run, tmp_path)
    seen: list[np.ndarray] = []
    row_folds: list[list[int]] = []
    check = predict.check_score_shift
    monkeypatch.setattr(predict, "check_score_shift", lambda probs, *rest: seen.append(np.asarray(probs))
                        or row_folds.append(list(rest[3])) or check(probs, *rest))
    predict.run_predict(load_run_config(run, overrides), inference_runtime("cpu"), RunPaths(run))
    (by_fold,) = seen
    assert row_folds == [[0, 1]]
    probs = pd.read_csv(RunPaths(run).test_probs_csv, dtype={"Id": str})["prob"].to_numpy()
    assert by_fold.shape == (2, len(probs))
    mean = sigmoid(np.log(by_fold / (1 - by_fold)).mean(axis=0))
    assert np.allclose(np.sort(mean), np.sort(probs), atol=1e-6)
