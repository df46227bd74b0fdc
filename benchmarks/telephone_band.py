"""A speech layout's test clips through a telephone channel: a known shift for ``quality.py --cross``.

Each test clip is band-passed to 300-3400 Hz (4th-order Butterworth, zero phase) and resampled to
8 kHz, the narrow band of a phone line; the labels stay. The training split is linked, not copied
(the harness only reads the test split of a ``--cross`` set). The model never heard such clips, so
its calls on them show what a channel shift does, and whether the score-shift check
(``deepfake_pipeline/shift.py``) notices it.

    python benchmarks/telephone_band.py ../shared/datasets/yourtts --out /tmp/logo/yourtts-phone
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import butter, resample_poly, sosfiltfilt

PHONE_RATE = 8000
PHONE_BAND = (300.0, 3400.0)


def telephone(x: np.ndarray, rate: int) -> np.ndarray:
    """``x`` (mono float) band-passed to the telephone band and resampled to 8 kHz."""
    sos = butter(4, PHONE_BAND, btype="bandpass", fs=rate, output="sos")
    y = resample_poly(sosfiltfilt(sos, x), PHONE_RATE, rate)
    return np.clip(y, -1.0, 1.0).astype(np.float32)


def write_layout(source: Path, out: Path) -> int:
    """The layout under ``out``; returns the number of test clips written."""
    (out / "test_audio").mkdir(parents=True, exist_ok=True)
    for name in ("train_solution.csv", "test_solution.csv", "meta.csv"):
        if (source / name).is_file():
            shutil.copyfile(source / name, out / name)
    if not (out / "train_audio").exists():
        (out / "train_audio").symlink_to((source / "train_audio").resolve())
    n = 0
    for clip in sorted((source / "test_audio").iterdir()):
        x, rate = sf.read(clip, dtype="float32", always_2d=True)
        sf.write(out / "test_audio" / f"{clip.stem}.flac", telephone(x.mean(axis=1), rate), PHONE_RATE)
        n += 1
    return n


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", type=Path, help="a speech set in the Kaggle layout (train_audio/, test_audio/)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    print(f"{write_layout(args.source, args.out)} test clips -> {args.out / 'test_audio'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
