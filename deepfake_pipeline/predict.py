"""Stage 4: test-time augmentation, fold ensemble, ``test_probs.csv`` and ``submission.csv``.

Each fold model's logits are averaged over the TTA views and calibrated (``trained.py``); the
calibrated log-odds are averaged over the folds and passed through a sigmoid; the label uses the
pooled-OOF threshold from ``threshold.json``. A test image that was unreadable at alignment gets the
training prior, labelled by the same rule (``submission.prior_answer``, as in safe inference), and is
listed in ``predict_problems.csv``, so the submission always has every test Id exactly once; it is
validated before it is written. Test images made with other stage-1 settings than the fold models'
training images are refused.

The threshold was fitted on single fold models' out-of-fold probabilities, and it labels the mean of
the folds' calibrated log-odds, which is less extreme where the folds disagree. ``predict.json``
measures what that does on each test set: the share each fold alone would call fake beside the
ensemble's share, and how many labels the ensemble changes against the folds' majority. It also
records whether each fold model's test scores fit a mix of the OOF real and fake scores
(``shift.py``; single models on both sides), and the log warns when most do not: the calls at the OOF
threshold are then not to be trusted.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd

from .artifacts import RunPaths, load_faces, per_id_rows, usable_faces
from .config import Config
from .dataset import load_layout
from .errors import PipelineError
from .images import atomic_write_text, save_csv
from .runtime import Runtime
from .shift import check_score_shift
from .submission import call_fake, prior_answer, write_submission
from .trained import (
    check_test_stage1,
    ensemble_logits,
    finished_folds,
    oof_is_current,
    pool_oof,
    sigmoid,
    threshold_rule,
)

log = logging.getLogger(__name__)


def run_predict(cfg: Config, runtime: Runtime, paths: RunPaths, force: bool = False) -> None:
    if not runtime.is_main:
        return  # inference is cheap next to training; rank 0 does it alone
    folds = finished_folds(paths, cfg.finetune.folds)
    if len(folds) < cfg.finetune.folds:
        raise PipelineError(
            f"predict: {len(folds)}/{cfg.finetune.folds} folds finished; finish finetune first "
            "(safe_inference.py answers from any finished subset)"
        )
    if not oof_is_current(cfg, paths):
        log.info("predict: the OOF calibration was made for other TTA views or weights, or the threshold by "
                 "another rule (finetune.max_real_fpr): refitting what changed")
        pool_oof(cfg, paths, runtime)
    record = json.loads(paths.threshold_json.read_text())
    threshold = float(record["threshold"])
    layout = load_layout(cfg.data, check_images=False)
    test_ids = list(layout.test.frame["Id"])
    faces = load_faces(cfg)
    usable = usable_faces(faces, "test")
    check_test_stage1(cfg, paths, folds, usable, "predict")
    prior_prob, prior_label = prior_answer(float(layout.train.frame["target"].mean()), threshold)
    ids, per_fold = per_id_rows(usable["Id"], ensemble_logits(cfg, paths, runtime, folds, list(usable["path"]),
                                                              per_fold=True))  # one value per Id and fold
    prob = dict(zip(ids, sigmoid(per_fold.mean(axis=0))))
    problems = [i for i in test_ids if i not in prob]
    if problems:
        log.warning("predict: %d test input(s) without a stage-1 image get the train prior %.3f (class %d), e.g. %s",
                    len(problems), prior_prob, prior_label, problems[0])
        reasons = faces.drop_duplicates("Id").set_index("Id")["note"] if "note" in faces.columns else {}
        save_csv(paths.root / "predict_problems.csv", pd.DataFrame({
            "Id": problems, "reason": [f"unreadable at stage 1: {reasons.get(i, '')}" for i in problems],
            "prob": prior_prob, "target_feature": prior_label,
        }))
    probs = pd.DataFrame({"Id": test_ids, "prob": [prob.get(i, prior_prob) for i in test_ids]})
    save_csv(paths.test_probs_csv, probs)
    submission = write_submission(probs, threshold, test_ids, paths.submission_csv)
    agreement = fold_agreement(per_fold, threshold)
    fake_share = float(submission["target_feature"].mean())
    shift = check_score_shift(sigmoid(per_fold), paths.oof_csv, fake_share, "predict", folds)  # each model alone
    atomic_write_text(paths.root / "predict.json", json.dumps(
        {"threshold": threshold, "folds": folds, **agreement, "score_shift": shift.as_dict() if shift else None},
        indent=2))
    if agreement["n"]:
        log.info("predict: alone, the folds would call %s fake; the ensemble %.1f%% (%d label(s) against the folds' "
                 "majority; folds disagree on %.1f%%) -> predict.json",
                 "/".join(f"{100 * v:.1f}%" for v in agreement["fold_fake_share"]),
                 100 * agreement["ensemble_fake_share"], agreement["ensemble_against_majority"],
                 100 * agreement["folds_disagree"])
    log.info("predict: %d test %s, %d folds x %d TTA views, threshold %.4f, %d predicted fake (%.1f%%; OOF "
             "%.1f%%, expected from the calibrated probabilities %.1f%%) -> %s", len(test_ids),
             "clips" if cfg.data.modality == "audio" else "images", len(folds),
             len(cfg.predict.tta), threshold, int(submission["target_feature"].sum()), 100 * fake_share,
             100 * record.get("oof_fake_share", float("nan")), 100 * float(probs["prob"].mean()),
             paths.submission_csv)
    check_fake_share(fake_share, float(probs["prob"].mean()), len(test_ids), threshold_rule(record.get("max_real_fpr")))


def fold_agreement(per_fold: np.ndarray, threshold: float) -> dict[str, object]:
    """How the ensemble's labels relate to each fold's own, for the (n_folds, n_items) calibrated
    log-odds of the items every fold judged: the share each fold alone calls fake at ``threshold``,
    the ensemble's share, and how many items the ensemble labels against the folds' majority (the
    mean log-odds cross the threshold where the folds' votes do not)."""
    if per_fold.size == 0:
        return {"n": 0}
    votes = np.asarray(call_fake(sigmoid(per_fold), threshold))
    ensemble = np.asarray(call_fake(sigmoid(per_fold.mean(axis=0)), threshold))
    majority = votes.mean(axis=0)
    decided = majority != 0.5  # an even split has no majority
    return {
        "n": int(per_fold.shape[1]),
        "fold_fake_share": [float(v) for v in votes.mean(axis=1)],
        "ensemble_fake_share": float(ensemble.mean()),
        "folds_disagree": float(np.mean((majority > 0) & (majority < 1))),
        "ensemble_against_majority": int(np.sum(decided & (ensemble != (majority > 0.5)))),
        "mean_abs_logodds": {"folds": float(np.abs(per_fold).mean()), "ensemble": float(np.abs(per_fold.mean(0)).mean())},
    }


def check_fake_share(called: float, expected: float, n: int, rule: str = "the OOF F1 threshold",
                     what: str = "predict") -> bool:
    """Warn when the share called fake is far from what the calibrated probabilities expect.

    The mean calibrated probability estimates the test set's share of fakes; the threshold should
    call roughly that share fake. Far off (more than 4 standard errors of a share, and 10 points),
    the threshold or the calibration does not fit these test images (another source, another
    alignment): the probabilities still rank, the labels may not. ``rule`` names how the threshold
    was chosen (:func:`threshold_rule`): a cap on the real items' false alarms
    (``finetune.max_real_fpr``) calls more fake than the probabilities expect by design, so the
    warning names the cap for the reader to weigh.
    """
    se = max(np.sqrt(max(expected * (1 - expected), 1e-6) / max(n, 1)), 1e-9)
    off = abs(called - expected) > max(4 * se, 0.10)
    if off:
        log.warning("%s: %.1f%% of the test images are called fake, but their calibrated probabilities "
                    "expect %.1f%%: %s may not suit this test set (check test_probs.csv)",
                    what, 100 * called, 100 * expected, rule)
    return not off
