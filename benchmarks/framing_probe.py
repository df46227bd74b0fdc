"""Does a face dataset's label leak through where and how large the face is? A bias check, not a detector.

Reads stage 1's manifest (``faces.csv`` of ``align_faces.py``: MTCNN's face box and five landmarks in
source pixels) and fits a logistic regression on two small feature sets:

- framing: the face box's side as a share of the image's shorter side, and its centre (x, y) as
  shares of the image's width and height;
- shape: the five landmarks relative to the eye centre, in units of the eye distance.

Neither says anything about how a face was forged. Where they score well above chance, the real and
fake images were shot or cropped differently, and a detector can score that well without detecting
anything (a CNN on native-resolution faces sees the face's scale). Figures: out-of-fold AUC on the
train split (stratified folds) and train -> test AUC, each with its standard error.

    python benchmarks/framing_probe.py /work/shared/datasets/rfff --faces ALIGNED_DIR
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from deepfake_pipeline.dataset import read_labels  # noqa: E402
from deepfake_pipeline.metrics import auc_standard_error  # noqa: E402

GROUPS = ("framing", "shape", "both")


def _numbers(text: str, n: int) -> np.ndarray | None:
    try:
        values = np.array(str(text).split(), dtype=np.float64)
    except ValueError:
        return None
    return values if len(values) == n and np.isfinite(values).all() else None


def face_features(manifest: pd.DataFrame) -> pd.DataFrame:
    """One row per Id with a detected face: split, the framing columns f_* and the shape columns s_*.

    Rows without a face (centre-crop fallbacks) or without landmarks are left out.
    """
    rows = []
    for r in manifest[manifest["status"] == "face"].itertuples():
        box, marks = _numbers(r.face_box, 4), _numbers(r.landmarks, 10)
        if box is None or marks is None:
            continue
        w, h = float(r.src_width), float(r.src_height)
        side = max(box[2] - box[0], box[3] - box[1])
        points = marks.reshape(5, 2)
        eyes = (points[0] + points[1]) / 2
        eye_dist = float(np.linalg.norm(points[1] - points[0]))
        if eye_dist <= 0:
            continue
        shape = ((points - eyes) / eye_dist).ravel()
        rows.append({"Id": str(r.Id), "split": r.split, "f_side": side / min(w, h),
                     "f_cx": (box[0] + box[2]) / 2 / w, "f_cy": (box[1] + box[3]) / 2 / h,
                     **{f"s_{i}": v for i, v in enumerate(shape)}})
    return pd.DataFrame(rows)


def columns(frame: pd.DataFrame, group: str) -> list[str]:
    prefixes = {"framing": ("f_",), "shape": ("s_",), "both": ("f_", "s_")}[group]
    return [c for c in frame.columns if c.startswith(prefixes)]


def probe(train: pd.DataFrame, test: pd.DataFrame | None, folds: int = 5, seed: int = 0
          ) -> dict[str, dict[str, float]]:
    """group -> {oof_auc, oof_se, test_auc, test_se}; ``train`` and ``test`` carry a ``target`` column."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    y = train["target"].to_numpy()
    out = {}
    for group in GROUPS:
        cols = columns(train, group)
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
        oof = cross_val_predict(model, train[cols].to_numpy(), y, cv=cv, method="predict_proba")[:, 1]
        auc = float(roc_auc_score(y, oof))
        figures = {"oof_auc": auc, "oof_se": auc_standard_error(auc, int(y.sum()), int((y == 0).sum()))}
        if test is not None and test["target"].nunique() == 2:
            model.fit(train[cols].to_numpy(), y)
            yt = test["target"].to_numpy()
            t_auc = float(roc_auc_score(yt, model.predict_proba(test[cols].to_numpy())[:, 1]))
            figures.update(test_auc=t_auc, test_se=auc_standard_error(t_auc, int(yt.sum()), int((yt == 0).sum())))
        out[group] = figures
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("dataset", type=Path, help="Kaggle-layout folder (train_solution.csv, test_solution.csv)")
    p.add_argument("--faces", type=Path, required=True, help="align_faces.py output folder (has faces.csv)")
    p.add_argument("--folds", type=int, default=5)
    args = p.parse_args(argv)

    manifest = pd.read_csv(args.faces / "faces.csv", dtype={"Id": str}, keep_default_na=False)
    features = face_features(manifest)
    labels = {}
    for split in ("train", "test"):
        csv = args.dataset / f"{split}_solution.csv"
        if csv.is_file():
            frame, errors = read_labels(csv)
            if errors:
                print("\n".join(errors), file=sys.stderr)
                return 2
            labels[split] = frame[["Id", "target"]]
    if "train" not in labels:
        print(f"{args.dataset}: train_solution.csv not found", file=sys.stderr)
        return 2
    train = features[features["split"] == "train"].merge(labels["train"], on="Id")
    test = features[features["split"] == "test"].merge(labels["test"], on="Id") if "test" in labels else None
    print(f"{args.dataset.name}: {len(train)} train faces, {0 if test is None else len(test)} test faces with landmarks")
    for group, f in probe(train, test, args.folds).items():
        line = f"{group:8s} OOF AUC {f['oof_auc']:.3f} ± {f['oof_se']:.3f}"
        if "test_auc" in f:
            line += f" | train -> test AUC {f['test_auc']:.3f} ± {f['test_se']:.3f}"
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
