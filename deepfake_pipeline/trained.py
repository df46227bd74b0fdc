"""A trained run, reopened: its saved config, finished folds, fold models, calibration and threshold.

Everything that uses a run's models after training comes through here: the predict stage, the
fine-tuning stage's out-of-fold step, diamonds, safe inference, export and the quality harness.
Stages import this module, never each other.

Calibration. A fold model's raw logits say little about probabilities: label smoothing caps them
(0.1 trains towards 0.95/0.05), EMA and the length of training change their scale, and every fold
has its own. So each fold model gets a Platt scaling, ``a * logit + b``, fitted on that fold's own
validation faces, predicted exactly as test faces are (the ``predict.tta`` views, the input fit).
The fold ensemble averages the calibrated log-odds; ``test_probs.csv`` and the diamonds
thresholds are in these terms, and whenever ``predict.tta`` changes the calibrations are refitted
(a pass over the validation faces, no retraining).

Honest out-of-fold figures. A calibration fitted on the very faces it then scores flatters them (it
has seen their labels), so the out-of-fold probabilities are *cross-fitted*: each validation face
is calibrated by a Platt fit on the other parts of its fold (``CROSSFIT_SPLITS`` parts, whole groups
where the folds have groups), never on itself. ``oof.csv``, the OOF AUC/F1/log-loss and the
threshold all come from these; the in-sample figures are kept beside them (``prob_insample``,
``threshold.json`` ``insample``) so older runs can be read. A fold whose logits rank its validation
faces worse than chance (Platt slope <= 0) is never flipped: it votes its validation base rate,
a constant, and the log says so.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .artifacts import RunPaths, fold_rows, load_faces, per_id, stage1_hash, stage1_mismatch, stage1_out
from .augment import input_fit, parse_tta
from .checkpoint import load_weights, read_done
from .config import Config, load_config
from .dataset import FaceDataset
from .engine import make_loader, predict_logits
from .errors import CheckpointError, PipelineError, StaleOutputError
from .faults import failpoint
from .images import atomic_write_text, save_csv
from .metrics import best_f1_threshold, binary_metrics, label_metrics, real_fpr_threshold
from .model import build_classifier
from .runtime import Runtime, amp_policy, pick_device, use_channels_last

log = logging.getLogger(__name__)

RUN_CONFIG_NAME = "config.yaml"
CALIBRATION_NAME = "calibration.json"
# Platt scaling's L2 penalty (sklearn's C): keeps the slope finite when a fold separates its
# validation faces perfectly.
PLATT_C = 1.0
CROSSFIT_SPLITS = 5  # parts of a fold's validation faces for the cross-fitted OOF calibration
# Version of how calibrations and the OOF predictions are made: part of every calibration's key, so
# a run calibrated by an older rule is refitted (a pass over the validation faces), never reused.
CALIBRATION_VERSION = 2  # 2: slopes <= 0 give the base rate; cross-fitted OOF
MAX_FITS = 8  # calibrations kept per fold (one per set of TTA views asked for)


# ----------------------------------------------------------------------------- the saved config


def run_config_path(run_dir: str | Path) -> Path:
    """``<run>/config.yaml``, the resolved config train.py saved; PipelineError when missing."""
    path = Path(run_dir) / RUN_CONFIG_NAME
    if not path.is_file():
        raise PipelineError(f"{path} not found: --run must be a run directory written by train.py (weights/<run>)")
    return path


def load_run_config(run_dir: str | Path, overrides: list[str] | tuple[str, ...] = (),
                    config: str | Path | None = None) -> Config:
    """The run's saved config (or ``config``) with ``overrides``; ``run.dir`` points at ``run_dir``
    wherever the run was trained (runs can be moved or copied)."""
    cfg = load_config(config if config is not None else run_config_path(run_dir), overrides)
    cfg.run.dir = str(run_dir)
    return cfg


def run_settings_hashes(run_dir: str | Path) -> dict[str, str]:
    """The ``# <stage> settings hash: <hex>`` header lines of a run's saved config."""
    hashes = {}
    for line in run_config_path(run_dir).read_text().splitlines():
        if not line.startswith("#"):
            break
        name, sep, value = line.lstrip("# ").partition(" settings hash: ")
        if sep:
            hashes[name.strip()] = value.strip()
    return hashes


def inference_runtime(device: str = "auto", amp: str = "auto", channels_last: str | bool = "cuda") -> Runtime:
    """A single-process runtime for inference; asked-for CUDA that is not there falls back to the CPU."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        log.warning("device %r asked for, but CUDA is not available: running on the CPU", device)
        device = "cpu"
    dev = pick_device(device)
    dtype, _ = amp_policy(dev, amp)
    return Runtime(dev, amp_dtype=dtype, channels_last=use_channels_last(channels_last, dev))


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Overflow-free logistic function."""
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(logits, dtype=np.float64)))


# ----------------------------------------------------------------------------- folds and models


def finished_folds(paths: RunPaths, n_folds: int) -> list[int]:
    """Folds with ``done.json`` and ``best.safetensors``."""
    return [k for k in range(n_folds) if read_done(paths.fold(k)) and paths.fold_weights(k).is_file()]


def load_fold_model(cfg: Config, paths: RunPaths, k: int, runtime: Runtime) -> torch.nn.Module:
    # The fold's weights replace everything: never fetch ImageNet weights just to overwrite them.
    model = build_classifier(dataclasses.replace(cfg.model, pretrained=False, pretrained_file=None))
    state = load_weights(paths.fold_weights(k))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{paths.fold_weights(k)} does not match model {cfg.model.backbone} "
            f"(missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]})"
        )
    model = model.to(runtime.device).eval()
    if runtime.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def trained_stage1_hashes(cfg: Config, paths: RunPaths, folds: list[int]) -> set[str]:
    """The stage-1 settings hashes of the images the fold models were trained on (their
    ``done.json``); this config's stage-1 hash for folds that predate the record."""
    found: set[str] = set()
    for k in folds:
        found.update((read_done(paths.fold(k)) or {}).get("stage1_hashes") or [])
    return found or {stage1_hash(cfg)}


def check_test_stage1(cfg: Config, paths: RunPaths, folds: list[int], rows: pd.DataFrame, what: str) -> None:
    """StaleOutputError when test images in ``rows`` were made with other stage-1 settings than the
    images the fold models learned from: the models would judge inputs unlike their training data."""
    stale = stage1_mismatch(rows, trained_stage1_hashes(cfg, paths, folds))
    if stale.any():
        ids = rows.loc[stale, "Id"].drop_duplicates()
        cli = "prepare_audio.py" if cfg.data.modality == "audio" else "align_faces.py"
        raise StaleOutputError(
            f"{what}: {len(ids)} test input(s) in {stage1_out(cfg) / 'faces.csv'} (e.g. {ids.iloc[0]!r}) were made "
            f"with other stage-1 settings than the images the fold models were trained on; rerun {cli} with the "
            "run's config (it redoes them), or predict with safe_inference.py (it redoes them on the fly)")


def fold_logits(cfg: Config, model: torch.nn.Module, runtime: Runtime, image_paths: list[str],
                tta: list[str] | None = None, batch_size: int | None = None, desc: str = "predict") -> np.ndarray:
    """Raw logits of one fold model, mean over the TTA views, for aligned face files (float64)."""
    views = parse_tta(cfg.predict.tta if tta is None else tta)
    loader = make_loader(FaceDataset(image_paths), None, runtime, cfg.run.workers, cfg.run.seed,
                         batch_size=batch_size or cfg.predict.batch_size)
    return predict_logits(model, loader, runtime, input_fit(cfg.model), views, progress=cfg.run.progress,
                          desc=desc).double().numpy()


# ----------------------------------------------------------------------------- calibration


@dataclass(frozen=True)
class Calibration:
    """Platt scaling of one fold model: calibrated log-odds = ``a * logit + b``. ``a == 0``: the
    model carries no information on its validation faces and says their base rate whatever it sees."""

    a: float = 1.0
    b: float = 0.0

    def __call__(self, logits: np.ndarray) -> np.ndarray:
        return self.a * np.asarray(logits, dtype=np.float64) + self.b

    @property
    def flat(self) -> bool:
        return self.a == 0.0


def _logit(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return float(np.log(p / (1 - p)))


def fit_platt(logits: np.ndarray, targets: np.ndarray) -> Calibration:
    """Logistic regression of the targets on the logits (L2 ``PLATT_C``); identity for a single class.

    A slope <= 0 means the logits rank these faces no better than chance (or worse): a fitted
    negative slope would flip the model's vote, so the fit is constrained to ``a >= 0``, whose
    answer is then ``a = 0`` and the base rate's log-odds (:attr:`Calibration.flat`)."""
    from sklearn.linear_model import LogisticRegression

    y = np.asarray(targets).astype(int)
    if y.min() == y.max():
        return Calibration()
    fit = LogisticRegression(C=PLATT_C, max_iter=1000).fit(np.asarray(logits, np.float64).reshape(-1, 1), y)
    a = float(fit.coef_[0, 0])
    if a <= 0.0:
        return Calibration(0.0, _logit(float(y.mean())))
    return Calibration(a, float(fit.intercept_[0]))


def crossfit_logodds(logits: np.ndarray, targets: np.ndarray, groups: np.ndarray | None = None,
                     splits: int = CROSSFIT_SPLITS, seed: int = 0) -> np.ndarray:
    """Calibrated log-odds of each item from a Platt fit on the *other* items only.

    The items are cut into ``splits`` parts (stratified by class; whole groups together when
    ``groups`` is given, so a video's or speaker's items never calibrate each other); each part is
    calibrated by :func:`fit_platt` on the rest. With fewer items of a class than parts, the parts
    are as many as that class has items (at least 2; one item alone: the identity)."""
    from sklearn.model_selection import KFold, StratifiedGroupKFold, StratifiedKFold

    x = np.asarray(logits, dtype=np.float64)
    y = np.asarray(targets).astype(int)
    out = np.empty_like(x)
    n_min = int(min(np.sum(y == 0), np.sum(y == 1)))
    if len(x) < 2:
        return x.copy()
    if groups is not None and len(set(groups)) >= 2:
        n_groups = len(set(groups))
        k = max(2, min(splits, n_groups, n_min if n_min >= 2 else n_groups))
        parts = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed).split(x, y, groups)
    elif n_min >= 2:
        parts = StratifiedKFold(n_splits=min(splits, n_min), shuffle=True, random_state=seed).split(x, y)
    else:
        parts = KFold(n_splits=min(splits, len(x)), shuffle=True, random_state=seed).split(x)
    for fit_idx, apply_idx in parts:
        out[apply_idx] = fit_platt(x[fit_idx], y[fit_idx])(x[apply_idx])
    return out


def reference_mask(rows: pd.DataFrame) -> np.ndarray:
    """Which validation items the figures, calibrations and the threshold are made on: the dataset's
    own items when they hold both classes, self-made fakes (``made_by``) left out; all items when
    the real fakes are missing (a run trained on real clips and self-made fakes alone)."""
    made = rows["made_by"].fillna("").astype(str).to_numpy() != "" if "made_by" in rows.columns \
        else np.zeros(len(rows), dtype=bool)
    own = ~made
    targets = rows["target"].to_numpy()
    return own if len(set(targets[own].tolist())) == 2 else np.ones(len(rows), dtype=bool)


def _calibration_key(cfg: Config, paths: RunPaths, k: int) -> dict[str, object]:
    """What a fold's calibration depends on: its finished weights and how prediction sees a face."""
    done = read_done(paths.fold(k)) or {}
    return {"fold_hash": done.get("hash"), "tta": list(cfg.predict.tta), "fit": cfg.model.fit,
            "img_size": cfg.model.img_size, "version": CALIBRATION_VERSION}


def _calibration_record(paths: RunPaths, k: int) -> dict:
    """``fold<k>/calibration.json``: ``fits`` (one per key: TTA views, weights) and ``val_preds_key``,
    the key of the predictions in ``val_preds.csv``; empty when missing or unreadable."""
    try:
        record = json.loads((paths.fold(k) / CALIBRATION_NAME).read_text())
        return record if isinstance(record.get("fits"), list) else {}
    except (OSError, ValueError, AttributeError):
        return {}


def read_calibration(cfg: Config, paths: RunPaths, k: int) -> Calibration | None:
    """The fold's calibration fitted for these weights and TTA views, else None."""
    key = _calibration_key(cfg, paths, k)
    for fit in _calibration_record(paths, k).get("fits", []):
        if fit.get("key") == key:
            return Calibration(float(fit["a"]), float(fit["b"]))
    return None


def calibrate_fold(cfg: Config, paths: RunPaths, runtime: Runtime, k: int, model: torch.nn.Module | None = None,
                   write_preds: bool = True) -> tuple[Calibration, pd.DataFrame]:
    """Predict fold ``k``'s validation faces as prediction would (``predict.tta``), fit its calibration and
    record it in ``fold<k>/calibration.json``; with ``write_preds`` also write ``val_preds.csv`` (Id,
    fold, target, logit, prob = cross-fitted calibrated probability, prob_insample = with the fold's
    own calibration): the fold's share of the out-of-fold predictions."""
    folds = pd.read_csv(paths.folds_csv, dtype={"Id": str})
    _, val_rows = fold_rows(folds, load_faces(cfg), k)
    if len(val_rows) == 0:
        raise PipelineError(f"fold {k}: no usable validation faces to calibrate on")
    if model is None:
        model = load_fold_model(cfg, paths, k, runtime)
    ids, logits = per_id(val_rows["Id"], fold_logits(cfg, model, runtime, list(val_rows["path"]),
                                                     desc=f"OOF fold {k}"))
    by_id = val_rows.drop_duplicates("Id").set_index("Id").loc[ids]
    targets = by_id["target"].to_numpy().astype(int)
    groups = by_id["group"].astype(str).to_numpy() if "group" in by_id.columns else None
    made_by = by_id["made_by"].fillna("").astype(str).to_numpy() if "made_by" in by_id.columns else np.full(len(ids), "")
    ref = reference_mask(by_id)  # self-made fakes are calibrated, never calibrate
    calibration = fit_platt(logits[ref], targets[ref])
    if calibration.flat:
        log.warning("fold %d: its logits rank its validation %s no better than chance (Platt slope <= 0): it "
                    "votes their base rate %.3f, a constant, never its flipped logit", k, _items(cfg),
                    float(targets.mean()))
    logodds = calibration(logits)
    logodds[ref] = crossfit_logodds(logits[ref], targets[ref], None if groups is None else groups[ref],
                                    seed=cfg.run.seed + k)
    preds = pd.DataFrame({"Id": ids, "fold": k, "target": targets, "logit": logits, "prob": sigmoid(logodds),
                          "prob_insample": sigmoid(calibration(logits)), "made_by": made_by})
    key = _calibration_key(cfg, paths, k)
    record = _calibration_record(paths, k)
    fits = [f for f in record.get("fits", []) if f.get("key") != key][-(MAX_FITS - 1):]
    fits.append({"key": key, "a": calibration.a, "b": calibration.b, "n": int(len(preds)), "flat": calibration.flat})
    record.update(fits=fits, method="Platt scaling on this fold's validation items, predicted with the TTA views "
                                    "of its key (slope >= 0); val_preds.csv prob: cross-fitted in "
                                    f"{CROSSFIT_SPLITS} parts of them, prob_insample: this fit")
    if write_preds:
        save_csv(paths.fold(k) / "val_preds.csv", preds)
        record["val_preds_key"] = key
    atomic_write_text(paths.fold(k) / CALIBRATION_NAME, json.dumps(record, indent=2))
    return calibration, preds


def saved_calibration(cfg: Config, paths: RunPaths, k: int) -> Calibration | None:
    """The fold's calibration for these views, or else the one for its out-of-fold predictions (with a
    warning; None when there is none): for inference that cannot refit (``safe_inference.py``)."""
    current = read_calibration(cfg, paths, k)
    if current is not None:
        return current
    record = _calibration_record(paths, k)
    for fit in record.get("fits", []):
        if fit.get("key") == record.get("val_preds_key"):
            log.warning("fold %d: no calibration for TTA %s; using the one fitted for %s", k,
                        ",".join(cfg.predict.tta), ",".join(fit["key"].get("tta", [])))
            return Calibration(float(fit["a"]), float(fit["b"]))
    return None


def fold_calibration(cfg: Config, paths: RunPaths, runtime: Runtime, k: int) -> Calibration:
    """The fold's calibration for these weights and views, fitted now when there is none."""
    found = read_calibration(cfg, paths, k)
    if found is not None:
        return found
    log.info("fold %d: fitting its calibration on its validation faces (TTA %s)", k, ",".join(cfg.predict.tta))
    return calibrate_fold(cfg, paths, runtime, k, write_preds=False)[0]


def _items(cfg: Config) -> str:
    return "clips" if cfg.data.modality == "audio" else "faces"


def _val_preds_current(cfg: Config, paths: RunPaths, k: int) -> bool:
    record = _calibration_record(paths, k)
    return (record.get("val_preds_key") == _calibration_key(cfg, paths, k)
            and (paths.fold(k) / "val_preds.csv").is_file() and read_calibration(cfg, paths, k) is not None)


# ----------------------------------------------------------------------------- OOF and threshold


def pool_oof(cfg: Config, paths: RunPaths, runtime: Runtime) -> dict[str, object]:
    """``oof.csv`` from every fold's validation predictions and ``threshold.json``: the threshold
    maximising F1 on the pooled cross-fitted probabilities. Folds whose calibration is stale are
    refitted first."""
    parts = []
    for k in range(cfg.finetune.folds):
        if _val_preds_current(cfg, paths, k):
            part = pd.read_csv(paths.fold(k) / "val_preds.csv", dtype={"Id": str}, keep_default_na=False)
            parts.append(part.assign(made_by=part["made_by"].astype(str)) if "made_by" in part else part.assign(made_by=""))
        else:
            log.info("fold %d: out-of-fold predictions with TTA %s", k, ",".join(cfg.predict.tta))
            parts.append(calibrate_fold(cfg, paths, runtime, k)[1])
    oof = pd.concat(parts, ignore_index=True)[OOF_COLUMNS]
    if oof["Id"].duplicated().any():
        raise PipelineError("oof: an Id appears in two validation folds")
    save_csv(paths.oof_csv, oof)
    record = {**oof_figures(oof, cfg.finetune.max_real_fpr), "folds": cfg.finetune.folds, "tta": list(cfg.predict.tta),
              "crossfit_splits": CROSSFIT_SPLITS}
    atomic_write_text(paths.threshold_json, json.dumps(record, indent=2))
    return record


OOF_COLUMNS = ["Id", "fold", "target", "logit", "prob", "prob_insample", "made_by"]


def choose_threshold(y: np.ndarray, p: np.ndarray, max_real_fpr: float | None = None) -> float:
    """The threshold maximising F1 of ``p >= t``; with ``max_real_fpr``, at most the level that this
    share of the real items (``y == 0``) reach (``finetune.max_real_fpr``: fakes of a generator the
    training never saw, which score below the training fakes but above the reals, are still called)."""
    threshold = best_f1_threshold(y, p)[0]
    if max_real_fpr is not None and (y == 0).any():  # no real item: no share of them to keep to
        threshold = min(threshold, real_fpr_threshold(y, p, max_real_fpr))
    return threshold


def threshold_rule(max_real_fpr: float | None) -> str:
    """How the threshold was chosen, in words, for warnings and records."""
    if max_real_fpr is None:
        return "the OOF F1 threshold"
    return (f"the OOF threshold (F1, capped where {100 * max_real_fpr:g}% of the OOF real items are called fake: "
            "finetune.max_real_fpr)")


def oof_figures(oof: pd.DataFrame, max_real_fpr: float | None = None) -> dict[str, object]:
    """The threshold (:func:`choose_threshold`) and the out-of-fold figures of ``oof.csv``'s rows
    (``prob``: cross-fitted).

    ``oof_f1`` is the F1 at the chosen threshold, the best one for these very rows (so still a
    little optimistic); ``oof_f1_heldout`` labels each fold's rows with the threshold chosen on the
    other folds only. ``insample`` holds the figures as the calibration fitted on the same rows
    gives them (``prob_insample``, the rule before cross-fitting): for reading older runs.

    Self-made fakes (``made_by``) stay out of all of these (:func:`reference_mask`); ``self_made``
    scores them apart, against the real items: AUC overall and per method, and the share called fake."""
    if "made_by" in oof.columns:  # read back from a CSV, an own item's empty made_by may be NaN
        oof = oof.assign(made_by=oof["made_by"].astype(object).fillna("").astype(str))  # all-NaN: float64
    all_rows = oof
    has_made = "made_by" in oof.columns and bool((oof["made_by"] != "").any())
    ref = reference_mask(oof)
    oof = oof[ref]
    y, p = oof["target"].to_numpy().astype(int), oof["prob"].to_numpy()
    threshold_f1 = best_f1_threshold(y, p)[0]
    threshold = choose_threshold(y, p, max_real_fpr)
    f1 = label_metrics(y, (p >= threshold).astype(int))["f1"]
    metrics = binary_metrics(y, p, threshold=threshold)
    raw = binary_metrics(y, sigmoid(oof["logit"].to_numpy()))
    called = np.zeros(len(oof), dtype=int)
    for k in oof["fold"].unique():
        mine = (oof["fold"] == k).to_numpy()
        rest_t = choose_threshold(y[~mine], p[~mine], max_real_fpr) if (~mine).any() else threshold
        called[mine] = p[mine] >= rest_t
    record: dict[str, object] = {
        "threshold": float(threshold), "oof_f1": float(f1), "oof_f1_heldout": float(label_metrics(y, called)["f1"]),
        "oof_auc": _num(metrics["auc"]), "oof_logloss": _num(metrics["logloss"]), "oof_acc": _num(metrics["acc"]),
        "oof_auc_uncalibrated": _num(raw["auc"]), "oof_fake_share": float(np.mean(p >= threshold)),
        "n": int(len(oof)), "threshold_f1": float(threshold_f1), "max_real_fpr": max_real_fpr,
        "oof_real_fpr": float(np.mean(p[y == 0] >= threshold)) if (y == 0).any() else None,
        "basis": "every item, self-made fakes included (there is no real fake)" if has_made and ref.all()
                 else "the dataset's own items",
        "method": "threshold maximising F1 on pooled out-of-fold probabilities (each fold's validation items "
                  "predicted with the predict.tta views, calibrated by Platt fits on the other parts of their "
                  "fold: cross-fitted); prob >= threshold -> fake"
                  + ("" if max_real_fpr is None else
                     f"; capped at the level that {max_real_fpr:g} of the real items reach"),
    }
    if "prob_insample" in oof.columns:
        q = oof["prob_insample"].to_numpy()
        t_in, f1_in = best_f1_threshold(y, q)
        m_in = binary_metrics(y, q, threshold=t_in)
        record["insample"] = {"threshold": float(t_in), "oof_f1": float(f1_in), "oof_auc": _num(m_in["auc"]),
                              "oof_logloss": _num(m_in["logloss"]), "oof_acc": _num(m_in["acc"])}
    if has_made:
        record["self_made"] = self_made_figures(all_rows, threshold)
    return record


def self_made_figures(oof: pd.DataFrame, threshold: float) -> dict[str, object]:
    """Self-made fakes against the dataset's own real items: AUC (all, per method), share called fake."""
    from sklearn.metrics import roc_auc_score

    real = oof[(oof["made_by"] == "") & (oof["target"] == 0)]["prob"].to_numpy()
    made = oof[oof["made_by"] != ""]

    def auc(fake: np.ndarray) -> float | None:
        if not len(real) or not len(fake):
            return None
        return float(roc_auc_score(np.r_[np.zeros(len(real)), np.ones(len(fake))], np.r_[real, fake]))

    return {"auc": auc(made["prob"].to_numpy()), "n": int(len(made)), "n_real": int(len(real)),
            "called_fake": float(np.mean(made["prob"].to_numpy() >= threshold)),
            "by_method": {m: auc(g["prob"].to_numpy()) for m, g in made.groupby("made_by")}}


def oof_is_current(cfg: Config, paths: RunPaths) -> bool:
    """threshold.json exists, was chosen by the configured rule (``finetune.max_real_fpr``), and every
    fold's out-of-fold predictions match its weights and the TTA views."""
    if not (paths.threshold_json.is_file() and paths.oof_csv.is_file()):
        return False
    try:
        rule = json.loads(paths.threshold_json.read_text()).get("max_real_fpr")
    except (OSError, ValueError):
        return False
    if rule != cfg.finetune.max_real_fpr:  # the threshold's rule changed: choose it again
        return False
    return all(_val_preds_current(cfg, paths, k) for k in range(cfg.finetune.folds))


def read_threshold(paths: RunPaths, cfg: Config | None = None) -> float:
    """threshold.json's threshold; with ``cfg``, chosen again from ``oof.csv`` (and logged) where the
    file was chosen by another rule than ``finetune.max_real_fpr`` says (predict rewrites the file)."""
    return threshold_and_rule(paths, cfg)[0]


def threshold_and_rule(paths: RunPaths, cfg: Config | None = None) -> tuple[float, float | None]:
    """:func:`read_threshold`'s threshold and the ``max_real_fpr`` it was chosen with: the configured
    one where ``oof.csv`` allows choosing again, else threshold.json's own."""
    if not paths.threshold_json.is_file():
        raise PipelineError(f"{paths.threshold_json} not found: finish the finetune stage (all folds) first")
    record = json.loads(paths.threshold_json.read_text())
    if cfg is not None and record.get("max_real_fpr") != cfg.finetune.max_real_fpr and paths.oof_csv.is_file():
        oof = pd.read_csv(paths.oof_csv, dtype={"Id": str}, keep_default_na=False)
        threshold = float(oof_figures(oof, cfg.finetune.max_real_fpr)["threshold"])
        log.info("threshold %.4f: chosen again from %s with finetune.max_real_fpr=%s (%s has %.4f, chosen with %s)",
                 threshold, paths.oof_csv, cfg.finetune.max_real_fpr, paths.threshold_json.name,
                 float(record["threshold"]), record.get("max_real_fpr"))
        return threshold, cfg.finetune.max_real_fpr
    return float(record["threshold"]), record.get("max_real_fpr")


def _num(value: float | None) -> float | None:
    return None if value is None or (isinstance(value, float) and np.isnan(value)) else float(value)


# ----------------------------------------------------------------------------- the ensemble


def ensemble_logits(
    cfg: Config, paths: RunPaths, runtime: Runtime, folds: list[int], image_paths: list[str],
    tta: list[str] | None = None, batch_size: int | None = None, per_fold: bool = False,
) -> np.ndarray:
    """Calibrated log-odds for each stage-1 image: the mean over ``folds`` of each fold model's
    calibrated TTA logit. ``per_fold``: the (n_folds, n_images) matrix instead of the mean. Speech
    windows come back one value each: :func:`~.artifacts.per_id` makes them one per clip (the fold
    calibrations were fitted per clip, on the mean logit of its windows).

    Each fold's calibration is the one fitted for ``tta`` (``predict.tta`` when None); a fold without
    one is calibrated on its validation faces first.
    """
    if tta is not None and list(tta) != list(cfg.predict.tta):
        cfg = dataclasses.replace(cfg, predict=dataclasses.replace(cfg.predict, tta=list(tta)))
    rows = []
    for k in folds:
        calibration = fold_calibration(cfg, paths, runtime, k)
        model = load_fold_model(cfg, paths, k, runtime)
        rows.append(calibration(fold_logits(cfg, model, runtime, image_paths, batch_size=batch_size,
                                            desc=f"predict fold {k}")))
        del model
        failpoint("predict_fold")
    matrix = np.stack(rows) if rows else np.zeros((0, len(image_paths)))
    return matrix if per_fold else matrix.mean(axis=0) if rows else np.zeros(len(image_paths))
