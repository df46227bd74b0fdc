"""The submission file: ``Id,target_feature`` for every test Id exactly once, checked before writing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .errors import SubmissionError
from .images import save_csv


def validate_submission(submission: pd.DataFrame, test_ids: list[str]) -> None:
    """Every test Id exactly once, labels 0/1, no NaN; raises SubmissionError otherwise."""
    problems = []
    if list(submission.columns[:2]) != ["Id", "target_feature"]:
        problems.append(f"columns must start with Id,target_feature; got {list(submission.columns)}")
    ids = submission["Id"]
    if ids.duplicated().any():
        problems.append(f"duplicate Ids, e.g. {ids[ids.duplicated()].iloc[0]!r}")
    missing = sorted(set(test_ids) - set(ids))
    if missing:
        problems.append(f"{len(missing)} test Id(s) missing, e.g. {missing[0]!r}")
    extra = sorted(set(ids) - set(test_ids))
    if extra:
        problems.append(f"{len(extra)} Id(s) that are not test images, e.g. {extra[0]!r}")
    labels = submission["target_feature"]
    if labels.isna().any() or not labels.isin([0, 1]).all():
        problems.append("target_feature must be 0 or 1 everywhere (found NaN or other values)")
    if problems:
        raise SubmissionError("submission not written: " + "; ".join(problems))


def call_fake(prob: float | np.ndarray, threshold: float) -> int | np.ndarray:
    """The one labelling rule: fake (1) when ``prob >= threshold``, for every answer a submission holds."""
    called = np.asarray(prob, dtype=np.float64) >= threshold
    return int(called) if called.ndim == 0 else called.astype(int)


def prior_answer(prior: float, threshold: float) -> tuple[float, int]:
    """(probability, label) of an input nothing could judge (unreadable, silent, every model failed):
    the training prior, labelled by :func:`call_fake` like every other probability. The predict stage
    and safe inference both answer this way, so the same input gets the same label from either."""
    return float(prior), int(call_fake(prior, threshold))


def write_submission(probs: pd.DataFrame, threshold: float, test_ids: list[str], out: Path) -> pd.DataFrame:
    if probs["prob"].isna().any():
        bad = probs.loc[probs["prob"].isna(), "Id"].iloc[0]
        raise SubmissionError(f"submission not written: NaN probability for Id {bad!r}")
    submission = pd.DataFrame({"Id": probs["Id"], "target_feature": call_fake(probs["prob"].to_numpy(), threshold)})
    validate_submission(submission, test_ids)
    save_csv(out, submission)
    return submission
