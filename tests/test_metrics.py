"""Metrics against sklearn and the F1 threshold search against a brute-force reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn import metrics as skm

from deepfake_pipeline.metrics import best_f1_threshold, binary_metrics, label_metrics, logloss, real_fpr_threshold


def _f1_at(y: np.ndarray, p: np.ndarray, t: float) -> float:
    pred = p >= t
    tp = int(np.sum(pred & (y == 1)))
    denom = 2 * tp + int(np.sum(pred & (y == 0))) + int(np.sum(~pred & (y == 1)))
    return 2 * tp / denom if denom else 0.0


def threshold_for_f1_bruteforce(y: np.ndarray, p: np.ndarray) -> tuple[float, float]:
    """Reference: try every observed score and 'above all' as the threshold, naively."""
    candidates = [*np.unique(p).tolist(), math.inf]
    best_t, best_f1 = math.inf, -1.0
    for t in candidates:
        f1 = _f1_at(y, p, t)
        if f1 > best_f1:
            best_t, best_f1 = t, f1
    return best_t, best_f1


def _random_case(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    n = int(rng.integers(1, 40))
    y = rng.integers(0, 2, n)
    kind = rng.integers(0, 4)
    if kind == 0:  # continuous scores
        p = rng.random(n)
    elif kind == 1:  # heavy ties
        p = rng.integers(0, 4, n) / 3.0
    elif kind == 2:  # float32 scores, informative
        p = np.clip(0.3 * y + 0.7 * rng.random(n), 0, 1).astype(np.float32)
    else:  # adjacent floats: the midpoint must still separate them
        base = rng.random()
        p = np.where(rng.random(n) < 0.5, base, np.nextafter(base, 2.0))
    return y, p


def test_best_f1_matches_bruteforce_on_random_inputs() -> None:
    rng = np.random.default_rng(0)
    for i in range(600):
        y, p = _random_case(rng)
        t, f1 = best_f1_threshold(y, p)
        _, ref = threshold_for_f1_bruteforce(y, p)
        assert f1 == pytest.approx(ref, abs=1e-12), (y, p)
        # Applying the returned threshold reproduces the F1, in float64 and in the input dtype.
        assert _f1_at(y, p.astype(np.float64), t) == pytest.approx(f1, abs=1e-12)
        assert _f1_at(y, p, p.dtype.type(t)) == pytest.approx(f1, abs=1e-12)
        if y.sum() and i % 20 == 0:  # sklearn is slow per call; spot-check
            assert skm.f1_score(y, (p >= t).astype(int)) == pytest.approx(f1, abs=1e-12)


def test_best_f1_matches_bruteforce_on_larger_inputs() -> None:
    rng = np.random.default_rng(7)
    for ties in (False, True):
        y = rng.integers(0, 2, 3000)
        p = np.clip(0.2 * y + 0.8 * rng.random(3000), 0, 1)
        if ties:
            p = np.round(p, 2)
        t, f1 = best_f1_threshold(y, p)
        assert f1 == pytest.approx(threshold_for_f1_bruteforce(y, p)[1], abs=1e-12)
        assert _f1_at(y, p, t) == pytest.approx(f1, abs=1e-12)


def test_best_f1_threshold_is_midway_and_ties_move_together() -> None:
    y = np.array([0, 1, 1, 0, 1])
    p = np.array([0.1, 0.4, 0.4, 0.4, 0.9])
    t, f1 = best_f1_threshold(y, p)
    # cuts: >=0.9 -> 2/4; >=0.4 -> tp3 fp1 -> 6/7; >=0.1 -> 6/8
    assert f1 == pytest.approx(6 / 7)
    assert 0.1 < t <= 0.4 and t == pytest.approx(0.25)
    # Lowest score wins: the threshold is that score.
    t, f1 = best_f1_threshold([1, 1, 0], [0.2, 0.7, 0.9])
    assert f1 == pytest.approx(0.8) and t == pytest.approx(0.2)


def test_best_f1_one_class_and_tiny() -> None:
    t, f1 = best_f1_threshold([0, 0, 0], [0.2, 0.9, 1.0])
    assert f1 == 0.0 and t > 1.0 and np.float32(t) > 1.0
    t, f1 = best_f1_threshold([1, 1], [0.3, 0.8])
    assert f1 == 1.0 and t == pytest.approx(0.3)
    assert best_f1_threshold([1], [0.5]) == (0.5, 1.0)
    t, f1 = best_f1_threshold([0], [0.0])
    assert f1 == 0.0 and t > 0.0
    with pytest.raises(ValueError):
        best_f1_threshold([], [])
    with pytest.raises(ValueError):
        best_f1_threshold([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError):
        best_f1_threshold([0, 1], [0.1, float("nan")])
    with pytest.raises(ValueError):
        best_f1_threshold([0, 1], [0.1])


def test_binary_metrics_against_sklearn() -> None:
    rng = np.random.default_rng(1)
    for i in range(60):
        n = int(rng.integers(2, 300))
        y = rng.integers(0, 2, n)
        y[0], y[1] = 0, 1
        p = rng.random(n) if i % 2 else np.round(rng.random(n), 1)  # ties on every other case
        p = np.clip(0.5 * p + 0.4 * y * rng.random(n), 0.0, 1.0)
        thr = float(rng.choice([0.5, 0.3, 0.7]))
        m = binary_metrics(y, p, threshold=thr)
        pred = (p >= thr).astype(int)
        assert m["auc"] == pytest.approx(skm.roc_auc_score(y, p), abs=1e-12)
        assert m["ap"] == pytest.approx(skm.average_precision_score(y, p), abs=1e-12)
        assert m["logloss"] == pytest.approx(skm.log_loss(y, np.clip(p, 1e-15, 1 - 1e-15)), rel=1e-9)
        assert m["acc"] == pytest.approx(skm.accuracy_score(y, pred))
        assert m["f1"] == pytest.approx(skm.f1_score(y, pred, zero_division=0))
        assert m["precision"] == pytest.approx(skm.precision_score(y, pred, zero_division=0))
        assert m["recall"] == pytest.approx(skm.recall_score(y, pred, zero_division=0))
        fpr, tpr, _ = skm.roc_curve(y, p)
        fnr = 1 - tpr
        k = int(np.nanargmin(np.abs(fnr - fpr)))  # DeepfakeBench's nearest-point EER
        assert abs(m["eer"] - (fpr[k] + fnr[k]) / 2) <= abs(fnr[k] - fpr[k]) / 2 + 1e-12
        assert 0.0 <= m["eer"] <= 1.0


def test_binary_metrics_edge_cases() -> None:
    m = binary_metrics([1, 1, 1], [0.2, 0.6, 0.9])
    assert math.isnan(m["auc"]) and math.isnan(m["ap"]) and math.isnan(m["eer"])
    assert m["acc"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert m["logloss"] == pytest.approx(skm.log_loss([1, 1, 1], [0.2, 0.6, 0.9], labels=[0, 1]))
    m = binary_metrics([0, 0], [0.1, 0.2])
    assert math.isnan(m["auc"]) and m["f1"] == 0.0 and m["precision"] == 0.0 and m["acc"] == 1.0
    perfect = binary_metrics([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9])
    assert perfect["auc"] == 1.0 and perfect["ap"] == 1.0 and perfect["eer"] == 0.0
    assert binary_metrics([0, 1], [0.5, 0.5])["eer"] == pytest.approx(0.5)
    # Clipping keeps the log-loss finite for confident mistakes.
    assert math.isfinite(logloss([1, 0], [0.0, 1.0]))
    assert label_metrics([1, 0, 1], [True, False, False]) == {
        "acc": pytest.approx(2 / 3),
        "f1": pytest.approx(2 / 3),
        "precision": 1.0,
        "recall": 0.5,
    }


def test_torch_inputs() -> None:
    torch = pytest.importorskip("torch")
    y = torch.tensor([0, 1, 1, 0])
    p = torch.tensor([0.1, 0.8, 0.6, 0.4], dtype=torch.bfloat16)
    assert binary_metrics(y, p)["auc"] == 1.0
    t, f1 = best_f1_threshold(y, p)
    assert f1 == 1.0 and bool(((p.float() >= t).long() == y).all())


def test_auc_standard_error_matches_hanley_mcneil_and_the_bootstrap() -> None:
    from deepfake_pipeline.metrics import auc_standard_error

    # Hanley & McNeil (1982) by hand for AUC 0.8, 50 + 50 cases: q1 = 2/3, q2 = 32/45,
    # var = (0.16 + 49 (q1 - 0.64) + 49 (q2 - 0.64)) / 2500
    assert auc_standard_error(0.8, 50, 50) == pytest.approx(math.sqrt((0.16 + 49 * (2 / 3 - 0.64) + 49 * (32 / 45 - 0.64))
                                                                      / 2500))
    assert math.isnan(auc_standard_error(0.8, 0, 10)) and auc_standard_error(1.0, 10, 10) == 0.0
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(300), np.zeros(300)].astype(int)
    p = np.r_[rng.normal(1.0, 1, 300), rng.normal(0, 1, 300)]
    auc = binary_metrics(y, p)["auc"]
    boot = []
    for _ in range(300):
        i = np.r_[rng.integers(0, 300, 300), rng.integers(300, 600, 300)]
        boot.append(binary_metrics(y[i], p[i])["auc"])
    assert auc_standard_error(auc, 300, 300) == pytest.approx(np.std(boot), rel=0.2)


def test_real_fpr_threshold_calls_at_most_that_share_of_the_reals() -> None:
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(200, int), np.ones(50, int)]
    p = np.r_[rng.random(200), rng.random(50) * 0.1]  # the fakes play no part
    for fpr in (0.0, 0.01, 0.05, 0.1, 0.5):
        t = real_fpr_threshold(y, p, fpr)
        assert np.sum(p[y == 0] >= t) == int(round(fpr * 200))  # distinct scores: exactly that many (0.05 -> 10)
        below = np.sort(p[y == 0])[::-1][int(round(fpr * 200))]
        assert below < t <= np.nextafter(np.float32(below), np.float32(1.0))  # the lowest such threshold
    ties = np.array([0.9, 0.9, 0.5])
    assert np.sum(ties >= real_fpr_threshold(np.zeros(3, int), ties, 0.34)) == 0  # tied reals stay together
    assert real_fpr_threshold(np.ones(3, int), ties, 0.05) == 0.0  # no real item: everything is called
    with pytest.raises(ValueError, match="max_fpr"):
        real_fpr_threshold(y, p, 1.0)
