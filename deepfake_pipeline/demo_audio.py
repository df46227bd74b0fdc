"""Deterministic synthetic speech dataset in the Kaggle layout, for the audio demo and the tests.

``python -m deepfake_pipeline.demo_audio --out data/demo_audio --n 200`` writes::

    <out>/train_audio/clip_00000.wav ...   <out>/test_audio/clip_00007.wav ...   (16 kHz, mono, 16-bit)
    <out>/train_solution.csv               Id,target_feature,speaker   (1 = fake)
    <out>/test_solution.csv                the hidden answer key, same columns
    <out>/README.txt

A clip is speech-like, not speech: syllables (a consonant onset, then a vowel gliding between two
formant targets) under an amplitude envelope, an intonation contour around the speaker's pitch,
pauses with breath noise, a room noise floor, leading and trailing silence. Each speaker has a pitch,
a vocal-tract length (formant scale), a spectral tilt, a breathiness and a loudness; speakers are
split between train and test (no test speaker in train), and every speaker has both classes.

Real clips: harmonics with random phases and pitch jitter, aspiration noise, fricatives and bursts
reaching 8 kHz. Fakes are the same content and speaker rendered the way a neural vocoder leaves
traces: phase-coherent harmonics and a jitter-free pitch, everything above a cutoff (3.6-4.6 kHz)
removed and replaced by noise following the high band's over-smoothed envelope at -12 to -20 dB,
and a slight amplitude ripple at the vocoder frame rate (62.5 Hz, hop 256).

Lengths, leading silence and loudness come from one distribution for both classes (drawn before
the label is looked at), so clip length is no feature. The content of clip ``i`` depends only on
``(seed, i)`` and the arguments: the same call writes byte-identical files, for any worker count.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import re
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
from scipy.signal import butter, sosfilt, sosfiltfilt

from .images import atomic_write_bytes, atomic_write_text, remove_stale_temps, save_csv

SAMPLE_RATE = 16000
ID_PREFIX = "clip_"
_ID_RE = re.compile(rf"^{ID_PREFIX}\d+\.wav$")
_CONTROL = 80  # samples per control point (5 ms): envelopes and formants move at this rate
_FRAME_RATE = SAMPLE_RATE / 256  # the fake vocoder's frame rate (hop 256)

README = """\
SYNTHETIC DEMO SPEECH - NOT A REAL DEEPFAKE DATASET

Written by `python -m deepfake_pipeline.demo_audio` ({args}).

Every clip is procedurally synthesised, speech-like sound (harmonics through formant filters,
syllable envelopes, fricative noise, breath, pauses); no real voice and no real text-to-speech or
voice-conversion system is involved. Label 1 (fake) clips are the same content rendered with simple
vocoder-like traces: a band-limited, over-smoothed high band, phase-coherent harmonics and a slight
frame-rate ripple. Clip length and leading silence follow one distribution for both classes.

This data only exercises the mechanics of the pipeline; scores measured on it say nothing about
how a model does on real synthetic speech.

Files: train_audio/, test_audio/ (<Id>.wav, 16 kHz mono 16-bit), train_solution.csv and
test_solution.csv (Id,target_feature,speaker; 1 = fake, 0 = real). test_solution.csv is the answer
key for scoring. Speakers do not cross the split. Counts: {counts}
"""

# (F1, F2, F3, F4) in Hz for an adult male vocal tract; speakers scale them.
_VOWELS = np.array([
    (730, 1090, 2440, 3400), (270, 2290, 3010, 3800), (300, 870, 2240, 3300), (530, 1840, 2480, 3500),
    (570, 840, 2410, 3400), (660, 1720, 2410, 3400), (440, 1020, 2240, 3300), (390, 1990, 2550, 3600),
], dtype=np.float64)
_BANDWIDTHS = np.array([80.0, 100.0, 150.0, 250.0])
_HARMONIC_TOP = 5000.0  # harmonics above this carry too little energy to matter for the demo


@dataclass(frozen=True)
class Speaker:
    name: str
    f0: float  # mean pitch, Hz
    formant_scale: float  # vocal tract length factor (shorter tract: higher formants)
    tilt_db: float  # source spectral slope, dB per octave
    breathiness: float  # aspiration noise relative to the harmonics
    level_db: float  # speaking level, dBFS (RMS of the voiced parts)


def make_speaker(seed: int, k: int) -> Speaker:
    rng = np.random.default_rng([seed, 1, k])
    female = bool(rng.random() < 0.5)
    return Speaker(
        name=f"spk{k:03d}",
        f0=float(rng.uniform(175, 250) if female else rng.uniform(90, 150)),
        formant_scale=float(rng.uniform(1.08, 1.2) if female else rng.uniform(0.9, 1.03)),
        tilt_db=float(rng.uniform(-14.0, -9.0)),
        breathiness=float(rng.uniform(0.02, 0.08)),
        level_db=float(rng.uniform(-26.0, -20.0)),
    )


@dataclass
class Content:
    """Everything about a clip but its rendering: identical for a real and a fake clip."""

    n: int  # samples
    lead: int  # samples of leading silence
    voicing: np.ndarray  # per control point, 0..1
    f0: np.ndarray  # per control point, Hz
    formants: np.ndarray  # (control points, 4), Hz
    frication: np.ndarray  # per control point, 0..1
    fric_band: np.ndarray  # per control point, 0 = "sh" (2.5-6 kHz), 1 = "s" (4-8 kHz)
    breath: np.ndarray  # per control point, 0..1 (in pauses)
    gain_db: float


def make_content(seed: int, index: int, spk: Speaker) -> Content:
    """Syllables, pauses, intonation and the clip's length; depends on (seed, index) only."""
    rng = np.random.default_rng([seed, 2, index])
    speech_s = float(rng.uniform(0.8, 6.0))
    lead_s = float(rng.uniform(0.05, 1.2))
    trail_s = float(rng.uniform(0.05, 0.6))
    gain_db = spk.level_db + float(rng.uniform(-4.0, 4.0))
    n = int(round((lead_s + speech_s + trail_s) * SAMPLE_RATE))
    n_ctl = n // _CONTROL + 2
    voicing, frication, fric_band, breath = (np.zeros(n_ctl) for _ in range(4))
    formants = np.tile(_VOWELS[0] * spk.formant_scale, (n_ctl, 1))
    t = int(lead_s * SAMPLE_RATE / _CONTROL)
    end = int((lead_s + speech_s) * SAMPLE_RATE / _CONTROL)
    accents = np.zeros(n_ctl)
    while t < end:
        if rng.random() < 0.12 and t > int(lead_s * SAMPLE_RATE / _CONTROL) + 20:  # a pause, with a breath
            span = int(rng.uniform(0.15, 0.45) * SAMPLE_RATE / _CONTROL)
            stop = min(end, t + span)
            breath[t:stop] = np.hanning(stop - t + 2)[1:-1] * rng.uniform(0.4, 1.0)
            t = stop
            continue
        if rng.random() < 0.5:  # a fricative onset
            span = int(rng.uniform(0.05, 0.12) * SAMPLE_RATE / _CONTROL)
            stop = min(end, t + span)
            frication[t:stop] = np.hanning(stop - t + 2)[1:-1] * rng.uniform(0.3, 1.0)
            fric_band[t:stop] = float(rng.random() < 0.5)
            t = stop
        span = int(rng.uniform(0.12, 0.3) * SAMPLE_RATE / _CONTROL)
        stop = min(end, t + span)
        if stop - t >= 4:
            k = stop - t
            attack, release = max(1, k // 5), max(1, k // 3)
            env = np.ones(k)
            env[:attack] = np.linspace(0.0, 1.0, attack, endpoint=False)
            env[k - release:] = np.linspace(1.0, 0.0, release)
            voicing[t:stop] = env * rng.uniform(0.5, 1.0)
            a, b = _VOWELS[rng.integers(len(_VOWELS))], _VOWELS[rng.integers(len(_VOWELS))]
            glide = np.linspace(0.0, 1.0, k)[:, None]
            formants[t:stop] = ((1 - glide) * a + glide * b) * spk.formant_scale * rng.uniform(0.96, 1.04)
            accents[t:stop] = rng.normal(0.0, 0.06)
        t = stop
    # Intonation: declination over the utterance, per-syllable accents, smoothed.
    ramp = np.linspace(0.08, -0.08, n_ctl)
    kernel = np.hanning(15) / np.hanning(15).sum()
    f0 = spk.f0 * (1.0 + ramp + np.convolve(accents, kernel, mode="same"))
    return Content(n, int(lead_s * SAMPLE_RATE), voicing, f0, formants, frication, fric_band, breath, gain_db)


def _resonances(freq: np.ndarray, formants: np.ndarray) -> np.ndarray:
    """Magnitude of four second-order resonators (1 at DC) at ``freq`` (H, C) for formants (C, 4)."""
    gain = np.ones_like(freq)
    for i in range(4):
        fi, bi = formants[None, :, i], _BANDWIDTHS[i]
        gain *= fi ** 2 / np.sqrt((fi ** 2 - freq ** 2) ** 2 + (bi * freq) ** 2)
    return gain


def _band_noise(rng: np.random.Generator, n: int, lo: float, hi: float) -> np.ndarray:
    sos = butter(4, [lo, hi], btype="bandpass", fs=SAMPLE_RATE, output="sos")
    return sosfilt(sos, rng.standard_normal(n))


def _upsample(control: np.ndarray, n: int) -> np.ndarray:
    """Control points -> one value per sample (linear interpolation)."""
    return np.interp(np.arange(n) / _CONTROL, np.arange(len(control)), control)


def render(seed: int, index: int, spk: Speaker, fake: bool) -> np.ndarray:
    """The clip's samples (float64, 16 kHz); real and fake share the content, not the rendering."""
    c = make_content(seed, index, spk)
    rng = np.random.default_rng([seed, 3, index, int(fake)])
    n = c.n
    f0_ctl = c.f0 if fake else c.f0 * (1.0 + 0.012 * np.convolve(rng.standard_normal(len(c.f0)), np.ones(3) / 3,
                                                                     mode="same"))
    f0 = _upsample(f0_ctl, n)
    phase = 2.0 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    n_harm = int(_HARMONIC_TOP // max(60.0, float(c.f0.min())))
    h = np.arange(1, n_harm + 1, dtype=np.float64)[:, None]
    amp = _resonances(h * f0_ctl[None, :], c.formants) * (h ** (spk.tilt_db / (20 * math.log10(2))))
    amp *= (h * f0_ctl[None, :] < SAMPLE_RATE / 2 - 200)
    voiced = np.zeros(n)
    start_phase = np.zeros(n_harm) if fake else rng.uniform(0.0, 2.0 * np.pi, n_harm)
    for k in range(n_harm):
        voiced += _upsample(amp[k] * c.voicing, n) * np.sin((k + 1) * phase + start_phase[k])
    voicing = _upsample(c.voicing, n)
    aspiration = _band_noise(rng, n, 400.0, 7000.0) * voicing * spk.breathiness * 3.0
    fric_env = _upsample(c.frication, n)
    band = _upsample(c.fric_band, n)
    fric = (band * _band_noise(rng, n, 4000.0, 7800.0) + (1 - band) * _band_noise(rng, n, 2500.0, 6000.0)) * fric_env
    breath = _band_noise(rng, n, 300.0, 6000.0) * _upsample(c.breath, n) * 0.05
    x = voiced + aspiration + 0.4 * fric + breath
    # Level: the RMS of the voiced stretch at gain_db dBFS, then a room noise floor ~55 dB below.
    active = voicing > 0.3
    rms = float(np.sqrt(np.mean(x[active] ** 2))) if active.any() else 1.0
    x *= 10.0 ** (c.gain_db / 20.0) / rms
    x += rng.standard_normal(n) * 10.0 ** ((c.gain_db - float(rng.uniform(50.0, 60.0))) / 20.0)
    if fake:
        x = _vocoder_traces(x, rng)
    return np.clip(x, -1.0, 1.0)


def _vocoder_traces(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Band-limit, refill the high band with over-smoothed noise, add a frame-rate ripple."""
    cutoff = float(rng.uniform(3600.0, 4600.0))
    low = sosfiltfilt(butter(8, cutoff, btype="lowpass", fs=SAMPLE_RATE, output="sos"), x)
    high_sos = butter(8, cutoff, btype="highpass", fs=SAMPLE_RATE, output="sos")
    high = sosfiltfilt(high_sos, x)
    smooth = np.hanning(801) / np.hanning(801).sum()  # 50 ms: the fine structure is gone
    envelope = np.sqrt(np.convolve(high ** 2, smooth, mode="same"))
    fill = sosfilt(high_sos, rng.standard_normal(len(x))) * envelope * 10.0 ** (-rng.uniform(12.0, 20.0) / 20.0)
    t = np.arange(len(x)) / SAMPLE_RATE
    ripple = 1.0 + float(rng.uniform(0.015, 0.03)) * np.cos(2.0 * np.pi * _FRAME_RATE * t + rng.uniform(0, 2 * np.pi))
    return (low + fill) * ripple


def wav_bytes(x: np.ndarray) -> bytes:
    """16-bit PCM WAV (libsndfile writes no timestamps: the same samples give the same bytes)."""
    buf = io.BytesIO()
    sf.write(buf, x, SAMPLE_RATE, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _write_one(job: tuple[Path, int, int, Speaker, bool]) -> None:
    path, seed, index, spk, fake = job
    atomic_write_bytes(path, wav_bytes(render(seed, index, spk, fake)))


def plan(n: int, test_share: float, fake_share: float, seed: int, n_speakers: int
         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(speaker, label, test flag) per clip: clips dealt round-robin to speakers, labels stratified
    within each speaker, whole speakers in test."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5EED]))
    speaker = np.arange(n) % n_speakers
    labels = np.zeros(n, np.int64)
    for k in range(n_speakers):
        idx = rng.permutation(np.flatnonzero(speaker == k))
        labels[idx[: round(len(idx) * fake_share)]] = 1
    n_test = min(n_speakers - 1, round(n_speakers * test_share)) if test_share > 0 else 0
    test_speakers = rng.permutation(n_speakers)[: max(n_test, 1 if test_share > 0 else 0)]
    return speaker, labels, np.isin(speaker, test_speakers)


def generate(out: Path, n: int, test_share: float = 0.25, seed: int = 0, fake_share: float = 0.5,
             n_speakers: int | None = None, workers: int = 1) -> dict:
    """Write the synthetic speech dataset under ``out``; returns the counts.

    Earlier demo clips (``clip_<digits>.wav``) that this call does not write are removed, so a
    smaller or re-split rerun leaves a consistent layout.
    """
    if n < 4:
        raise ValueError(f"n must be >= 4 (two speakers with both classes), got {n}")
    if not 0.0 <= test_share < 1.0:
        raise ValueError(f"test_share must be in [0, 1), got {test_share}")
    if not 0.0 < fake_share < 1.0:
        raise ValueError(f"fake_share must be in (0, 1), got {fake_share}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    n_speakers = n_speakers or max(2, n // 12)
    if not 2 <= n_speakers <= n // 2:
        raise ValueError(f"n_speakers must be between 2 and n / 2, got {n_speakers}")
    out = Path(out)
    speaker, labels, test = plan(n, test_share, fake_share, seed, n_speakers)
    speakers = [make_speaker(seed, k) for k in range(n_speakers)]
    width = max(5, len(str(n - 1)))
    ids = [f"{ID_PREFIX}{i:0{width}d}" for i in range(n)]
    dirs = {False: out / "train_audio", True: out / "test_audio"}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(d)
    jobs = [(dirs[bool(test[i])] / f"{ids[i]}.wav", seed, i, speakers[speaker[i]], bool(labels[i]))
            for i in range(n)]
    keep = {job[0] for job in jobs}
    for d in dirs.values():
        for f in d.iterdir():
            if _ID_RE.match(f.name) and f not in keep:
                f.unlink()
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            list(pool.map(_write_one, jobs, chunksize=max(1, n // (8 * workers))))
    else:
        for job in jobs:
            _write_one(job)
    for name, mask in (("train_solution.csv", ~test), ("test_solution.csv", test)):
        idx = np.flatnonzero(mask)
        save_csv(out / name, pd.DataFrame({"Id": [ids[i] for i in idx], "target_feature": labels[idx],
                                           "speaker": [speakers[speaker[i]].name for i in idx]}))
    counts = {"n": n, "train": int((~test).sum()), "test": int(test.sum()), "train_fake": int(labels[~test].sum()),
              "test_fake": int(labels[test].sum()), "speakers": n_speakers, "seed": seed}
    args = f"n={n}, test_share={test_share}, seed={seed}, fake_share={fake_share}, n_speakers={n_speakers}"
    atomic_write_text(out / "README.txt", README.format(args=args, counts=counts))
    return counts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m deepfake_pipeline.demo_audio",
                                 description="Write a deterministic synthetic speech deepfake dataset (Kaggle layout).")
    ap.add_argument("--out", type=Path, required=True, help="output folder (e.g. data/demo_audio)")
    ap.add_argument("--n", type=int, default=200, help="number of clips (train + test)")
    ap.add_argument("--test-share", type=float, default=0.25, help="share of the speakers held out for test")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fake-share", type=float, default=0.5)
    ap.add_argument("--speakers", type=int, default=None, help="number of speakers (default: n / 12)")
    ap.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                    help="processes; the output does not depend on it")
    args = ap.parse_args(argv)
    start = time.perf_counter()
    try:
        counts = generate(args.out, args.n, args.test_share, args.seed, args.fake_share, args.speakers, args.workers)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"demo audio: {counts['train']} train ({counts['train_fake']} fake), {counts['test']} test "
          f"({counts['test_fake']} fake), {counts['speakers']} speakers -> {args.out} "
          f"in {time.perf_counter() - start:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
