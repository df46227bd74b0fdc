"""Pseudo-label mining ("diamonds"): an earlier run's models label the test faces they are sure of.

``make_diamonds.py --run weights/<run>`` reopens the run from its saved ``config.yaml`` (backbone,
TTA and alignment settings are the run's own) and predicts every aligned test face with each
finished fold model: TTA views, then the fold's calibration (``trained.py``), so ``p`` is a
calibrated probability and ``diamonds.high``/``low`` (0.995/0.005) mean "99.5% sure" whatever the
label smoothing or the length of training. Faces with ``p > high`` become fakes and ``p < low``
reals, optionally capped (``max_per_class``, ``max_fraction``) and balanced to the train prior
(``balance``), most confident first.

Per fold (``diamonds.per_fold``, the default): fold k's diamonds are what round-1 fold k's model
alone is sure of, and in the next round they train fold k only. That model never saw fold k's
validation rows, so round 2's out-of-fold figures stay honest. With ``per_fold: false`` the whole
ensemble mines once for every fold (more confident, but its models saw every labelled row: round
2's OOF figures are then optimistic, and the next round says so).

The CSV (default ``data/train_diamond.csv``) holds the original labelled rows (``is_pseudo`` 0, with
the ``fold`` they had, which the next round keeps) and the diamonds (``is_pseudo`` 1, ``prob``,
``fold`` = the fold they train or -1 for every fold, ``source_run``, ``config_hash`` = the run's
finetune settings hash); the next round reads it through ``data.pseudo_labels``
(``dataset.read_pseudo_labels``). A mining run that finds nothing writes nothing and fails,
naming the most confident predictions it saw.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .artifacts import RunPaths, load_faces, per_id, stage1_hash, usable_faces
from .config import Config, DiamondsConfig, stage_hash
from .dataset import load_layout
from .errors import ConfigError, PipelineError
from .images import save_csv
from .trained import (
    check_test_stage1,
    ensemble_logits,
    finished_folds,
    inference_runtime,
    load_run_config,
    run_settings_hashes,
    sigmoid,
)

log = logging.getLogger(__name__)

DIAMOND_COLUMNS = ["Id", "target_feature", "is_pseudo", "prob", "fold", "source_run", "config_hash"]
# Settings that decide where and how fast the run's models execute, not what they predict:
# taken from the current config so that a CPU box can mine from a run trained on GPUs.
_RUNTIME_FIELDS = ("device", "amp", "workers", "progress", "channels_last")


# ----------------------------------------------------------------------------- selection (pure)


def _check(cfg: DiamondsConfig) -> None:
    problems = []
    if not 0.0 <= cfg.low < 0.5 < cfg.high <= 1.0:
        problems.append(f"diamonds.low/high: need 0 <= low < 0.5 < high <= 1, got {cfg.low}/{cfg.high}")
    if cfg.max_per_class is not None and cfg.max_per_class < 0:
        problems.append(f"diamonds.max_per_class: {cfg.max_per_class} is negative")
    if cfg.max_fraction is not None and not 0.0 <= cfg.max_fraction <= 1.0:
        problems.append(f"diamonds.max_fraction: {cfg.max_fraction} is outside [0, 1]")
    if problems:
        raise ConfigError("; ".join(problems))


def class_cap(cfg: DiamondsConfig, n_test: int) -> int | None:
    """The most rows one class may keep: ``max_per_class`` and ``max_fraction`` of the test set."""
    caps = []
    if cfg.max_per_class is not None:
        caps.append(int(cfg.max_per_class))
    if cfg.max_fraction is not None:
        caps.append(int(math.floor(cfg.max_fraction * n_test + 1e-9)))
    return min(caps) if caps else None


def balanced_counts(n_fake: int, n_real: int, prior: float) -> tuple[int, int]:
    """The largest (fake, real) counts within the candidates whose ratio is the prior's fake/real ratio."""
    if prior <= 0.0:
        return 0, n_real
    if prior >= 1.0:
        return n_fake, 0
    ratio = prior / (1.0 - prior)  # fakes per real
    if n_fake >= n_real * ratio:
        return min(n_fake, int(round(n_real * ratio))), n_real
    return n_fake, min(n_real, int(round(n_fake / ratio)))


def select_diamonds(probs: pd.DataFrame, cfg: DiamondsConfig, n_test: int | None = None,
                    prior: float | None = None) -> pd.DataFrame:
    """Confident rows of ``probs`` (columns Id, prob, optionally logit) -> Id, target_feature, prob.

    Fake: ``prob > cfg.high``; real: ``prob < cfg.low``. Per class, at most :func:`class_cap` rows
    (``n_test`` defaults to ``len(probs)``), then with ``cfg.balance`` the counts are cut to the
    train ``prior`` ratio. The most confident rows are kept (by logit when given, else by prob;
    ties by Id); the result lists fakes then reals, most confident first.
    """
    _check(cfg)
    n_test = len(probs) if n_test is None else n_test
    score = "logit" if "logit" in probs.columns else "prob"
    fake = probs[probs["prob"] > cfg.high].sort_values([score, "Id"], ascending=[False, True], kind="stable")
    real = probs[probs["prob"] < cfg.low].sort_values([score, "Id"], ascending=[True, True], kind="stable")
    cap = class_cap(cfg, n_test)
    if cap is not None:
        fake, real = fake.head(cap), real.head(cap)
    if cfg.balance:
        if prior is None or not 0.0 <= prior <= 1.0:
            raise ValueError("diamonds.balance needs the train prior (share of fakes) in [0, 1]")
        n_fake, n_real = balanced_counts(len(fake), len(real), prior)
        if (n_fake, n_real) != (len(fake), len(real)):
            log.info("diamonds: balanced to the train prior %.3f: %d -> %d fake, %d -> %d real", prior,
                     len(fake), n_fake, len(real), n_real)
        fake, real = fake.head(n_fake), real.head(n_real)
    out = pd.concat([fake.assign(target_feature=1), real.assign(target_feature=0)], ignore_index=True)
    return out[["Id", "target_feature", "prob"]].astype({"target_feature": int, "prob": float})


# ----------------------------------------------------------------------------- the stage


@dataclass
class DiamondSummary:
    out: Path | None  # None when nothing was written
    run: Path
    folds: list[int]
    n_folds: int
    n_test: int
    n_predicted: int  # test images with an aligned face
    per_fold: bool
    candidates: dict[str, int] = field(default_factory=dict)  # class -> rows past the threshold (all miners)
    kept: dict[str, int] = field(default_factory=dict)  # class -> rows written
    kept_per_fold: dict[int, int] = field(default_factory=dict)  # miner fold (-1: ensemble) -> rows
    extremes: tuple[float, float] = (float("nan"), float("nan"))  # lowest and highest p seen

    @property
    def total(self) -> int:
        return sum(self.kept.values())

    def line(self) -> str:
        per_class = ", ".join(
            f"{name} {self.kept[name]} ({self.candidates[name]} past the threshold)" for name in ("fake", "real")
        )
        miners = ("per fold: " + " ".join(f"{k}:{n}" for k, n in sorted(self.kept_per_fold.items()))
                  if self.per_fold else "by the fold ensemble, for every fold")
        return (f"diamonds: {self.total} rows mined on {self.n_test} test images: {per_class}; {miners}; "
                f"p in [{self.extremes[0]:.4f}, {self.extremes[1]:.4f}]; from {len(self.folds)}/{self.n_folds} "
                f"fold(s) of {self.run} -> {self.out or 'nothing written'}")


class NoDiamondsError(PipelineError):
    """Nothing past the thresholds: writing the CSV would make the next round repeat this one."""


def mine(run_cfg: Config, paths: RunPaths, dcfg: DiamondsConfig, out: Path, config_hash: str,
         allow_empty: bool = False) -> DiamondSummary:
    """Predict the run's aligned test faces, select diamonds, write ``out`` (atomically)."""
    _check(dcfg)
    n_folds = run_cfg.finetune.folds
    folds = finished_folds(paths, n_folds)
    if not folds:
        raise PipelineError(
            f"{paths.root}: no finished folds (fold<k>/done.json + best.safetensors): finish at least one "
            "fold with train.py --stage finetune before mining diamonds"
        )
    if dcfg.per_fold and len(folds) < n_folds:
        log.warning("diamonds: %d/%d folds finished: folds %s get no diamonds", len(folds), n_folds,
                    sorted(set(range(n_folds)) - set(folds)))
    log.info("diamonds: %d/%d fold(s) finished, using fold(s) %s of %s", len(folds), n_folds, folds, paths.root)
    layout = load_layout(run_cfg.data, check_images=False)
    labels = layout.train.frame[["Id", "target"]]
    train_ids = set(labels["Id"])
    test_ids = list(layout.test.frame["Id"])
    faces = usable_faces(load_faces(run_cfg), "test")
    faces = faces[faces["Id"].isin(set(test_ids))]
    overlap = faces["Id"].isin(train_ids)
    if overlap.any():
        log.warning("diamonds: %d test Id(s) are also train Ids and are never mined, e.g. %s",
                    int(overlap.sum()), faces.loc[overlap, "Id"].iloc[0])
        faces = faces[~overlap]
    faces = faces.reset_index(drop=True)
    check_test_stage1(run_cfg, paths, folds, faces, "diamonds")
    if faces["Id"].nunique() < len(test_ids):
        log.warning("diamonds: %d test input(s) have no stage-1 image and cannot be mined",
                    len(test_ids) - faces["Id"].nunique())

    runtime = inference_runtime(run_cfg.run.device, run_cfg.run.amp, run_cfg.run.channels_last)
    ids, _ = per_id(faces["Id"], np.zeros(len(faces)))
    rows = ensemble_logits(run_cfg, paths, runtime, folds, list(faces["path"]), per_fold=True) \
        if len(faces) else np.zeros((len(folds), 0))
    per_fold = np.stack([per_id(faces["Id"], r)[1] for r in rows]) if len(faces) else rows  # one value per Id
    miners = list(zip(folds, per_fold)) if dcfg.per_fold else [(-1, per_fold.mean(axis=0))]
    prior = float(labels["target"].mean())
    chosen, candidates, kept_per_fold, seen = [], {"fake": 0, "real": 0}, {}, []
    for k, logits in miners:
        probs = pd.DataFrame({"Id": ids, "prob": sigmoid(logits), "logit": logits})
        seen.append(probs["prob"].to_numpy())
        picked = select_diamonds(probs, dcfg, n_test=len(test_ids), prior=prior).assign(fold=k)
        candidates["fake"] += int((probs["prob"] > dcfg.high).sum())
        candidates["real"] += int((probs["prob"] < dcfg.low).sum())
        kept_per_fold[k] = len(picked)
        chosen.append(picked)
    mined = pd.concat(chosen, ignore_index=True) if chosen else pd.DataFrame(columns=["Id", "target_feature", "prob"])
    assert not set(mined["Id"]) & train_ids, "diamonds must never include train Ids"
    all_p = np.concatenate(seen) if seen and len(faces) else np.array([np.nan])
    summary = DiamondSummary(
        out=None, run=paths.root, folds=folds, n_folds=n_folds, n_test=len(test_ids), n_predicted=len(ids),
        per_fold=dcfg.per_fold, candidates=candidates,
        kept={"fake": int((mined["target_feature"] == 1).sum()), "real": int((mined["target_feature"] == 0).sum())},
        kept_per_fold=kept_per_fold, extremes=(float(np.nanmin(all_p)), float(np.nanmax(all_p))),
    )
    if summary.total == 0:
        message = (f"no diamonds: no calibrated test probability is above diamonds.high={dcfg.high} or below "
                   f"diamonds.low={dcfg.low} (they span {summary.extremes[0]:.4f} to {summary.extremes[1]:.4f}); "
                   "a next round would repeat this one. Train a more confident round, lower the thresholds "
                   "(--set diamonds.high=... --set diamonds.low=...)")
        if not allow_empty:
            log.error("%s, or pass --allow-empty to write the labelled rows alone", message)
            raise NoDiamondsError(message)
        log.warning("%s; --allow-empty: writing the labelled rows alone", message)

    folds_csv = pd.read_csv(paths.folds_csv, dtype={"Id": str}) if paths.folds_csv.is_file() else None
    fold_of = {} if folds_csv is None else dict(zip(folds_csv.loc[folds_csv["is_pseudo"] == 0, "Id"],
                                                   folds_csv.loc[folds_csv["is_pseudo"] == 0, "fold"]))
    originals = pd.DataFrame({"Id": labels["Id"], "target_feature": labels["target"].astype(int), "is_pseudo": 0,
                              "prob": np.nan, "fold": [int(fold_of.get(i, -1)) for i in labels["Id"]],
                              "source_run": "", "config_hash": ""})
    if dcfg.per_fold and (originals["fold"] < 0).any():
        raise PipelineError(f"{paths.folds_csv}: the run's folds do not cover every labelled row; per-fold "
                            "diamonds need them (set diamonds.per_fold=false to mine with the whole ensemble)")
    diamonds = mined.assign(is_pseudo=1, source_run=str(paths.root), config_hash=config_hash)
    table = pd.concat([originals, diamonds[DIAMOND_COLUMNS]], ignore_index=True)[DIAMOND_COLUMNS]
    save_csv(out, table.astype({"fold": int}))
    summary.out = out
    return summary


def run_diamonds(run_dir: str | Path, config: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
                 out: str | Path = "data/train_diamond.csv", allow_empty: bool = False) -> DiamondSummary:
    """``make_diamonds.py``: the models come from the run's saved config; the ``diamonds`` section and
    the runtime settings from ``config`` (default: that same saved config) with ``overrides``.

    Overrides may move the run (``data.root``, ``align.out``) or set how it runs, never change what the
    run's models are: one that changes the saved config's stage-1 or fine-tuning settings hash (a
    next round's ``--set model.channels=...``, say) is refused, as mining with it would predict with
    other models than were trained."""
    run_dir = Path(run_dir)
    run_cfg = load_run_config(run_dir, overrides)
    saved = load_run_config(run_dir)
    changed = [name for name, (a, b) in {
        "stage-1": (stage1_hash(run_cfg), stage1_hash(saved)),
        "fine-tuning": (stage_hash(run_cfg, ["model", "finetune"]), stage_hash(saved, ["model", "finetune"])),
    }.items() if a != b]
    if changed:
        raise ConfigError(f"--set {' '.join(overrides)}: changes the {' and '.join(changed)} settings of the run "
                          f"{run_dir} was trained with; diamonds are mined with the run's own models")
    current = load_run_config(run_dir, overrides, config) if config is not None else run_cfg
    for name in _RUNTIME_FIELDS:
        setattr(run_cfg.run, name, getattr(current.run, name))
    run_cfg.predict.batch_size = current.predict.batch_size
    config_hash = run_settings_hashes(run_dir).get("finetune") or stage_hash(run_cfg, ["model", "finetune"])
    return mine(run_cfg, RunPaths(run_dir), current.diamonds, Path(out), config_hash, allow_empty)
