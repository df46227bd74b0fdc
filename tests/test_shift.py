"""The score-shift check (shift.py): silent on test sets drawn like the OOF scores, loud on others."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from deepfake_pipeline.shift import check_score_shift, fold_score_shift, ks_critical, score_shift


def scores(rng: np.random.Generator, n: int, fake: bool) -> np.ndarray:
    """Calibrated probabilities of a confident model: reals near 0, fakes near 1 (logit-normal)."""
    return 1 / (1 + np.exp(-rng.normal(3.0 if fake else -3.0, 1.5, n)))


def test_ks_critical_matches_the_table() -> None:
    assert ks_critical(0.05) == pytest.approx(1.358, abs=1e-3)
    assert ks_critical(0.001) == pytest.approx(1.949, abs=1e-3)


@pytest.mark.parametrize("share", [0.0, 0.2, 0.5, 0.8, 1.0])
def test_a_test_set_drawn_like_the_oof_fits_and_its_share_is_found(share: float) -> None:
    false_alarms = 0
    for seed in range(20):
        rng = np.random.default_rng(seed)
        n_fake = round(400 * share)
        test = np.concatenate([scores(rng, n_fake, True), scores(rng, 400 - n_fake, False)])
        result = score_shift(test, scores(rng, 300, False), scores(rng, 300, True))
        assert result is not None
        false_alarms += result.shifted
        assert result.share == pytest.approx(share, abs=0.08)
    assert false_alarms <= 1  # alpha = 0.001 per check


def test_scores_where_the_oof_never_were_are_flagged() -> None:
    """Unseen fakes scored in the middle (the folds unsure), beside reals that score as in OOF."""
    rng = np.random.default_rng(0)
    test = np.concatenate([scores(rng, 100, False), rng.uniform(0.2, 0.6, 100)])
    result = score_shift(test, scores(rng, 300, False), scores(rng, 300, True))
    assert result is not None and result.shifted
    assert result.distance > result.expected


def test_reals_that_all_score_higher_than_the_oof_reals_are_flagged() -> None:
    """Reals from another source, pushed towards fake: no mix of the OOF classes has their shape."""
    rng = np.random.default_rng(1)
    test = 1 / (1 + np.exp(-rng.normal(0.5, 0.5, 200)))
    assert score_shift(test, scores(rng, 300, False), scores(rng, 300, True)).shifted


def test_too_few_items_give_no_verdict() -> None:
    rng = np.random.default_rng(2)
    assert score_shift(scores(rng, 10, False), scores(rng, 300, False), scores(rng, 300, True)) is None
    assert score_shift(scores(rng, 100, False), scores(rng, 300, False), scores(rng, 5, True)) is None


def test_the_check_warns_from_a_run_oof_and_ignores_self_made_fakes(tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    rng = np.random.default_rng(3)
    real, fake = scores(rng, 200, False), scores(rng, 200, True)
    # Self-made fakes scored like reals: were they part of the reference, its "fake" scores would be a
    # third real-like, and a half-and-half test set would fit a mix of 75% "fake".
    made = scores(rng, 200, False)
    oof = pd.DataFrame({"Id": [f"i{k}" for k in range(600)], "target": [0] * 200 + [1] * 400,
                        "prob": np.concatenate([real, fake, made]), "made_by": [""] * 400 + ["lpc"] * 200})
    oof_csv = tmp_path / "oof.csv"
    oof.to_csv(oof_csv, index=False)
    with caplog.at_level(logging.WARNING, logger="deepfake_pipeline.shift"):
        fits = check_score_shift(np.concatenate([scores(rng, 200, False), scores(rng, 200, True)]), oof_csv, 0.5,
                                 "predict")
    assert fits is not None and not fits.shifted and fits.share == pytest.approx(0.5, abs=0.06)
    assert not caplog.records
    with caplog.at_level(logging.WARNING, logger="deepfake_pipeline.shift"):
        shifted = check_score_shift(rng.uniform(0.3, 0.7, 200), oof_csv, 0.5, "--input")
    assert shifted is not None and shifted.shifted
    assert "--input: these scores match no mix" in caplog.text
    assert check_score_shift(real, tmp_path / "missing.csv", 0.0, "predict") is None


def fold_scores(rng: np.random.Generator, signal: np.ndarray, folds: int, noise: float) -> np.ndarray:
    """(folds, n) calibrated probabilities: each fold model sees the items' signal through its own noise."""
    return 1 / (1 + np.exp(-(signal[None, :] + rng.normal(0.0, noise, (folds, len(signal))))))


def test_each_fold_model_is_checked_against_the_oof_scores_it_is_like() -> None:
    """OOF scores come from one model each. The fold ensemble's mean averages the models' own noise
    away, so its scores spread more narrowly than the OOF scores of the same items: checked on the
    ensemble, a test set drawn exactly like the training data sits off every mix by more than
    sampling explains (a bias, here still under the warning's 0.10 floor; the lfw_swap run read KS
    0.10 against 0.09 by chance on its own test set); each fold alone does not."""
    rng = np.random.default_rng(4)
    noise = 4.0  # the fold models disagree a lot; the items' own signal is +-3 with spread 1

    def signal(n: int, fake: bool) -> np.ndarray:
        return rng.normal(3.0 if fake else -3.0, 1.0, n)

    oof_real, oof_fake = (fold_scores(rng, signal(2000, f), 1, noise)[0] for f in (False, True))
    by_fold = fold_scores(rng, np.concatenate([signal(1000, False), signal(1000, True)]), 5, noise)
    ensemble = 1 / (1 + np.exp(-np.log(by_fold / (1 - by_fold)).mean(axis=0)))
    on_ensemble = score_shift(ensemble, oof_real, oof_fake)
    per_fold = fold_score_shift(by_fold, oof_real, oof_fake)
    assert on_ensemble is not None and per_fold is not None
    assert on_ensemble.distance > on_ensemble.expected  # off by more than sampling explains ...
    assert per_fold.distance < per_fold.expected / 2  # ... where each fold model is not
    assert not per_fold.shifted and per_fold.folds == 5 and per_fold.folds_shifted == 0
    assert per_fold.share == pytest.approx(0.5, abs=0.05)


def test_the_fold_verdict_is_the_majority_and_reports_the_median_fold() -> None:
    rng = np.random.default_rng(5)
    real, fake = scores(rng, 300, False), scores(rng, 300, True)
    fits = np.concatenate([scores(rng, 200, False), scores(rng, 200, True)])
    off = rng.uniform(0.3, 0.7, 400)
    two_off = fold_score_shift(np.stack([fits, off, fits, off, fits]), real, fake)
    three_off = fold_score_shift(np.stack([off, off, fits, off, fits]), real, fake)
    assert two_off is not None and three_off is not None
    assert (two_off.shifted, two_off.folds_shifted) == (False, 2)
    assert (three_off.shifted, three_off.folds_shifted) == (True, 3)
    alone = [score_shift(row, real, fake).distance for row in (off, fits)]
    assert three_off.distance == pytest.approx(alone[0]) and two_off.distance == pytest.approx(alone[1])
    one = fold_score_shift(fits[None, :], real, fake)
    assert one == score_shift(fits, real, fake)  # one fold: the plain check
    # An even count: one of two off is no majority, and the figures shown are the fold that fits.
    tie = fold_score_shift(np.stack([off, fits]), real, fake)
    assert tie is not None and not tie.shifted and tie.folds_shifted == 1
    assert tie.distance == pytest.approx(alone[1]) and tie.distance < max(tie.expected, 0.10)


def test_the_check_takes_one_row_per_fold_and_says_how_many_are_off(tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    rng = np.random.default_rng(6)
    oof = pd.DataFrame({"Id": [f"i{k}" for k in range(400)], "target": [0] * 200 + [1] * 200,
                        "prob": np.concatenate([scores(rng, 200, False), scores(rng, 200, True)])})
    oof.to_csv(tmp_path / "oof.csv", index=False)
    off = np.stack([rng.uniform(0.3, 0.7, 200) for _ in range(3)])
    with caplog.at_level(logging.WARNING, logger="deepfake_pipeline.shift"):
        result = check_score_shift(off, tmp_path / "oof.csv", 0.5, "predict")
    assert result is not None and result.shifted and result.as_dict()["folds"] == 3
    assert "3 of 3 fold models" in caplog.text


SLOPES = (0.5, 0.8, 1.0, 1.4, 2.0)  # how far each fold model pushes its confident scores (its Platt slope)


def near_perfect_folds(rng: np.random.Generator, n_oof: int, n_test: int) -> tuple[pd.DataFrame, np.ndarray]:
    """A near-perfect detector's ``oof.csv`` (each fold model scoring its own validation items) and
    each fold model's scores of one test set drawn like the training data (half fake), one row per fold."""

    def probs(slope: float, signal: np.ndarray) -> np.ndarray:
        return 1 / (1 + np.exp(-slope * signal))

    def signal(n: int) -> tuple[np.ndarray, np.ndarray]:
        target = np.arange(n) % 2
        return target, np.where(target == 1, 6.0, -6.0) + rng.normal(0.0, 1.5, n)

    parts, test_rows = [], []
    test_target, test_signal = signal(n_test)
    for k, slope in enumerate(SLOPES):
        target, own = signal(n_oof)
        parts.append(pd.DataFrame({"Id": [f"f{k}-{i}" for i in range(n_oof)], "fold": k, "target": target,
                                   "prob": probs(slope, own)}))
        test_rows.append(probs(slope, test_signal))
    return pd.concat(parts, ignore_index=True), np.stack(test_rows)


def test_each_fold_model_is_compared_with_the_oof_scores_it_made(tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    """Fold models differ in how far they push confident scores to 0 and 1. A near-perfect detector's
    scores sit nearly all in those tails, so one fold model's test scores against all folds' pooled
    OOF scores look shifted though the test set is drawn like the training data (the lfw_swap run:
    4 of 5 folds flagged, calls exact). Against its own fold's OOF scores each fits, at the true share;
    a test set that is really off is still flagged."""
    rng = np.random.default_rng(7)
    oof, by_fold = near_perfect_folds(rng, 400, 600)
    oof.to_csv(tmp_path / "oof.csv", index=False)
    pooled = check_score_shift(by_fold, tmp_path / "oof.csv", 0.5, "predict")
    assert pooled is not None and pooled.shifted and pooled.own_reference == 0  # the false alarm guarded against
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="deepfake_pipeline.shift"):
        own = check_score_shift(by_fold, tmp_path / "oof.csv", 0.5, "predict", folds=range(5))
    assert own is not None and not own.shifted and own.folds_shifted == 0 and own.own_reference == 5
    assert own.share == pytest.approx(0.5, abs=0.06)
    assert not caplog.records
    off = np.stack([rng.uniform(0.3, 0.7, 600) for _ in SLOPES])
    still = check_score_shift(off, tmp_path / "oof.csv", 0.5, "predict", folds=range(5))
    assert still is not None and still.shifted and still.folds_shifted == 5
    # Fold numbers that do not match the rows: a warning and the pooled reference, never an abort.
    with caplog.at_level(logging.WARNING, logger="deepfake_pipeline.shift"):
        mismatched = check_score_shift(by_fold, tmp_path / "oof.csv", 0.5, "predict", folds=range(3))
    assert mismatched == pooled and "3 fold numbers for 5 rows" in caplog.text


def test_a_fold_without_enough_oof_items_of_its_own_is_compared_with_the_pooled_ones() -> None:
    rng = np.random.default_rng(8)
    real, fake = scores(rng, 300, False), scores(rng, 300, True)
    fits = np.concatenate([scores(rng, 200, False), scores(rng, 200, True)])
    off = rng.uniform(0.3, 0.7, 400)
    tiny = (scores(rng, 5, False), scores(rng, 5, True))  # too few for a verdict of its own
    result = fold_score_shift(np.stack([fits, off]), real, fake, own=[tiny, None])
    pooled = [score_shift(row, real, fake) for row in (fits, off)]
    assert result is not None and result.folds == 2 and result.folds_shifted == 1 and result.own_reference == 0
    assert result.distance == pytest.approx(pooled[0].distance)
    # A fold with a reference of its own is checked against it alone.
    own = (scores(rng, 300, False), scores(rng, 300, True))
    assert fold_score_shift(fits[None, :], real, fake, own=[own]) == replace(score_shift(fits, *own), own_reference=1)
    with pytest.raises(ValueError, match="2 fold rows but 1 own references"):
        fold_score_shift(np.stack([fits, off]), real, fake, own=[tiny])
