"""Where a run's files live, and reading the files one stage hands to the next."""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .config import Config, stage_hash, to_yaml
from .errors import PipelineError
from .images import atomic_write_text

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunPaths:
    root: Path

    @property
    def ssl(self) -> Path:
        return self.root / "ssl"

    @property
    def encoder(self) -> Path:
        return self.ssl / "encoder.safetensors"

    def fold(self, k: int) -> Path:
        return self.root / f"fold{k}"

    def fold_weights(self, k: int) -> Path:
        return self.fold(k) / "best.safetensors"

    @property
    def folds_csv(self) -> Path:
        return self.root / "folds.csv"

    @property
    def oof_csv(self) -> Path:
        return self.root / "oof.csv"

    @property
    def threshold_json(self) -> Path:
        return self.root / "threshold.json"

    @property
    def test_probs_csv(self) -> Path:
        return self.root / "test_probs.csv"

    @property
    def submission_csv(self) -> Path:
        return self.root / "submission.csv"

    @property
    def plots(self) -> Path:
        return self.root / "plots"


def run_paths(cfg: Config) -> RunPaths:
    return RunPaths(Path(cfg.run.dir))


def stage1_out(cfg: Config) -> Path:
    """Stage 1's output folder: ``align.out`` (faces) or ``audio.out`` (speech windows)."""
    return Path(cfg.audio.out if cfg.data.modality == "audio" else cfg.align.out)


def stage1_hash(cfg: Config) -> str:
    """The settings hash stage 1 records in every manifest row (align.py or audio_stage.py)."""
    if cfg.data.modality == "audio":
        from .audio_stage import settings_hash
    else:
        from .align import settings_hash
    return settings_hash(cfg)


def recorded_stage1_hashes(rows: pd.DataFrame) -> set[str]:
    """The stage-1 settings hashes that manifest rows record (empty for manifests that predate them)."""
    if "settings_hash" not in rows.columns:
        return set()
    return {str(h) for h in rows["settings_hash"] if str(h)}


def stage1_mismatch(rows: pd.DataFrame, expected: set[str]) -> pd.Series:
    """Which manifest rows were made with stage-1 settings outside ``expected`` (none when the rows
    record no settings hash)."""
    if "settings_hash" not in rows.columns or not expected:
        return pd.Series(False, index=rows.index)
    return ~rows["settings_hash"].astype(str).isin(expected)


def save_run_config(cfg: Config, paths: RunPaths) -> None:
    """The resolved config beside the run's outputs, with the hash of each stage's settings."""
    hashes = {
        "align": stage1_hash(cfg),  # the value the stage-1 manifest records per row
        "ssl": stage_hash(cfg, ["model", "ssl"]),
        "finetune": stage_hash(cfg, ["model", "finetune"]),
    }
    header = "".join(f"# {name} settings hash: {value}\n" for name, value in hashes.items())
    atomic_write_text(paths.root / "config.yaml", header + to_yaml(cfg))


def load_faces(cfg: Config) -> pd.DataFrame:
    """The stage-1 manifest (``faces.csv`` in :func:`stage1_out`); every input Id has a row (speech: one
    per window, or one saying why there is none)."""
    path = stage1_out(cfg) / "faces.csv"
    if not path.is_file():
        cli = "prepare_audio.py" if cfg.data.modality == "audio" else "align_faces.py"
        raise PipelineError(f"{path} not found: run {cli} with this config first")
    faces = pd.read_csv(path, dtype={"Id": str}, keep_default_na=False)
    needed = {"Id", "split", "status", "path"}
    if not needed <= set(faces.columns):
        raise PipelineError(f"{path}: needs columns {sorted(needed)}; has {list(faces.columns)}")
    return faces


def faces_fingerprint(faces: pd.DataFrame) -> str:
    """Identifies the aligned inputs, for stage hashes: Ids, status, alignment settings, and each
    aligned file's size and mtime. Alignment rewrites a face whenever its source image changed,
    so changed input data changes this fingerprint and a finished stage is not reused silently.
    (Copying the faces folder without keeping mtimes counts as a change: ``--force`` redoes.)"""
    cols = [c for c in ("Id", "split", "status", "settings_hash", "path") if c in faces.columns]
    table = faces[cols].sort_values(["split", "Id"])
    digest = hashlib.sha256(table.to_csv(index=False).encode())
    for path in table["path"]:
        if path:
            try:
                st = os.stat(path)
                digest.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
            except OSError:
                digest.update(b"missing")
    return digest.hexdigest()[:16]


NO_ITEM = ("unreadable", "silent")  # stage-1 statuses of an input that produced no image


def usable_faces(faces: pd.DataFrame, split: str) -> pd.DataFrame:
    """Rows of ``split`` with a stage-1 image on disk (unreadable or silent inputs have none).

    Faces: one row per Id. Speech: one row per spectrogram window, several per clip Id; everything
    downstream trains on the rows and predicts one value per Id (:func:`per_id`).
    """
    rows = faces[(faces["split"] == split) & (~faces["status"].isin(NO_ITEM)) & (faces["path"] != "")]
    return rows.reset_index(drop=True)


def per_id(ids: pd.Series | list[str], values: np.ndarray) -> tuple[list[str], np.ndarray]:
    """(each Id once, in first-seen order; the mean of its rows' ``values``): one logit per clip from
    its windows' logits. With one row per Id (faces) it returns the input unchanged."""
    frame = pd.DataFrame({"Id": list(ids), "v": np.asarray(values, dtype=np.float64)})
    if not frame["Id"].duplicated().any():
        return list(frame["Id"]), frame["v"].to_numpy()
    mean = frame.groupby("Id", sort=False)["v"].mean()
    return list(mean.index), mean.to_numpy()


def per_id_rows(ids: pd.Series | list[str], matrix: np.ndarray) -> tuple[list[str], np.ndarray]:
    """:func:`per_id` of each row of a (n_folds, n_images) matrix: (each Id once, (n_folds, n_ids))."""
    rows = [per_id(ids, row)[1] for row in matrix]
    return per_id(ids, np.zeros(len(ids)))[0], np.stack(rows) if rows else np.zeros((0, len(set(ids))))


def fold_rows(folds: pd.DataFrame, faces: pd.DataFrame, k: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(training rows, validation rows) of fold ``k``, each with the ``path`` of its aligned face (and,
    for speech windows with codec copies, their ``copies``: paths joined by ";").

    ``folds`` is ``folds.csv``: labelled rows have their validation ``fold``; pseudo-labelled rows
    (``is_pseudo`` 1) have fold -1 and train fold ``pseudo_fold`` only, or every fold when it is -1.
    Labelled rows are train images, pseudo rows test images (an Id may exist in both splits); an Id
    with several stage-1 items (speech windows) gets one row per item. Rows without a usable item
    (unreadable or silent at stage 1) are left out with a warning.
    """
    pseudo = folds["is_pseudo"] == 1
    pseudo_fold = folds["pseudo_fold"] if "pseudo_fold" in folds.columns else pd.Series(-1, index=folds.index)
    train = folds[(~pseudo & (folds["fold"] != k)) | (pseudo & pseudo_fold.isin([-1, k]))].copy()
    val = folds[~pseudo & (folds["fold"] == k)].copy()
    if set(train["Id"][train["is_pseudo"] == 0]) & set(val["Id"]):
        raise PipelineError(f"fold {k}: a labelled row is in both its training and validation parts")
    cols = ["Id", "path"] + (["copies"] if "copies" in faces.columns else [])  # speech codec copies
    items = {split: usable_faces(faces, split)[cols] for split in ("train", "test")}

    def with_paths(rows: pd.DataFrame) -> pd.DataFrame:
        parts = [rows[rows["is_pseudo"] == p].merge(items[split], on="Id", how="left")
                 for p, split in ((0, "train"), (1, "test"))]
        return pd.concat(parts, ignore_index=True)

    train, val = with_paths(train), with_paths(val)
    dropped = int(train["path"].isna().sum() + val["path"].isna().sum())
    if dropped:
        log.warning("fold %d: %d input(s) were unreadable or silent at stage 1 and are left out", k, dropped)
    return train.dropna(subset=["path"]).reset_index(drop=True), val.dropna(subset=["path"]).reset_index(drop=True)
