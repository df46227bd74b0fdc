"""Stage 4b: blend finished runs into one submission (``blend_runs.py``).

Kaggle pipelines end with an ensemble of runs: other backbones, seeds, input sizes, or (speech) other
self-made fakes. Each run's ``predict`` stage has already averaged its folds and TTA views into
calibrated probabilities (``test_probs.csv``), and its ``oof.csv`` holds the cross-fitted calibrated
out-of-fold probabilities of the same kind. A blend averages their log-odds, weighted, on both:

- test: every run must have predicted the same test Ids (refused otherwise, naming an Id that differs);
- out-of-fold: each labelled row gets the weighted mean over the runs that validated it (``n_runs``
  of them). Rows every run validated are the usual case; runs on other training rows (speech runs
  with other self-made fakes, runs with other ``data.extra_roots``) contribute where they have rows.
  A row's label and ``made_by`` must agree across runs.

The threshold is chosen by the rule the runs used (``trained.oof_figures``: F1, capped by
``finetune.max_real_fpr`` when the runs were; runs chosen by different rules need ``max_real_fpr``
stated) on the rows every run validated, blended as the test items are; only where those hold one
class (copies-only speech runs with other self-made fakes share their real clips alone) on every
row, with a warning, and ``threshold.json`` ``blend_basis`` says which. The held-out F1 uses the
first run's folds. The output folder has the run contract's prediction files (``oof.csv``, whose
``logit`` is the blended calibrated log-odds; ``threshold.json``; ``test_probs.csv``;
``submission.csv``, validated before it is written) and ``blend.json``, written last: each run's OOF
AUC on the rows every run validated (their own items, when those hold both classes) beside the
blend's, and how alike the runs' OOF log-odds are there (their correlation): runs that rank alike
gain little from each other. Everything is computed before the first file is written, each file
atomically; a blend is cheap, so a rerun simply writes it again.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import PipelineError
from .images import atomic_write_text, save_csv
from .metrics import binary_metrics
from .predict import check_fake_share
from .submission import call_fake, validate_submission
from .trained import OOF_COLUMNS, oof_figures, sigmoid, threshold_rule

log = logging.getLogger(__name__)

PROB_CLIP = 1e-12  # a probability of exactly 0 or 1 (float64 sigmoid of |log-odds| > 37) has no log-odds
RUN_FILES = ("oof.csv", "threshold.json", "test_probs.csv")
# A run's oof.csv without prob_insample (the blend has no in-sample fit), with how many runs scored each row.
BLEND_OOF_COLUMNS = [*(c for c in OOF_COLUMNS if c != "prob_insample"), "n_runs"]
_KEEP = object()  # max_real_fpr: take the runs' own rule


@dataclass
class FinishedRun:
    """What a blend reads from one run folder."""

    root: Path
    oof: pd.DataFrame
    test: pd.DataFrame
    max_real_fpr: float | None


def logodds(prob: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(prob, dtype=np.float64), PROB_CLIP, 1.0 - PROB_CLIP)
    return np.log(p) - np.log1p(-p)


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path, dtype={"Id": str}, keep_default_na=False)
    except (ValueError, pd.errors.ParserError) as exc:  # EmptyDataError is a ValueError
        raise PipelineError(f"blend: {path} is not a readable CSV ({exc})") from exc


def read_run(root: str | Path) -> FinishedRun:
    """A run's OOF, test probabilities and threshold rule; a clear error for a run that is not finished."""
    root = Path(root)
    missing = [name for name in RUN_FILES if not (root / name).is_file()]
    if missing:
        raise PipelineError(f"blend: {root} has no {', '.join(missing)}: finish its finetune and predict stages "
                            f"(python train.py --config <its config> --stage predict) first")
    oof, test = _read_csv(root / "oof.csv"), _read_csv(root / "test_probs.csv")
    for name, frame, columns in (("oof.csv", oof, ("Id", "fold", "target", "prob")), ("test_probs.csv", test, ("Id", "prob"))):
        lacking = [c for c in columns if c not in frame.columns]
        if lacking:
            raise PipelineError(f"blend: {root / name} lacks column(s) {lacking}")
        if frame["Id"].duplicated().any():
            raise PipelineError(f"blend: {root / name} lists Id {frame.loc[frame['Id'].duplicated(), 'Id'].iloc[0]!r} twice")
        prob = pd.to_numeric(frame["prob"], errors="coerce")
        if prob.isna().any() or ((prob < 0) | (prob > 1)).any():
            bad = frame.loc[prob.isna() | (prob < 0) | (prob > 1), "Id"].iloc[0]
            raise PipelineError(f"blend: {root / name} has no probability in [0, 1] for Id {bad!r}")
        frame["prob"] = prob.astype(np.float64)
    target = pd.to_numeric(oof["target"], errors="coerce")
    if not target.isin([0, 1]).all():
        raise PipelineError(f"blend: {root / 'oof.csv'} has a target other than 0/1 for Id "
                            f"{oof.loc[~target.isin([0, 1]), 'Id'].iloc[0]!r}")
    oof["target"] = target.astype(int)
    if "made_by" not in oof.columns:
        oof["made_by"] = ""
    oof["made_by"] = oof["made_by"].astype(str)
    try:
        record = json.loads((root / "threshold.json").read_text())
        rule = record.get("max_real_fpr")
    except (ValueError, AttributeError) as exc:
        raise PipelineError(f"blend: {root / 'threshold.json'} is not a threshold record ({exc})") from exc
    return FinishedRun(root, oof, test, rule)


def blend_weights(n_runs: int, weights: list[float] | None) -> np.ndarray:
    if weights is None:
        return np.full(n_runs, 1.0 / n_runs)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (n_runs,) or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise PipelineError(f"blend: {n_runs} runs need {n_runs} weights, none negative and not all 0; got {weights}")
    return w / w.sum()


def blend_test(runs: list[FinishedRun], weights: np.ndarray) -> pd.DataFrame:
    """The weighted mean of the runs' test log-odds, in the first run's Id order."""
    ids = list(runs[0].test["Id"])
    columns = []
    for run in runs:
        other = set(run.test["Id"])
        if other != set(ids):
            only_first, only_here = sorted(set(ids) - other), sorted(other - set(ids))
            example = f"{only_first[0]!r} only in {runs[0].root}" if only_first else f"{only_here[0]!r} only in {run.root}"
            raise PipelineError(f"blend: {run.root} and {runs[0].root} predicted different test sets "
                                f"({len(only_first) + len(only_here)} Id(s) differ, e.g. {example})")
        columns.append(logodds(run.test.set_index("Id").loc[ids, "prob"].to_numpy()))
    return pd.DataFrame({"Id": ids, "prob": sigmoid(np.average(np.vstack(columns), axis=0, weights=weights))})


def blend_oof(runs: list[FinishedRun], weights: np.ndarray) -> pd.DataFrame:
    """Every row any run validated: the weighted mean log-odds of the runs that did (``n_runs`` of them);
    ``fold`` is the first such run's fold."""
    keyed = []
    for i, run in enumerate(runs):
        part = run.oof[["Id", "fold", "target", "made_by"]].copy()
        part["run"], part["logodds"] = i, logodds(run.oof["prob"].to_numpy())
        keyed.append(part)
    rows = pd.concat(keyed, ignore_index=True)
    for column, what in (("target", "label"), ("made_by", "made_by (self-made or not)")):
        kinds = rows.groupby("Id")[column].nunique()
        if (kinds > 1).any():
            raise PipelineError(f"blend: the runs disagree on the {what} of training row {kinds[kinds > 1].index[0]!r}")
    rows["w"] = weights[rows["run"].to_numpy()]
    rows["wl"] = rows["w"] * rows["logodds"]
    grouped = rows.groupby("Id", sort=False)
    out = grouped.agg(fold=("fold", "first"), target=("target", "first"), made_by=("made_by", "first"),
                      wl=("wl", "sum"), w=("w", "sum"), n_runs=("run", "nunique")).reset_index()
    out["logit"] = out["wl"] / out["w"]
    out["prob"] = sigmoid(out["logit"].to_numpy())
    return out[BLEND_OOF_COLUMNS]


def run_agreement(runs: list[FinishedRun], oof: pd.DataFrame) -> dict[str, object]:
    """Each run's OOF AUC on the rows every run validated (own rows when they hold both classes) beside
    the blend's on the same rows, and the correlation of the runs' OOF log-odds there."""
    common = oof[oof["n_runs"] == len(runs)]
    own = common[common["made_by"] == ""]
    if own["target"].nunique() == 2:
        common = own
    y = common["target"].to_numpy().astype(int)
    ids = list(common["Id"])
    per_run = np.vstack([logodds(run.oof.set_index("Id").loc[ids, "prob"].to_numpy()) for run in runs]) \
        if ids else np.empty((len(runs), 0))

    def auc(score: np.ndarray) -> float | None:
        value = binary_metrics(y, sigmoid(score))["auc"] if len(set(y.tolist())) == 2 else float("nan")
        return None if value != value else float(value)

    corr = np.corrcoef(per_run) if per_run.shape[1] > 1 else np.full((len(runs), len(runs)), np.nan)
    return {
        "rows_every_run_scored": int(len(common)),
        "run_oof_auc": [auc(s) for s in per_run],
        "blend_oof_auc": auc(common["logit"].to_numpy()),
        "logodds_correlation": [[None if c != c else round(float(c), 4) for c in row] for row in np.atleast_2d(corr)],
    }


def blend_threshold(oof: pd.DataFrame, n_runs: int, max_real_fpr: float | None) -> dict[str, object]:
    """``trained.oof_figures`` on the rows every run validated (blended as the test items are), or on
    every row where those hold one class; ``blend_basis`` says which. ``logit`` is the blended calibrated
    log-odds here, so the uncalibrated AUC a run records has no counterpart."""
    figures_on = oof.drop(columns="n_runs")
    every = (oof["n_runs"] == n_runs).to_numpy()
    if figures_on.loc[every, "target"].nunique() == 2:
        record = oof_figures(figures_on[every], max_real_fpr)
        basis = f"the {int(every.sum())} rows every run validated"
    else:
        log.warning("blend: the rows every run validated (%d) hold one class only: the threshold is chosen on every "
                    "row, %d of them scored by some runs only (their mean)", int(every.sum()), int((~every).sum()))
        record = oof_figures(figures_on, max_real_fpr)
        basis = f"every row ({int((~every).sum())} of {len(oof)} scored by some runs only)"
    record.pop("oof_auc_uncalibrated", None)
    record["method"] = ("blend of runs: the weighted mean of their calibrated log-odds; " + str(record["method"])
                        + "; held-out F1 with the first run's folds")
    return {**record, "blend_basis": basis}


def blend_runs(run_dirs: list[str | Path], out_dir: str | Path, weights: list[float] | None = None,
               max_real_fpr: float | None | object = _KEEP) -> dict[str, object]:
    """Blend finished runs into ``out_dir``; returns what ``blend.json`` records."""
    if len(run_dirs) < 2:
        raise PipelineError("blend: name at least two runs")
    roots = [Path(r).resolve() for r in run_dirs]
    out = Path(out_dir)
    if out.resolve() in roots or len(set(roots)) != len(roots):
        raise PipelineError("blend: each run once, and the output folder must not be one of them")
    if (out / "config.yaml").is_file():
        raise PipelineError(f"blend: {out} is a training run (it has config.yaml); blend into another folder")
    runs = [read_run(r) for r in run_dirs]
    w = blend_weights(len(runs), weights)
    if max_real_fpr is _KEEP:
        rules = {run.max_real_fpr for run in runs}
        if len(rules) > 1:
            raise PipelineError(f"blend: the runs chose their thresholds by different rules (finetune.max_real_fpr "
                                f"{sorted(rules, key=str)}): state the blend's with --max-real-fpr")
        max_real_fpr = rules.pop()
    rule: float | None = max_real_fpr  # type: ignore[assignment]
    # Everything is computed before the first write: a refused blend leaves the folder as it was.
    oof = blend_oof(runs, w)
    record = blend_threshold(oof, len(runs), rule) | {"runs": [str(r) for r in run_dirs]}
    threshold = float(record["threshold"])
    probs = blend_test(runs, w)
    submission = pd.DataFrame({"Id": probs["Id"], "target_feature": call_fake(probs["prob"].to_numpy(), threshold)})
    validate_submission(submission, list(probs["Id"]))
    fake_share = float(submission["target_feature"].mean())
    summary = {"runs": [str(r) for r in run_dirs], "weights": [float(x) for x in w], "threshold": threshold,
               "max_real_fpr": rule, "blend_basis": record["blend_basis"], "oof_auc": record["oof_auc"],
               "oof_f1": record["oof_f1"], "oof_rows": int(len(oof)), **run_agreement(runs, oof),
               "test_n": int(len(probs)), "test_fake_share": fake_share}
    out.mkdir(parents=True, exist_ok=True)
    save_csv(out / "oof.csv", oof)
    atomic_write_text(out / "threshold.json", json.dumps(record, indent=2))
    save_csv(out / "test_probs.csv", probs)
    save_csv(out / "submission.csv", submission)
    atomic_write_text(out / "blend.json", json.dumps(summary, indent=2))  # last: the blend is complete
    log.info("blend: %d runs (weights %s); OOF AUC on the rows all scored: %s, blended %s; threshold %.4f "
             "(OOF F1 %.4f, on %s); %d test items, %.1f%% called fake -> %s", len(runs),
             "/".join(f"{x:.2f}" for x in w),
             "/".join("nan" if a is None else f"{a:.4f}" for a in summary["run_oof_auc"]),
             "nan" if summary["blend_oof_auc"] is None else f"{summary['blend_oof_auc']:.4f}",
             threshold, float(record["oof_f1"]), record["blend_basis"], len(probs), 100 * fake_share,
             out / "submission.csv")
    check_fake_share(fake_share, float(probs["prob"].mean()), len(probs), threshold_rule(rule), what="blend")
    return summary
