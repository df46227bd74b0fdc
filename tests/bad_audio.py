"""A corpus of bad and unusual audio files, generated (never committed as binaries).

``CASES`` says what the audio stage must make of each: the clip's status and a piece of its note.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import soundfile as sf

# file name -> (status, text the note must contain; "" = the note must be empty)
CASES: dict[str, tuple[str, str]] = {
    "zero_bytes.wav": ("unreadable", "zero-byte file"),
    "truncated.wav": ("window", "truncated: 1.50 s of 3.00 s declared"),
    "header_only.wav": ("unreadable", "header only: 3.00 s declared, no audio data"),
    "video_named.wav": ("unreadable", "not an audio file (looks like an MP4/MOV video)"),
    "text_named.wav": ("unreadable", "not an audio file (looks like text)"),
    "folder.wav": ("unreadable", "a directory named like an audio file"),
    "pcm8.wav": ("window", ""),
    "pcm24.wav": ("window", ""),
    "float_nan.wav": ("window", "3 non-finite sample(s) replaced by 0"),
    "all_nan.wav": ("silent", "32000 non-finite sample(s) replaced by 0; silent: digital silence"),
    "stereo.wav": ("window", ""),
    "rate8k.wav": ("window", ""),
    "rate48k_stereo.wav": ("window", ""),
    "silence.wav": ("silent", "silent: digital silence"),
    "short_20ms.wav": ("silent", "silent: 0.020 s above the peak - 40 dB (audio.min_speech_s 0.3)"),
    "flac_clip.flac": ("window", ""),
    "ogg_clip.ogg": ("window", ""),
    "mp3_clip.mp3": ("window", ""),
}


def speechlike(rate: int, seconds: float, seed: int = 0, channels: int = 1) -> np.ndarray:
    """Harmonics of a gliding 100-200 Hz pitch under a 4 Hz syllable envelope, plus faint noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(rate * seconds))) / rate
    f0 = 140.0 + 40.0 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6))
    phase = 2 * np.pi * np.cumsum(f0) / rate
    voiced = sum(np.sin(k * phase + rng.uniform(0, 6)) / k for k in range(1, 30) if 200 * k < rate / 2)
    envelope = 0.55 + 0.45 * np.sin(2 * np.pi * 4.0 * t) ** 2
    x = 0.12 * voiced * envelope + 0.002 * rng.standard_normal(len(t))
    if channels == 1:
        return x
    return np.stack([x * (1.0 - 0.2 * c) for c in range(channels)], axis=1)


def encode(x: np.ndarray, rate: int, fmt: str = "WAV", subtype: str = "PCM_16") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def _fake_mp4() -> bytes:
    ftyp = struct.pack(">I", 24) + b"ftypisom" + b"\x00\x00\x02\x00" + b"isomiso2"
    return ftyp + struct.pack(">I", 8) + b"free" + struct.pack(">I", 1032) + b"mdat" + bytes(range(256)) * 4


def write_corpus(folder: Path) -> dict[str, Path]:
    """Write every file of ``CASES`` into ``folder``; returns name -> path."""
    folder.mkdir(parents=True, exist_ok=True)
    good = speechlike(16000, 3.0)
    full = encode(good, 16000)
    nan = good.astype(np.float32)
    nan[[100, 5000, 20000]] = [np.nan, np.inf, -np.inf]
    files: dict[str, bytes] = {
        "zero_bytes.wav": b"",
        "truncated.wav": full[: 44 + (len(full) - 44) // 2],  # cut in the middle of its data chunk
        "header_only.wav": full[:44],
        "video_named.wav": _fake_mp4(),
        "text_named.wav": b"RIFF? no: just a text file someone named .wav\n" * 4,
        "pcm8.wav": encode(good, 16000, subtype="PCM_U8"),
        "pcm24.wav": encode(good, 16000, subtype="PCM_24"),
        "float_nan.wav": encode(nan, 16000, subtype="FLOAT"),
        "all_nan.wav": encode(np.full(32000, np.nan, np.float32), 16000, subtype="FLOAT"),
        "stereo.wav": encode(speechlike(16000, 3.0, channels=2), 16000),
        "rate8k.wav": encode(speechlike(8000, 3.0), 8000),
        "rate48k_stereo.wav": encode(speechlike(48000, 3.0, channels=2), 48000),
        "silence.wav": encode(np.zeros(32000), 16000),
        "short_20ms.wav": encode(speechlike(16000, 0.02), 16000),
        "flac_clip.flac": encode(good, 16000, "FLAC"),
        "ogg_clip.ogg": encode(good, 16000, "OGG", "VORBIS"),
        "mp3_clip.mp3": encode(good, 16000, "MP3", "MPEG_LAYER_III"),
    }
    out = {}
    for name, data in files.items():
        (folder / name).write_bytes(data)
        out[name] = folder / name
    (folder / "folder.wav").mkdir(exist_ok=True)
    out["folder.wav"] = folder / "folder.wav"
    assert set(out) == set(CASES)
    return out


def write_long_wav(path: Path, hours: float = 2.0, rate: int = 48000, channels: int = 2,
                   noisy_s: float = 660.0, beeps_s: tuple[float, ...] = (5.0, 200.0, 400.0)) -> int:
    """A ``hours``-long 16-bit WAV without writing ``hours`` of samples: low-amplitude noise for the
    first ``noisy_s`` (past every window the stage may read with max_seconds 600), a 0.5 s beep at
    each of ``beeps_s``, then a sparse zero tail up to the length the header declares. Returns frames."""
    frames = int(hours * 3600 * rate)
    block = 2 * channels
    data_bytes = frames * block
    header = (b"RIFF" + struct.pack("<I", 36 + data_bytes) + b"WAVE" + b"fmt "
              + struct.pack("<IHHIIHH", 16, 1, channels, rate, rate * block, block, 16)
              + b"data" + struct.pack("<I", data_bytes))
    rng = np.random.default_rng(7)
    chunk = int(10 * rate)
    with open(path, "wb") as fh:
        fh.write(header)
        for start in range(0, int(noisy_s * rate), chunk):
            t = (start + np.arange(chunk)) / rate
            x = 0.0005 * rng.standard_normal(chunk)
            for b in beeps_s:
                on = (t >= b) & (t < b + 0.5)
                x[on] += 0.5 * np.sin(2 * np.pi * 440.0 * t[on])
            pcm = np.repeat((x * 32767).astype("<i2")[:, None], channels, axis=1)
            fh.write(pcm.tobytes())
        fh.truncate(len(header) + data_bytes)  # the rest: zeros, sparse on disk
    return frames
