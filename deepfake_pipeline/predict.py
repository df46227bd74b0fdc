"""Stage 4: test-time augmentation, fold ensemble, ``test_probs.csv`` and ``submission.csv``.

Logits are averaged over the TTA views and the folds, then passed through a sigmoid; the label
uses the pooled-OOF threshold from ``threshold.json``. A test image that was unreadable at
alignment gets the training prior (and is listed in ``predict_problems.csv``), so the submission
always has every test Id exactly once; it is validated before it is written.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .artifacts import RunPaths, load_faces, usable_faces
from .augment import parse_tta
from .checkpoint import load_weights
from .config import Config, load_config
from .dataset import FaceDataset, load_layout
from .engine import make_loader, predict_logits
from .errors import CheckpointError, PipelineError, SubmissionError
from .faults import failpoint
from .images import save_csv
from .model import build_classifier
from .runtime import Runtime, amp_policy, pick_device

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- a finished run, reopened

RUN_CONFIG_NAME = "config.yaml"


def run_config_path(run_dir: str | Path) -> Path:
    """``<run>/config.yaml``, the resolved config train.py saved; PipelineError when missing."""
    path = Path(run_dir) / RUN_CONFIG_NAME
    if not path.is_file():
        raise PipelineError(f"{path} not found: --run must be a run directory written by train.py (weights/<run>)")
    return path


def load_run_config(run_dir: str | Path, overrides: list[str] | tuple[str, ...] = (),
                    config: str | Path | None = None) -> Config:
    """The run's saved config (or ``config``) with ``overrides``; ``run.dir`` points at ``run_dir``
    wherever the run was trained (runs can be moved or copied)."""
    cfg = load_config(config if config is not None else run_config_path(run_dir), overrides)
    cfg.run.dir = str(run_dir)
    return cfg


def run_settings_hashes(run_dir: str | Path) -> dict[str, str]:
    """The ``# <stage> settings hash: <hex>`` header lines of a run's saved config."""
    hashes = {}
    for line in run_config_path(run_dir).read_text().splitlines():
        if not line.startswith("#"):
            break
        name, sep, value = line.lstrip("# ").partition(" settings hash: ")
        if sep:
            hashes[name.strip()] = value.strip()
    return hashes


def inference_runtime(device: str = "auto", amp: str = "auto", channels_last: bool = True) -> Runtime:
    """A single-process runtime for inference; asked-for CUDA that is not there falls back to the CPU."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        log.warning("device %r asked for, but CUDA is not available: running on the CPU", device)
        device = "cpu"
    dev = pick_device(device)
    dtype, _ = amp_policy(dev, amp)
    return Runtime(dev, amp_dtype=dtype, channels_last=channels_last and dev.type == "cuda")


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Overflow-free logistic function."""
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(logits, dtype=np.float64)))


def load_fold_model(cfg: Config, paths: RunPaths, k: int, runtime: Runtime) -> torch.nn.Module:
    # The fold's weights replace everything: never fetch ImageNet weights just to overwrite them.
    model = build_classifier(dataclasses.replace(cfg.model, pretrained=False, pretrained_file=None))
    state = load_weights(paths.fold_weights(k))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{paths.fold_weights(k)} does not match model {cfg.model.backbone} "
            f"(missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]})"
        )
    model = model.to(runtime.device).eval()
    if runtime.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def ensemble_logits(
    cfg: Config, paths: RunPaths, runtime: Runtime, folds: list[int], image_paths: list[str],
    tta: list[str] | None = None, batch_size: int | None = None,
) -> np.ndarray:
    """Mean logit over TTA views and ``folds`` for each image (aligned face files)."""
    views = parse_tta(cfg.predict.tta if tta is None else tta)
    loader = make_loader(FaceDataset(image_paths), None, runtime, cfg.run.workers, cfg.run.seed,
                         batch_size=batch_size or cfg.predict.batch_size)
    total = np.zeros(len(image_paths), dtype=np.float64)
    for k in folds:
        model = load_fold_model(cfg, paths, k, runtime)
        logits = predict_logits(model, loader, runtime, cfg.model.img_size, views, progress=cfg.run.progress,
                                desc=f"predict fold {k}")
        total += logits.double().numpy()
        del model
        failpoint("predict_fold")
    return total / max(1, len(folds))


def read_threshold(paths: RunPaths) -> float:
    if not paths.threshold_json.is_file():
        raise PipelineError(f"{paths.threshold_json} not found: finish the finetune stage (all folds) first")
    return float(json.loads(paths.threshold_json.read_text())["threshold"])


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


def write_submission(probs: pd.DataFrame, threshold: float, test_ids: list[str], out: Path) -> pd.DataFrame:
    if probs["prob"].isna().any():
        bad = probs.loc[probs["prob"].isna(), "Id"].iloc[0]
        raise SubmissionError(f"submission not written: NaN probability for Id {bad!r}")
    submission = pd.DataFrame({"Id": probs["Id"], "target_feature": (probs["prob"] >= threshold).astype(int)})
    validate_submission(submission, test_ids)
    save_csv(out, submission)
    return submission


def run_predict(cfg: Config, runtime: Runtime, paths: RunPaths, force: bool = False) -> None:
    if not runtime.is_main:
        return  # inference is cheap next to training; rank 0 does it alone
    from .finetune import finished_folds

    folds = finished_folds(paths, cfg.finetune.folds)
    if len(folds) < cfg.finetune.folds:
        raise PipelineError(
            f"predict: {len(folds)}/{cfg.finetune.folds} folds finished; finish finetune first "
            "(safe_inference.py answers from any finished subset)"
        )
    threshold = read_threshold(paths)
    layout = load_layout(cfg.data, check_images=False)
    test_ids = list(layout.test.frame["Id"])
    faces = load_faces(cfg)
    usable = usable_faces(faces, "test")
    prior = float(layout.train.frame["target"].mean())
    logits = ensemble_logits(cfg, paths, runtime, folds, list(usable["path"]))
    prob = dict(zip(usable["Id"], 1.0 / (1.0 + np.exp(-logits))))
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
    log.info("predict: %d test images, %d folds x %d TTA views, threshold %.4f, %d predicted fake -> %s",
             len(test_ids), len(folds), len(cfg.predict.tta), threshold, int(submission["target_feature"].sum()),
             paths.submission_csv)
