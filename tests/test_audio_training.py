"""Speech through stages 2-5: windows train like faces, predictions are per clip, folds by speaker,
a killed fine-tune resumes bitwise, diamonds are clips and never validate."""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from deepfake_pipeline.artifacts import fold_rows, load_faces
from deepfake_pipeline.config import load_config
from deepfake_pipeline.demo_audio import generate

from .helpers import run_cli

pytestmark = pytest.mark.slow

SMALL = """
run: {{name: t, dir: {run}, workers: 0, device: cpu, progress: false, seed: 3}}
data: {{root: {data}, modality: audio}}
audio: {{n_mels: 32, frames: 32, n_fft: 256, hop_length: 160, max_windows: 3, out: {out}, workers: 0}}
model: {{backbone: convnextv2_atto, channels: [rgb, srm], img_size: 32, drop_path: 0.0, head_dropout: 0.0}}
ssl: {{enabled: false}}
finetune:
  folds: 2
  group_column: speaker
  epochs: 2
  batch_size: 8
  init: scratch
  save_every: 1
  optim: {{lr: 2.0e-3, warmup_epochs: 0.5}}
  aug: {{hflip: 0, affine: 0, color_jitter: 0, blur: 0, jpeg: 0, cutout: 0, freq_mask: 0.5, time_mask: 0.5,
        gain_db: 6.0, noise: 0.3, time_shift: 0.25}}
predict: {{tta: [identity]}}
"""


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("speech")
    generate(base / "data", n=36, test_share=0.25, seed=4)
    cfg = config(base, "first")
    proc = run_cli(["prepare_audio.py", "--config", str(cfg)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return base


def config(base: Path, name: str) -> Path:
    path = base / f"{name}.yaml"
    path.write_text(SMALL.format(run=base / "runs" / name, data=base / "data", out=base / "windows"))
    return path


@pytest.fixture(scope="module")
def whole_run(prepared: Path) -> Path:
    """Every stage of the small config: 2 folds, OOF, threshold, test prediction."""
    proc = run_cli(["train.py", "--config", str(config(prepared, "whole")), "--stage", "all"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return prepared / "runs" / "whole"


def test_windows_train_and_predict_one_value_per_clip(prepared: Path, whole_run: Path) -> None:
    cfg = prepared / "whole.yaml"
    run = whole_run
    labels = pd.read_csv(prepared / "data" / "train_solution.csv", dtype={"Id": str})
    faces = load_faces(load_config(cfg))
    assert faces["Id"].duplicated().any()  # several windows per clip went in
    oof = pd.read_csv(run / "oof.csv", dtype={"Id": str})
    assert sorted(oof["Id"]) == sorted(labels["Id"])  # one out-of-fold value per clip, not per window
    folds = pd.read_csv(run / "folds.csv", dtype={"Id": str}).merge(labels[["Id", "speaker"]], on="Id")
    by_speaker = folds.groupby("speaker")["fold"].nunique()
    assert (by_speaker == 1).all()  # a speaker's clips never straddle training and validation
    test_ids = sorted(p.stem for p in (prepared / "data" / "test_audio").iterdir())
    probs = pd.read_csv(run / "test_probs.csv", dtype={"Id": str})
    assert sorted(probs["Id"]) == test_ids and probs["prob"].between(0, 1).all()
    assert sorted(pd.read_csv(run / "submission.csv", dtype={"Id": str})["Id"]) == test_ids

    # "Does this clip sound fake?": raw clips through stage 1 on the fly, one answer per clip.
    inputs = prepared / "inputs"
    inputs.mkdir()
    for ident in test_ids[:2]:
        shutil.copy(prepared / "data" / "test_audio" / f"{ident}.wav", inputs / f"{ident}.wav")
    (inputs / "notes.wav").write_text("not audio\n")
    answer = run_cli(["safe_inference.py", "--run", str(run), "--input", str(inputs), "--out", str(prepared / "a.csv")])
    assert answer.returncode == 0, answer.stderr[-3000:]
    rows = pd.read_csv(prepared / "a.csv").set_index("Id")
    assert sorted(rows.index) == sorted([f"{i}.wav" for i in test_ids[:2]] + ["notes.wav"])
    assert (rows.loc[[f"{i}.wav" for i in test_ids[:2]], "status"] == "window").all()
    assert rows.loc["notes.wav", "status"] == "unreadable" and pd.isna(rows.loc["notes.wav", "prob"])
    same = probs.set_index("Id").loc[test_ids[:2], "prob"].to_numpy()
    assert abs(rows.loc[[f"{i}.wav" for i in test_ids[:2]], "prob"].to_numpy() - same).max() < 1e-4

    # Diamonds are clips: one row per clip and fold, and they never reach a validation fold.
    out = prepared / "diamonds.csv"
    proc = run_cli(["make_diamonds.py", "--run", str(run), "--out", str(out),
                    "--set", "diamonds.high=0.5000001", "--set", "diamonds.low=0.4999999"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    mined = pd.read_csv(out, dtype={"Id": str}).query("is_pseudo == 1")
    assert not mined.duplicated(["Id", "fold"]).any() and set(mined["Id"]) <= set(test_ids)
    round2 = load_config(cfg, [f"data.pseudo_labels={out}", f"run.dir={prepared / 'runs' / 'round2'}"])
    from deepfake_pipeline.artifacts import RunPaths
    from deepfake_pipeline.finetune import prepare_folds
    from deepfake_pipeline.runtime import Runtime

    table = prepare_folds(round2, RunPaths(prepared / "runs" / "round2"), Runtime(torch.device("cpu")), False)
    for k in (0, 1):
        train, val = fold_rows(table, load_faces(round2), k)
        assert (val["is_pseudo"] == 0).all() and not set(val["Id"]) & set(mined["Id"])
        assert set(train.loc[train["is_pseudo"] == 1, "Id"]) == set(mined.loc[mined["fold"] == k, "Id"])


def test_speech_answers_agree_and_half_a_clip_is_never_judged_whole(prepared: Path, whole_run: Path,
                                                                    tmp_path: Path) -> None:
    """Speech windows through the predict stage, safe_inference.py and --input: one probability (1e-6
    from the same windows, 1e-4 through stage 1 again) and one label per clip. A clip whose windows
    are partly missing or undecodable goes through stage 1 again, never judged from what is left."""
    from deepfake_pipeline.artifacts import RunPaths
    from deepfake_pipeline.fallback import inspect_images, list_inputs, safe_inference
    from deepfake_pipeline.trained import inference_runtime, load_run_config

    windows = tmp_path / "windows"
    shutil.copytree(prepared / "windows", windows)
    cfg = load_run_config(whole_run, [f"audio.out={windows}"])
    threshold = json.loads((whole_run / "threshold.json").read_text())["threshold"]
    probs = pd.read_csv(whole_run / "test_probs.csv", dtype={"Id": str}).set_index("Id")["prob"]
    labels = pd.read_csv(whole_run / "submission.csv", dtype={"Id": str}).set_index("Id")["target_feature"]
    runtime = inference_runtime("cpu")
    intact = safe_inference(cfg, RunPaths(whole_run), runtime, tmp_path / "intact.csv")
    assert intact.problems.empty and (intact.probs["source"] == "aligned").all()
    assert (intact.probs.set_index("Id")["prob"].loc[probs.index] - probs).abs().max() < 1e-6
    assert intact.submission.set_index("Id")["target_feature"].loc[labels.index].equals(labels)

    answers = inspect_images(cfg, RunPaths(whole_run), runtime, list_inputs(prepared / "data" / "test_audio"))
    answers.index = [Path(n).stem for n in answers["Id"]]
    assert (answers.loc[probs.index, "prob"] - probs).abs().max() < 1e-4
    clear = (probs - threshold).abs() > 1e-4
    assert answers.loc[probs.index, "label"].astype(int)[clear].equals(labels[clear])

    rows = load_faces(cfg)
    test = rows[rows["split"] == "test"]
    multi = test.groupby("Id").size().loc[lambda n: n >= 2].index
    lost, torn = multi[0], multi[1]
    here = windows / "test"  # the copy's files (the manifest records the original folder's paths)
    (here / Path(test.loc[test["Id"] == lost, "path"].iloc[1]).name).unlink()  # a window's file is gone
    (here / Path(test.loc[test["Id"] == torn, "path"].iloc[0]).name).write_bytes(b"\x89PNG torn")  # undecodable
    again = safe_inference(cfg, RunPaths(whole_run), runtime, tmp_path / "again.csv")
    got = again.probs.set_index("Id")
    assert (got.loc[[lost, torn], "source"] == "realigned").all() and again.problems.empty
    assert (got["prob"].loc[probs.index] - probs).abs().max() < 1e-4  # the whole clips, as predict judged them


def test_a_killed_fine_tune_resumes_to_the_same_weights(prepared: Path) -> None:
    straight = config(prepared, "straight")
    proc = run_cli(["train.py", "--config", str(straight), "--stage", "finetune", "--set", "finetune.run_folds=[0]"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    killed = config(prepared, "killed")
    args = ["train.py", "--config", str(killed), "--stage", "finetune", "--set", "finetune.run_folds=[0]"]
    first = run_cli(args, env={"DFP_FAILPOINT": "step:3"})
    assert first.returncode == -signal.SIGKILL
    again = run_cli(args)
    assert again.returncode == 0 and "resumed from" in again.stderr, again.stderr[-3000:]
    a = load_file(str(prepared / "runs" / "straight" / "fold0" / "best.safetensors"))
    b = load_file(str(prepared / "runs" / "killed" / "fold0" / "best.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    done = [json.loads((prepared / "runs" / n / "fold0" / "done.json").read_text()) for n in ("straight", "killed")]
    assert done[0]["best_epoch"] == done[1]["best_epoch"]
    shutil.rmtree(prepared / "runs" / "killed")


def test_codec_copies_are_read_by_training_and_never_by_validation(prepared: Path, monkeypatch: pytest.MonkeyPatch
                                                                   ) -> None:
    # Stage 1 with codec copies of the train clips, then fold 0 trained in this process (run.workers
    # 0) with aug.codec 1: every training read of a window with copies must be a copy, and no copy
    # of a validation clip (nor any test clip) may ever be read.
    from deepfake_pipeline import dataset
    from deepfake_pipeline.stages import run_stages

    path = config(prepared, "codec")
    path.write_text(path.read_text().replace(str(prepared / "windows"), str(prepared / "windows_codec")))
    cfg = load_config(path, ["audio.codec_copies=[mp3,opus]", "finetune.aug.codec=1.0", "finetune.epochs=1",
                             "finetune.run_folds=[0]"])
    proc = run_cli(["prepare_audio.py", "--config", str(path), "--set", "audio.codec_copies=[mp3,opus]"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    faces = load_faces(cfg)
    assert (faces.loc[faces["split"] == "train", "copies"] != "").all()
    reads: list[str] = []
    decode = dataset.decode_face
    monkeypatch.setattr(dataset, "decode_face", lambda p: (reads.append(p), decode(p))[1])
    assert run_stages(cfg, "finetune") == 0
    folds = pd.read_csv(prepared / "runs" / "codec" / "folds.csv", dtype={"Id": str})
    val_ids = set(folds.loc[folds["fold"] == 0, "Id"])
    copies = [p for p in reads if p.endswith((".mp3.png", ".opus.png"))]
    originals = [p for p in reads if p not in copies]
    train_windows = faces[(faces["split"] == "train") & ~faces["Id"].isin(val_ids)]
    val_windows = faces[(faces["split"] == "train") & faces["Id"].isin(val_ids)]
    assert copies and not {Path(p).name.split("_w")[0] for p in copies} & val_ids
    assert set(originals) == set(val_windows["path"])  # validation read the windows themselves, only they
    assert not set(train_windows["path"]) & set(originals)


def test_codec_benchmark_out_of_fold_reproduces_the_runs_oof(prepared: Path, whole_run: Path, tmp_path: Path) -> None:
    # benchmarks/audio_codecs.py --oof judges each train clip with the fold model that validated on it.
    # On the clips as they are, that must be the run's own oof.csv figure (a clip judged by the wrong
    # fold's model, or without its calibration, would change it); the MP3 row must be a real re-encode.
    from sklearn.metrics import roc_auc_score

    proc = run_cli(["benchmarks/audio_codecs.py", str(prepared / "data"), "--runs", str(whole_run), "--oof",
                    "--codecs", "mp3", "--scratch", str(tmp_path), "--threads", "1"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    oof_part = proc.stdout.split("Out of fold:")[1]
    rows = {line.split("|")[2].strip(): line.split("|") for line in oof_part.splitlines() if line.startswith("| whole")}
    oof = pd.read_csv(whole_run / "oof.csv", dtype={"Id": str})
    insample = roc_auc_score(oof["target"], oof["prob_insample"])  # the fold's own calibration, as the benchmark
    assert float(rows["flac (as is)"][4].split()[0]) == pytest.approx(insample, abs=6e-4)
    assert 5 < float(rows["mp3"][3]) < 128 and len(list((tmp_path / "train-mp3").iterdir())) == len(oof)


def test_quality_harness_scores_a_speech_cross_set(prepared: Path, tmp_path: Path) -> None:
    """benchmarks/quality.py on speech with --cross (it once read the cross set as an image layout):
    the cross clips are prepared, predicted by the run's folds, scored, and the score-shift check's
    verdict is in the row. Mechanics only: 27 training clips, one epoch."""
    other = tmp_path / "other"
    generate(other, n=16, test_share=0.5, seed=9)
    results = tmp_path / "RESULTS.md"
    proc = run_cli(["benchmarks/quality.py", str(prepared / "data"), "--cross", str(other),
                    "--config", str(config(prepared, "harness")), "--set", "finetune.epochs=1", "--tag", "speech",
                    "--scratch", str(tmp_path / "scratch"), "--results", str(results)], timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    record = json.loads((tmp_path / "scratch" / "runs" / "speech" / "quality.json").read_text())
    answers = pd.read_csv(other / "test_solution.csv")
    assert record["cross"]["n"] == len(answers) == 8
    assert "cross calls at the OOF threshold" in record["row"]["notes"]
    assert "cross score-shift check: too few items" in record["row"]["notes"]  # 8 clips: no verdict
