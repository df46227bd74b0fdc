"""Speech clip -> fixed-length spectrogram windows as uint8 images: the work of stage 1 for audio.

The path of one clip, in order:

1. ``audio_header``: the header only (``soundfile.info``); anything unusable raises
   :class:`ImageReadError` (the project's "input file unreadable" error) with the reason.
2. A block-wise scan of the first ``audio.max_seconds``: decode, downmix to mono (channel mean),
   replace NaN/inf by 0 (counted), and keep one energy per hop (10 ms at the defaults). Nothing longer than one
   block is ever in memory, so a 2-hour file costs what a 10-second one does.
3. Trimming: leading and trailing frames quieter than the loudest frame minus ``audio.trim_db``
   go. Leading silence differs by source in real datasets; it must never reach a window.
4. Windows of exactly ``frames`` STFT frames (``(frames - 1) * hop_length + n_fft`` samples),
   at most ``max_windows``, spread evenly over the speech with at least the overlap step between
   them: a long clip never weighs more than ``max_windows`` windows. Speech shorter than one
   window (but at least ``min_speech_s``) is tiled to fill it: a zero pad's length would be a
   feature. Only the samples under a window are read again (seek + a resampling margin); lossy
   files (MP3, Ogg), whose reads by position are inexact, are decoded once and sliced.
5. Resampling to ``audio.sample_rate`` with ``resample_poly`` on segments that start on the
   polyphase grid, so a segment gives the same samples as resampling the whole clip would.
6. Features (H = n_mels rows, W = frames columns, row 0 = the highest frequency, as a spectrogram
   is drawn): ``mel`` log-mel power, ``linear`` log power on equal-width frequency bands,
   ``delta`` the log-mel's time derivative, ``phase`` the instantaneous-frequency deviation (how far
   each bin's phase advance over one hop strays from what the bin's own frequency predicts: neural
   vocoders leave their high bands too regular). Powers are dBFS (a full-scale sine peaks at 0 dB),
   mapped from ``db_range`` to 0..255; delta maps +-``DELTA_DB`` dB per frame to 1..255 around 128;
   phase maps 0..pi radians to 0..255.
7. Codec copies (training clips, ``audio.codec_copies``): the speech span, at most
   ``audio.max_seconds``, is encoded and decoded in memory with each codec and windowed at the same
   positions, so training can read a window as an MP3 or Opus listener would have heard it.
8. Self-made fakes (real training clips, ``audio.self_fakes``): the same speech span resynthesised
   by each method of :mod:`.resynth`, windowed at the same positions, with codec copies of its own.

This module reads files and writes none (the stage writes); with .workers it is all a worker process imports.
The same input gives the same bytes on one machine whatever the worker count: no BLAS (einsum's
own loops), integer window arithmetic, PNGs without timestamps.
"""

from __future__ import annotations

import io
import math
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image
from scipy.signal import resample_poly

from .config import AudioConfig
from .errors import ImageReadError
from .images import input_file_size
from .resynth import resynthesise

AUDIO_VERSION = 1  # bump when the features or the window policy change: old outputs are redone
DELTA_DB = 16.0  # a log-mel change of this many dB per frame (regression over +-2 frames) -> 255
_DELTA_SPAN = 2  # delta regression half-width, frames
_BLOCK_SAMPLES = 1 << 20  # decoded samples (all channels) held at once while scanning
_MIN_POWER = 1e-20  # -200 dBFS: log floor


# ---------------------------------------------------------------- header


@dataclass(frozen=True)
class AudioInfo:
    samplerate: int
    channels: int
    frames: int  # as libsndfile reports it (a truncated WAV: the frames actually present)
    format: str
    subtype: str
    declared_frames: int | None = None  # set when the header promises more than the file holds

    @property
    def duration_s(self) -> float:
        return self.frames / self.samplerate


_MAGIC = (
    (4, b"ftyp", "an MP4/MOV video"),
    (0, b"\x1aE\xdf\xa3", "a Matroska/WebM video"),
    (0, b"\x00\x00\x01\xba", "an MPEG video"),
    (0, b"\x89PNG", "a PNG image"),
    (0, b"\xff\xd8\xff", "a JPEG image"),
    (0, b"%PDF", "a PDF document"),
    (0, b"PK\x03\x04", "a ZIP archive"),
)


def _sniff(path: Path) -> str:
    """What a file that libsndfile refuses looks like, for the message."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(512)
    except OSError:
        return ""
    if head[8:12] == b"AVI ":
        return "an AVI video"
    for offset, magic, name in _MAGIC:
        if head[offset:offset + len(magic)] == magic:
            return name
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return ""
    return "text" if text and all(c.isprintable() or c in "\r\n\t" for c in text) else ""


# libsndfile's log line for a WAV/AIFF data chunk that claims more bytes than the file holds.
_SHORT_CHUNK = re.compile(r"^(?:data|SSND)\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)


def audio_header(path: str | os.PathLike) -> AudioInfo:
    """Sample rate, channels and length from the header alone; raises :class:`ImageReadError`."""
    path = Path(path)
    input_file_size(path, "audio")
    try:
        info = sf.info(str(path))
    except (sf.SoundFileError, RuntimeError, OSError, ValueError) as exc:
        message = str(exc).split(": ", 1)[-1].strip() or type(exc).__name__
        if "not recognised" in message.lower():
            kind = _sniff(path)
            raise ImageReadError(path, f"not an audio file ({f'looks like {kind}' if kind else 'format not recognised'})"
                                 ) from exc
        raise ImageReadError(path, f"corrupt audio: {message}") from exc
    declared = None
    short = _SHORT_CHUNK.search(info.extra_info or "")
    block = _bytes_per_frame(info.subtype, info.channels)
    if short and block and int(short.group(1)) > int(short.group(2)):
        declared = int(short.group(1)) // block
    if info.samplerate <= 0 or info.channels <= 0:
        raise ImageReadError(path, f"invalid header: {info.samplerate} Hz, {info.channels} channel(s)")
    if info.frames <= 0:
        if declared:
            raise ImageReadError(path, f"header only: {declared / info.samplerate:.2f} s declared, no audio data")
        raise ImageReadError(path, "no audio samples (empty or header only)")
    return AudioInfo(int(info.samplerate), int(info.channels), int(info.frames), str(info.format),
                     str(info.subtype), declared)


def _bytes_per_frame(subtype: str, channels: int) -> int:
    bits = {"PCM_U8": 8, "PCM_S8": 8, "PCM_16": 16, "PCM_24": 24, "PCM_32": 32, "FLOAT": 32, "DOUBLE": 64,
            "ULAW": 8, "ALAW": 8}.get(subtype)
    return bits * channels // 8 if bits else 0


# ---------------------------------------------------------------- signal helpers (pure)


def downmix(block: np.ndarray) -> np.ndarray:
    """frames x channels (or 1-D) -> mono float64, the mean of the channels."""
    block = np.asarray(block)
    if block.ndim == 1:
        return block.astype(np.float64)
    if block.shape[1] == 1:
        return block[:, 0].astype(np.float64)
    return block.astype(np.float64).mean(axis=1)


def sanitize(x: np.ndarray) -> tuple[np.ndarray, int]:
    """NaN/inf -> 0; returns (samples, how many were replaced)."""
    bad = ~np.isfinite(x)
    count = int(bad.sum())
    if count:
        x = np.where(bad, 0.0, x)
    return x, count


def resample_ratio(src_rate: int, dst_rate: int) -> tuple[int, int]:
    """(up, down) of the polyphase resampler, in lowest terms."""
    g = math.gcd(int(src_rate), int(dst_rate))
    return int(dst_rate) // g, int(src_rate) // g


def resample(x: np.ndarray, src_rate: int, dst_rate: int) -> np.ndarray:
    """The whole-signal reference that segment reads reproduce: ``resample_poly`` (Kaiser, zero pad)."""
    up, down = resample_ratio(src_rate, dst_rate)
    x = np.asarray(x, dtype=np.float64)
    return x.copy() if up == down else resample_poly(x, up, down)


def frame_energies(x: np.ndarray, frame: int) -> np.ndarray:
    """Mean square per consecutive ``frame`` samples (a short last frame: over what it has)."""
    full = len(x) // frame
    energies = (x[: full * frame].reshape(full, frame) ** 2).mean(axis=1) if full else np.zeros(0)
    if len(x) > full * frame:
        energies = np.append(energies, float((x[full * frame:] ** 2).mean()))
    return energies


def speech_extent(energies: np.ndarray, trim_db: float) -> tuple[int, int] | None:
    """(first, last + 1) frame at or above the peak minus ``trim_db``; None for digital silence."""
    if len(energies) == 0:
        return None
    peak = float(energies.max())
    if peak <= 0.0:
        return None
    keep = np.flatnonzero(energies >= peak * 10.0 ** (-trim_db / 10.0))
    return int(keep[0]), int(keep[-1]) + 1


def window_samples(cfg: AudioConfig) -> int:
    """Samples one window covers: exactly ``frames`` STFT frames, no centre padding."""
    return (cfg.frames - 1) * cfg.hop_length + cfg.n_fft


def place_windows(speech: int, length: int, max_windows: int, overlap: float) -> list[int]:
    """Window offsets into ``speech`` samples: evenly spread, at most ``max_windows``, consecutive
    windows at least ``length * (1 - overlap)`` apart. Speech shorter than a window: [0] (tiled)."""
    if speech <= length:
        return [0]
    step = max(1, int(round(length * (1.0 - overlap))))
    count = min(max(1, max_windows), 1 + (speech - length) // step)
    if count == 1:
        return [(speech - length) // 2]
    return [k * (speech - length) // (count - 1) for k in range(count)]


def tile(x: np.ndarray, length: int) -> np.ndarray:
    """Repeat ``x`` until it is ``length`` long (a pad that carries no length information)."""
    return np.resize(x, length) if len(x) else np.zeros(length)


# ---------------------------------------------------------------- features (pure)


def stft_power(x: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """Power per (bin, frame), periodic Hann, no centre padding; scaled so a full-scale sine = 1."""
    window = np.hanning(n_fft + 1)[:-1]
    frames = np.lib.stride_tricks.sliding_window_view(np.asarray(x, np.float64), n_fft)[::hop]
    spectrum = np.fft.rfft(frames * window, axis=1)
    power = spectrum.real ** 2 + spectrum.imag ** 2
    return (power * (4.0 / window.sum() ** 2)).T


def _hz_to_mel(f: np.ndarray | float) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + np.asarray(f, np.float64) / 700.0)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (np.asarray(m, np.float64) / 2595.0) - 1.0)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) triangles on the HTK mel scale, 0 Hz to Nyquist, rows summing to 1.

    Each band is the weighted mean power of its bins, so mel and linear rows share one dB scale.
    Low bands narrower than a bin would be empty; their slopes are widened to one bin (they then
    interpolate between the two nearest bins instead of holding nothing).
    """
    freqs = np.arange(n_fft // 2 + 1) * sample_rate / n_fft
    edges = _mel_to_hz(np.linspace(0.0, float(_hz_to_mel(sample_rate / 2)), n_mels + 2))
    spacing = sample_rate / n_fft
    bank = np.zeros((n_mels, len(freqs)))
    for i in range(n_mels):
        left, centre, right = edges[i], edges[i + 1], edges[i + 2]
        rise = max(centre - left, spacing)
        fall = max(right - centre, spacing)
        up = 1.0 - (centre - freqs) / rise
        down = 1.0 - (freqs - centre) / fall
        bank[i] = np.clip(np.where(freqs <= centre, up, down), 0.0, None)
    return bank / bank.sum(axis=1, keepdims=True)


def linear_filterbank(sample_rate: int, n_fft: int, n_rows: int) -> np.ndarray:
    """(n_rows, n_fft // 2 + 1): row r = the mean power over [r, r + 1) * Nyquist / n_rows, by overlap."""
    spacing = sample_rate / n_fft
    centres = np.arange(n_fft // 2 + 1) * spacing
    nyquist = sample_rate / 2
    lo_bin = np.clip(centres - spacing / 2, 0.0, nyquist)
    hi_bin = np.clip(centres + spacing / 2, 0.0, nyquist)
    bounds = np.linspace(0.0, nyquist, n_rows + 1)
    overlap = np.minimum(hi_bin[None, :], bounds[1:, None]) - np.maximum(lo_bin[None, :], bounds[:-1, None])
    bank = np.clip(overlap, 0.0, None)
    return bank / bank.sum(axis=1, keepdims=True)


def power_to_db(power: np.ndarray) -> np.ndarray:
    return 10.0 * np.log10(np.maximum(power, _MIN_POWER))


def quantise(db: np.ndarray, db_range: tuple[float, float] | list[float]) -> np.ndarray:
    """dB -> uint8, ``db_range`` low -> 0, high -> 255, clipped."""
    lo, hi = float(db_range[0]), float(db_range[1])
    scaled = np.clip((db - lo) / (hi - lo), 0.0, 1.0) * 255.0
    return np.floor(scaled + 0.5).astype(np.uint8)


def delta(db: np.ndarray, span: int = _DELTA_SPAN) -> np.ndarray:
    """Time derivative per (row, frame), dB per frame: regression over +-``span`` frames, edges held."""
    padded = np.pad(db, ((0, 0), (span, span)), mode="edge")
    width = db.shape[1]
    num = sum(n * (padded[:, span + n: span + n + width] - padded[:, span - n: span - n + width])
              for n in range(1, span + 1))
    return num / (2.0 * sum(n * n for n in range(1, span + 1)))


def phase_deviation(x: np.ndarray, n_fft: int, hop: int, rows: int, floor_db: float = -130.0) -> np.ndarray:
    """(rows, frames): |phase advance over one hop - 2 pi f hop / rate|, wrapped to 0..pi, per bin.

    An STFT of ``2 * rows`` points (bins 1..rows, DC dropped: one bin per row, each at its linear row's
    upper edge) whose frames share the centres of the ``n_fft`` power frames, so its columns line up
    with the other channels'. Column t compares frame t with frame t - 1; column 0 repeats column 1.
    Speech holds a bin's phase advance close to the bin's frequency only where a component is steady;
    real recordings keep noise-like high bands (deviation near pi/2 on average), neural vocoders
    smoother ones. Computed from the phase alone: the level of the band does not enter, except that
    a bin below ``floor_db`` dBFS in either frame (digital silence) has no phase to speak of and gets
    pi/2, what random phase averages, rather than a "steady" 0.
    """
    size = 2 * rows
    if size > n_fft:
        raise ValueError(f"the phase channel needs 2 * n_mels <= n_fft, got {size} > {n_fft}")
    offset = (n_fft - size) // 2
    x = np.asarray(x, np.float64)
    frames = np.lib.stride_tricks.sliding_window_view(x[offset:], size)[::hop][: (len(x) - n_fft) // hop + 1]
    window = np.hanning(size + 1)[:-1]
    spectrum = np.fft.rfft(frames * window, axis=1)[:, 1: rows + 1]
    expected = np.exp(-2j * np.pi * np.arange(1, rows + 1) * hop / size)
    deviation = np.abs(np.angle(spectrum[1:] * np.conj(spectrum[:-1]) * expected))
    audible = np.abs(spectrum) ** 2 * (4.0 / window.sum() ** 2) > 10.0 ** (floor_db / 10.0)
    deviation = np.where(audible[1:] & audible[:-1], deviation, np.pi / 2)
    if len(deviation) == 0:  # a one-frame window: nothing to compare
        return np.zeros((rows, len(frames)))
    return np.concatenate([deviation[:1], deviation]).T


def quantise_phase(deviation: np.ndarray) -> np.ndarray:
    """0..pi radians -> uint8 0..255."""
    return np.floor(np.clip(deviation / np.pi, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def quantise_delta(d: np.ndarray, full_scale: float = DELTA_DB) -> np.ndarray:
    """dB per frame -> uint8 with 0 at 128 and +-``full_scale`` at 255 / 1."""
    return np.floor(np.clip(128.0 + d * (127.0 / full_scale), 0.0, 255.0) + 0.5).astype(np.uint8)


@dataclass(frozen=True)
class _Banks:
    mel: np.ndarray
    linear: np.ndarray


_BANK_CACHE: dict[tuple[int, int, int], _Banks] = {}


def _banks(cfg: AudioConfig) -> _Banks:
    key = (cfg.sample_rate, cfg.n_fft, cfg.n_mels)
    if key not in _BANK_CACHE:
        _BANK_CACHE[key] = _Banks(mel_filterbank(*key), linear_filterbank(*key))
    return _BANK_CACHE[key]


def window_image(x: np.ndarray, cfg: AudioConfig) -> np.ndarray:
    """One window of ``window_samples(cfg)`` samples -> uint8 (n_mels, frames, 3), channels as configured."""
    if len(x) != window_samples(cfg):
        raise ValueError(f"a window needs {window_samples(cfg)} samples, got {len(x)}")
    power = stft_power(x, cfg.n_fft, cfg.hop_length)
    banks = _banks(cfg)
    lo, hi = float(cfg.db_range[0]), float(cfg.db_range[1])
    # einsum without optimize runs its own loops (no BLAS threads): identical bits everywhere.
    mel_db = np.clip(power_to_db(np.einsum("mb,bt->mt", banks.mel, power)), lo, hi)
    planes = {
        "mel": lambda: quantise(mel_db, cfg.db_range),
        "linear": lambda: quantise(power_to_db(np.einsum("rb,bt->rt", banks.linear, power)), cfg.db_range),
        "delta": lambda: quantise_delta(delta(mel_db)),
        "phase": lambda: quantise_phase(phase_deviation(x, cfg.n_fft, cfg.hop_length, cfg.n_mels, lo)),
    }
    image = np.stack([planes[name]() for name in cfg.channels], axis=2)
    return np.ascontiguousarray(image[::-1])  # row 0 = the highest frequency


def encode_png(image: np.ndarray) -> bytes:
    """Lossless RGB PNG bytes (no timestamps or text chunks: the same pixels give the same bytes)."""
    buf = io.BytesIO()
    Image.fromarray(image, "RGB").save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


# ---------------------------------------------------------------- codec copies

# audio.codec_copies name -> (soundfile format, subtype). Through libsndfile: LAME/mpg123, libopus,
# libvorbis. At the project's rate (16 kHz) each decodes to exactly the input's length and timing
# (no encoder delay left: checked in tests/test_audio.py), so a copy's window covers the same speech.
CODECS: dict[str, tuple[str, str]] = {"mp3": ("MP3", "MPEG_LAYER_III"), "opus": ("OGG", "OPUS"),
                                      "vorbis": ("OGG", "VORBIS")}


def missing_codecs(names: Sequence[str]) -> list[str]:
    """The codecs of ``names`` that this libsndfile cannot write (MP3 needs libsndfile >= 1.1)."""
    return [n for n in names if n not in CODECS or CODECS[n][1] not in sf.available_subtypes(CODECS[n][0])]


class CodecError(RuntimeError):
    """A codec round trip that does not give back the whole clip: no copy is made of it."""


def codec_roundtrip(x: np.ndarray, rate: int, codec: str, level: float) -> np.ndarray:
    """Mono samples encoded with ``codec`` at compression ``level`` (0..1, higher = fewer bits), in
    memory, and decoded in one call (see :func:`seeks_exactly`): float64, ``len(x)`` samples.

    A decode shorter than the input raises :class:`CodecError`: padding the rest with zeros would
    make a damaged copy (digital silence where speech was) that training could not tell apart."""
    fmt, subtype = CODECS[codec]
    buf = io.BytesIO()
    with sf.SoundFile(buf, "w", samplerate=rate, channels=1, format=fmt, subtype=subtype,
                      compression_level=float(level)) as f:
        f.write(np.clip(x, -1.0, 1.0).astype(np.float32))
    buf.seek(0)
    y, _ = sf.read(buf, dtype="float64")
    if len(y) < len(x):
        raise CodecError(f"the {codec} decode at level {level:g} gave {len(y)} of {len(x)} samples")
    return y[: len(x)]


def _codec_copies(x: np.ndarray | None, rate: int, copies: Sequence[tuple[str, float]], notes: list[str],
                  what: str) -> dict[str, np.ndarray]:
    """codec -> ``x`` through :func:`codec_roundtrip` at its level; a failure is noted, never raised."""
    coded: dict[str, np.ndarray] = {}
    for codec, level in copies:
        try:
            coded[codec] = codec_roundtrip(x, rate, codec, level)
        except (sf.SoundFileError, RuntimeError) as exc:  # CodecError included
            notes.append(f"no {codec} copy{what}: {exc}")
    return coded


# ---------------------------------------------------------------- decoding a clip


@dataclass
class ClipWindow:
    index: int
    start_s: float  # position in the original clip
    end_s: float
    png: bytes
    copies: dict[str, bytes] = field(default_factory=dict)  # codec -> the same window of the re-encoded clip
    made: dict[str, Rendering] = field(default_factory=dict)  # method -> the same window of a self-made fake


@dataclass
class Rendering:
    """One window of a self-made fake (:mod:`.resynth`) and of its codec copies."""

    png: bytes
    copies: dict[str, bytes] = field(default_factory=dict)


@dataclass
class Clip:
    """What one clip became: status window (>= 1 window), silent or unreadable, and why."""

    status: str
    note: str = ""
    duration_s: float | None = None
    src_rate: int | None = None
    src_channels: int | None = None
    windows: list[ClipWindow] = field(default_factory=list)


def seeks_exactly(info: AudioInfo) -> bool:
    """Whether libsndfile reads this file by position exactly: PCM, float, A/u-law and FLAC do. Lossy
    codecs do not: a seek into MP3 or Ogg Vorbis restarts the decoder without the state the frames
    before leave (MP3's bit reservoir, Vorbis' overlap-add), and MP3 read in several calls decodes
    differently from one call ("part2_3_length too large" from libmpg123). On yourtts clips
    re-encoded, the samples differed from one straight decode by up to 0.37 (MP3) and 0.57 (Vorbis)."""
    return info.format == "FLAC" or _bytes_per_frame(info.subtype, 1) > 0


class ClipReader:
    """An open clip read by position as mono float64.

    Files that read exactly by position (:func:`seeks_exactly`) are read in blocks, never whole: a
    2-hour WAV costs what a short one does. Lossy files (MP3, Ogg) are decoded once, in one call, up to
    ``frames`` (``audio.max_seconds`` bounds it), and every read is a slice of that decode."""

    def __init__(self, path: Path, info: AudioInfo, dst_rate: int):
        self.path = path
        self.info = info
        self.file = sf.SoundFile(str(path))
        self.exact_seek = seeks_exactly(info)
        self.decoded: np.ndarray | None = None  # the lossy file's one decode (mono float32)
        self.frames = info.frames  # playable frames; lowered when decoding stops early
        self.up, self.down = resample_ratio(info.samplerate, dst_rate)
        # resample_poly's filter reaches 10 * max(up, down) upsampled samples each way.
        self.margin = -(-10 * max(self.up, self.down) // self.up) + 1
        self.block = max(1, _BLOCK_SAMPLES // info.channels)

    def close(self) -> None:
        self.file.close()

    def _decode(self) -> np.ndarray:
        if self.decoded is None:
            data = self.file.read(self.frames, dtype="float32", always_2d=True)
            self.decoded = downmix(data).astype(np.float32)  # mono: exact; several channels: their mean
            self.frames = min(self.frames, len(data))
        return self.decoded

    def blocks(self, start: int, stop: int) -> Iterator[np.ndarray]:
        """Mono float64 blocks of [start, stop); stops early where the file ends."""
        if not self.exact_seek:
            piece = self._decode()[start:stop]
            if len(piece):
                yield piece.astype(np.float64)
            return
        self.file.seek(start)
        pos = start
        while pos < stop:
            want = min(self.block, stop - pos)
            data = self.file.read(want, dtype="float32", always_2d=True)
            if len(data):
                yield downmix(data)
            pos += len(data)
            if len(data) < want:
                self.frames = min(self.frames, pos)
                return

    def read(self, start: int, stop: int) -> np.ndarray:
        """Mono samples [start, stop) at the source rate, NaN/inf as 0, zeros past the end."""
        parts = [sanitize(b)[0] for b in self.blocks(start, min(stop, self.frames))] if start < self.frames else []
        x = np.concatenate(parts) if parts else np.zeros(0)
        return np.pad(x, (0, stop - start - len(x))) if len(x) < stop - start else x

    def target_length(self) -> int:
        """Samples of the whole (considered) clip at the target rate: resample_poly's output length."""
        return -(-self.frames * self.up // self.down)

    def read_target(self, t0: int, t1: int) -> np.ndarray:
        """Target-rate samples [t0, t1), equal to slicing ``resample`` of the whole clip.

        The segment starts on a multiple of ``down`` source samples, where the polyphase output grid
        of the segment coincides with the whole clip's, and reaches ``margin`` past the samples the
        filter needs, so only the segment's untouched interior is kept.
        """
        if self.up == self.down:
            return self.read(t0, t1)
        a = max(0, ((t0 * self.down) // self.up - self.margin) // self.down * self.down)
        b = min(self.frames, -(-(t1 * self.down) // self.up) + self.margin)
        y = resample_poly(self.read(a, b), self.up, self.down)
        offset = t0 - (a // self.down) * self.up
        segment = y[offset: offset + (t1 - t0)]
        return np.pad(segment, (0, t1 - t0 - len(segment))) if len(segment) < t1 - t0 else segment


def render_clip(path: str | os.PathLike, cfg: AudioConfig, allow_truncated: bool = True,
                copies: Sequence[tuple[str, float]] = (), made: Sequence[tuple[str, int]] = ()) -> Clip:
    """Decode, trim and window one clip; the PNG bytes of every window, or why there are none.

    ``copies``: (codec, level) pairs; every window is also rendered from the clip's speech passed
    through :func:`codec_roundtrip` with each (``ClipWindow.copies``), at the same position.
    ``made``: (method, seed) pairs; every window is also rendered from the speech resynthesised by
    :func:`.resynth.resynthesise` (``ClipWindow.made``), with the same codec copies.
    Never raises for a bad file: unreadable files come back as status ``unreadable`` with the
    reason, clips without enough sound as ``silent``; every fallback is in ``note``.
    """
    path = Path(path)
    try:
        info = audio_header(path)
    except ImageReadError as exc:
        return Clip("unreadable", exc.reason)
    clip = Clip("silent", duration_s=round(info.duration_s, 4), src_rate=info.samplerate,
                src_channels=info.channels)
    notes: list[str] = []
    if info.declared_frames:
        truncated = f"truncated: {info.duration_s:.2f} s of {info.declared_frames / info.samplerate:.2f} s declared"
        if not allow_truncated:
            return Clip("unreadable", truncated + " (data.allow_truncated is false)", clip.duration_s,
                        info.samplerate, info.channels)
        notes.append(truncated)
    try:
        source = ClipReader(path, info, cfg.sample_rate)
    except (sf.SoundFileError, OSError) as exc:
        return Clip("unreadable", f"cannot decode: {exc}", clip.duration_s, info.samplerate, info.channels)
    try:
        _fill(clip, source, cfg, notes, allow_truncated, copies, made)
    except (sf.SoundFileError, OSError) as exc:
        # A failure while seeking back for a window (after the scan decoded the clip).
        clip.status, clip.windows = "unreadable", []
        notes.append(f"decoding failed: {exc}")
    finally:
        source.close()
    clip.note = "; ".join(notes)
    return clip


def _scan(source: ClipReader, stop: int, frame: int, notes: list[str], allow_truncated: bool
          ) -> tuple[np.ndarray, bool]:
    """Energies of consecutive ``frame``-sample frames over [0, stop); (energies, usable)."""
    energies, bad = [], 0
    carry = np.zeros(0)
    try:
        for block in source.blocks(0, stop):
            block, count = sanitize(block)
            bad += count
            block = np.concatenate([carry, block]) if len(carry) else block
            whole = len(block) // frame * frame
            energies.append(frame_energies(block[:whole], frame))
            carry = block[whole:]
    except sf.SoundFileError as exc:
        decoded = sum(len(e) for e in energies) * frame + len(carry)
        source.frames = decoded
        rate = source.info.samplerate
        notes.append(f"decoding stopped at {decoded / rate:.2f} s of {stop / rate:.2f} s ({exc})")
        if not allow_truncated:
            return np.zeros(0), False
    if len(carry):
        energies.append(frame_energies(carry, frame))
    if bad:
        notes.append(f"{bad} non-finite sample(s) replaced by 0")
    return (np.concatenate(energies) if energies else np.zeros(0)), True


def _fill(clip: Clip, source: ClipReader, cfg: AudioConfig, notes: list[str], allow_truncated: bool,
          copies: Sequence[tuple[str, float]] = (), made: Sequence[tuple[str, int]] = ()) -> None:
    info = source.info
    rate = info.samplerate
    limit = int(round(cfg.max_seconds * rate))
    if info.frames > limit:
        source.frames = limit
        notes.append(f"only the first {cfg.max_seconds:g} s of {info.duration_s:.1f} s considered (audio.max_seconds)")
    frame = max(1, int(round(rate * cfg.hop_length / cfg.sample_rate)))  # one hop, at the source rate
    energies, usable = _scan(source, source.frames, frame, notes, allow_truncated)
    if not usable:
        clip.status = "unreadable"
        notes[-1] += " (data.allow_truncated is false)"
        return
    if source.frames < info.frames and source.frames < limit:
        clip.duration_s = round(source.frames / rate, 4)  # what decodes, not what the header claims
    extent = speech_extent(energies, cfg.trim_db)
    if extent is None:
        notes.append("silent: digital silence" if len(energies) else "silent: nothing decoded")
        return
    peak_db = 10.0 * math.log10(float(energies.max()))
    if peak_db < cfg.db_range[0]:
        notes.append(f"silent: peak {peak_db:.1f} dBFS is below audio.db_range {cfg.db_range[0]:g}")
        return
    # Speech extent on the target-rate grid.
    up, down = source.up, source.down
    first = extent[0] * frame
    last = min(source.frames, extent[1] * frame)
    s0 = first * up // down
    s1 = min(source.target_length(), -(-last * up // down))
    speech = s1 - s0
    if speech < cfg.min_speech_s * cfg.sample_rate:
        notes.append(f"silent: {speech / cfg.sample_rate:.3f} s above the peak - {cfg.trim_db:g} dB "
                     f"(audio.min_speech_s {cfg.min_speech_s:g})")
        return
    length = window_samples(cfg)
    sr = cfg.sample_rate
    # The codec (and a resynthesis) sees the whole speech span (at most audio.max_seconds), as a file
    # would be encoded. An encoder failure costs the clip that copy, never the clip (the note says so).
    whole = source.read_target(s0, s1) if copies or made or speech < length else None
    coded = _codec_copies(whole, sr, copies, notes, "")
    resynthesised: dict[str, tuple[np.ndarray, dict[str, np.ndarray]]] = {}
    for method, seed in made:
        fake = resynthesise(whole, sr, method, seed, cfg.made_cache)
        resynthesised[method] = fake, _codec_copies(fake, sr, copies, notes, f" of the {method} fake")

    def render(x: np.ndarray) -> bytes:
        return encode_png(window_image(x, cfg))

    def cut(y: np.ndarray, offset: int) -> np.ndarray:
        return tile(y, length) if speech < length else y[offset: offset + length]

    def window(k: int, offset: int, t0: int, t1: int, x: np.ndarray) -> ClipWindow:
        return ClipWindow(k, round(t0 / sr, 4), round(t1 / sr, 4), render(x),
                          {c: render(cut(y, offset)) for c, y in coded.items()},
                          {m: Rendering(render(cut(y, offset)), {c: render(cut(z, offset)) for c, z in zc.items()})
                           for m, (y, zc) in resynthesised.items()})

    if speech < length:
        notes.append(f"tiled: {speech / sr:.2f} s of speech repeated to fill a {length / sr:.2f} s window")
        clip.windows.append(window(0, 0, s0, s1, tile(whole, length)))
    else:
        for k, offset in enumerate(place_windows(speech, length, cfg.max_windows, cfg.window_overlap)):
            t0 = s0 + offset
            clip.windows.append(window(k, offset, t0, t0 + length, source.read_target(t0, t0 + length)))
    clip.status = "window"
