"""Stage 4: test-time augmentation, fold ensemble, ``test_probs.csv`` and ``submission.csv``.

Each fold model's logits are averaged over the TTA views and calibrated (``trained.py``); the
calibrated log-odds are averaged over the folds and passed through a sigmoid; the label uses the
pooled-OOF threshold from ``threshold.json``, fitted on the same kind of predictions. A test image
that was unreadable at alignment gets the training prior (and is listed in ``predict_problems.csv``),
so the submission always has every test Id exactly once; it is validated before it is written.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd

from .artifacts import RunPaths, load_faces, per_id, usable_faces
from .config import Config
from .dataset import load_layout
from .errors import PipelineError
from .images import save_csv
from .runtime import Runtime
from .submission import write_submission
from .trained import ensemble_logits, finished_folds, oof_is_current, pool_oof, sigmoid

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
        log.info("predict: the OOF calibration was made for other TTA views or weights: refitting it")
        pool_oof(cfg, paths, runtime)
    record = json.loads(paths.threshold_json.read_text())
    threshold = float(record["threshold"])
    layout = load_layout(cfg.data, check_images=False)
    test_ids = list(layout.test.frame["Id"])
    faces = load_faces(cfg)
    usable = usable_faces(faces, "test")
    prior = float(layout.train.frame["target"].mean())
    ids, logits = per_id(usable["Id"], ensemble_logits(cfg, paths, runtime, folds, list(usable["path"])))
    prob = dict(zip(ids, sigmoid(logits)))
    problems = [i for i in test_ids if i not in prob]
    if problems:
        log.warning("predict: %d test image(s) without an aligned face get the train prior %.3f, e.g. %s",
                    len(problems), prior, problems[0])
        reasons = faces.set_index("Id")["note"] if "note" in faces.columns else {}
        save_csv(paths.root / "predict_problems.csv", pd.DataFrame({
            "Id": problems, "reason": [f"unreadable at alignment: {reasons.get(i, '')}" for i in problems],
            "prob": prior,
        }))
    probs = pd.DataFrame({"Id": test_ids, "prob": [prob.get(i, prior) for i in test_ids]})
    save_csv(paths.test_probs_csv, probs)
    submission = write_submission(probs, threshold, test_ids, paths.submission_csv)
    fake_share = float(submission["target_feature"].mean())
    log.info("predict: %d test %s, %d folds x %d TTA views, threshold %.4f, %d predicted fake (%.1f%%; OOF "
             "%.1f%%, expected from the calibrated probabilities %.1f%%) -> %s", len(test_ids),
             "clips" if cfg.data.modality == "audio" else "images", len(folds),
             len(cfg.predict.tta), threshold, int(submission["target_feature"].sum()), 100 * fake_share,
             100 * record.get("oof_fake_share", float("nan")), 100 * float(probs["prob"].mean()),
             paths.submission_csv)
    check_fake_share(fake_share, float(probs["prob"].mean()), len(test_ids))


def check_fake_share(called: float, expected: float, n: int) -> bool:
    """Warn when the share called fake is far from what the calibrated probabilities expect.

    The mean calibrated probability estimates the test set's share of fakes; the threshold should
    call roughly that share fake. Far off (more than 4 standard errors of a share, and 10 points),
    the threshold or the calibration does not fit these test images (another source, another
    alignment): the probabilities still rank, the labels may not.
    """
    se = max(np.sqrt(max(expected * (1 - expected), 1e-6) / max(n, 1)), 1e-9)
    off = abs(called - expected) > max(4 * se, 0.10)
    if off:
        log.warning("predict: %.1f%% of the test images are called fake, but their calibrated probabilities "
                    "expect %.1f%%: the OOF threshold may not suit this test set (check test_probs.csv)",
                    100 * called, 100 * expected)
    return not off
