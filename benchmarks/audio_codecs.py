"""Does a speech run's detection survive lossy codecs? Test clips re-encoded, scored by finished runs.

Each test clip of a Kaggle-layout speech dataset (``test_audio/`` + ``test_solution.csv``) is decoded
and written again as MP3, Ogg Opus and Ogg Vorbis (libsndfile through soundfile, at the clip's own
rate), and every run given judges each version as ``safe_inference.py --input`` would: stage 1 on
the fly, its finished folds, its calibrations. Printed per run and codec: the clip AUC with its
standard error, F1 and accuracy at the run's OOF threshold, and the codec's mean bit rate; first, the
classic baseline's test AUC on each version (``audio_baseline.py``, fitted on the lossless train
clips). The ``flac`` row is the clips as they are (the control: it reproduces the run's test figures).
With ``--oof`` the train clips go the same way, each judged only by the fold model that validated on
it (its calibration, the run's threshold): codec robustness read out of fold, before the test set.
A codec rewrites the high bands, where the phase and the noise-floor cues live; a drop here is what
a detector trained on lossless clips would lose on compressed uploads.

    python benchmarks/audio_codecs.py /work/shared/datasets/yourtts --runs /tmp/quality/runs/yourtts-audio-v6-e5 \
        /tmp/quality/runs/yourtts-audio-v7-phase --scratch /tmp/codecs
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from deepfake_pipeline.audio import CODECS as STAGE1_CODECS  # noqa: E402

# name -> (file suffix, soundfile format, subtype, compression level 0..1: higher = smaller file).
# The levels give the bit rates of compressed voice uploads for 16 kHz mono speech (libsndfile 1.2):
# MP3 about 41 kbit/s, Opus about 20 (a voice message), Vorbis about 38. MP3 at 0.8 (29 kbit/s) writes
# frames that libmpg123 cannot decode whole ("part2_3_length too large"): that would measure decoder
# damage, not the codec.
# Format and subtype come from stage 1's codec copies (deepfake_pipeline.audio.CODECS).
CODECS: dict[str, tuple[str, str, str, float]] = {
    name: (suffix, *STAGE1_CODECS[name], level)
    for name, suffix, level in (("mp3", ".mp3", 0.5), ("opus", ".ogg", 0.95), ("vorbis", ".ogg", 0.8))
}


def encode(clips: list[Path], codec: str, out: Path) -> float:
    """Each clip re-encoded into ``out`` (kept when already there); the mean bit rate in kbit/s."""
    suffix, fmt, subtype, level = CODECS[codec]
    out.mkdir(parents=True, exist_ok=True)
    kbps = []
    for clip in clips:
        target = out / (clip.stem + suffix)
        data, rate = sf.read(clip, dtype="float32", always_2d=True)
        if not target.is_file():
            tmp = target.with_name(target.name + ".part")
            with sf.SoundFile(tmp, "w", samplerate=rate, channels=data.shape[1], format=fmt, subtype=subtype,
                              compression_level=level) as f:
                f.write(data)
            tmp.replace(target)
        kbps.append(target.stat().st_size * 8 / 1000 / (len(data) / rate))
    return float(np.mean(kbps))


def judge(run: Path, folder: Path, labels: pd.Series) -> dict[str, float]:
    """The run's clip probabilities for every file of ``folder``, scored against ``labels`` (by stem)."""
    from deepfake_pipeline.artifacts import RunPaths
    from deepfake_pipeline.fallback import inspect_images, list_inputs, threshold_or_default
    from deepfake_pipeline.metrics import auc_standard_error, binary_metrics
    from deepfake_pipeline.trained import inference_runtime, load_run_config

    cfg = load_run_config(run)
    paths = RunPaths(run)
    runtime = inference_runtime("cpu", cfg.run.amp, cfg.run.channels_last)
    frame = inspect_images(cfg, paths, runtime, list_inputs(folder))
    frame["Id"] = frame["Id"].map(lambda name: Path(name).stem)
    if frame["prob"].isna().any():
        raise SystemExit(f"{run} on {folder}: {int(frame['prob'].isna().sum())} clips without an answer")
    y = labels.loc[frame["Id"]].to_numpy()
    m = binary_metrics(y, frame["prob"].to_numpy(), threshold=threshold_or_default(paths))
    return {"auc": m["auc"], "se": auc_standard_error(m["auc"], int(y.sum()), int(len(y) - y.sum())),
            "f1": m["f1"], "acc": m["acc"], "fake_share": float(np.mean(frame["prob"] >= threshold_or_default(paths)))}


def judge_oof(run: Path, folder: Path, labels: pd.Series) -> dict[str, float]:
    """Out of fold: every labelled clip of ``folder`` (re-encoded train clips, by stem) judged only by
    the fold model that validated on it, with that fold's calibration, pooled and scored at the
    run's OOF threshold. On the clips as they are it reproduces ``prob_insample`` of the run's ``oof.csv`` (the
    fold's own calibration; ``prob`` there is cross-fitted)."""
    import tempfile

    from deepfake_pipeline.artifacts import RunPaths, per_id
    from deepfake_pipeline.fallback import OnTheFlySpectrograms
    from deepfake_pipeline.metrics import auc_standard_error, binary_metrics
    from deepfake_pipeline.trained import (
        finished_folds,
        fold_logits,
        inference_runtime,
        load_fold_model,
        load_run_config,
        read_calibration,
        read_threshold,
        sigmoid,
    )

    cfg = load_run_config(run)
    paths = RunPaths(run)
    runtime = inference_runtime("cpu", cfg.run.amp, cfg.run.channels_last)
    folds = pd.read_csv(paths.folds_csv, dtype={"Id": str})
    folds = folds[folds["is_pseudo"] == 0]
    files = {f.stem: f for f in folder.iterdir()}
    ids: list[str] = []
    parts: list[np.ndarray] = []
    with tempfile.TemporaryDirectory(prefix="codec_oof_") as tmp:
        spectrograms = OnTheFlySpectrograms(cfg, Path(tmp))
        for k in finished_folds(paths, cfg.finetune.folds):
            calibration = read_calibration(cfg, paths, k)
            if calibration is None:
                raise SystemExit(f"{run}: fold {k} has no calibration for its TTA views (run predict first)")
            val = [i for i in folds.loc[folds["fold"] == k, "Id"] if i in files]
            windows = [(i, str(w)) for i, a in zip(val, spectrograms.align([files[i] for i in val])) for w in a.items]
            logits = fold_logits(cfg, load_fold_model(cfg, paths, k, runtime), runtime, [w for _, w in windows])
            fold_ids, clip_logits = per_id([i for i, _ in windows], logits)
            ids += fold_ids
            parts.append(calibration(clip_logits))
    prob = sigmoid(np.concatenate(parts))
    y = labels.loc[ids].to_numpy()
    threshold = read_threshold(paths)
    m = binary_metrics(y, prob, threshold=threshold)
    return {"auc": m["auc"], "se": auc_standard_error(m["auc"], int(y.sum()), int(len(y) - y.sum())),
            "f1": m["f1"], "acc": m["acc"], "fake_share": float(np.mean(prob >= threshold)), "clips": len(ids)}


def baseline_aucs(dataset: Path, folders: dict[str, tuple[Path, float]], labels: pd.Series) -> dict[str, float]:
    """The classic speech baseline (benchmarks/audio_baseline.py), fitted on the lossless train clips,
    scored on each version of the test clips: the reference beside the runs' rows."""
    from audio_baseline import features, fit_predict

    from deepfake_pipeline.metrics import binary_metrics

    train = pd.read_csv(dataset / "train_solution.csv", dtype={"Id": str})
    by_stem = {f.stem: str(f) for f in (dataset / "train_audio").iterdir()}
    train_x = features([by_stem[i] for i in train["Id"]])
    aucs = {}
    for name, (folder, _) in folders.items():
        files = sorted(f for f in folder.iterdir() if f.stem in labels.index)
        prob = fit_predict(train_x, train["target_feature"].to_numpy(), features([str(f) for f in files]))
        aucs[name] = float(binary_metrics(labels.loc[[f.stem for f in files]].to_numpy(), prob)["auc"])
    return aucs


def versions(dataset: Path, split: str, codecs: list[str], scratch: Path
             ) -> tuple[pd.Series, list[Path], dict[str, tuple[Path, float]]]:
    """The labelled clips of ``split`` and the folders to judge: as they are, then each codec's
    re-encodes (test: ``scratch/<codec>``, train: ``scratch/train-<codec>``) with their mean kbit/s."""
    solution = pd.read_csv(dataset / f"{split}_solution.csv", dtype={"Id": str})
    labels = solution.set_index("Id")["target_feature"].astype(int)
    clips = sorted(c for c in (dataset / f"{split}_audio").iterdir() if c.stem in labels.index)
    folders = {"flac (as is)": (dataset / f"{split}_audio", float("nan"))}
    for codec in codecs:
        out = scratch / (codec if split == "test" else f"{split}-{codec}")
        folders[codec] = (out, encode(clips, codec, out))
    return labels, clips, folders


def print_table(runs: list[Path], folders: dict[str, tuple[Path, float]], labels: pd.Series,
                judge_fn: Callable[[Path, Path, pd.Series], dict[str, float]], auc_name: str) -> None:
    print(f"| run | codec | kbit/s | {auc_name} | F1 | acc | called fake |")
    print("|---|---|---|---|---|---|---|")
    for run in runs:
        for name, (folder, kbps) in folders.items():
            r = judge_fn(run, folder, labels)
            rate = "-" if np.isnan(kbps) else f"{kbps:.0f}"
            print(f"| {run.name} | {name} | {rate} | {r['auc']:.3f} ± {r['se']:.3f} | {r['f1']:.3f} | "
                  f"{r['acc']:.3f} | {r['fake_share']:.2f} |", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dataset", type=Path, help="a speech dataset root (test_audio/, test_solution.csv)")
    p.add_argument("--runs", type=Path, nargs="*", default=[], help="finished run directories (none: the baseline only)")
    p.add_argument("--codecs", nargs="+", default=list(CODECS), choices=list(CODECS))
    p.add_argument("--scratch", type=Path, required=True, help="where the re-encoded clips go (reused)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--oof", action="store_true",
                   help="also the train clips re-encoded, each judged out of fold by its own fold model")
    args = p.parse_args(argv)

    import torch

    from deepfake_pipeline.cli import setup_logging

    setup_logging("WARNING")
    torch.set_num_threads(args.threads)
    labels, clips, folders = versions(args.dataset, "test", args.codecs, args.scratch)
    print(f"{len(clips)} test clips ({int(labels.sum())} fake)")
    print("| classic baseline (trained on the lossless train clips) | " + " | ".join(
        f"{name}: {auc:.3f}" for name, auc in baseline_aucs(args.dataset, folders, labels).items()) + " |")
    print_table(args.runs, folders, labels, judge, "AUC")
    if args.oof and args.runs:
        labels, clips, folders = versions(args.dataset, "train", args.codecs, args.scratch)
        print(f"\nOut of fold: {len(clips)} train clips ({int(labels.sum())} fake), each judged by the "
              "fold model that validated on it")
        print_table(args.runs, folders, labels, judge_oof, "OOF AUC")
    return 0


if __name__ == "__main__":
    sys.exit(main())
