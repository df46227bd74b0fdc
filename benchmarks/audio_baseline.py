"""The classic speech baseline: a reference for benchmarks/quality.py on speech, never part of the pipeline.

Each clip (mono, 16 kHz) becomes, for every STFT frequency bin, the mean and the standard deviation of
its log power over the clip's speech frames (frames within 40 dB of the loudest); the features are
standardised and a logistic regression fits them. Long-term spectral statistics of this kind catch
the band limits and the over-smooth or over-regular spectra of vocoders; they need no GPU and train
in seconds.

    python benchmarks/audio_baseline.py /work/shared/datasets/yourtts
    python benchmarks/audio_baseline.py /work/shared/datasets/yourtts --folds /tmp/quality/runs/<tag>/folds.csv

With ``--folds`` (a pipeline run's ``folds.csv``) it also prints its out-of-fold AUC on the run's own
folds (speaker-grouped when the run's were), to set beside the pipeline's OOF AUC.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

RATE = 16000
N_FFT = 512
HOP = 160
SPEECH_DB = 40.0


def clip_samples(path: str | Path) -> np.ndarray:
    """The clip as mono float64 at RATE."""
    import soundfile as sf
    from scipy.signal import resample_poly

    audio, rate = sf.read(str(path), dtype="float64", always_2d=True)
    x = np.nan_to_num(audio.mean(axis=1))
    if rate != RATE:
        g = np.gcd(int(rate), RATE)
        x = resample_poly(x, RATE // g, int(rate) // g)
    return x


def clip_features(path: str | Path) -> np.ndarray:
    """(2 * (N_FFT // 2 + 1),): per-bin mean and std of the log power over the speech frames."""
    return signal_features(clip_samples(path))


def signal_features(x: np.ndarray) -> np.ndarray:
    """:func:`clip_features` of samples at RATE."""
    if len(x) < N_FFT:
        x = np.pad(x, (0, N_FFT - len(x)))
    frames = np.lib.stride_tricks.sliding_window_view(x, N_FFT)[::HOP] * np.hanning(N_FFT)
    power = np.log10(np.abs(np.fft.rfft(frames, axis=1)) ** 2 + 1e-10) * 10
    energy = power.max(axis=1)
    speech = power[energy >= energy.max() - SPEECH_DB]
    return np.concatenate([speech.mean(axis=0), speech.std(axis=0)]).astype(np.float32)


def features(paths: list[str]) -> np.ndarray:
    return np.stack([clip_features(p) for p in paths])


def fit_predict(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray) -> np.ndarray:
    """Standardise + logistic regression; P(fake) of the test clips."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000, C=1.0))
    model.fit(train_x, train_y)
    return model.predict_proba(test_x)[:, 1]


def main(argv: list[str] | None = None) -> int:
    import pandas as pd

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from deepfake_pipeline.metrics import binary_metrics

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dataset", help="folder with train_audio/, test_audio/, train_solution.csv, test_solution.csv")
    p.add_argument("--folds", help="a run's folds.csv (Id, target, fold): also print the out-of-fold AUC")
    args = p.parse_args(argv)
    root = Path(args.dataset)
    start = time.perf_counter()

    def paths(split: str, ids: list[str]) -> list[str]:
        files = {f.stem: str(f) for f in (root / f"{split}_audio").iterdir()}
        return [files[i] for i in ids]

    train = pd.read_csv(root / "train_solution.csv", dtype={"Id": str})
    test = pd.read_csv(root / "test_solution.csv", dtype={"Id": str})
    train_x, train_y = features(paths("train", list(train["Id"]))), train["target_feature"].to_numpy()
    prob = fit_predict(train_x, train_y, features(paths("test", list(test["Id"]))))
    m = binary_metrics(test["target_feature"], prob)
    print(f"{root.name}: test AUC {m['auc']:.4f} ({time.perf_counter() - start:.1f} s)")
    if args.folds:
        folds = pd.read_csv(args.folds, dtype={"Id": str}).set_index("Id")
        fold = folds.loc[train["Id"], "fold"].to_numpy()
        oof = np.zeros(len(train))
        for k in np.unique(fold):
            oof[fold == k] = fit_predict(train_x[fold != k], train_y[fold != k], train_x[fold == k])
        print(f"{root.name}: out-of-fold AUC {binary_metrics(train_y, oof)['auc']:.4f} on the {len(np.unique(fold))} "
              f"folds of {args.folds}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
