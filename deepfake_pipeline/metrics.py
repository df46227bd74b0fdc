"""One metrics module for validation, OOF diagnostics, threshold search and scoring (numpy only).

Convention everywhere: label 1 = fake = positive class; a probability is P(fake); an image is
predicted fake when ``prob >= threshold``. Ties in the scores are handled exactly: every cut point
is a distinct score, so tied images are always on the same side of a threshold.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

LOGLOSS_EPS = 1e-15  # probabilities are clipped to [eps, 1 - eps] for the log-loss (Kaggle's value)


def _as_array(a: Any, name: str) -> np.ndarray:
    if hasattr(a, "detach"):  # torch tensor on any device/dtype, without importing torch here
        a = a.detach().float().cpu().numpy()
    arr = np.asarray(a)
    if arr.ndim != 1:
        arr = arr.reshape(-1)
    if arr.size == 0:
        raise ValueError(f"{name}: empty input")
    return arr


def _labels(y_true: Any) -> np.ndarray:
    y = _as_array(y_true, "y_true")
    if y.dtype == bool:
        return y.astype(np.int64)
    bad = ~np.isin(y, (0, 1))
    if bad.any():
        where = np.flatnonzero(bad)[:5].tolist()
        raise ValueError(f"y_true: labels must be 0 or 1, got {y[bad][:5].tolist()} at positions {where}")
    return y.astype(np.int64)


def _inputs(y_true: Any, prob: Any) -> tuple[np.ndarray, np.ndarray]:
    y = _labels(y_true)
    p = _as_array(prob, "prob")
    if p.shape != y.shape:
        raise ValueError(f"y_true has {y.size} values but prob has {p.size}")
    if not np.isfinite(p.astype(np.float64)).all():
        raise ValueError("prob: contains NaN or infinite values")
    return y, p


def _sweep(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative (tp, fp) when predicting positive for ``prob >= s``, for each distinct score s (descending).

    Returns ``(scores, tp, fp)``; one entry per distinct score; O(n log n) for the sort.
    """
    order = np.argsort(-p, kind="mergesort")
    ps, ys = p[order], y[order]
    # Last index of each run of equal scores: the cut after which all tied items are included.
    last = np.flatnonzero(np.r_[ps[1:] != ps[:-1], True])
    tp = np.cumsum(ys)[last]
    fp = (last + 1) - tp
    return ps[last], tp, fp


def label_metrics(y_true: Any, y_pred: Any) -> dict[str, float]:
    """acc, f1, precision, recall for hard 0/1 predictions (0 where a ratio is 0/0, as sklearn does)."""
    y = _labels(y_true)
    yp = _labels(y_pred)
    if yp.shape != y.shape:
        raise ValueError(f"y_true has {y.size} values but y_pred has {yp.size}")
    tp = int(np.sum((y == 1) & (yp == 1)))
    fp = int(np.sum((y == 0) & (yp == 1)))
    fn = int(np.sum((y == 1) & (yp == 0)))
    denom_f1 = 2 * tp + fp + fn
    return {
        "acc": float(np.mean(y == yp)),
        "f1": 2 * tp / denom_f1 if denom_f1 else 0.0,
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "recall": tp / (tp + fn) if tp + fn else 0.0,
    }


def logloss(y_true: Any, prob: Any, eps: float = LOGLOSS_EPS) -> float:
    """Mean binary cross-entropy, probabilities clipped to ``[eps, 1 - eps]``."""
    y, p = _inputs(y_true, prob)
    p = np.clip(p.astype(np.float64), eps, 1.0 - eps)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def binary_metrics(y_true: Any, prob: Any, threshold: float = 0.5) -> dict[str, float]:
    """All metrics of a binary fake/real evaluation.

    Keys: ``auc`` (ROC AUC, ties counted half), ``ap`` (average precision, sklearn's step-wise
    definition), ``eer`` (equal error rate, linearly interpolated on the ROC curve), ``logloss``
    (clipped at ``LOGLOSS_EPS``), and ``acc``, ``f1``, ``precision``, ``recall`` at
    ``prob >= threshold``; plus ``n``, ``pos_rate`` and ``threshold``.

    With a single class in ``y_true``, ``auc``, ``ap`` and ``eer`` are undefined and returned as
    ``float('nan')`` (the other keys stay valid); no exception, no warning. Inputs: array-likes or
    torch tensors (any device) of equal length; labels must be 0/1; probabilities must be finite.
    """
    y, p = _inputs(y_true, prob)
    p64 = p.astype(np.float64)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    out: dict[str, float] = {"n": float(y.size), "pos_rate": n_pos / y.size, "threshold": float(threshold)}
    if n_pos and n_neg:
        _, tp, fp = _sweep(y, p64)
        tpr = np.r_[0.0, tp / n_pos]
        fpr = np.r_[0.0, fp / n_neg]
        out["auc"] = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1])) / 2.0)  # trapezoids
        precision = tp / (tp + fp)
        out["ap"] = float(np.sum(np.diff(tpr) * precision))
        out["eer"] = _eer(fpr, 1.0 - tpr)
    else:
        out["auc"] = out["ap"] = out["eer"] = math.nan
    out["logloss"] = logloss(y, p64)
    out.update(label_metrics(y, (p64 >= threshold).astype(np.int64)))
    return out


def _eer(fpr: np.ndarray, fnr: np.ndarray) -> float:
    """Rate where FPR == FNR, interpolated on the segment of the ROC polyline where FNR - FPR changes sign."""
    diff = fnr - fpr  # starts at 1 (nothing predicted positive), ends at -1; non-increasing
    i = int(np.flatnonzero(diff <= 0)[0])
    if diff[i] == 0 or i == 0:
        return float(fpr[i])
    # Crossing between points i-1 (diff > 0) and i (diff < 0).
    t = diff[i - 1] / (diff[i - 1] - diff[i])
    return float(fpr[i - 1] + t * (fpr[i] - fpr[i - 1]))


def _between(hi: float, lo: float) -> float:
    """A threshold t with lo < t <= hi, midway when floats allow; float32-exact when possible.

    A float32-representable t gives the same decisions whether ``prob >= t`` runs in float32
    (torch with a Python scalar) or float64 (numpy).
    """
    mid = hi / 2.0 + lo / 2.0
    mid32 = float(np.float32(mid))
    if lo < mid32 <= hi:
        return mid32
    if lo < mid <= hi:
        return mid
    return hi


def best_f1_threshold(y_true: Any, prob: Any) -> tuple[float, float]:
    """Threshold maximising F1 of ``prob >= t``, and that F1. Exact, O(n log n).

    Every distinct score s is a candidate cut (predict positive for ``prob >= s``, so tied scores
    move together). The returned threshold sits midway between the winning score and the next lower
    distinct score (rounded to float32 when that stays strictly between them), so ``prob >= t``
    reproduces exactly the winning F1; when the winning cut is the lowest score, t is that score.
    Among cuts with equal F1 the highest threshold (fewest positives) wins.

    One class only: all positive -> (lowest score, 1.0); all negative -> F1 is 0 for every
    threshold and the returned threshold lies above every score (nothing predicted fake), f1 0.0.
    """
    y, p = _inputs(y_true, prob)
    p64 = p.astype(np.float64)
    n_pos = int(y.sum())
    if n_pos == 0:
        return _just_above(float(p64.max())), 0.0
    scores, tp, fp = _sweep(y, p64)
    f1 = 2.0 * tp / (tp + fp + n_pos)  # 2tp / (2tp + fp + fn) with fn = n_pos - tp
    k = int(np.argmax(f1))  # first maximum = highest threshold
    # Midway to the next lower distinct score; the lowest score itself when every image is positive.
    t = _between(float(scores[k]), float(scores[k + 1])) if k + 1 < scores.size else float(scores[k])
    return t, float(f1[k])


def _just_above(score: float) -> float:
    """The smallest threshold t > ``score`` (a float32 value where one lies above it): ``score >= t`` is false."""
    t = float(np.nextafter(np.float32(score), np.float32(np.inf)))
    return t if t > score else float(np.nextafter(score, np.inf))


def real_fpr_threshold(y_true: Any, prob: Any, max_fpr: float) -> float:
    """The lowest threshold that calls at most ``max_fpr`` of the real items (label 0) fake.

    With n real scores, at most floor(max_fpr * n) of them reach ``prob >= t``: t lies just above the
    next one down (tied scores stay together, so ties can leave fewer). No real item -> 0.0.
    """
    if not 0.0 <= max_fpr < 1.0:
        raise ValueError(f"max_fpr must be in [0, 1), not {max_fpr}")
    y, p = _inputs(y_true, prob)
    real = np.sort(p[y == 0].astype(np.float64))[::-1]
    if not real.size:
        return 0.0
    allowed = int(math.floor(max_fpr * real.size + 1e-9))  # 1e-9: 0.05 * 200 must allow 10, not 9
    return _just_above(float(real[allowed])) if allowed < real.size else float(real[-1])


def auc_standard_error(auc: float, n_pos: int, n_neg: int) -> float:
    """Standard error of a ROC AUC (Hanley & McNeil 1982), from the AUC and the class counts.

    NaN when either class is empty or the AUC is NaN.
    """
    if not n_pos or not n_neg or auc != auc:
        return math.nan
    q1, q2 = auc / (2.0 - auc), 2.0 * auc * auc / (1.0 + auc)
    var = (auc * (1 - auc) + (n_pos - 1) * (q1 - auc * auc) + (n_neg - 1) * (q2 - auc * auc)) / (n_pos * n_neg)
    return math.sqrt(max(var, 0.0))
