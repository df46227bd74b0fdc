"""Score a submission against a solution CSV: ``python -m deepfake_pipeline.score SUB.csv SOL.csv``.

Both files hold ``Id,target_feature`` (column names case-insensitive; the label column may also be
called ``target`` or ``label``). F1, accuracy, precision and recall come from the submission's hard
labels; AUC, AP and log-loss are added when probabilities are known: a ``prob`` column in the
submission, or ``--probs FILE`` (an ``Id,prob`` CSV such as a run's ``test_probs.csv``; it wins over
a ``prob`` column). Any problem (missing/extra/duplicate Ids, labels outside {0, 1}, bad
probabilities, unreadable file) is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import PipelineError, SubmissionError
from .metrics import binary_metrics, label_metrics

ID_NAMES = ("id",)
LABEL_NAMES = ("target_feature", "target", "label")
PROB_NAMES = ("prob", "probability")


def _read(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise SubmissionError(f"{path}: file not found")
    try:
        # Everything as text: Ids like "007" must not become 7; values are validated below.
        return pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except Exception as exc:  # parser errors, empty file, bad encoding
        raise SubmissionError(f"{path}: not a readable CSV: {str(exc).splitlines()[0]}") from exc


def _column(
    df: pd.DataFrame, names: Sequence[str], path: Path, what: str, required: bool = True
) -> str | None:
    by_lower = {str(c).strip().lower(): c for c in df.columns}
    for name in names:
        if name in by_lower:
            return by_lower[name]
    if required:
        raise SubmissionError(
            f"{path}: no {what} column (expected one of {', '.join(names)}; has {list(df.columns)})"
        )
    return None


def _ids(df: pd.DataFrame, path: Path) -> pd.Series:
    col = _column(df, ID_NAMES, path, "Id")
    ids = df[col].str.strip()
    empty = np.flatnonzero((ids == "").to_numpy())
    if empty.size:
        raise SubmissionError(f"{path}: empty Id on line {empty[0] + 2}")
    dup = ids[ids.duplicated()]
    if len(dup):
        raise SubmissionError(
            f"{path}: {len(dup)} duplicate Id(s), e.g. {dup.iloc[0]!r} (line {dup.index[0] + 2})"
        )
    return ids


def _labels(df: pd.DataFrame, path: Path) -> np.ndarray:
    col = _column(df, LABEL_NAMES, path, "label")
    values = pd.to_numeric(df[col].str.strip(), errors="coerce").to_numpy(dtype=np.float64)
    bad = np.flatnonzero(~np.isin(values, (0.0, 1.0)))
    if bad.size:
        i = int(bad[0])
        raise SubmissionError(
            f"{path}: {bad.size} label(s) in column {col!r} not 0/1, e.g. {df[col].iloc[i]!r} on line {i + 2}"
        )
    return values.astype(np.int64)


def _probs(df: pd.DataFrame, col: str, path: Path) -> np.ndarray:
    values = pd.to_numeric(df[col].str.strip(), errors="coerce").to_numpy(dtype=np.float64)
    bad = np.flatnonzero(~(np.isfinite(values) & (values >= 0.0) & (values <= 1.0)))
    if bad.size:
        i = int(bad[0])
        raise SubmissionError(
            f"{path}: {bad.size} probabilities in column {col!r} not in [0, 1], "
            f"e.g. {df[col].iloc[i]!r} on line {i + 2}"
        )
    return values


def _align(ids: pd.Series, ref: pd.Series, path: Path, ref_path: Path) -> np.ndarray:
    """Positions of ``ref``'s Ids in ``ids``; the two Id sets must be equal."""
    missing = ref[~ref.isin(ids)]
    if len(missing):
        raise SubmissionError(f"{path}: {len(missing)} Id(s) of {ref_path} missing, e.g. {missing.iloc[0]!r}")
    extra = ids[~ids.isin(ref)]
    if len(extra):
        raise SubmissionError(f"{path}: {len(extra)} Id(s) not in {ref_path}, e.g. {extra.iloc[0]!r}")
    pos = pd.Series(np.arange(len(ids)), index=ids.to_numpy())
    return pos.loc[ref.to_numpy()].to_numpy()


def score_files(
    submission: str | Path, solution: str | Path, probs: str | Path | None = None
) -> dict[str, float]:
    """Metrics of a submission CSV against a solution CSV (rows matched by Id).

    Returns ``n``, ``f1``, ``acc``, ``precision``, ``recall`` from the submitted labels, plus
    ``auc``, ``ap``, ``logloss`` when probabilities are available (``auc``/``ap`` are NaN when the
    solution holds one class only). Raises :class:`SubmissionError` with a one-line message.
    """
    sub_path, sol_path = Path(submission), Path(solution)
    sol = _read(sol_path)
    sol_ids = _ids(sol, sol_path)
    y_true = _labels(sol, sol_path)
    if len(sol_ids) == 0:
        raise SubmissionError(f"{sol_path}: no rows")

    sub = _read(sub_path)
    sub_ids = _ids(sub, sub_path)
    order = _align(sub_ids, sol_ids, sub_path, sol_path)
    y_pred = _labels(sub, sub_path)[order]
    out: dict[str, float] = {"n": float(len(sol_ids))}
    out.update(label_metrics(y_true, y_pred))

    prob: np.ndarray | None = None
    if probs is not None:
        prob_path = Path(probs)
        pdf = _read(prob_path)
        p_ids = _ids(pdf, prob_path)
        col = _column(pdf, PROB_NAMES, prob_path, "probability")
        prob = _probs(pdf, col, prob_path)[_align(p_ids, sol_ids, prob_path, sol_path)]
    else:
        col = _column(sub, PROB_NAMES, sub_path, "probability", required=False)
        if col is not None:
            prob = _probs(sub, col, sub_path)[order]
    if prob is not None:
        m = binary_metrics(y_true, prob)
        out.update(auc=m["auc"], ap=m["ap"], logloss=m["logloss"])
    return out


def format_scores(scores: dict[str, float]) -> str:
    names = [
        ("n", "rows"),
        ("f1", "f1"),
        ("acc", "accuracy"),
        ("precision", "precision"),
        ("recall", "recall"),
        ("auc", "auc"),
        ("ap", "ap"),
        ("logloss", "logloss"),
    ]
    lines = []
    for key, label in names:
        if key in scores:
            v = scores[key]
            lines.append(f"{label:<10} {int(v)}" if key == "n" else f"{label:<10} {v:.6f}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deepfake_pipeline.score",
        description="Score a submission CSV (Id,target_feature[,prob]) against a solution CSV.",
    )
    parser.add_argument("submission", help="submission CSV: Id,target_feature (optional prob column)")
    parser.add_argument("solution", help="solution CSV: Id,target_feature")
    parser.add_argument(
        "--probs", default=None, help="CSV with Id,prob for AUC/AP/log-loss (e.g. test_probs.csv)"
    )
    args = parser.parse_args(argv)
    try:
        scores = score_files(args.submission, args.solution, args.probs)
    except PipelineError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    print(format_scores(scores))
    return 0


if __name__ == "__main__":
    sys.exit(main())
