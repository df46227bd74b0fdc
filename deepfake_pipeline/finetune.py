"""Stage 3: k-fold classifier fine-tuning, out-of-fold predictions, one pooled threshold.

Writes under the run directory: ``folds.csv`` (once; reused on resume), per fold
``fold<k>/{last.pt, metrics.jsonl, best.safetensors, val_preds.csv, done.json}``, and when every
fold is finished ``oof.csv`` and ``threshold.json``.

Pseudo-labelled rows (``data.pseudo_labels``) get fold -1: they are in the training part of
every fold and in no validation fold, so OOF metrics and the threshold see original labels only.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from .artifacts import RunPaths, faces_fingerprint, load_faces, usable_faces
from .augment import build_train_augment
from .checkpoint import load_weights, read_done, save_weights, write_done
from .config import Config, stage_hash
from .dataset import FaceDataset, load_layout, make_folds, read_pseudo_labels
from .engine import LoopSpec, TrainLoop, make_loader, predict_logits
from .errors import CheckpointError, PipelineError, StaleOutputError
from .faults import failpoint
from .images import atomic_write_text, save_csv
from .metrics import best_f1_threshold, binary_metrics
from .model import DeepfakeClassifier, build_classifier, load_backbone_state
from .runtime import Runtime, derive_seed, seed_everything
from .sbi import with_self_blend

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- folds


def folds_hash(cfg: Config, labels: pd.DataFrame, pseudo: pd.DataFrame | None) -> str:
    return stage_hash(
        cfg, [], extra={
            "folds": cfg.finetune.folds, "seed": cfg.run.seed, "group": cfg.finetune.group_column,
            "labels": labels[["Id", "target"]].to_csv(index=False),
            "pseudo": None if pseudo is None else pseudo.to_csv(index=False),
        },
    )


def prepare_folds(cfg: Config, paths: RunPaths, runtime: Runtime, force: bool) -> pd.DataFrame:
    """Build ``folds.csv`` (Id, target, fold, is_pseudo) once; reuse it while its inputs match."""
    layout = load_layout(cfg.data, check_images=False, group_column=cfg.finetune.group_column)
    labels = layout.train.frame
    pseudo = None
    if cfg.data.pseudo_labels:
        pseudo = read_pseudo_labels(Path(cfg.data.pseudo_labels), set(labels["Id"]), set(layout.test.frame["Id"]))
        log.info("finetune: %d pseudo-labelled rows (%d fake, %d real) from %s join every fold's training part",
                 len(pseudo), int(pseudo["target"].sum()), int((pseudo["target"] == 0).sum()), cfg.data.pseudo_labels)
    h = folds_hash(cfg, labels, pseudo)
    path = paths.folds_csv
    hash_path = path.with_suffix(".hash")
    if path.is_file() and not force:
        recorded = hash_path.read_text().strip() if hash_path.is_file() else None
        if recorded != h:
            raise StaleOutputError(
                f"{path} was made from other labels, pseudo labels or fold settings; "
                "rerun with --force to rebuild the folds (and retrain every fold), or use another run.name"
            )
        folds = pd.read_csv(path, dtype={"Id": str})
    else:
        folds = make_folds(labels, cfg.finetune.folds, cfg.run.seed)
        folds["is_pseudo"] = 0
        if pseudo is not None:
            extra = pseudo.assign(fold=-1, is_pseudo=1)
            folds = pd.concat([folds, extra], ignore_index=True)
        if runtime.is_main:
            save_csv(path, folds)
            atomic_write_text(hash_path, h + "\n")
        runtime.barrier()
    assert not ((folds["is_pseudo"] == 1) & (folds["fold"] >= 0)).any(), "pseudo rows must never validate"
    return folds


# ----------------------------------------------------------------------------- one fold


def _init_backbone(model: DeepfakeClassifier, cfg: Config, paths: RunPaths) -> None:
    init = cfg.finetune.init
    if init == "scratch" or init == "pretrained":
        log.info("finetune: backbone initialised from %s", "scratch" if init == "scratch" else "timm weights")
        return
    encoder = Path(cfg.finetune.ssl_encoder) if cfg.finetune.ssl_encoder else paths.encoder
    if not encoder.is_file():
        raise CheckpointError(
            f"{encoder} not found: run `train.py --stage ssl` first, point finetune.ssl_encoder at an "
            "earlier run's encoder, or set finetune.init=scratch"
        )
    report = load_backbone_state(model, load_weights(encoder))
    log.info("finetune: backbone initialised from %s (%s)", encoder, report)


def _val_metrics(targets: np.ndarray, logits: np.ndarray) -> dict[str, float]:
    prob = 1.0 / (1.0 + np.exp(-logits))
    threshold, f1 = best_f1_threshold(targets, prob)
    base = binary_metrics(targets, prob, threshold=0.5)
    loss = float(F.binary_cross_entropy_with_logits(torch.from_numpy(logits), torch.from_numpy(targets)).item())
    return {
        "val_loss": loss, "val_logloss": float(base["logloss"]), "val_auc": float(base["auc"]),
        "val_acc": float(base["acc"]), "val_f1": float(f1), "val_threshold": float(threshold),
    }


class FoldValidator:
    """Scores a fold's validation set each epoch; saves the weights and predictions of the best."""

    def __init__(self, k: int, rows: pd.DataFrame, loader: torch.utils.data.DataLoader, runtime: Runtime,
                 img_size: int, out: Path, weights_path: Path, stage_hash: str):
        self.k, self.rows, self.loader, self.runtime, self.img_size = k, rows, loader, runtime, img_size
        self.out, self.weights_path, self.stage_hash = out, weights_path, stage_hash
        self.targets = rows["target"].to_numpy().astype(np.float32)
        self.logits = np.zeros(len(rows), dtype=np.float32)

    def evaluate(self, model: torch.nn.Module, epoch: int) -> dict[str, float]:
        self.logits = predict_logits(model, self.loader, self.runtime, self.img_size).numpy()
        return _val_metrics(self.targets, self.logits)

    def save_best(self, model: torch.nn.Module, epoch: int, metrics: dict[str, float]) -> None:
        preds = pd.DataFrame({
            "Id": self.rows["Id"], "fold": self.k, "target": self.rows["target"].astype(int),
            "prob": 1.0 / (1.0 + np.exp(-self.logits)), "logit": self.logits,
        })
        save_csv(self.out / "val_preds.csv", preds)
        save_weights(self.weights_path, model.state_dict(), metadata={"epoch": str(epoch), "stage_hash": self.stage_hash})


def fold_hash(cfg: Config, k: int, fingerprint: str, folds: pd.DataFrame, init_id: str) -> str:
    return stage_hash(
        cfg, ["model", "finetune"],
        extra={"fold": k, "faces": fingerprint, "seed": cfg.run.seed, "init": init_id,
               "folds": folds.to_csv(index=False)},
    )


def _encoder_id(cfg: Config, paths: RunPaths) -> str:
    """What the fold starts from, so a new SSL encoder invalidates finished folds."""
    if cfg.finetune.init != "ssl":
        return cfg.finetune.init
    encoder = Path(cfg.finetune.ssl_encoder) if cfg.finetune.ssl_encoder else paths.encoder
    if not encoder.is_file():
        return "missing"
    done = read_done(encoder.parent)
    return f"ssl:{done.get('hash') if done else encoder.stat().st_size}"


def train_fold(
    cfg: Config, runtime: Runtime, paths: RunPaths, folds: pd.DataFrame, faces: pd.DataFrame, k: int,
    force: bool,
) -> None:
    out = paths.fold(k)
    h = fold_hash(cfg, k, faces_fingerprint(faces), folds, _encoder_id(cfg, paths))
    done = read_done(out)
    if force and runtime.is_main and out.exists():
        shutil.rmtree(out)
    runtime.barrier()
    if not force and done is not None:
        if done.get("hash") == h and paths.fold_weights(k).is_file():
            log.info("fold %d: already finished with these settings, skipped", k)
            return
        raise StaleOutputError(
            f"{out} was finished with other settings or inputs; rerun with --force to retrain, "
            "or use another run.name"
        )

    # Labelled rows are train images; pseudo rows are test images (an Id may exist in both splits).
    by_split = {split: dict(zip(usable_faces(faces, split)["Id"], usable_faces(faces, split)["path"]))
                for split in ("train", "test")}

    def face_path(row: pd.Series) -> str | None:
        return by_split["test" if row["is_pseudo"] else "train"].get(row["Id"])

    train_rows = folds[folds["fold"] != k].copy()
    val_rows = folds[(folds["fold"] == k) & (folds["is_pseudo"] == 0)].copy()
    assert not set(train_rows["Id"][train_rows["is_pseudo"] == 0]) & set(val_rows["Id"]), "fold leak"
    for rows in (train_rows, val_rows):
        rows["path"] = [face_path(r) for _, r in rows.iterrows()]
    dropped = pd.concat([train_rows, val_rows])["path"].isna().sum()
    if dropped:
        log.warning("fold %d: %d image(s) were unreadable at alignment and are left out", k, dropped)
    train_rows = train_rows.dropna(subset=["path"])
    val_rows = val_rows.dropna(subset=["path"]).reset_index(drop=True)
    if len(val_rows) == 0 or len(train_rows) == 0:
        raise PipelineError(f"fold {k}: no usable images in its training or validation part")

    train_set = FaceDataset(list(train_rows["path"]), train_rows["target"].to_numpy())
    val_set = FaceDataset(list(val_rows["path"]), val_rows["target"].to_numpy())
    val_loader = make_loader(val_set, None, runtime, cfg.run.workers, cfg.run.seed, batch_size=cfg.predict.batch_size)

    # Initialise from (seed, fold) alone: a resumed or single-fold run builds the same model.
    seed_everything(derive_seed(cfg.run.seed, "init", k))
    # ImageNet weights only for init=pretrained (for ssl/scratch they would be fetched and overwritten).
    model = build_classifier(dataclasses.replace(cfg.model, pretrained=cfg.finetune.init == "pretrained"))
    _init_backbone(model, cfg, paths)
    augment = build_train_augment(cfg.finetune.aug).to(runtime.device)
    # Self-Blended Images (finetune.aug.sbi > 0) on the clean faces, then the augmentations.
    prepare = with_self_blend(augment.prepare, cfg.finetune.aug.sbi, faces, train_rows)
    smoothing = cfg.finetune.label_smoothing

    def compute_loss(module: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = module(x).float()
        return F.binary_cross_entropy_with_logits(logits, y * (1.0 - smoothing) + 0.5 * smoothing)

    validator = FoldValidator(k, val_rows, val_loader, runtime, cfg.model.img_size, out, paths.fold_weights(k), h)

    spec = LoopSpec(
        name=f"fold{k}", out_dir=out, epochs=cfg.finetune.epochs, batch_size=cfg.finetune.batch_size,
        optim=cfg.finetune.optim, seed=cfg.run.seed + 1000 * (k + 1), stage_hash=h, img_size=cfg.model.img_size,
        workers=cfg.run.workers, save_every=cfg.finetune.save_every,
        ema_decay=cfg.finetune.ema_decay if cfg.finetune.ema else None, compile=cfg.run.compile,
        progress=cfg.run.progress, select_metric=cfg.finetune.select_metric,
    )
    n_pseudo = int(train_rows["is_pseudo"].sum())
    log.info("fold %d/%d: train %d (%d pseudo), val %d, %s", k + 1, cfg.finetune.folds, len(train_rows), n_pseudo,
             len(val_rows), runtime.describe())
    loop = TrainLoop(spec, runtime, model, train_set, compute_loss, prepare=prepare, evaluate=validator.evaluate,
                     on_best=validator.save_best)
    summary = loop.run()
    if runtime.is_main:
        write_done(out, h, **summary, select_metric=cfg.finetune.select_metric)
        log.info("fold %d: done, best %s %.4f at epoch %s", k, cfg.finetune.select_metric,
                 summary["best_value"], summary["best_epoch"])
    runtime.barrier()


# ----------------------------------------------------------------------------- OOF + threshold


def finished_folds(paths: RunPaths, n_folds: int) -> list[int]:
    return [k for k in range(n_folds) if read_done(paths.fold(k)) and paths.fold_weights(k).is_file()]


def write_oof(cfg: Config, paths: RunPaths) -> dict[str, float]:
    """Pool the folds' best-epoch validation predictions; choose one threshold on pooled OOF F1."""
    parts = [pd.read_csv(paths.fold(k) / "val_preds.csv", dtype={"Id": str}) for k in range(cfg.finetune.folds)]
    oof = pd.concat(parts, ignore_index=True)[["Id", "fold", "target", "prob"]]
    if oof["Id"].duplicated().any():
        raise PipelineError("oof: an Id appears in two validation folds")
    save_csv(paths.oof_csv, oof)
    y = oof["target"].to_numpy()
    p = oof["prob"].to_numpy()
    threshold, f1 = best_f1_threshold(y, p)
    metrics = binary_metrics(y, p, threshold=threshold)
    record = {
        "threshold": float(threshold), "oof_f1": float(f1), "oof_auc": _num(metrics["auc"]),
        "oof_logloss": _num(metrics["logloss"]), "oof_acc": _num(metrics["acc"]),
        "n": int(len(oof)), "folds": cfg.finetune.folds,
        "method": "threshold maximizing F1 on pooled out-of-fold probabilities (prob >= threshold -> fake)",
    }
    atomic_write_text(paths.threshold_json, json.dumps(record, indent=2))
    return record


def _num(value: float | None) -> float | None:
    return None if value is None or (isinstance(value, float) and np.isnan(value)) else float(value)


def run_finetune(cfg: Config, runtime: Runtime, paths: RunPaths, force: bool = False) -> None:
    faces = load_faces(cfg)
    folds = prepare_folds(cfg, paths, runtime, force)
    wanted = cfg.finetune.run_folds if cfg.finetune.run_folds is not None else list(range(cfg.finetune.folds))
    for k in wanted:
        if not 0 <= k < cfg.finetune.folds:
            raise PipelineError(f"finetune.run_folds: fold {k} outside 0..{cfg.finetune.folds - 1}")
        train_fold(cfg, runtime, paths, folds, faces, k, force)
        failpoint("fold_end")
    done = finished_folds(paths, cfg.finetune.folds)
    if len(done) < cfg.finetune.folds:
        log.info("finetune: %d/%d folds finished; OOF and threshold wait for the rest", len(done), cfg.finetune.folds)
        return
    if runtime.is_main:
        record = write_oof(cfg, paths)
        log.info("finetune: OOF F1 %.4f AUC %s at threshold %.4f -> %s", record["oof_f1"], record["oof_auc"],
                 record["threshold"], paths.threshold_json)
    runtime.barrier()
