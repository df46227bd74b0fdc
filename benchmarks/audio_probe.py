"""A linear probe of the speech stage-1 windows: what a detector could read from them without a CNN.

For every window, each image row's mean and standard deviation over time, of one channel (``mel``,
``linear``, ``delta`` or ``phase``: ``audio.channels``' order in the manifest's PNGs); standardised, a logistic
regression, on a finished run's folds (speaker-grouped when the run used ``finetune.group_column``).
Printed: window-level AUC, clip-level AUC (the mean of a clip's window logits, as the pipeline
aggregates) pooled and per fold. It measures stage 1's settings (``audio.db_range``, channels), not the
pipeline: a stage-1 change that lowers the probe threw information away.

    python benchmarks/audio_probe.py /tmp/quality/faces/yourtts-<hash>/faces.csv /tmp/quality/runs/<tag>/folds.csv
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import pandas as pd
from PIL import Image


def row_statistics(paths: list[str], channel: int) -> np.ndarray:
    """(windows, 2 * rows): per-row mean and std over time of one channel of each window PNG."""
    feats = []
    for path in paths:
        plane = np.asarray(Image.open(path), dtype=np.float32)[..., channel]
        feats.append(np.concatenate([plane.mean(axis=1), plane.std(axis=1)]))
    return np.stack(feats)


def probe(manifest: pd.DataFrame, folds: pd.DataFrame, channel: int) -> dict[str, object]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    windows = manifest[(manifest["split"] == "train") & (manifest["status"] == "window")]
    windows = windows[windows["Id"].isin(folds.index)].reset_index(drop=True)
    x = row_statistics(list(windows["path"]), channel)
    y = folds.loc[windows["Id"], "target"].to_numpy()
    fold = folds.loc[windows["Id"], "fold"].to_numpy()
    logit = np.zeros(len(windows))
    for k in np.unique(fold):
        train = fold != k
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)).fit(x[train], y[train])
        logit[~train] = model.decision_function(x[~train])
    clip = pd.DataFrame({"Id": windows["Id"], "logit": logit}).groupby("Id")["logit"].mean()
    clip_y = folds.loc[clip.index, "target"].to_numpy()
    clip_fold = folds.loc[clip.index, "fold"].to_numpy()
    return {
        "window_auc": roc_auc_score(y, logit),
        "clip_auc": roc_auc_score(clip_y, clip.to_numpy()),
        "per_fold": [roc_auc_score(clip_y[clip_fold == k], clip.to_numpy()[clip_fold == k])
                     for k in np.unique(clip_fold)],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("manifest", help="stage 1's faces.csv (prepare_audio.py)")
    p.add_argument("folds", help="a run's folds.csv (Id, target, fold)")
    p.add_argument("--channels", default="mel,linear,delta", help="the PNG channels' names, in order")
    args = p.parse_args(argv)
    manifest = pd.read_csv(args.manifest, dtype={"Id": str})
    folds = pd.read_csv(args.folds, dtype={"Id": str}).set_index("Id")
    folds = folds[folds.get("is_pseudo", 0) == 0]
    for channel, name in enumerate(args.channels.split(",")):
        r = probe(manifest, folds, channel)
        per_fold = " ".join(f"{a:.3f}" for a in r["per_fold"])  # type: ignore[union-attr]
        print(f"{name:7s} window AUC {r['window_auc']:.4f}  clip AUC {r['clip_auc']:.4f}  per fold {per_fold}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
