"""Stage 1 for speech (prepare_audio.py): decoding, trimming, windows, features, bad audio, the manifest,
resume, shards, determinism, the synthetic speech set and the real yourtts clips."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from omegaconf import OmegaConf
from sklearn.metrics import roc_auc_score

from deepfake_pipeline.audio import (
    CODECS,
    AudioInfo,
    ClipReader,
    audio_header,
    codec_roundtrip,
    mel_filterbank,
    phase_deviation,
    place_windows,
    render_clip,
    resample,
    window_image,
    window_samples,
)
from deepfake_pipeline.audio_stage import MANIFEST_COLUMNS, codec_plan, run_prepare_audio, settings_hash
from deepfake_pipeline.config import AudioConfig, Config, DataConfig, load_config
from deepfake_pipeline.dataset import decode_face, load_layout
from deepfake_pipeline.demo_audio import generate
from deepfake_pipeline.errors import ConfigError, DataValidationError, ImageReadError, PipelineError
from deepfake_pipeline.images import read_image
from deepfake_pipeline.journal import Shard, parse_shard, read_journals

from .bad_audio import CASES, encode, speechlike, write_corpus, write_long_wav
from .conftest import PYTHON, REPO, shared_dataset

# ---------------------------------------------------------------- helpers


def make_layout(root: Path, clips: dict[tuple[str, str], bytes]) -> list[tuple[str, str]]:
    """Kaggle audio layout from {(split, file name): bytes}; train labels alternate. Returns the keys."""
    for folder in ("train_audio", "test_audio"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for (split, name), data in clips.items():
        (root / f"{split}_audio" / name).write_bytes(data)
    train = sorted(Path(name).stem for split, name in clips if split == "train")
    pd.DataFrame({"Id": train, "target_feature": [i % 2 for i in range(len(train))]}).to_csv(
        root / "train_solution.csv", index=False)
    return sorted((split, Path(name).stem) for split, name in clips)


def speech_clips(n_train: int = 4, n_test: int = 2, seconds: float = 3.0) -> dict[tuple[str, str], bytes]:
    clips = {("train", f"tr{i:02d}.wav"): encode(speechlike(16000, seconds, seed=i), 16000) for i in range(n_train)}
    clips.update({("test", f"te{i:02d}.wav"): encode(speechlike(16000, seconds, seed=50 + i), 16000)
                  for i in range(n_test)})
    return clips


def write_cfg(tmp_path: Path, root: Path, out: Path, extra: str = "", name: str = "audio.yaml") -> Path:
    base = (f"run: {{name: t, progress: false}}\ndata: {{root: '{root}', modality: audio}}\n"
            f"audio: {{out: '{out}', workers: 0}}\n")
    merged = OmegaConf.merge(OmegaConf.create(base), OmegaConf.create(extra or "{}"))
    path = tmp_path / name
    path.write_text(OmegaConf.to_yaml(merged))
    return path


def small_setup(tmp_path: Path, clips: dict[tuple[str, str], bytes] | None = None, extra: str = ""
                ) -> tuple[Config, list[tuple[str, str]], Path]:
    keys = make_layout(tmp_path / "data", clips if clips is not None else speech_clips())
    out = tmp_path / "audio"
    return load_config(write_cfg(tmp_path, tmp_path / "data", out, extra)), keys, out


def manifest(out: Path) -> pd.DataFrame:
    """faces.csv as later stages read it (empty strings kept), with its numeric columns as numbers."""
    frame = pd.read_csv(out / "faces.csv", dtype={"Id": str}, keep_default_na=False)
    for col in ("window", "start_s", "end_s", "duration_s", "src_rate", "src_channels"):
        frame[col] = pd.to_numeric(frame[col])
    return frame


def png_digests(out: Path) -> dict[str, str]:
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.rglob("*.png"))}


def cli_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}


def expected_windows(seconds: float, cfg: AudioConfig) -> int:
    speech, length = int(round(seconds * cfg.sample_rate)), window_samples(cfg)
    if speech <= length:
        return 1
    return min(cfg.max_windows, 1 + (speech - length) // int(round(length * (1 - cfg.window_overlap))))


# ---------------------------------------------------------------- pure functions


def test_window_placement_spreads_caps_and_keeps_the_overlap_step() -> None:
    length, step = 1000, 500
    assert place_windows(300, length, 8, 0.5) == [0]  # shorter than a window: one, tiled
    assert place_windows(1000, length, 8, 0.5) == [0]
    assert place_windows(1200, length, 8, 0.5) == [100]  # one window, centred
    for speech in (1500, 2999, 4321, 4500, 10_000, 1_000_000):
        offsets = place_windows(speech, length, 8, 0.5)
        assert len(offsets) == min(8, 1 + (speech - length) // step)
        assert offsets[0] == 0 and offsets[-1] == speech - length  # spread over all of the speech
        assert all(b - a >= step for a, b in zip(offsets, offsets[1:]))  # never more overlap than asked
    assert len(place_windows(1_000_000, length, 3, 0.0)) == 3


def test_features_of_sines_silence_and_the_row_order() -> None:
    cfg = AudioConfig()
    n = window_samples(cfg)
    assert n == (cfg.frames - 1) * cfg.hop_length + cfg.n_fft
    t = np.arange(n) / cfg.sample_rate
    image = window_image(np.sin(2 * np.pi * 1000.0 * t), cfg)
    assert image.shape == (cfg.n_mels, cfg.frames, 3) and image.dtype == np.uint8
    mel, linear, dlt = image[:, :, 0], image[:, :, 1], image[:, :, 2]
    # A full-scale sine is 0 dBFS (255) in the mel band holding 1 kHz ...
    centres = (mel_filterbank(cfg.sample_rate, cfg.n_fft, cfg.n_mels) * np.arange(cfg.n_fft // 2 + 1)).sum(1)
    row = cfg.n_mels - 1 - int(np.argmin(np.abs(centres * cfg.sample_rate / cfg.n_fft - 1000.0)))
    assert int(np.argmax(mel[:, 10])) in (row - 1, row, row + 1) and mel[:, 10].max() >= 250
    # ... and on the linear rows (62.5 Hz each, row 0 at the top = 8 kHz): 1 kHz sits at rows 111-112.
    assert int(np.argmax(linear[:, 10])) in (111, 112) and linear[:, 10].max() >= 235
    assert np.abs(dlt.astype(int) - 128).max() <= 1  # stationary: no change over time
    high = window_image(0.5 * np.sin(2 * np.pi * 7000.0 * t), cfg)
    assert int(np.argmax(high[:, 10, 1])) in (14, 15)  # 7 kHz: near the top (row 0 = 8 kHz)
    quiet = window_image(np.zeros(n), cfg)
    assert quiet[:, :, :2].max() == 0 and (quiet[:, :, 2] == 128).all()
    onset = np.where(t > 0.6, np.sin(2 * np.pi * 1000.0 * t), 0.0)
    rising = window_image(onset, cfg)[:, :, 2]
    assert rising[row].max() == 255 and rising[row].min() >= 127  # a step up in the 1 kHz band: rising only
    assert (rising[:, :40] == 128).all() and (rising[:, -30:] == 128).all()  # before it and once steady
    with pytest.raises(ValueError, match="needs"):
        window_image(np.zeros(n - 1), cfg)


def test_phase_channel_steady_tones_noise_and_alignment_with_the_power_rows() -> None:
    cfg = AudioConfig(channels=["linear", "phase", "delta"])
    n = window_samples(cfg)
    t = np.arange(n) / cfg.sample_rate
    noise = np.random.default_rng(0).standard_normal(n)
    # 1 kHz is bin 16 of the 256-point phase STFT (62.5 Hz per bin) = image row 128 - 16 = 112, the
    # linear channel's peak row: a steady tone advances exactly as its bin predicts (deviation 0).
    image = window_image(0.5 * np.sin(2 * np.pi * 1000.0 * t) + 1e-3 * noise, cfg)
    linear, phase = image[:, :, 0].astype(int), image[:, :, 1].astype(int)
    assert int(np.argmax(linear[:, 10])) in (111, 112)
    assert phase[112, 1:].max() <= 3
    # Its leak into the next bin (62.5 Hz off-centre) advances 0.375 turn per hop more than that bin
    # predicts: a steady 2.36 rad (191), the deviation's meaning rather than noise.
    assert np.abs(phase[111, 1:] - 191).max() <= 2
    # 1070 Hz in bin 17 (1062.5 Hz): 10.7 turns per hop against the bin's 10.625, 0.075 turn = 0.47 rad
    # (38); the opposite sign of the expected advance would read 0.325 turn (166), none at all 0.3 (153).
    off_centre = window_image(0.5 * np.sin(2 * np.pi * 1070.0 * t) + 1e-3 * noise, cfg)[:, :, 1].astype(int)
    assert np.abs(off_centre[111, 1:] - 38).max() <= 2
    # White noise: the deviation is close to uniform on 0..pi in every bin (the Nyquist bin, real-valued,
    # is 0 or pi), so each row averages near half scale: a wrong scale or wrapping would shift it.
    noisy = phase_deviation(noise, cfg.n_fft, cfg.hop_length, cfg.n_mels)
    assert noisy.shape == (cfg.n_mels, cfg.frames) and noisy.min() >= 0.0 and noisy.max() <= np.pi
    assert abs(noisy[:-1].mean() - np.pi / 2) < 0.1 and np.abs(noisy[:-1].mean(axis=1) - np.pi / 2).max() < 0.4
    # Columns line up with the power channels: column t compares the 256-point frames centred where power
    # frame t (n_fft samples from t * hop) and frame t - 1 are centred; column 0 repeats column 1.
    size, hop = 2 * cfg.n_mels, cfg.hop_length
    bins = np.arange(1, cfg.n_mels + 1)

    def centred_spectrum(column: int) -> np.ndarray:
        centre = column * hop + cfg.n_fft // 2
        segment = noise[centre - size // 2: centre + size // 2] * np.hanning(size + 1)[:-1]
        return np.fft.rfft(segment)[bins]

    for column in (1, 60, cfg.frames - 1):
        advance = np.angle(centred_spectrum(column) * np.conj(centred_spectrum(column - 1)))
        reference = np.abs(np.angle(np.exp(1j * (advance - 2 * np.pi * bins * hop / size))))
        np.testing.assert_allclose(noisy[:, column], reference, atol=1e-9)
    np.testing.assert_array_equal(noisy[:, 0], noisy[:, 1])
    onset = np.where(t > 0.6, np.sin(2 * np.pi * 1000.0 * t), 0.0) + 1e-3 * noise
    both = window_image(onset, cfg)
    # Level-free above the floor: the same waveform 26 dB quieter gives the same phase channel.
    quiet = window_image(0.05 * onset, cfg)[:, :, 1].astype(int)
    assert (np.abs(quiet - both[:, :, 1]) <= 1).mean() > 0.99  # but the few noise bins that dip under -130 dB
    # Digital silence has no phase: half scale (what random phase averages), not a "steady" 0.
    assert (window_image(np.zeros(n), cfg)[:, :, 1] == 128).all()
    with pytest.raises(ValueError, match="2 \\* n_mels"):
        phase_deviation(noise, 128, 160, 128)
    with pytest.raises(ConfigError, match="phase needs"):
        load_config(None, ["run.name=x", "audio.channels=[linear,phase,delta]", "audio.n_fft=128"])


@pytest.mark.parametrize(("rate", "channels", "fmt"), [(48000, 2, "WAV"), (44100, 1, "FLAC"), (8000, 1, "WAV"),
                                                        (22050, 1, "WAV")])
def test_segment_reads_equal_resampling_the_whole_clip(tmp_path: Path, rate: int, channels: int, fmt: str) -> None:
    path = tmp_path / f"clip.{fmt.lower()}"
    path.write_bytes(encode(speechlike(rate, 2.5, channels=channels), rate, fmt))
    whole = resample(sf.read(path)[0].reshape(-1, channels).mean(axis=1), rate, 16000)
    reader = ClipReader(path, audio_header(path), 16000)
    try:
        assert reader.target_length() == len(whole)
        for t0, t1 in [(0, 4000), (1234, 21000), (20000, len(whole)), (len(whole) - 5, len(whole))]:
            assert np.allclose(reader.read_target(t0, t1), whole[t0:t1], rtol=0, atol=1e-12), (t0, t1)
    finally:
        reader.close()


@pytest.mark.parametrize(("rate", "fmt", "subtype"), [(16000, "MP3", "MPEG_LAYER_III"), (22050, "OGG", "VORBIS"),
                                                       (48000, "OGG", "OPUS"), (16000, "FLAC", "PCM_16")])
def test_reads_of_lossy_files_equal_one_straight_decode(tmp_path: Path, rate: int, fmt: str, subtype: str) -> None:
    # Seeking into an MP3 or Ogg file restarts the decoder without the preceding frames' state, and
    # MP3 read in several calls decodes differently from one call: either way the samples differ from
    # a straight decode. The reader must give exactly the straight decode's samples.
    if subtype not in sf.available_subtypes(fmt):
        pytest.skip(f"this libsndfile cannot write {fmt} {subtype}")
    path = tmp_path / f"clip.{'mp3' if fmt == 'MP3' else fmt.lower()}"
    x = speechlike(rate, 3.0, seed=3) + 0.05 * np.random.default_rng(1).standard_normal(int(rate * 3.0))
    sf.write(path, x, rate, format=fmt, subtype=subtype, **({} if fmt == "FLAC" else {"compression_level": 0.5}))
    info = audio_header(path)
    whole = sf.read(path, dtype="float32")[0].astype(np.float64)
    reader = ClipReader(path, info, 16000)
    try:
        assert reader.exact_seek == (fmt == "FLAC")
        n = len(whole)
        assert np.allclose(np.concatenate(list(reader.blocks(0, n))), whole, rtol=0, atol=1e-6)  # the scan
        # forward, overlapping (a rewind), backward, and to the end
        for a, b in [(5000, 9000), (12345, 20000), (19000, 23000), (1000, 3000), (n // 2, n // 2 + 4000),
                     (n - 700, n)]:
            # float32 rounding aside (the MP3 decoder's output depends on the read size by ~1e-8)
            assert np.allclose(reader.read(a, b), whole[a:b], rtol=0, atol=1e-6), (fmt, a, b)
        whole16 = resample(whole, rate, 16000)
        assert np.allclose(reader.read_target(7000, 15000), whole16[7000:15000], rtol=0, atol=1e-6)
    finally:
        reader.close()


@pytest.mark.parametrize("codec", sorted(CODECS))
def test_codec_roundtrip_keeps_length_and_timing_and_loses_more_at_higher_levels(codec: str) -> None:
    # A codec copy's window must cover the same speech as the original window: no encoder delay,
    # no padding. And it must really be the codec: the error grows as the level cuts bits.
    fmt, subtype = CODECS[codec]
    if subtype not in sf.available_subtypes(fmt):
        pytest.skip(f"this libsndfile cannot write {fmt} {subtype}")
    x = speechlike(16000, 2.5, seed=5) + 0.01 * np.random.default_rng(2).standard_normal(40000)
    errors = []
    for level in (0.1, 0.95):
        y = codec_roundtrip(x, 16000, codec, level)
        assert y.shape == x.shape and y.dtype == np.float64
        lags = range(-300, 301)
        a, b = x[1000:-1000], y
        best = max(lags, key=lambda lag: float(np.dot(a, b[1000 + lag: len(b) - 1000 + lag])))
        assert best == 0, (codec, level, best)
        errors.append(float(np.abs(y - x).mean()))
    assert 1e-5 < errors[0] < errors[1], (codec, errors)


def test_codec_copies_of_train_windows_only_at_the_same_positions(tmp_path: Path) -> None:
    cfg, keys, out = small_setup(tmp_path, speech_clips(3, 2, seconds=4.0),
                                 extra="audio: {codec_copies: [mp3, opus]}")
    assert run_prepare_audio(cfg).processed == len(keys)
    rows = manifest(out)
    train, test = rows[rows["split"] == "train"], rows[rows["split"] == "test"]
    assert (test["copies"] == "").all() and not list((out / "test").glob("*.*.png"))
    for path, copies in zip(train["path"], train["copies"]):
        stem = path[: -len(".png")]
        assert copies.split(";") == [f"{stem}.mp3.png", f"{stem}.opus.png"]
    # Each copy is its own window heard through the codec: close to it, farther from the next window.
    first = train[train["Id"] == "tr00"]
    own = read_image(first["path"].iloc[0]).pixels.astype(float)
    other = read_image(first["path"].iloc[1]).pixels.astype(float)
    for copy in first["copies"].iloc[0].split(";"):
        pixels = read_image(copy).pixels.astype(float)
        assert 0 < np.abs(pixels - own).mean() < np.abs(pixels - other).mean(), copy
    # The levels come from (seed, Id, codec): the same for every run, different between clips; each
    # window row records the level its copies were made at.
    assert codec_plan(cfg, "train", "tr00") == codec_plan(cfg, "train", "tr00") != codec_plan(cfg, "train", "tr01")
    assert codec_plan(cfg, "test", "te00") == ()
    for ident, levels in zip(train["Id"], train["copy_levels"]):
        assert levels == ";".join(f"{c}:{v}" for c, v in codec_plan(cfg, "train", ident))
    assert (test["copy_levels"] == "").all()
    # A lost copy is a lost output: only that clip is redone, and the copy is back.
    lost = Path(first["copies"].iloc[1].split(";")[1])
    lost.unlink()
    assert run_prepare_audio(cfg).processed == 1 and lost.is_file()
    # The levels matter only with copies: without them the hash ignores codec_level.
    before = settings_hash(cfg)
    cfg.audio.codec_level = [0.1, 0.2]
    assert settings_hash(cfg) != before
    # The seed draws the levels: another seed is another stage 1, never the first seed's copies.
    seeded = settings_hash(cfg)
    cfg.run.seed += 1
    assert settings_hash(cfg) != seeded
    cfg.audio.codec_copies = []
    plain = settings_hash(cfg)
    cfg.audio.codec_level = [0.3, 0.4]
    cfg.run.seed += 1
    assert settings_hash(cfg) == plain  # without copies neither the levels nor the seed matter


def test_a_short_codec_decode_is_never_padded_into_a_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    """A decoder that returns less than was encoded: the missing end must not become digital silence
    in a training copy. The round trip refuses it; stage 1 then records the lost copy in the note."""
    import deepfake_pipeline.audio as audio_module
    from deepfake_pipeline.audio import CodecError

    x = speechlike(16000, 2.0, 3)
    real_read = audio_module.sf.read
    monkeypatch.setattr(audio_module.sf, "read", lambda *a, **k: (lambda y, r: (y[: len(y) - 999], r))(
        *real_read(*a, **k)))
    with pytest.raises(CodecError, match=f"{len(x) - 999} of {len(x)} samples"):
        codec_roundtrip(x, 16000, "mp3", 0.99)
    assert issubclass(CodecError, RuntimeError)  # what render_clip turns into "no <codec> copy: ..."


def test_a_codec_that_cannot_be_written_stops_early_and_a_failing_encode_costs_only_the_copies(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import deepfake_pipeline.audio as audio_module

    cfg, keys, out = small_setup(tmp_path, speech_clips(2, 1), extra="audio: {codec_copies: [mp3]}")
    monkeypatch.setattr(audio_module.sf, "available_subtypes", lambda fmt=None: {"PCM_16": "16 bit"})
    with pytest.raises(ConfigError, match="cannot write mp3"):
        run_prepare_audio(cfg)
    assert not out.exists()  # before any work
    monkeypatch.undo()

    def broken(*args: object, **kwargs: object) -> np.ndarray:
        raise sf.SoundFileError("encoder gave up")

    monkeypatch.setattr(audio_module, "codec_roundtrip", broken)
    assert run_prepare_audio(cfg).processed == len(keys)
    rows = manifest(out)
    train = rows[rows["split"] == "train"]
    assert (rows["status"] == "window").all() and (train["copies"] == "").all()  # the clips, without copies
    assert train["note"].str.contains("no mp3 copy: encoder gave up").all()


def test_audio_header_names_every_unreadable_file(tmp_path: Path) -> None:
    files = write_corpus(tmp_path / "corpus")
    for name, (status, note) in CASES.items():
        if status == "unreadable":
            with pytest.raises(ImageReadError) as info:
                audio_header(files[name])
            assert note in info.value.reason and str(files[name]) in str(info.value), name
        else:
            assert isinstance(audio_header(files[name]), AudioInfo), name
    info = audio_header(files["rate48k_stereo.wav"])
    assert (info.samplerate, info.channels, info.frames) == (48000, 2, 144000)
    truncated = audio_header(files["truncated.wav"])
    assert truncated.frames == 24000 and truncated.declared_frames == 48000
    with pytest.raises(ImageReadError, match="cannot open"):
        audio_header(tmp_path / "missing.wav")


def test_layout_header_check_warns_about_unreadable_clips(tmp_path: Path) -> None:
    root = tmp_path / "data"
    clips = speech_clips(2, 1)
    clips[("test", "text.wav")] = b"just text\n"
    make_layout(root, clips)
    layout = load_layout(DataConfig(root=str(root), modality="audio"), check_images=True)
    assert len(layout.test.frame) == 2
    assert any("text.wav: not an audio file" in w and "recorded as unreadable" in w for w in layout.warnings)


# ---------------------------------------------------------------- the stage


def test_windows_of_normal_clips_shape_count_and_manifest(tmp_path: Path) -> None:
    lengths = {"short": 0.8, "mid": 3.0, "long": 20.0}
    clips = {("train", f"{k}.wav"): encode(speechlike(16000, s, seed=i), 16000) for i, (k, s) in enumerate(lengths.items())}
    clips[("test", "te.wav")] = encode(speechlike(16000, 2.0, seed=9), 16000)
    cfg, keys, out = small_setup(tmp_path, clips)
    summary = run_prepare_audio(cfg)
    assert summary.processed == len(keys) and summary.manifest == out / "faces.csv"
    rows = manifest(out)
    assert list(rows.columns) == MANIFEST_COLUMNS
    assert sorted(set(zip(rows["split"], rows["Id"]))) == keys  # every clip, at least once
    assert (rows["status"] == "window").all() and (rows["settings_hash"] == settings_hash(cfg)).all()
    counts = rows.groupby("Id").size()
    for ident, seconds in lengths.items():
        assert counts[ident] == expected_windows(seconds, cfg.audio), ident
    assert counts["long"] == cfg.audio.max_windows
    short = rows[rows["Id"] == "short"].iloc[0]
    assert short["note"].startswith("tiled: 0.80 s of speech") and short["end_s"] - short["start_s"] == pytest.approx(0.8)
    assert read_image(short["path"]).pixels[:, :, 0].max(axis=0).min() > 100  # repeated speech, no silent pad
    full = rows[rows["Id"] != "short"]
    assert np.allclose(full["end_s"] - full["start_s"], window_samples(cfg.audio) / 16000, atol=1e-4)
    assert (rows["start_s"] >= 0).all() and (rows["end_s"] <= rows["duration_s"] + 1e-4).all()
    assert list(rows[rows["Id"] == "long"]["window"]) == list(range(8))
    assert (rows["src_rate"] == 16000).all() and (rows["src_channels"] == 1).all()
    for path, ident, k in zip(rows["path"], rows["Id"], rows["window"]):
        assert path == str(out / ("test" if ident == "te" else "train") / f"{ident}_w{k}.png")
        assert read_image(path).pixels.shape == (128, 128, 3)
    tensor = decode_face(rows["path"].iloc[0])  # what the training Dataset reads
    assert tuple(tensor.shape) == (3, 128, 128) and tensor.dtype == torch.uint8
    assert (out / "align_config.yaml").read_text().startswith(f"# prepare_audio settings hash: {settings_hash(cfg)}")


def test_leading_silence_never_reaches_the_windows(tmp_path: Path) -> None:
    speech = speechlike(16000, 4.0, seed=3)
    hush = 10 ** (-75 / 20) * np.random.default_rng(0).standard_normal(3 * 16000)  # a quiet room, 3 s
    clips = {("train", "plain.wav"): encode(speech, 16000), ("train", "late.wav"): encode(np.concatenate([hush, speech]), 16000),
             ("test", "te.wav"): encode(speech, 16000)}
    cfg, _, out = small_setup(tmp_path, clips)
    run_prepare_audio(cfg)
    rows = manifest(out).set_index(["Id", "window"])
    plain, late = rows.loc["plain"], rows.loc["late"]
    assert len(plain) == len(late) == expected_windows(4.0, cfg.audio)
    assert np.allclose(late["start_s"] - plain["start_s"], 3.0, atol=0.011)
    for k in plain.index:
        a = read_image(plain.loc[k, "path"]).pixels.astype(int)
        b = read_image(late.loc[k, "path"]).pixels.astype(int)
        assert np.abs(a - b).max() <= 1, k  # the same window, within quantisation


def test_window_count_is_capped_whatever_the_length(tmp_path: Path) -> None:
    base = speechlike(16000, 3.0, seed=5)
    clips = {("train", f"s{int(s)}.wav"): encode(np.tile(base, int(s / 3)), 16000) for s in (15, 60, 240)}
    clips[("test", "te.wav")] = encode(base, 16000)
    cfg, _, out = small_setup(tmp_path, clips)
    run_prepare_audio(cfg)
    rows = manifest(out)
    train = rows[rows["split"] == "train"]
    assert set(train.groupby("Id").size()) == {cfg.audio.max_windows}  # a long clip never weighs more
    last = train.groupby("Id")["end_s"].max()
    assert (last > train.groupby("Id")["duration_s"].first() - 0.1).all()  # spread to the end of the speech
    cfg.audio.max_windows = 3
    run_prepare_audio(cfg)
    assert set(manifest(out).groupby("Id").size()) == {3}
    assert not list((out / "train").glob("*_w3.png"))  # the earlier run's extra windows are gone


def test_bad_audio_corpus_rows_notes_and_exit_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from deepfake_pipeline.cli import run_main
    from prepare_audio import main

    root = tmp_path / "data"
    corpus = write_corpus(root / "test_audio")
    keys = make_layout(root, speech_clips(4, 0))
    cfg_path = write_cfg(tmp_path, root, tmp_path / "audio")
    assert run_main(main, ["--config", str(cfg_path)]) == 2  # 5 unreadable of 22 > align.max_unreadable_share
    assert "5 of 22 input clips (22.7%) are unreadable" in capsys.readouterr().err
    rows = manifest(tmp_path / "audio")
    assert set(rows["Id"]) == {k[1] for k in keys} | {Path(name).stem for name in corpus}  # nothing dropped
    clip = rows.drop_duplicates(["split", "Id"]).set_index("Id")
    for name, (status, note) in CASES.items():
        row = clip.loc[Path(name).stem]
        assert row["status"] == status, (name, row.to_dict())
        assert (note in row["note"]) if note else row["note"] == "", (name, row["note"])
        if status != "window":
            assert row["window"] == -1 and row["path"] == "" and len(rows[rows["Id"] == Path(name).stem]) == 1
    assert (clip.loc["rate8k", "src_rate"], clip.loc["rate48k_stereo", "src_channels"]) == (8000, 2)
    assert clip.loc["stereo", "src_channels"] == 2 and clip.loc["truncated", "duration_s"] == 1.5
    ok = ["--config", str(cfg_path), "--set", "align.max_unreadable_share=0.5"]
    assert run_main(main, ok) == 0
    assert "0 clip(s)" in capsys.readouterr().out  # resumed: nothing redone
    refuse = ["--config", str(cfg_path), "--set", "align.max_unreadable_share=0.5", "--set", "data.allow_truncated=false"]
    assert run_main(main, refuse) == 0
    again = manifest(tmp_path / "audio").drop_duplicates("Id").set_index("Id")
    assert again.loc["truncated", "status"] == "unreadable" and "allow_truncated is false" in again.loc["truncated", "note"]


def test_two_hour_clip_is_read_in_blocks_with_bounded_memory(tmp_path: Path) -> None:
    path = tmp_path / "long.wav"
    frames = write_long_wav(path)  # 2 h, 48 kHz stereo: 1.4 GB declared (sparse on disk)
    cfg = AudioConfig()
    start = time.perf_counter()
    assert audio_header(path).frames == frames
    assert time.perf_counter() - start < 1.0  # the header only
    tracemalloc.start()
    try:
        start = time.perf_counter()
        clip = render_clip(path, cfg)
        seconds = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2 ** 20, f"peak {peak / 2 ** 20:.0f} MiB"  # 600 s of float32 stereo alone is 220 MiB
    assert seconds < 30, seconds
    assert clip.status == "window" and clip.duration_s == 7200.0 and (clip.src_rate, clip.src_channels) == (48000, 2)
    assert "only the first 600 s of 7200.0 s considered" in clip.note
    assert len(clip.windows) == cfg.max_windows
    assert clip.windows[0].start_s == pytest.approx(5.0, abs=0.011)  # the noise before the first beep is trimmed
    assert clip.windows[-1].end_s == pytest.approx(400.5, abs=0.011)  # ... and after the last one
    # What a worker process costs for it, imports included (a worker imports the audio module only).
    # VmHWM, not ru_maxrss: the latter keeps the high-water mark of the forked pytest image across exec.
    code = ("import re, sys; from deepfake_pipeline.audio import render_clip; "
            "from deepfake_pipeline.config import AudioConfig; clip = render_clip(sys.argv[1], AudioConfig()); "
            "hwm = re.search(r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read()); "
            "print(len(clip.windows), hwm.group(1) if hwm else 0)")
    proc = subprocess.run([PYTHON, "-c", code, str(path)], cwd=REPO, env=cli_env(), capture_output=True, text=True,
                          timeout=120)
    windows, peak_kib = map(int, proc.stdout.split())
    assert windows == cfg.max_windows and peak_kib < 500 * 1024, (windows, peak_kib, proc.stderr)
    path.unlink()


def test_outputs_are_byte_identical_across_runs_and_worker_counts(tmp_path: Path) -> None:
    clips = speech_clips(4, 1)
    clips[("train", "hi.wav")] = encode(speechlike(48000, 4.0, seed=7, channels=2), 48000)
    clips[("test", "lo.wav")] = encode(speechlike(8000, 2.0, seed=8), 8000)
    make_layout(tmp_path / "data", clips)
    outs = {}
    for workers in (0, 2):
        out = tmp_path / f"audio{workers}"
        extra = f"audio: {{workers: {workers}, codec_copies: [mp3, opus]}}"
        run_prepare_audio(load_config(write_cfg(tmp_path, tmp_path / "data", out, extra)))
        outs[workers] = out
    first = png_digests(outs[0])
    assert len(first) >= 9 and first == png_digests(outs[2])
    assert sum(".mp3." in name for name in first) >= 5  # the codec copies too
    cfg0 = load_config(write_cfg(tmp_path, tmp_path / "data", outs[0], "audio: {codec_copies: [mp3, opus]}"))
    assert run_prepare_audio(cfg0, force=True).processed == len(clips)
    assert png_digests(outs[0]) == first
    a, b = manifest(outs[0]), manifest(outs[2])
    assert a.drop(columns=["path", "copies"]).equals(b.drop(columns=["path", "copies"]))  # paths name the folder


def test_resume_after_sigkill_keeps_finished_clips(tmp_path: Path) -> None:
    root, out = tmp_path / "data", tmp_path / "audio"
    keys = make_layout(root, speech_clips(6, 4, seconds=5.0))
    cfg_path = write_cfg(tmp_path, root, out, "audio: {workers: 2}")
    cmd = [PYTHON, "prepare_audio.py", "--config", str(cfg_path)]
    killed = subprocess.run(cmd, cwd=REPO, env=cli_env(DFP_FAILPOINT="audio_clip:3"), capture_output=True, text=True,
                            timeout=300)
    assert killed.returncode == -9, killed.stdout + killed.stderr
    journal = out / ".journal" / "train-test-0-of-1.jsonl"
    done_before = {(e["split"], e["Id"]): e for e in read_journals(out)}
    assert len(done_before) == 3 and not (out / "faces.csv").exists()
    mtimes = {w["path"]: (out / w["path"]).stat().st_mtime_ns for e in done_before.values() for w in e["windows"]}
    assert mtimes and all((out / p).is_file() for p in mtimes)
    with open(journal, "ab") as fh:
        fh.write(b'{"split": "train", "Id": "tr0')  # a torn line, as if killed mid-write

    rerun = subprocess.run(cmd, cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"{len(keys) - 3} clip(s)" in rerun.stdout and "3 already done" in rerun.stdout
    rows = manifest(out)
    assert sorted(set(zip(rows["split"], rows["Id"]))) == keys
    assert all(read_image(p).pixels.shape == (128, 128, 3) for p in rows["path"])
    assert not list(out.rglob("*.tmp"))
    lines = [json.loads(x) for x in journal.read_text().splitlines()]  # the torn line was cut off
    counts = pd.Series([(e["split"], e["Id"]) for e in lines]).value_counts()
    assert (counts == 1).all() and len(counts) == len(keys)  # nothing done twice
    for rel, mtime in mtimes.items():
        assert (out / rel).stat().st_mtime_ns == mtime  # not rewritten


def test_shards_merge_into_one_manifest(tmp_path: Path) -> None:
    cfg, keys, out = small_setup(tmp_path, speech_clips(3, 2, seconds=2.0))
    first = run_prepare_audio(cfg, shard=Shard(0, 2))
    assert first.manifest is None and first.pending == len(keys) - first.processed
    assert not (out / "faces.csv").exists()
    with pytest.raises(PipelineError, match="not prepared"):
        run_prepare_audio(cfg, merge_only=True)
    second = run_prepare_audio(cfg, shard=parse_shard("1/2"))
    assert second.manifest == out / "faces.csv" and first.processed + second.processed == len(keys)
    rows = manifest(out)
    assert sorted(set(zip(rows["split"], rows["Id"]))) == keys
    (out / "faces.csv").unlink()
    assert run_prepare_audio(cfg, merge_only=True).manifest == out / "faces.csv"
    assert manifest(out).equals(rows)
    assert len(list((out / ".journal").glob("*.jsonl"))) == 2
    assert run_prepare_audio(cfg).processed == 0  # an unsharded rerun reuses both shards' work
    test_only = run_prepare_audio(cfg, split="test", force=True)
    assert test_only.processed == 2 and set(test_only.counts) == {"test"}


def test_settings_sources_and_force_decide_what_is_redone(tmp_path: Path) -> None:
    cfg, keys, out = small_setup(tmp_path)
    assert run_prepare_audio(cfg).processed == len(keys)
    again = run_prepare_audio(cfg)
    assert (again.processed, again.reused) == (0, len(keys))
    cfg.audio.workers = 2  # runtime only: the same settings
    assert run_prepare_audio(cfg).processed == 0
    cfg.audio.workers = 0
    cfg.audio.trim_db = 30.0
    assert run_prepare_audio(cfg).processed == len(keys)
    assert set(manifest(out)["settings_hash"]) == {settings_hash(cfg)}
    (Path(cfg.data.root) / "test_audio" / "te01.wav").write_bytes(encode(speechlike(16000, 1.0, seed=99), 16000))
    (out / "train" / "tr00_w1.png").unlink()  # a lost output
    assert run_prepare_audio(cfg).processed == 2
    assert (manifest(out)["Id"] == "te01").sum() == 1  # the new, shorter source
    assert run_prepare_audio(cfg, force=True).processed == len(keys)


def test_config_and_layout_are_checked_before_any_work(tmp_path: Path) -> None:
    from deepfake_pipeline.cli import run_main
    from prepare_audio import main

    cfg, _, out = small_setup(tmp_path)
    cfg.data.modality = "image"
    with pytest.raises(ConfigError, match="data.modality=audio"):
        run_prepare_audio(cfg)
    cfg.data.modality = "audio"
    with pytest.raises(ConfigError, match="window_overlap"):  # refused when the config loads
        load_config(None, ["run.name=x", "data.modality=audio", "audio.window_overlap=1.0"])
    (Path(cfg.data.root) / "train_solution.csv").write_text("Id,target_feature\ntr00,1\nnope,0\n")
    cfg.audio.window_overlap = 0.5
    with pytest.raises(DataValidationError, match="nope"):
        run_prepare_audio(cfg)
    assert run_main(main, ["--config", str(tmp_path / "audio.yaml")]) == 2
    assert not out.exists()


def test_real_yourtts_clips(tmp_path: Path) -> None:
    """The first 20 train clips (and 2 test clips) of the real speech set: every one gets windows."""
    yourtts = shared_dataset("yourtts")
    root, out = tmp_path / "data", tmp_path / "audio"
    labels = pd.read_csv(yourtts / "train_solution.csv", dtype={"Id": str}).sort_values("Id").head(20)
    for folder in ("train_audio", "test_audio"):
        (root / folder).mkdir(parents=True)
    for ident in labels["Id"]:
        (root / "train_audio" / f"{ident}.flac").symlink_to(yourtts / "train_audio" / f"{ident}.flac")
    for src in sorted((yourtts / "test_audio").iterdir())[:2]:
        (root / "test_audio" / src.name).symlink_to(src)
    labels.to_csv(root / "train_solution.csv", index=False)
    run_prepare_audio(load_config(write_cfg(tmp_path, root, out)))
    rows = manifest(out)
    assert rows["Id"].nunique() == 22 and set(rows["status"]) == {"window"}
    assert (rows["src_rate"] == 16000).all() and (rows["src_channels"] == 1).all()
    per_clip = rows.groupby("Id").size()
    assert per_clip.max() <= 8 and per_clip.min() >= 1
    assert (rows[rows["note"].str.startswith("tiled")].groupby("Id").size() == 1).all()  # a tiled clip: one window
    assert (rows["start_s"] >= 0).all() and (rows["end_s"] <= rows["duration_s"] + 1e-4).all()
    for path in rows["path"].head(10):
        pixels = read_image(path).pixels
        assert pixels.shape == (128, 128, 3) and pixels[:, :, 0].std() > 5  # speech, not a flat image


# ---------------------------------------------------------------- the synthetic speech set


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_demo_audio_is_deterministic_and_speaker_disjoint(tmp_path: Path) -> None:
    counts = generate(tmp_path / "a", n=16, test_share=0.25, seed=4, workers=1)
    generate(tmp_path / "b", n=16, test_share=0.25, seed=4, workers=2)
    assert _tree_digest(tmp_path / "a") == _tree_digest(tmp_path / "b")  # byte-identical, any worker count
    generate(tmp_path / "c", n=16, test_share=0.25, seed=5, workers=1)
    assert _tree_digest(tmp_path / "a") != _tree_digest(tmp_path / "c")
    train = pd.read_csv(tmp_path / "a" / "train_solution.csv")
    test = pd.read_csv(tmp_path / "a" / "test_solution.csv")
    assert list(train.columns) == ["Id", "target_feature", "speaker"] and len(train) + len(test) == 16
    assert (len(train), len(test)) == (counts["train"], counts["test"]) and counts["test"] > 0
    assert not set(train["speaker"]) & set(test["speaker"])
    assert set(train["target_feature"]) == set(test["target_feature"]) == {0, 1}
    assert all(set(g) == {0, 1} for _, g in train.groupby("speaker")["target_feature"])
    info = sf.info(str(tmp_path / "a" / "train_audio" / f"{train['Id'].iloc[0]}.wav"))
    assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
    proc = subprocess.run([PYTHON, "-m", "deepfake_pipeline.demo_audio", "--out", str(tmp_path / "cli"), "--n", "8",
                           "--seed", "4", "--workers", "1"], cwd=REPO, env=cli_env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and "demo audio:" in proc.stdout, proc.stderr
    bad = subprocess.run([PYTHON, "-m", "deepfake_pipeline.demo_audio", "--out", str(tmp_path / "x"), "--n", "2"],
                         cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "n must be >= 4" in bad.stderr


def test_demo_audio_is_learnable_but_not_through_length(tmp_path: Path) -> None:
    """A one-number detector (the linear channel's mean level above 4 kHz) separates the classes;
    clip length and leading silence do not."""
    root, out = tmp_path / "demo", tmp_path / "audio"
    generate(root, n=64, test_share=0.25, seed=0, workers=1)
    run_prepare_audio(load_config(write_cfg(tmp_path, root, out)))
    labels = pd.concat([pd.read_csv(root / f) for f in ("train_solution.csv", "test_solution.csv")]).set_index("Id")
    rows = manifest(out)
    assert set(rows["status"]) == {"window"}
    cfg = AudioConfig()
    top = int(cfg.n_mels * (1 - 4000 / (cfg.sample_rate / 2)))  # rows above 4 kHz (row 0 = 8 kHz)
    channel = cfg.channels.index("linear")
    rows["high"] = [read_image(p).pixels[:top, :, channel].mean() for p in rows["path"]]
    clips = rows.groupby("Id").agg(high=("high", "mean"), length=("duration_s", "first"), lead=("start_s", "first"))
    y = labels.loc[clips.index, "target_feature"].to_numpy()
    assert roc_auc_score(y, -clips["high"]) > 0.9  # fakes: a band-limited high band
    assert abs(roc_auc_score(y, clips["length"]) - 0.5) <= 0.15
    assert abs(roc_auc_score(y, clips["lead"]) - 0.5) <= 0.15
