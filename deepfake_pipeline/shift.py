"""Do the test scores look like the out-of-fold scores? A warning for test sets the model never met.

Without a shift, a test set's calibrated probabilities are a mix of the OOF probabilities of real
items and of fake items, in the test set's (unknown) proportion. :func:`score_shift` finds the mix
that fits the test scores best (Kolmogorov-Smirnov distance between the test scores' distribution
and ``share * fake + (1 - share) * real`` of the OOF scores, over a grid of shares) and compares the
remaining distance with what sampling alone gives (the two-sample KS bound at ``alpha``). A test set
from another source or generator usually lands where the OOF scores never were (in the middle, or
all on one side with another shape), and no mix fits: its calls at the OOF threshold can then be far
from the true share in either direction, and the mean probability is no guide to it either. The
check uses scores only, so it says nothing where unseen fakes score exactly like the OOF reals; the
best-fitting share is also an estimate of the test set's fake share that does not use the threshold.

Each OOF score comes from one fold model, so the like-for-like test scores are each fold model's own
(:func:`fold_score_shift`, a majority verdict): the fold ensemble's mean has less of the models' own
noise than any one of them, so its scores are spread more narrowly around each class's typical score
than the OOF scores of the same kind of items. Checked on the ensemble, a test set drawn like the
training data can sit off every mix by more than sampling explains (``tests/test_shift.py``: by 0.08
of KS distance where the folds disagree a lot); where only the ensemble's scores exist (safe
inference), the check runs on them and leans that way.

Each fold model's test scores are also compared with that fold's own OOF scores (the ones that
model made), not with all folds' pooled: fold models differ in how far they push confident
scores towards 0 and 1, and a near-perfect detector's scores are nearly all in those tails. On
lfw_swap (test AUC 0.998, calls exact) the pooled reference flagged 4 of 5 fold models (KS 0.10-0.25
against 0.09 by chance, best mixes 35-70% fake); each fold's own reference flagged none (0.04-0.09
against 0.12, best mixes 50-54%, true 50%). A fold with too few OOF items of a class falls back to
the pooled reference; ``own_reference`` counts the folds that had their own.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

MIN_ITEMS = 20  # fewer test or OOF items per class: no verdict
MIN_DISTANCE = 0.10  # a distance below this is too small to matter, however many items there are


@dataclass(frozen=True)
class ScoreShift:
    n_test: int
    share: float  # the fake share of the best-fitting mix of the OOF real and fake scores
    distance: float  # KS distance between the test scores and that mix
    expected: float  # the distance sampling alone exceeds with probability alpha
    shifted: bool
    folds: int = 1  # > 1: the median fold model's figures (by distance); shifted when most folds are
    folds_shifted: int = 0
    own_reference: int = 0  # folds checked against their own OOF scores (the rest: all folds' pooled)

    def as_dict(self) -> dict[str, object]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def ks_critical(alpha: float) -> float:
    """c(alpha) of the two-sample Kolmogorov-Smirnov test (asymptotic): sqrt(-ln(alpha / 2) / 2)."""
    return math.sqrt(-math.log(alpha / 2) / 2)


def score_shift(test: np.ndarray, oof_real: np.ndarray, oof_fake: np.ndarray, alpha: float = 0.001,
                grid: int = 101) -> ScoreShift | None:
    """The best mix of OOF real and fake scores for ``test`` and whether even it is too far off.

    None when a sample is too small to tell (fewer than ``MIN_ITEMS``).
    """
    test, real, fake = (np.sort(np.asarray(a, dtype=float)[np.isfinite(a)]) for a in (test, oof_real, oof_fake))
    if min(len(test), len(real), len(fake)) < MIN_ITEMS:
        return None
    points = np.concatenate([test, real, fake])
    cdf = [np.searchsorted(s, points, side="right") / len(s) for s in (test, real, fake)]
    shares = np.linspace(0.0, 1.0, grid)
    gaps = np.abs(cdf[0][None, :] - (shares[:, None] * cdf[2][None, :] + (1 - shares[:, None]) * cdf[1][None, :]))
    distances = gaps.max(axis=1)
    best = int(np.argmin(distances))
    share = float(shares[best])
    # The mix's own sampling error: its ECDF is share * F_fake + (1 - share) * F_real of two samples.
    reference_var = share ** 2 / len(fake) + (1 - share) ** 2 / len(real)
    expected = ks_critical(alpha) * math.sqrt(1 / len(test) + reference_var)
    distance = float(distances[best])
    shifted = distance > max(expected, MIN_DISTANCE)
    return ScoreShift(len(test), share, distance, expected, shifted, folds=1, folds_shifted=int(shifted))


Reference = tuple[np.ndarray, np.ndarray]  # OOF probabilities of the real items, of the fake items


def fold_score_shift(test_by_fold: np.ndarray, oof_real: np.ndarray, oof_fake: np.ndarray,
                     alpha: float = 0.001, own: Sequence[Reference | None] | None = None) -> ScoreShift | None:
    """:func:`score_shift` of each fold model's own scores (the rows of ``test_by_fold``), as one
    verdict: shifted when more than half of the folds are, reported with the figures of the median
    fold (ranked by distance over its own bound; the lower median, so that the figures and the verdict
    agree for an even number of folds too).

    ``own``: one reference per row, the OOF scores that fold model made; a row without one, or whose
    own reference is too small for a verdict, is compared with the pooled ``oof_real`` / ``oof_fake``."""
    rows = np.atleast_2d(test_by_fold)
    refs = list(own) if own is not None else [None] * len(rows)
    if len(refs) != len(rows):
        raise ValueError(f"fold_score_shift: {len(rows)} fold rows but {len(refs)} own references")
    results, n_own = [], 0
    for row, ref in zip(rows, refs):
        mine = score_shift(row, *ref, alpha) if ref is not None else None
        n_own += mine is not None
        results.append(mine if mine is not None else score_shift(row, oof_real, oof_fake, alpha))
    if not results or any(r is None for r in results):
        return None
    ranked = sorted(results, key=lambda r: r.distance / max(r.expected, MIN_DISTANCE))
    n_shifted = sum(r.shifted for r in results)
    return replace(ranked[(len(ranked) - 1) // 2], shifted=2 * n_shifted > len(results), folds=len(results),
                   own_reference=n_own,
                   folds_shifted=n_shifted)


def oof_reference(oof: pd.DataFrame, fold: int | None = None) -> Reference:
    """The OOF probabilities of the real and fake items the threshold was chosen on
    (``trained.reference_mask``: the dataset's own items, self-made fakes left out); ``fold``: only
    those fold ``fold``'s model made (none where ``oof`` has no ``fold`` column)."""
    from .trained import reference_mask  # torch-free callers (tests) keep this module light

    rows = oof[reference_mask(oof)]
    if fold is not None:
        rows = rows[rows["fold"] == fold] if "fold" in rows.columns else rows.iloc[:0]
    return rows.loc[rows["target"] == 0, "prob"].to_numpy(), rows.loc[rows["target"] == 1, "prob"].to_numpy()


def check_score_shift(test_probs: np.ndarray, oof_csv: Path, called_share: float, what: str,
                      folds: Sequence[int] | None = None) -> ScoreShift | None:
    """The score-shift check against a run's ``oof.csv``, with a warning when the test set is shifted.

    ``test_probs``: the calibrated probabilities of one model or ensemble (1-D), or each fold model's
    own, one row per fold (2-D: :func:`fold_score_shift`, the like-for-like comparison); ``folds``: the
    fold number of each row, whose own OOF scores it is then compared with (1-D scores: ignored). None without an
    ``oof.csv`` (a run whose folds were never pooled) or with too few items."""
    if not oof_csv.is_file():
        return None
    oof = pd.read_csv(oof_csv, dtype={"Id": str}, keep_default_na=False)
    reference = oof_reference(oof)
    test_probs = np.asarray(test_probs, dtype=float)
    if test_probs.ndim == 2:
        own = [oof_reference(oof, k) for k in folds] if folds is not None else None
        if own is not None and len(own) != len(test_probs):  # never abort a predict over its warning
            log.warning("%s: %d fold numbers for %d rows of scores; checking against all folds' OOF scores",
                        what, len(own), len(test_probs))
            own = None
        result = fold_score_shift(test_probs, *reference, own=own)
    else:
        result = score_shift(test_probs, *reference)
    if result is not None and result.shifted:
        counted = f"; {result.folds_shifted} of {result.folds} fold models" if result.folds > 1 else ""
        log.warning("%s: these scores match no mix of the out-of-fold real and fake scores (KS distance %.2f at "
                    "best, %.2f by chance%s): the inputs are unlike the training data (another source or "
                    "generator?), so the calls at the OOF threshold (%.1f%% fake) may be far off the true share, "
                    "either way; the best mix has %.0f%% fake", what, result.distance, result.expected, counted,
                    100 * called_share, 100 * result.share)
    return result
