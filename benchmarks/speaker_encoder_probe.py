"""Pretrained speech weights from a PyPI wheel: does a frozen speaker encoder's view carry to unseen fakes?

Resemblyzer (Apache-2.0) ships a GE2E speaker encoder (3-layer LSTM over 40 mel bands, trained on
VoxCeleb and LibriSpeech) inside its wheel. It is not a requirement of the pipeline: fetch the wheel
and point ``--weights`` at the file inside it (nothing downloads at run time):

    pip download --no-deps -d /tmp/pk resemblyzer && unzip -o -d /tmp/pk /tmp/pk/Resemblyzer-*.whl
    python benchmarks/speaker_encoder_probe.py --weights /tmp/pk/resemblyzer/pretrained.pt \\
        --train /tmp/logo/yourtts --score /tmp/logo/yourtts --score /tmp/logo/yourtts-phone
    python benchmarks/speaker_encoder_probe.py --weights ... --train /tmp/logo/yourtts-yourtts2glow \\
        --score /tmp/logo/yourtts-yourtts2glow

Per clip, with the encoder's front end (16 kHz, -30 dBFS, power mel of 25 ms / 10 ms frames on
librosa's Slaney bank, 1.6 s partials at 50% overlap). Unlike Resemblyzer's own ``embed_utterance``:
no voice-activity trimming (webrtcvad is not installed), the level is set both ways (it only raises),
the tail shorter than a partial step is dropped (it pads a last partial), and the mean embedding is
not normalised again (the probe standardises its features anyway). ``emb``, the speaker embedding
(mean over partials); ``lstm``, the
last layer's outputs' mean and spread over time and each layer's final state; ``logmel``, the log mel
bands' mean and spread (the reference without the network). A logistic regression per feature set:
out-of-fold AUC in 5 speaker-grouped folds of ``--train``, then trained on all of it and scored on
each ``--score`` layout's test split (AUC ± SE, and per generator against all the real test clips).
Layouts: ``benchmarks/generator_split.py`` and ``benchmarks/telephone_band.py``.
"""

from __future__ import annotations

import argparse
import sys
from math import gcd
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
import torch
from scipy.signal import resample_poly

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from deepfake_pipeline.metrics import auc_standard_error  # noqa: E402

RATE, N_FFT, HOP, N_MELS, PARTIAL = 16000, 400, 160, 40, 160  # the encoder's front end (its hparams.py)
FEATURES = ("logmel", "emb", "lstm")


def slaney_mel_bank(rate: int = RATE, n_fft: int = N_FFT, n_mels: int = N_MELS) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1): the Slaney-scale, area-normalised triangles the encoder was trained on."""
    def to_mel(f: np.ndarray) -> np.ndarray:
        return np.where(f >= 1000.0, 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / (np.log(6.4) / 27.0),
                        f / (200.0 / 3))

    def to_hz(m: np.ndarray) -> np.ndarray:
        return np.where(m >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (m - 15.0)), m * (200.0 / 3))

    bins = np.linspace(0.0, rate / 2, n_fft // 2 + 1)
    edges = to_hz(np.linspace(0.0, float(to_mel(np.array(rate / 2.0))), n_mels + 2))
    ramps = edges[:, None] - bins[None, :]
    gaps = np.diff(edges)
    bank = np.maximum(0.0, np.minimum(-ramps[:-2] / gaps[:-1, None], ramps[2:] / gaps[1:, None]))
    return bank * (2.0 / (edges[2:] - edges[:-2]))[:, None]


class SpeakerEncoder:
    """The wheel's encoder, loaded by name and shape (every tensor, or an error naming what is missing)."""

    def __init__(self, weights: Path) -> None:
        state = torch.load(weights, map_location="cpu", weights_only=True)  # tensors only: never unpickle code
        state = state.get("model_state", state)
        self.lstm = torch.nn.LSTM(N_MELS, 256, 3, batch_first=True).eval()
        self.linear = torch.nn.Linear(256, 256).eval()
        for prefix, module in (("lstm.", self.lstm), ("linear.", self.linear)):
            module.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
        self.bank = slaney_mel_bank().T.astype(np.float32)
        self.window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)).astype(np.float32)

    def power_mel(self, wav: np.ndarray) -> np.ndarray:
        frames = np.lib.stride_tricks.sliding_window_view(np.pad(wav, N_FFT // 2), N_FFT)[::HOP]
        return ((np.abs(np.fft.rfft(frames * self.window, axis=1)) ** 2) @ self.bank).astype(np.float32)

    @torch.no_grad()
    def features(self, wav: np.ndarray) -> dict[str, np.ndarray]:
        mel = self.power_mel(wav)
        starts = list(range(0, max(len(mel) - PARTIAL, 0) + 1, PARTIAL // 2))
        parts = np.stack([np.pad(mel[s:s + PARTIAL], ((0, PARTIAL - len(mel[s:s + PARTIAL])), (0, 0)))
                          for s in starts])
        out, (hidden, _) = self.lstm(torch.from_numpy(parts))
        emb = torch.relu(self.linear(hidden[-1]))
        emb = emb / emb.norm(dim=1, keepdim=True).clamp_min(1e-9)
        logmel = np.log(mel + 1e-6)
        return {
            "emb": emb.mean(0).numpy(),
            "lstm": np.concatenate([out.mean(dim=(0, 1)).numpy(), out.std(dim=1).mean(0).numpy(),
                                    hidden.mean(dim=1).reshape(-1).numpy()]),
            "logmel": np.concatenate([logmel.mean(0), logmel.std(0)]),
        }


def load_clip(path: Path) -> np.ndarray:
    """Mono, 16 kHz, at -30 dBFS (the encoder's level)."""
    wav, rate = sf.read(str(path), dtype="float32", always_2d=True)
    wav = wav.mean(axis=1)
    if rate != RATE:
        g = gcd(rate, RATE)
        wav = resample_poly(wav, RATE // g, rate // g).astype(np.float32)
    return wav * (10 ** (-30 / 20) / np.sqrt(np.mean(wav ** 2) + 1e-12))


def split_table(root: Path, split: str) -> pd.DataFrame:
    """Id, target_feature, speaker, generator (``meta.csv``'s, else "fake" / "real") and path of a split."""
    table = pd.read_csv(root / f"{split}_solution.csv", dtype={"Id": str})
    if (root / "meta.csv").is_file():
        meta = pd.read_csv(root / "meta.csv", dtype={"Id": str}).set_index("Id")
        table["generator"] = table["Id"].map(meta["generator"])
        table["speaker"] = table["Id"].map(meta["speaker"])
    else:
        table["generator"] = np.where(table["target_feature"] == 1, "fake", "real")
    if "speaker" not in table or table["speaker"].isna().any() or table["generator"].isna().any():
        raise SystemExit(f"{root}: every {split} clip needs a speaker (train_solution.csv or meta.csv) and a "
                         "generator (meta.csv)")
    table["speaker"] = table["speaker"].astype(str)
    files = {p.stem: p for p in (root / f"{split}_audio").iterdir()}
    table["path"] = table["Id"].map(files)
    if table["path"].isna().any():
        raise SystemExit(f"{root}: no audio file for {split} Id {table.loc[table['path'].isna(), 'Id'].iloc[0]}")
    return table


def clip_features(encoder: SpeakerEncoder, table: pd.DataFrame) -> dict[str, np.ndarray]:
    rows = [encoder.features(load_clip(p)) for p in table["path"]]
    return {k: np.stack([r[k] for r in rows]) for k in FEATURES}


def probe() -> object:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=5000))


def auc_line(y: np.ndarray, score: np.ndarray) -> str:
    from sklearn.metrics import roc_auc_score

    auc = roc_auc_score(y, score)
    return f"{auc:.3f} ± {auc_standard_error(auc, int(y.sum()), int((y == 0).sum())):.3f}"


def main(argv: list[str] | None = None) -> int:
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import GroupKFold

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", type=Path, required=True, help="resemblyzer/pretrained.pt from the wheel")
    p.add_argument("--train", type=Path, required=True, help="Kaggle speech layout whose train split trains the probe")
    p.add_argument("--score", type=Path, action="append", default=[], help="layout whose test split is scored")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    encoder = SpeakerEncoder(args.weights)
    train = split_table(args.train, "train")
    x_train, y = clip_features(encoder, train), train["target_feature"].to_numpy()
    scored = [(root, split_table(root, "test")) for root in args.score]
    scored = [(root, table, clip_features(encoder, table)) for root, table in scored]
    for kind in FEATURES:
        oof = np.zeros(len(y))
        for fit, held in GroupKFold(min(5, train["speaker"].nunique())).split(x_train[kind], y, train["speaker"]):
            oof[held] = probe().fit(x_train[kind][fit], y[fit]).decision_function(x_train[kind][held])
        model = probe().fit(x_train[kind], y)
        print(f"{kind:7s} trained on {args.train.name}: OOF {auc_line(y, oof)}", flush=True)
        for root, table, x in scored:
            score, truth = model.decision_function(x[kind]), table["target_feature"].to_numpy()
            real = truth == 0
            per = {g: roc_auc_score(np.r_[np.zeros(real.sum()), np.ones(int((table["generator"] == g).sum()))],
                                    np.r_[score[real], score[(table["generator"] == g).to_numpy()]])
                   for g in sorted(table.loc[~real, "generator"].unique())}
            print(f"        {root.name} test: {auc_line(truth, score)}  "
                  + " ".join(f"{g} {v:.3f}" for g, v in per.items()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
