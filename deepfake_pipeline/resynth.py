"""Self-made fakes for speech: a real clip resynthesised by a vocoder that needs no trained weights.

A detector trained on one generator's output learns that generator's fingerprint. Copy-synthesis
(Wang & Yamagishi, ICASSP 2023: real speech passed through vocoders, labelled fake) teaches instead
the trace that *resynthesis* leaves: phase rebuilt from a magnitude, an envelope from a few
coefficients, fine structure smeared by a mel filterbank. Stage 1 (``audio.self_fakes``) runs each
real training clip through the methods named here and windows the result like its source.

Methods (``METHODS``), each ``f(x, rate, rng) -> y`` on mono float64 samples:

- ``griffinlim``: the STFT magnitude kept, the phase rebuilt from random by fast Griffin-Lim
  (Perraudin et al. 2013), 32 iterations; the classic phase-less vocoder.
- ``mel``: an 80-band mel power spectrogram (1024-point frames, 256 hop: a TTS model's output),
  inverted to a linear magnitude by the filterbank's pseudo-inverse, then Griffin-Lim: what a
  mel-spectrogram vocoder must invert.
- ``lpc``: a source-filter vocoder: per 10 ms, an order-18 all-pole envelope and gain, a pitch
  pulse train (autocorrelation pitch, 60-400 Hz) or white noise as excitation.
- ``hnm``: harmonic plus noise: below 4 kHz, in voiced frames, the harmonics of an autocorrelation
  pitch track (every 5 ms) at the STFT's amplitudes, their phases locked to the fundamental's
  (k times its phase: more regular than speech, as a neural vocoder's); above 4 kHz and in unvoiced
  frames, the STFT magnitude with random phase.
- ``pvoc``: a phase-vocoder time-stretch round trip (x0.8 then back): magnitudes interpolated, phases
  re-accumulated from instantaneous frequencies.

Every method returns exactly ``len(x)`` samples on the same time axis (no delay), at the input's RMS
level, and is deterministic given ``rng``'s seed. numpy and scipy only (this runs in stage 1's
worker processes, which import no torch).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.linalg import solve_toeplitz
from scipy.signal import istft, lfilter, stft

Method = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]

_GL_ITERS = 32
_GL_MOMENTUM = 0.99  # fast Griffin-Lim's extrapolation weight


def _fit(y: np.ndarray, length: int) -> np.ndarray:
    return y[:length] if len(y) >= length else np.pad(y, (0, length - len(y)))


def _stft(x: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    return stft(x, nperseg=n_fft, noverlap=n_fft - hop, window="hann")[2]


def _istft(spec: np.ndarray, n_fft: int, hop: int, length: int) -> np.ndarray:
    return _fit(istft(spec, nperseg=n_fft, noverlap=n_fft - hop, window="hann")[1], length)


def griffin_lim(magnitude: np.ndarray, n_fft: int, hop: int, length: int, rng: np.random.Generator,
                iters: int = _GL_ITERS) -> np.ndarray:
    """``length`` samples whose STFT magnitude approaches ``magnitude`` (phase from random, seeded)."""
    angles = np.exp(2j * np.pi * rng.random(magnitude.shape))
    previous = np.zeros_like(angles)
    for _ in range(iters):
        rebuilt = _stft(_istft(magnitude * angles, n_fft, hop, length), n_fft, hop)
        accelerated = rebuilt + _GL_MOMENTUM * (rebuilt - previous)
        previous = rebuilt
        angles = accelerated / np.maximum(np.abs(accelerated), 1e-16)
    return _istft(magnitude * angles, n_fft, hop, length)


def griffinlim(x: np.ndarray, rate: int, rng: np.random.Generator) -> np.ndarray:
    n_fft, hop = 512, 128
    return griffin_lim(np.abs(_stft(x, n_fft, hop)), n_fft, hop, len(x), rng)


def mel(x: np.ndarray, rate: int, rng: np.random.Generator) -> np.ndarray:
    from .audio import mel_filterbank  # at call time: .audio imports this module

    n_fft, hop, n_mels = 1024, 256, 80
    spec = _stft(x, n_fft, hop)
    bank = mel_filterbank(rate, n_fft, n_mels)
    power = np.maximum(np.linalg.pinv(bank) @ (bank @ np.abs(spec) ** 2), 0.0)
    return griffin_lim(np.sqrt(power), n_fft, hop, len(x), rng)


def _levinson(r: np.ndarray, order: int) -> tuple[np.ndarray, float]:
    """All-pole coefficients [1, a1..ap] and the prediction-error power from autocorrelation ``r``."""
    if r[0] <= 0.0:
        return np.r_[1.0, np.zeros(order)], 0.0
    r = r.copy()
    r[0] *= 1.0 + 1e-4  # white-noise correction: keeps the system well conditioned
    a = solve_toeplitz(r[:order], -r[1: order + 1])
    error = float(r[0] + np.dot(a, r[1: order + 1]))
    return np.r_[1.0, a], max(error, 0.0)


def lpc(x: np.ndarray, rate: int, rng: np.random.Generator) -> np.ndarray:
    order, hop = 18, rate // 100
    frame = int(round(0.025 * rate))
    lo, hi = rate // 400, rate // 60  # pitch lags: 400 Hz down to 60 Hz
    emphasised = lfilter([1.0, -0.97], [1.0], x)
    padded = np.pad(emphasised, (frame // 2 - hop // 2, frame))  # frames centred on their blocks
    window = np.hanning(frame)
    y = np.zeros(len(x))
    state = np.zeros(order)
    next_pulse = 0  # samples until the next glottal pulse, carried across blocks
    for start in range(0, len(x), hop):
        seg = padded[start: start + frame] * window
        r = np.correlate(seg, seg, "full")[frame - 1: frame - 1 + hi + 1]
        a, error = _levinson(r, order)
        gain = np.sqrt(error / max(np.sum(window ** 2), 1e-12))
        n = min(hop, len(x) - start)
        peak = lo + int(np.argmax(r[lo: hi + 1])) if r[0] > 0 else 0
        if r[0] > 0 and r[peak] > 0.35 * r[0]:  # voiced: pulses one period apart, unit mean power
            excitation = np.zeros(n)
            while next_pulse < n:
                excitation[next_pulse] = np.sqrt(peak)
                next_pulse += peak
            next_pulse -= n
        else:
            excitation = rng.standard_normal(n)
            next_pulse = 0
        y[start: start + n], state = lfilter([gain], a, excitation, zi=state)
    return lfilter([1.0], [1.0, -0.97], y)


def _stretch(x: np.ndarray, rate: float, n_fft: int, hop: int) -> np.ndarray:
    """Phase-vocoder time stretch: ``rate`` < 1 lengthens."""
    spec = _stft(x, n_fft, hop)
    frames = spec.shape[1]
    steps = np.arange(0.0, frames - 1, rate)
    i = steps.astype(int)
    frac = (steps - i)[None, :]
    magnitude = (1.0 - frac) * np.abs(spec[:, i]) + frac * np.abs(spec[:, i + 1])
    expected = 2.0 * np.pi * hop * np.arange(spec.shape[0]) / n_fft
    advance = np.angle(spec[:, 1:]) - np.angle(spec[:, :-1]) - expected[:, None]
    advance = expected[:, None] + (advance + np.pi) % (2.0 * np.pi) - np.pi
    phase = np.angle(spec[:, :1]) + np.concatenate(
        [np.zeros((spec.shape[0], 1)), np.cumsum(advance[:, i[:-1]], axis=1)], axis=1)
    return istft(magnitude * np.exp(1j * phase), nperseg=n_fft, noverlap=n_fft - hop, window="hann")[1]


def pvoc(x: np.ndarray, rate: int, rng: np.random.Generator) -> np.ndarray:
    n_fft, hop, factor = 512, 128, 0.8
    return _fit(_stretch(_stretch(x, factor, n_fft, hop), 1.0 / factor, n_fft, hop), len(x))


def _frame_pitch(x: np.ndarray, rate: int, hop: int, frames: int) -> np.ndarray:
    """Autocorrelation f0 (Hz, 60-400) of 40 ms frames centred at ``m * hop``; 0 where unvoiced."""
    size = int(round(0.04 * rate))
    lo, hi = rate // 400, rate // 60
    padded = np.pad(x, (size // 2, size + frames * hop))
    segments = np.lib.stride_tricks.sliding_window_view(padded, size)[: frames * hop: hop] * np.hanning(size)
    n = 1 << int(np.ceil(np.log2(2 * size)))  # zero-padded FFT: the linear autocorrelation of each frame
    r = np.fft.irfft(np.abs(np.fft.rfft(segments, n, axis=1)) ** 2, n, axis=1)[:, : hi + 1]
    lag = lo + np.argmax(r[:, lo: hi + 1], axis=1)
    peak = r[np.arange(frames), lag]
    f0 = np.where((r[:, 0] > 0.0) & (peak > 0.35 * r[:, 0]), rate / lag, 0.0)
    voiced = f0 > 0  # a 5-frame median over voiced neighbours removes octave jumps
    smooth = f0.copy()
    for m in np.flatnonzero(voiced):
        near = f0[max(m - 2, 0): m + 3]
        smooth[m] = float(np.median(near[near > 0]))
    return smooth


def hnm(x: np.ndarray, rate: int, rng: np.random.Generator) -> np.ndarray:
    n_fft, hop, max_voiced = 1024, rate // 200, 4000.0
    spec = _stft(x, n_fft, hop)  # |spec| of a sinusoid of amplitude A is A / 2 (scipy's scaling)
    magnitude = np.abs(spec)
    frames = magnitude.shape[1]
    f0 = _frame_pitch(x, rate, hop, frames)
    t_frames = np.arange(frames) * hop
    t = np.arange(len(x))
    f0_t = np.interp(t, t_frames, f0)
    voiced_t = np.interp(t, t_frames, (f0 > 0).astype(float))
    f0_t = np.where(f0_t > 0, np.maximum(f0_t, 60.0), 0.0)
    phase = 2.0 * np.pi * np.cumsum(f0_t) / rate  # one phase for all harmonics: k * phase, locked
    n_harm = int(max_voiced // 60.0)
    harmonic = np.zeros(len(x))
    for k in range(1, n_harm + 1):
        cols = np.flatnonzero((f0 > 0) & (k * f0 < max_voiced))
        if not len(cols):
            break
        pos = k * f0[cols] * n_fft / rate  # the harmonic's fractional STFT bin, read by linear interpolation
        below, frac = pos.astype(int), pos % 1.0
        amp = np.zeros(frames)
        amp[cols] = 2.0 * ((1.0 - frac) * magnitude[below, cols] + frac * magnitude[below + 1, cols])
        harmonic += np.interp(t, t_frames, amp) * voiced_t * np.cos(k * phase)
    freqs = np.fft.rfftfreq(n_fft, 1.0 / rate)
    noise_mask = np.where((f0 > 0)[None, :], (freqs >= max_voiced)[:, None], True)
    noise = magnitude * noise_mask * np.exp(2j * np.pi * rng.random(magnitude.shape))
    return harmonic + _istft(noise, n_fft, hop, len(x))


METHODS: dict[str, Method] = {"griffinlim": griffinlim, "mel": mel, "lpc": lpc, "pvoc": pvoc, "hnm": hnm}


def resynthesise(x: np.ndarray, rate: int, method: str, seed: int) -> np.ndarray:
    """``x`` through ``method`` (``METHODS``): ``len(x)`` samples at ``x``'s RMS level, in [-1, 1]."""
    if method not in METHODS:
        raise ValueError(f"unknown resynthesis method {method!r} ({', '.join(METHODS)})")
    x = np.asarray(x, dtype=np.float64)
    y = METHODS[method](x, rate, np.random.default_rng(seed))
    y = _fit(np.nan_to_num(y, nan=0.0, posinf=0.0, neginf=0.0), len(x))
    rms_in, rms_out = float(np.sqrt(np.mean(x ** 2))), float(np.sqrt(np.mean(y ** 2)))
    if rms_out > 0.0:
        y = y * (rms_in / rms_out)
    return np.clip(y, -1.0, 1.0)
