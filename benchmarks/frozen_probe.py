"""The frozen-feature probe: a pretrained backbone's features, untouched, and a logistic regression.

A reference beside every fine-tuned row, never part of the pipeline: if fine-tuning does not beat
this, it adds nothing. The backbone is the config's own (``model.backbone`` with ``model.weights``),
on RGB alone with the weights' own normalisation, in eval mode. Each image is resized to
``SIZE`` px (bilinear, antialiased); its features are the global means of every stage's feature
map (multi-level: early stages keep texture and blending traces) and the final pooled features.
Standardised, they fit a logistic regression whose L2 strength is chosen by a 3-fold inner
cross-validation on the training rows alone (1,792 features for ~1,600 faces overfit at C=1: rfff OOF
AUC 0.675 there, 0.718 at C=0.001), Platt-calibrated on that inner cross-validation's logits.

    python benchmarks/frozen_probe.py /work/shared/datasets/rfff --config configs/cpu.yaml
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from deepfake_pipeline.config import Config  # noqa: E402

SIZE = 224  # the ImageNet resolution the weights were trained at


def frozen_backbone(cfg: Config) -> torch.nn.Module | None:
    """The config's pretrained backbone on RGB (eval mode), or None when it names no weights."""
    from deepfake_pipeline.model import build_classifier

    if not cfg.model.weights:
        return None
    model_cfg = dataclasses.replace(cfg.model, pretrained=True, channels=["rgb"], pool="global", drop_path=0.0)
    return build_classifier(model_cfg).eval()


def _load(path: str, size: int) -> torch.Tensor:
    from PIL import Image

    with Image.open(path) as im:
        pixels = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    x = torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(0)
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]


@torch.no_grad()
def features(model: torch.nn.Module, paths: list[str], size: int = SIZE, batch: int = 32) -> np.ndarray:
    """(N, D) multi-level pooled features of the images at ``paths``."""
    out = []
    for start in range(0, len(paths), batch):
        x = model.forensic(torch.stack([_load(p, size) for p in paths[start:start + batch]]))
        final, maps = model.backbone.forward_intermediates(x)
        pooled = [m.mean(dim=(2, 3)) for m in maps] + [model.backbone.forward_head(final, pre_logits=True)]
        out.append(torch.cat(pooled, dim=1).numpy())
    return np.concatenate(out).astype(np.float32)


CS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)  # candidate inverse L2 strengths


def choose_c(x: np.ndarray, y: np.ndarray, seed: int = 0) -> tuple[float, np.ndarray]:
    """The C of :data:`CS` with the best mean AUC over an inner stratified 3-fold split of (x, y), and
    that C's inner out-of-fold logits (for the calibration in :func:`fit_predict`)."""
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold

    inner = list(StratifiedKFold(n_splits=3, shuffle=True, random_state=seed).split(x, y))
    best: tuple[float, float, np.ndarray] | None = None
    for c in CS:
        logits = np.zeros(len(y))
        for fit, val in inner:
            logits[val] = _fit(x[fit], y[fit], c, seed).decision_function(x[val])
        score = float(np.mean([roc_auc_score(y[val], logits[val]) for _, val in inner]))
        if best is None or score > best[0]:
            best = (score, c, logits)
    assert best is not None
    return best[1], best[2]


def _fit(x: np.ndarray, y: np.ndarray, c: float, seed: int):  # noqa: ANN202 (a sklearn Pipeline)
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000, random_state=seed)).fit(x, y)


def fit(train_x: np.ndarray, train_y: np.ndarray, seed: int = 0) -> Callable[[np.ndarray], np.ndarray]:
    """P(fake) of any feature rows: standardise + logistic regression with C from :func:`choose_c`, its
    logits Platt-calibrated on the inner out-of-fold logits. A strong L2 shrinks logits to a narrow band
    whose offset differs from model to model: without the calibration, pooling several folds'
    predictions (the OOF AUC) would mostly measure those offsets."""
    from sklearn.linear_model import LogisticRegression

    c, inner_logits = choose_c(train_x, train_y, seed)
    model = _fit(train_x, train_y, c, seed)
    platt = LogisticRegression(C=1e6, max_iter=1000).fit(inner_logits[:, None], train_y)
    return lambda x: platt.predict_proba(model.decision_function(x)[:, None])[:, 1]


def fit_predict(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, seed: int = 0) -> np.ndarray:
    return fit(train_x, train_y, seed)(test_x)


def oof_and_test(train_x: np.ndarray, y: np.ndarray, folds: np.ndarray | None,
                 *test_sets: np.ndarray) -> tuple[np.ndarray | None, list[np.ndarray]]:
    """Out-of-fold P(fake) on the given folds (None without folds), and P(fake) of each test set from
    one fit on all training rows."""
    oof = None
    if folds is not None:
        oof = np.zeros(len(y), dtype=np.float64)
        for k in np.unique(folds):
            val = folds == k
            oof[val] = fit_predict(train_x[~val], y[~val], train_x[val])
    predict = fit(train_x, y)
    return oof, [predict(x) for x in test_sets]


def main(argv: list[str] | None = None) -> int:
    import pandas as pd

    from deepfake_pipeline.config import load_config
    from deepfake_pipeline.metrics import binary_metrics

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dataset", help="Kaggle-layout folder with train_solution.csv and test_solution.csv")
    p.add_argument("--config", required=True, help="the pipeline config whose model.weights to probe")
    p.add_argument("--set", action="append", default=[], dest="sets")
    p.add_argument("--group", help="labels-CSV column to fold by (default: stratified folds only)")
    args = p.parse_args(argv)
    cfg = load_config(args.config, ["run.name=probe", *args.sets])
    model = frozen_backbone(cfg)
    if model is None:
        print("the config names no model.weights: nothing to probe", file=sys.stderr)
        return 2
    root = Path(args.dataset)
    start = time.perf_counter()
    train = pd.read_csv(root / "train_solution.csv", dtype={"Id": str})
    test = pd.read_csv(root / "test_solution.csv", dtype={"Id": str})

    def paths(split: str, ids: list[str]) -> list[str]:
        files = {q.stem: str(q) for q in (root / f"{split}_images").iterdir()}
        return [files[i] for i in ids]

    from deepfake_pipeline.dataset import make_folds
    from deepfake_pipeline.finetune import fold_seed

    y = train["target_feature"].to_numpy()
    labels = pd.DataFrame({"Id": train["Id"], "target": y})
    if args.group:
        labels["group"] = train[args.group].astype(str)
    folds = make_folds(labels, 5, fold_seed(cfg))["fold"].to_numpy()
    oof, (prob,) = oof_and_test(features(model, paths("train", list(train["Id"]))), y, folds,
                                features(model, paths("test", list(test["Id"]))))
    print(f"{root.name}: frozen {cfg.model.backbone} probe, raw images at {SIZE} px: "
          f"OOF AUC {binary_metrics(y, oof)['auc']:.4f}, test AUC "
          f"{binary_metrics(test['target_feature'], prob)['auc']:.4f} ({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
