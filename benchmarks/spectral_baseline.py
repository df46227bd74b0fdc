"""The classic spectral baseline (Durall et al., CVPR 2020): a reference, never part of the pipeline.

Each image becomes the azimuthal average of its grayscale 2-D FFT log power spectrum, on
``BINS`` radial bins from DC to the corner (the radius scaled to the image's own size, so any
size gives the same feature length); the features are standardised and a logistic regression
fits them. ``benchmarks/quality.py`` runs it beside the pipeline on the same train/test split
(the pipeline's aligned faces) and scores it with the same scorer.

    python benchmarks/spectral_baseline.py /work/shared/datasets/lfw_swap [--faces ALIGNED_DIR]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

BINS = 112


def radial_spectrum(gray: np.ndarray, bins: int = BINS) -> np.ndarray:
    """Azimuthal mean of log(|FFT2|^2 + eps) of a 2-D float image, ``bins`` values from DC outwards."""
    h, w = gray.shape
    spec = np.fft.fftshift(np.fft.fft2(gray - gray.mean()))
    power = np.log(np.abs(spec) ** 2 + 1e-8)
    yy, xx = np.indices((h, w))
    r = np.hypot((yy - h // 2) / (h / 2), (xx - w // 2) / (w / 2))  # 0 at DC, 1 at the Nyquist edge
    idx = np.minimum((r / r.max() * bins).astype(int), bins - 1)
    total = np.bincount(idx.ravel(), power.ravel(), minlength=bins)
    count = np.bincount(idx.ravel(), minlength=bins)
    return (total / np.maximum(count, 1)).astype(np.float32)


def features(paths: list[str], bins: int = BINS) -> np.ndarray:
    from PIL import Image

    out = np.zeros((len(paths), bins), dtype=np.float32)
    for i, path in enumerate(paths):
        with Image.open(path) as im:
            gray = np.asarray(im.convert("L"), dtype=np.float32) / 255.0
        out[i] = radial_spectrum(gray, bins)
    return out


def fit_predict(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, seed: int = 0) -> np.ndarray:
    """Standardise + logistic regression on the train features; P(fake) of the test features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000, C=1.0, random_state=seed))
    model.fit(train_x, train_y)
    return model.predict_proba(test_x)[:, 1]


def oof_predict(x: np.ndarray, y: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """Out-of-fold P(fake) with the given fold column (every row predicted by the model that did not see it)."""
    out = np.zeros(len(y), dtype=np.float64)
    for k in np.unique(folds):
        val = folds == k
        out[val] = fit_predict(x[~val], y[~val], x[val])
    return out


def main(argv: list[str] | None = None) -> int:
    import pandas as pd

    repo = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(repo))
    from deepfake_pipeline.metrics import best_f1_threshold, binary_metrics

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dataset", help="Kaggle-layout folder with train_solution.csv and test_solution.csv")
    p.add_argument("--faces", help="aligned faces folder (faces.csv); default: the raw images")
    p.add_argument("--cross", help="another dataset folder: score its test images with the same model")
    args = p.parse_args(argv)
    root = Path(args.dataset)

    def image_paths(split: str, ids: list[str], base: Path, faces: str | None) -> list[str]:
        if faces:
            table = pd.read_csv(Path(faces) / "faces.csv", dtype={"Id": str}, keep_default_na=False)
            table = table[table["split"] == split].set_index("Id")["path"]
            return [table[i] for i in ids]
        return [str(next((base / f"{split}_images").glob(f"{i}.*"))) for i in ids]

    start = time.perf_counter()
    train = pd.read_csv(root / "train_solution.csv", dtype={"Id": str})
    test = pd.read_csv(root / "test_solution.csv", dtype={"Id": str})
    tx = features(image_paths("train", list(train["Id"]), root, args.faces))
    vx = features(image_paths("test", list(test["Id"]), root, args.faces))
    prob = fit_predict(tx, train["target_feature"].to_numpy(), vx)
    t, _ = best_f1_threshold(train["target_feature"], fit_predict(tx, train["target_feature"].to_numpy(), tx))
    m = binary_metrics(test["target_feature"], prob, threshold=t)
    print(f"{root.name}: test AUC {m['auc']:.4f} F1 {m['f1']:.4f} acc {m['acc']:.4f} "
          f"({time.perf_counter() - start:.1f} s)")
    if args.cross:
        croot = Path(args.cross)
        ctest = pd.read_csv(croot / "test_solution.csv", dtype={"Id": str})
        cx = features(image_paths("test", list(ctest["Id"]), croot, None))
        cm = binary_metrics(ctest["target_feature"], fit_predict(tx, train["target_feature"].to_numpy(), cx))
        print(f"{root.name} -> {croot.name}: AUC {cm['auc']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
