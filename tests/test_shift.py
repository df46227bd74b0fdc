"""The score-shift check (shift.py): silent on test sets drawn like the OOF scores, loud on others."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from deepfake_pipeline.shift import check_score_shift, ks_critical, score_shift


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
