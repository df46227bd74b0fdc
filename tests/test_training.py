"""SSL and fine-tuning stages: learning, kill-and-resume equivalence, skip/stale rules, DDP."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from deepfake_pipeline.checkpoint import load_state
from deepfake_pipeline.engine import metric_is_better
from deepfake_pipeline.errors import CheckpointError

from .conftest import PYTHON, REPO
from .helpers import run_cli, tiny_config


@pytest.fixture(scope="module")
def aligned(tmp_path_factory: pytest.TempPathFactory, demo_root: Path) -> Path:
    """Whole-image 64 px faces of the small demo dataset (align.enabled=false: no MTCNN)."""
    base = tmp_path_factory.mktemp("train")
    cfg = tiny_config(base, demo_root)
    proc = run_cli(["align_faces.py", "--config", str(cfg)])
    assert proc.returncode == 0, proc.stderr
    return base


def fresh_workdir(aligned: Path, tmp_path: Path, demo_root: Path, extra: str = "") -> Path:
    """A config whose run dir is new but whose faces are the module's aligned faces."""
    shutil.copytree(aligned / "faces", tmp_path / "faces")
    return tiny_config(tmp_path, demo_root, extra)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), f"{key} differs between {a} and {b}"


def metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_ssl_learns_and_records(aligned: Path, tmp_path: Path, demo_root: Path) -> None:
    cfg = fresh_workdir(aligned, tmp_path, demo_root, "ssl: {epochs: 4, save_every: 0}")
    proc = run_cli(["train.py", "--config", str(cfg), "--stage", "ssl"])
    assert proc.returncode == 0, proc.stderr
    run = tmp_path / "runs" / "t"
    rows = metrics(run / "ssl" / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert {"lr", "images_per_s", "seconds", "step"} <= rows[0].keys()
    encoder = weights(run / "ssl" / "encoder.safetensors")
    assert any(k.startswith("stem.") for k in encoder)
    assert json.loads((run / "ssl" / "done.json").read_text())["hash"]
    # A second run with the same settings is skipped; other settings are refused, not reused.
    again = run_cli(["train.py", "--config", str(cfg), "--stage", "ssl"])
    assert again.returncode == 0 and "skipped" in again.stderr
    stale = run_cli(["train.py", "--config", str(cfg), "--stage", "ssl", "--set", "ssl.mask_ratio=0.3"])
    assert stale.returncode == 2 and "--force" in stale.stderr


@pytest.mark.parametrize("failpoint", ["step:3", "checkpoint_write:4", "epoch_end:1"])
def test_ssl_kill_and_resume_is_bitwise(aligned: Path, tmp_path: Path, demo_root: Path, failpoint: str) -> None:
    ref_dir, cut_dir = tmp_path / "ref", tmp_path / "cut"
    ref_dir.mkdir()
    cut_dir.mkdir()
    ref_cfg = fresh_workdir(aligned, ref_dir, demo_root)
    cut_cfg = fresh_workdir(aligned, cut_dir, demo_root)
    assert run_cli(["train.py", "--config", str(ref_cfg), "--stage", "ssl"]).returncode == 0
    killed = run_cli(["train.py", "--config", str(cut_cfg), "--stage", "ssl"], env={"DFP_FAILPOINT": failpoint})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    ssl_dir = cut_dir / "runs" / "t" / "ssl"
    assert (ssl_dir / "last.pt").is_file() and not (ssl_dir / "encoder.safetensors").exists()
    resumed = run_cli(["train.py", "--config", str(cut_cfg), "--stage", "ssl"])
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stderr
    assert not list(ssl_dir.glob(".*.tmp")), "no temporary file left behind"
    assert_same_weights(ref_dir / "runs/t/ssl/encoder.safetensors", ssl_dir / "encoder.safetensors")
    ref_rows, cut_rows = metrics(ref_dir / "runs/t/ssl/metrics.jsonl"), metrics(ssl_dir / "metrics.jsonl")
    assert [r["train_loss"] for r in ref_rows] == [r["train_loss"] for r in cut_rows]


def test_finetune_kill_between_and_inside_folds(aligned: Path, tmp_path: Path, demo_root: Path) -> None:
    extra = "finetune: {init: scratch, save_every: 1}"
    ref_dir, cut_dir = tmp_path / "ref", tmp_path / "cut"
    ref_dir.mkdir()
    cut_dir.mkdir()
    ref_cfg = fresh_workdir(aligned, ref_dir, demo_root, extra)
    cut_cfg = fresh_workdir(aligned, cut_dir, demo_root, extra)
    assert run_cli(["train.py", "--config", str(ref_cfg), "--stage", "finetune"]).returncode == 0
    for point in ("fold_end:1", "step:2"):  # between fold 0 and 1, then inside fold 1
        killed = run_cli(["train.py", "--config", str(cut_cfg), "--stage", "finetune"], env={"DFP_FAILPOINT": point})
        assert killed.returncode == -signal.SIGKILL, killed.stderr
    resumed = run_cli(["train.py", "--config", str(cut_cfg), "--stage", "finetune"])
    assert resumed.returncode == 0, resumed.stderr
    assert "fold 0: already finished" in resumed.stderr and "resumed from" in resumed.stderr
    for k in (0, 1):
        assert_same_weights(ref_dir / f"runs/t/fold{k}/best.safetensors", cut_dir / f"runs/t/fold{k}/best.safetensors")
    ref_oof = pd.read_csv(ref_dir / "runs/t/oof.csv")
    cut_oof = pd.read_csv(cut_dir / "runs/t/oof.csv")
    pd.testing.assert_frame_equal(ref_oof, cut_oof)
    assert json.loads((ref_dir / "runs/t/threshold.json").read_text()) == json.loads(
        (cut_dir / "runs/t/threshold.json").read_text()
    )


def test_pseudo_rows_only_train(aligned: Path, tmp_path: Path, demo_root: Path) -> None:
    test_ids = sorted(p.stem for p in (demo_root / "test_images").iterdir())
    labels = pd.read_csv(demo_root / "train_solution.csv", dtype={"Id": str})
    diamonds = pd.concat([
        labels.assign(is_pseudo=0),
        pd.DataFrame({"Id": test_ids[:6], "target_feature": [1, 0, 1, 0, 1, 0], "is_pseudo": 1}),
    ])
    diamonds_csv = tmp_path / "diamonds.csv"
    diamonds.to_csv(diamonds_csv, index=False)
    cfg = fresh_workdir(aligned, tmp_path, demo_root,
                        f"data: {{pseudo_labels: {diamonds_csv}}}\nfinetune: {{init: scratch, epochs: 1}}")
    proc = run_cli(["train.py", "--config", str(cfg), "--stage", "finetune"])
    assert proc.returncode == 0, proc.stderr
    assert "6 pseudo-labelled rows" in proc.stderr
    run = tmp_path / "runs" / "t"
    folds = pd.read_csv(run / "folds.csv", dtype={"Id": str})
    pseudo = folds[folds["is_pseudo"] == 1]
    assert sorted(pseudo["Id"]) == test_ids[:6] and (pseudo["fold"] == -1).all()
    assert set(folds[folds["fold"] >= 0]["Id"]) == set(labels["Id"])
    oof = pd.read_csv(run / "oof.csv", dtype={"Id": str})
    assert not set(oof["Id"]) & set(test_ids), "OOF holds original labels only"
    assert sorted(oof["Id"]) == sorted(labels["Id"])


def test_finetune_needs_ssl_encoder(aligned: Path, tmp_path: Path, demo_root: Path) -> None:
    cfg = fresh_workdir(aligned, tmp_path, demo_root)
    proc = run_cli(["train.py", "--config", str(cfg), "--stage", "finetune"])
    assert proc.returncode == 2
    assert "encoder.safetensors not found" in proc.stderr and "Traceback" not in proc.stderr


def test_crafted_pickle_checkpoint_is_refused(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "last.pt"
    torch.save({"model": Evil()}, path)
    with pytest.raises(CheckpointError, match="refused"):
        load_state(path)


def test_ddp_two_gloo_processes(aligned: Path, tmp_path: Path, demo_root: Path) -> None:
    cfg = fresh_workdir(aligned, tmp_path, demo_root, "ssl: {epochs: 1}")
    cmd = [PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "train.py", "--config", str(cfg), "--stage", "ssl"]
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rank 0/2" in proc.stderr
    ssl_dir = tmp_path / "runs" / "t" / "ssl"
    assert (ssl_dir / "encoder.safetensors").is_file()
    rows = metrics(ssl_dir / "metrics.jsonl")
    assert len(rows) == 1  # one writer: rank 0


def test_ddp_finetune_matches_one_process(aligned: Path, tmp_path: Path, demo_root: Path) -> None:
    """Fine-tuning in 2 gloo processes (batch 4 each) against 1 process (batch 8): the same folds, and
    OOF probabilities and threshold equal within float tolerance. Rank 0 validates and writes while
    rank 1 waits at the barrier. Nothing random differs between the two: augmentation, dropout and
    drop path are off, and DistributedSampler deals each rank half of the same permutation."""
    still = ("finetune: {init: scratch, epochs: 2, aug: {hflip: 0, affine: 0, color_jitter: 0, blur: 0, jpeg: 0, "
             "cutout: 0}}\nmodel: {head_dropout: 0.0}")
    one = fresh_workdir(aligned, tmp_path / "one", demo_root, still.replace("epochs: 2", "epochs: 2, batch_size: 8"))
    two = fresh_workdir(aligned, tmp_path / "two", demo_root, still.replace("epochs: 2", "epochs: 2, batch_size: 4"))
    proc = run_cli(["train.py", "--config", str(one), "--stage", "finetune"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    cmd = [PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "train.py", "--config", str(two), "--stage", "finetune"]
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    ddp = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert "rank 0/2" in ddp.stderr
    a, b = tmp_path / "one" / "runs" / "t", tmp_path / "two" / "runs" / "t"
    assert (a / "folds.csv").read_text() == (b / "folds.csv").read_text()
    oof_a, oof_b = (pd.read_csv(p / "oof.csv", dtype={"Id": str}).set_index("Id") for p in (a, b))
    assert list(oof_a.index) == list(oof_b.index)
    assert oof_a["prob"].std() > 1e-3  # trained models, not a constant
    assert (oof_a["prob"] - oof_b["prob"]).abs().max() < 1e-3
    ta, tb = (json.loads((p / "threshold.json").read_text()) for p in (a, b))
    assert abs(ta["threshold"] - tb["threshold"]) < 1e-3 and ta["oof_f1"] == pytest.approx(tb["oof_f1"], abs=1e-6)
    for k in (0, 1):
        assert len(metrics(b / f"fold{k}" / "metrics.jsonl")) == 2  # one writer
        assert json.loads((a / f"fold{k}" / "done.json").read_text())["best_epoch"] == \
            json.loads((b / f"fold{k}" / "done.json").read_text())["best_epoch"]


def test_checkpoint_rule_keeps_the_first_epoch_of_a_tie() -> None:
    """A saturated validation (val AUC 1.0 from the first epoch, as copies-only speech training gives)
    keeps the first epoch that reached it: later epochs fit the self-made fakes further and carried less
    to unseen generators (benchmarks/RESULTS.md, "the copies-only protocol again"). A rule of >= fails."""
    assert metric_is_better("val_auc", 1.0, None)
    assert not metric_is_better("val_auc", 1.0, 1.0)
    assert not metric_is_better("val_auc", 1.0, 0.9999999999999999)  # the same perfect AUC, summed otherwise
    assert not metric_is_better("val_logloss", 0.2 - 1e-15, 0.2)
    assert metric_is_better("val_auc", 0.91, 0.9)
    assert not metric_is_better("val_logloss", 0.2, 0.2)
    assert metric_is_better("val_logloss", 0.1, 0.2)
    assert not metric_is_better("val_auc", float("nan"), 0.5)
    assert metric_is_better("val_auc", 0.5, float("nan"))
