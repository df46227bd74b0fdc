"""Stage 3: k-fold classifier fine-tuning, out-of-fold predictions, one pooled threshold.

Writes under the run directory: ``folds.csv`` (once; reused on resume), per fold
``fold<k>/{last.pt, metrics.jsonl, best.safetensors, done.json, val_preds.csv, calibration.json}``,
and when every fold is finished ``oof.csv`` and ``threshold.json``. The out-of-fold predictions are
the best epoch's weights on the fold's validation faces with the prediction TTA views, calibrated
per fold (``trained.py``): the threshold is fitted on what prediction produces.

Pseudo-labelled rows (``data.pseudo_labels``) get fold -1: they are in the training part of their
fold (per-fold diamonds) or of every fold, and in no validation fold, so OOF metrics and the
threshold see original labels only.

Self-made fakes (stage-1 manifest rows with ``made_from``: speech's ``audio.self_fakes``) are
labelled fake and take their source's fold, so no fake of a validation clip ever trains its fold.
They are validated with it too, but ``oof.csv`` marks them (``made_by``) and the OOF figures and the
threshold are computed on the dataset's own clips, the self-made ones reported apart (trained.py).
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from .artifacts import (
    RunPaths,
    faces_fingerprint,
    fold_rows,
    load_faces,
    per_id,
    recorded_stage1_hashes,
    stage1_hash,
    stage1_out,
)
from .augment import InputFit, augment_for, input_fit, train_jpeg
from .checkpoint import load_weights, read_done, save_weights, write_done
from .config import Config, stage_hash
from .dataset import CodecCopyPick, FaceDataset, load_layout, make_folds, read_pseudo_labels
from .engine import ComputeLoss, LoopSpec, TrainLoop, make_loader, predict_logits
from .errors import CheckpointError, PipelineError, StaleOutputError
from .faults import failpoint
from .images import atomic_write_text, save_csv
from .metrics import best_f1_threshold, binary_metrics
from .model import DeepfakeClassifier, build_classifier, load_backbone_state
from .runtime import Runtime, derive_seed, seed_everything
from .sbi import with_self_blend
from .trained import calibrate_fold, finished_folds, pool_oof, reference_mask

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- folds


def fold_seed(cfg: Config) -> int:
    """The seed the folds are drawn with: ``finetune.fold_seed``, else ``run.seed``."""
    return cfg.run.seed if cfg.finetune.fold_seed is None else cfg.finetune.fold_seed


def folds_hash(cfg: Config, labels: pd.DataFrame, pseudo: pd.DataFrame | None,
               originals: pd.DataFrame | None = None, made: pd.DataFrame | None = None) -> str:
    """What the folds depend on: their number, the seed, the labels and each row's group (the values,
    not only the column's name), the pseudo labels, the folds diamonds were mined with and the
    self-made fakes."""
    extra = {
        "folds": cfg.finetune.folds, "seed": fold_seed(cfg), "group": cfg.finetune.group_column,
        "labels": labels[[c for c in ("Id", "target", "group") if c in labels.columns]].to_csv(index=False),
        "pseudo": None if pseudo is None else pseudo.to_csv(index=False),
        "mined_folds": None if originals is None else originals.to_csv(index=False),
    }
    if made is not None and len(made):  # (absent otherwise: runs without them keep their hash)
        extra["self_made"] = made.to_csv(index=False)
    return stage_hash(cfg, [], extra=extra)


def self_made_fakes(cfg: Config, labels: pd.DataFrame, faces: pd.DataFrame | None = None) -> pd.DataFrame:
    """The stage-1 manifest's self-made fakes of labelled real clips: Id, made_from, made_by (empty
    without a manifest or without fakes). Fakes of clips that are not real training clips of this
    run (a stage 1 made with other labels) are left out with a warning. ``faces``: the manifest,
    when the caller has read it already."""
    columns = ["Id", "made_from", "made_by"]
    if faces is None:
        if not (stage1_out(cfg) / "faces.csv").is_file():
            return pd.DataFrame(columns=columns)
        faces = load_faces(cfg)
    if "made_from" not in faces.columns:
        return pd.DataFrame(columns=columns)
    made = faces[(faces["split"] == "train") & (faces["made_from"] != "")][columns].drop_duplicates("Id")
    real = set(labels.loc[labels["target"] == 0, "Id"])
    stray = ~made["made_from"].isin(real)
    if stray.any():
        log.warning("finetune: %d self-made fake(s) of clips that are not real training clips here (e.g. %r) are "
                    "left out: rerun stage 1 with this run's labels", int(stray.sum()), made.loc[stray, "Id"].iloc[0])
    return made[~stray].sort_values("Id").reset_index(drop=True)


def with_self_made(folds: pd.DataFrame, made: pd.DataFrame) -> pd.DataFrame:
    """``folds`` plus one fake row per self-made fake, in its source's fold and group (``made_by``
    names the method; empty for every other row)."""
    folds = folds.assign(made_by="")
    source = folds[folds["is_pseudo"] == 0].set_index("Id")
    rows = pd.DataFrame({"Id": made["Id"].to_numpy(), "target": 1,
                         "fold": source.loc[made["made_from"], "fold"].to_numpy(), "is_pseudo": 0, "pseudo_fold": -1,
                         "made_by": made["made_by"].to_numpy()})
    if "group" in source.columns:
        rows["group"] = source.loc[made["made_from"], "group"].to_numpy()
    return pd.concat([folds, rows[[c for c in folds.columns if c in rows.columns]]], ignore_index=True)


def mined_folds(labels: pd.DataFrame, originals: pd.DataFrame, n_folds: int, source: str) -> pd.DataFrame:
    """The labelled rows' folds as per-fold diamonds were mined with them (checked against ``labels``)."""
    table = originals.set_index("Id")
    missing = sorted(set(labels["Id"]) - set(table.index))
    if missing or len(table) != len(labels):
        raise PipelineError(f"{source}: its original rows are not this run's labelled rows (e.g. "
                            f"{(missing or sorted(set(table.index) - set(labels['Id'])) or ['?'])[0]!r}): per-fold "
                            "diamonds need the folds they were mined with")
    if (table.loc[labels["Id"], "target"].to_numpy() != labels["target"].to_numpy()).any():
        raise PipelineError(f"{source}: its original labels differ from this run's labels")
    folds = table.loc[labels["Id"], "fold"].to_numpy()
    if folds.min() < 0 or folds.max() >= n_folds or len(set(folds)) != n_folds:
        raise PipelineError(f"{source}: mined with {len(set(folds))} folds, finetune.folds is {n_folds}")
    out = labels[["Id", "target"]].copy()
    out["fold"] = folds
    if "group" in labels.columns:
        out["group"] = labels["group"].to_numpy()
    return out


def prepare_folds(cfg: Config, paths: RunPaths, runtime: Runtime, force: bool,
                  faces: pd.DataFrame | None = None) -> pd.DataFrame:
    """Build ``folds.csv`` (Id, target, fold, is_pseudo, pseudo_fold) once; reuse it while its inputs match.

    With per-fold diamonds (``make_diamonds.py`` default) the labelled rows keep the folds the
    diamonds were mined with, and each pseudo row joins only the fold whose model never saw that
    fold's validation rows: round-2 OOF figures stay honest.
    """
    layout = load_layout(cfg.data, check_images=False, group_column=cfg.finetune.group_column)
    labels = layout.train.frame
    pseudo = originals = None
    if cfg.data.pseudo_labels:
        pseudo, originals = read_pseudo_labels(Path(cfg.data.pseudo_labels), set(labels["Id"]),
                                               set(layout.test.frame["Id"]))
        per_fold = int((pseudo["pseudo_fold"] >= 0).sum())
        log.info("finetune: %d pseudo-labelled rows (%d fake, %d real) from %s: %d for one fold each, %d for every "
                 "fold", len(pseudo), int(pseudo["target"].sum()), int((pseudo["target"] == 0).sum()),
                 cfg.data.pseudo_labels, per_fold, len(pseudo) - per_fold)
        if len(pseudo) - per_fold:
            log.warning("finetune: %d pseudo rows were mined by a whole ensemble that saw every labelled row: "
                        "this run's OOF figures are optimistic; compare rounds on test figures", len(pseudo) - per_fold)
    made = self_made_fakes(cfg, labels, faces)
    if len(made):
        log.info("finetune: %d self-made fake(s) (%s) of %d real clip(s), each in its source's fold", len(made),
                 ", ".join(f"{m} {n}" for m, n in made["made_by"].value_counts().sort_index().items()),
                 made["made_from"].nunique())
    h = folds_hash(cfg, labels, pseudo, originals, made)
    path = paths.folds_csv
    hash_path = path.with_suffix(".hash")
    if path.is_file() and not force:
        recorded = hash_path.read_text().strip() if hash_path.is_file() else None
        if recorded != h:
            raise StaleOutputError(
                f"{path} was made from other labels, pseudo labels or fold settings; "
                "rerun with --force to rebuild the folds (and retrain every fold), or use another run.name"
            )
        folds = pd.read_csv(path, dtype={"Id": str}, keep_default_na=False)
        if "made_by" in folds.columns:
            folds["made_by"] = folds["made_by"].astype(str)
    else:
        if originals is not None:
            folds = mined_folds(labels, originals, cfg.finetune.folds, str(cfg.data.pseudo_labels))
            log.info("finetune: folds taken from %s (the folds its diamonds were mined with)", cfg.data.pseudo_labels)
        else:
            folds = make_folds(labels, cfg.finetune.folds, fold_seed(cfg), real_only=len(made) > 0)
        folds["is_pseudo"] = 0
        folds["pseudo_fold"] = -1
        if pseudo is not None:
            extra = pseudo.assign(fold=-1, is_pseudo=1)
            folds = pd.concat([folds, extra], ignore_index=True)
        if len(made):
            folds = with_self_made(folds, made)
        if runtime.is_main:
            save_csv(path, folds)
            atomic_write_text(hash_path, h + "\n")
        runtime.barrier()
    assert not ((folds["is_pseudo"] == 1) & (folds["fold"] >= 0)).any(), "pseudo rows must never validate"
    check_groups(folds, labels, str(path))
    return folds


def check_groups(folds: pd.DataFrame, labels: pd.DataFrame, source: str) -> None:
    """PipelineError when a group (``finetune.group_column``: a video, a speaker) has labelled rows in
    two folds: its rows would train a fold that validates on its other rows. Inherited folds (per-fold
    diamonds mined by a round that grouped otherwise, or not at all) are checked like new ones."""
    if "group" not in labels.columns:
        return
    labelled = folds[folds["is_pseudo"] == 0][["Id", "fold"]]
    table = labelled.merge(labels[["Id", "group"]], on="Id", how="left")
    spread = table.groupby("group")["fold"].nunique()
    crossing = spread[spread > 1]
    if len(crossing):
        group = crossing.index[0]
        where = sorted(table.loc[table["group"] == group, "fold"].unique().tolist())
        raise PipelineError(
            f"{source}: {len(crossing)} group(s) of finetune.group_column have rows in several folds (e.g. "
            f"{group!r} in folds {where}): those folds would validate on rows their own training saw. Folds "
            "inherited from a round-1 diamonds file keep round 1's grouping: mine it from a run with the same "
            "group_column, or rebuild the folds (--force) without data.pseudo_labels")


# ----------------------------------------------------------------------------- one fold


def _init_backbone(model: DeepfakeClassifier, cfg: Config, paths: RunPaths) -> None:
    init = cfg.finetune.init
    if init == "scratch" or init == "pretrained":
        source = "scratch" if init == "scratch" else (cfg.model.weights or "timm's pretrained weights")
        log.info("finetune: backbone initialised from %s", source)
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
    """Scores a fold's validation set each epoch (one view) and saves the weights of the best epoch.

    The out-of-fold predictions are made once the fold is done, with the best weights and the
    prediction views (:func:`~.trained.calibrate_fold`)."""

    def __init__(self, rows: pd.DataFrame, loader: torch.utils.data.DataLoader, runtime: Runtime,
                 fit: InputFit, weights_path: Path, stage_hash: str):
        self.rows, self.loader, self.runtime, self.fit = rows, loader, runtime, fit
        self.weights_path, self.stage_hash = weights_path, stage_hash
        ids, _ = per_id(rows["Id"], np.zeros(len(rows)))
        by_id = rows.drop_duplicates("Id").set_index("Id").loc[ids]
        self.targets = by_id["target"].to_numpy().astype(np.float32)
        self.selected = reference_mask(by_id)  # the epoch is chosen as the OOF figures are made

    def evaluate(self, model: torch.nn.Module, epoch: int) -> dict[str, float]:
        """Metrics per Id: a clip's windows are scored by the mean of their logits."""
        _, logits = per_id(self.rows["Id"], predict_logits(model, self.loader, self.runtime, self.fit).numpy())
        return _val_metrics(self.targets[self.selected], logits.astype(np.float32)[self.selected])

    def save_best(self, model: torch.nn.Module, epoch: int, metrics: dict[str, float]) -> None:
        save_weights(self.weights_path, model.state_dict(), metadata={"epoch": str(epoch), "stage_hash": self.stage_hash})


def classification_loss(smoothing: float) -> ComputeLoss:
    """BCE on the logit (in float32) against targets smoothed towards 0.5 by ``smoothing``."""

    def compute_loss(module: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = module(x).float()
        return F.binary_cross_entropy_with_logits(logits, y * (1.0 - smoothing) + 0.5 * smoothing)

    return compute_loss


def _batch_groups(cfg: Config, train_rows: pd.DataFrame) -> list[str] | None:
    """Each training row's group for ``finetune.group_batches`` (pseudo-labelled rows: one group each)."""
    if not cfg.finetune.group_batches:
        return None
    if "group" not in train_rows.columns:
        raise PipelineError("finetune.group_batches needs finetune.group_column: the labels have no groups")
    groups = train_rows["group"].fillna("").astype(str)
    # No group (pseudo-labelled rows: NaN when the folds are new, "" once folds.csv is read back; a blank
    # cell in the labels): each row alone, never one block of all of them.
    own = "row:" + train_rows["Id"].astype(str) + ":" + pd.Series(range(len(train_rows)), index=train_rows.index).astype(str)
    return groups.where(groups != "", own).tolist()


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

    train_rows, val_rows = fold_rows(folds, faces, k)
    if len(val_rows) == 0 or len(train_rows) == 0:
        raise PipelineError(f"fold {k}: no usable images in its training or validation part")

    train_set = FaceDataset(list(train_rows["path"]), train_rows["target"].to_numpy(),
                            jpeg=train_jpeg(cfg.finetune.aug, derive_seed(cfg.run.seed, "fold", k)),
                            copies=list(train_rows["copies"].fillna("")) if "copies" in train_rows else None,
                            codec=CodecCopyPick(cfg.finetune.aug.codec, derive_seed(cfg.run.seed, "codec", k)))
    val_set = FaceDataset(list(val_rows["path"]), val_rows["target"].to_numpy())
    val_loader = make_loader(val_set, None, runtime, cfg.run.workers, cfg.run.seed, batch_size=cfg.predict.batch_size)

    # Initialise from (seed, fold) alone: a resumed or single-fold run builds the same model.
    seed_everything(derive_seed(cfg.run.seed, "init", k))
    # ImageNet weights only for init=pretrained (for ssl/scratch they would be fetched and overwritten).
    model = build_classifier(dataclasses.replace(cfg.model, pretrained=cfg.finetune.init == "pretrained"))
    _init_backbone(model, cfg, paths)
    model.freeze_bn = cfg.finetune.freeze_bn
    model.freeze_stages(cfg.finetune.freeze_stages)
    augment = augment_for(cfg, cfg.finetune.aug).to(runtime.device)
    fit = input_fit(cfg.model)
    # Self-Blended Images (finetune.aug.sbi > 0) on the whole aligned faces (the landmarks are theirs),
    # then the input fit (resize, or a random native-resolution window), then the augmentations.
    prepare = with_self_blend(fit.then(augment.prepare), cfg.finetune.aug.sbi, faces, train_rows)
    compute_loss = classification_loss(cfg.finetune.label_smoothing)

    validator = FoldValidator(val_rows, val_loader, runtime, fit, paths.fold_weights(k), h)

    spec = LoopSpec(
        name=f"fold{k}", out_dir=out, epochs=cfg.finetune.epochs, batch_size=cfg.finetune.batch_size,
        optim=cfg.finetune.optim, seed=cfg.run.seed + 1000 * (k + 1), stage_hash=h,
        workers=cfg.run.workers, save_every=cfg.finetune.save_every,
        ema_decay=cfg.finetune.ema_decay if cfg.finetune.ema else None, compile=cfg.run.compile, compile_backend=cfg.run.compile_backend,
        progress=cfg.run.progress, select_metric=cfg.finetune.select_metric,
        groups=_batch_groups(cfg, train_rows),
    )
    n_pseudo = int(train_rows["is_pseudo"].sum())
    log.info("fold %d (of %d): train %d (%d pseudo), val %d, %s", k, cfg.finetune.folds, len(train_rows), n_pseudo,
             len(val_rows), runtime.describe())
    loop = TrainLoop(spec, runtime, model, train_set, compute_loss, prepare=prepare, evaluate=validator.evaluate,
                     on_best=validator.save_best)
    summary = loop.run()
    if runtime.is_main:
        if summary["best_epoch"] is None:
            raise PipelineError(f"fold {k}: no epoch gave a finite {cfg.finetune.select_metric}; nothing to keep")
        # What the model learned from, for prediction to check its test images against (trained.py).
        stage1 = sorted(recorded_stage1_hashes(faces[faces["split"] == "train"])) or [stage1_hash(cfg)]
        write_done(out, h, **summary, select_metric=cfg.finetune.select_metric, stage1_hashes=stage1)
        calibration, _ = calibrate_fold(cfg, paths, runtime, k)
        log.info("fold %d (of %d): done, best %s %.4f at epoch %d of %d; calibration %.3f * logit %+.3f", k,
                 cfg.finetune.folds, cfg.finetune.select_metric, summary["best_value"], summary["best_epoch"] + 1,
                 cfg.finetune.epochs, calibration.a, calibration.b)
    runtime.barrier()


# ----------------------------------------------------------------------------- OOF + threshold


def run_finetune(cfg: Config, runtime: Runtime, paths: RunPaths, force: bool = False) -> None:
    faces = load_faces(cfg)
    folds = prepare_folds(cfg, paths, runtime, force, faces)
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
        record = pool_oof(cfg, paths, runtime)
        insample = record.get("insample") or {}
        log.info("finetune: OOF (cross-fitted calibration) AUC %.4f, F1 %.4f at threshold %.4f (%.4f with each "
                 "fold's threshold chosen on the others; %.1f%% called fake); in-sample calibration: AUC %.4f, "
                 "F1 %.4f -> %s", record["oof_auc"] or float("nan"), record["oof_f1"], record["threshold"],
                 record["oof_f1_heldout"], 100 * record["oof_fake_share"],
                 insample.get("oof_auc") or float("nan"), insample.get("oof_f1", float("nan")), paths.threshold_json)
    runtime.barrier()
