"""Smoke tests of the benchmark harnesses: tiny sizes, they exit 0 and report the expected fields."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .helpers import run_cli

TINY = ["--backbone", "convnextv2_atto", "--size", "64", "--threads", "1"]


def test_train_speed_reports_both_variants(tmp_path: Path) -> None:
    out = tmp_path / "train.json"
    proc = run_cli([
        "benchmarks/train_speed.py", *TINY, "--stage", "ssl,finetune", "--steps", "2", "--warmup", "1",
        "--batch", "2", "--baseline-batch", "2", "--baseline-accum", "2", "--json", str(out),
    ], timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for field in ("img/s", "ms/step", "peak MiB", "GFLOP/img", "ours/base"):
        assert field in proc.stdout, field
    results = json.loads(out.read_text())["results"]
    runs = [r for r in results if "variant" in r]
    assert {(r["stage"], r["variant"]) for r in runs} == {
        (s, v) for s in ("ssl", "finetune") for v in ("baseline", "ours")
    }
    for r in runs:
        assert r["images_per_s"] > 0 and r["peak_mem_mb"] > 0 and r["gflop_per_image"] > 0, r
        assert r["images_per_step"] == (2 * 2 if r["variant"] == "baseline" else 2)
    assert sum("ratio_images_per_s" in r for r in results) == 2


def test_predict_speed_counts_folds_and_views(tmp_path: Path) -> None:
    out = tmp_path / "predict.json"
    proc = run_cli([
        "benchmarks/predict_speed.py", *TINY, "--folds", "2", "--tta", "identity,hflip", "--images", "8",
        "--batch", "4", "--json", str(out),
    ], timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "forward img/s" in proc.stdout
    main, reference = json.loads(out.read_text())["results"]
    assert (main["folds"], main["views"], reference["folds"], reference["views"]) == (2, 2, 1, 1)
    assert main["forward_images_per_s"] == pytest.approx(main["images_per_s"] * 4)
    assert main["images_per_s"] > 0 and main["peak_mem_mb"] > 0


def test_input_pipeline_decoders(tmp_path: Path) -> None:
    out = tmp_path / "input.json"
    proc = run_cli([
        "benchmarks/input_pipeline.py", "--make", "16", "--size", "64", "--dir", str(tmp_path / "jpegs"),
        "--batch", "4", "--workers", "0,1", "--threads", "1", "--json", str(out),
    ], timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "fastest decoding path" in proc.stdout
    payload = json.loads(out.read_text())
    assert payload["files"] == 16
    speeds = {(r["method"], r["workers"]): r["images_per_s"] for r in payload["results"]}
    for method in ("torchvision", "pil", "opencv"):
        for workers in (0, 1):
            assert speeds[(method, workers)] > 0, (method, workers)
    assert speeds[("no-decode", "-")] > 0
    assert payload["fastest"]["method"] in ("torchvision", "pil", "opencv", "nvjpeg")


def test_audio_probe_reads_a_band_that_differs_and_nothing_from_noise(tmp_path: Path) -> None:
    # Windows whose row 3 fluctuates more over time in fakes: the probe must find it in that channel
    # (AUC near 1) and not in a channel that is pure noise for both classes. A probe that scored
    # rows it trained on would find the noise too (AUC near 1); honest folds land near or, with
    # 32 features on 60 clips, below 0.5.
    import sys

    import numpy as np
    import pandas as pd
    from PIL import Image

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from audio_probe import probe

    rng = np.random.default_rng(0)
    rows, folds = [], []
    for i in range(80):
        target = i % 2
        cid = f"c{i:03d}"
        folds.append({"Id": cid, "target": target, "fold": (i // 2) % 4, "is_pseudo": 0})
        for w in range(2):
            image = rng.integers(60, 80, size=(16, 16, 3), dtype=np.uint8)
            if target:
                image[3, :, 0] = rng.choice([40, 120], size=16).astype(np.uint8)
            path = tmp_path / f"{cid}_w{w}.png"
            Image.fromarray(image).save(path)
            rows.append({"Id": cid, "split": "train", "window": w, "status": "window", "path": str(path)})
    manifest, fold_table = pd.DataFrame(rows), pd.DataFrame(folds).set_index("Id")
    assert probe(manifest, fold_table, channel=0)["clip_auc"] > 0.95
    assert probe(manifest, fold_table, channel=1)["clip_auc"] < 0.7


def test_audio_baseline_scores_test_and_out_of_fold(tmp_path: Path) -> None:
    # The synthetic fakes carry vocoder-like traces in the high band: the long-term spectrum finds them
    # on the test split and out of fold. A fold table that the OOF loop ignored (scoring rows it
    # trained on) would still pass the first check; the second parses the OOF figure it printed.
    import re

    import pandas as pd

    from deepfake_pipeline.demo_audio import generate

    generate(tmp_path / "ds", n=48, seed=3)
    train = pd.read_csv(tmp_path / "ds" / "train_solution.csv", dtype={"Id": str})
    folds = pd.DataFrame({"Id": train["Id"], "target": train["target_feature"], "fold": range(len(train))})
    folds["fold"] %= 3
    folds.to_csv(tmp_path / "folds.csv", index=False)
    proc = run_cli(["benchmarks/audio_baseline.py", str(tmp_path / "ds"), "--folds", str(tmp_path / "folds.csv")],
                   timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    test_auc = float(re.search(r"test AUC ([0-9.]+)", proc.stdout).group(1))
    oof_auc = float(re.search(r"out-of-fold AUC ([0-9.]+) on the 3 folds", proc.stdout).group(1))
    assert test_auc > 0.8 and oof_auc > 0.8, proc.stdout


def test_audio_codecs_encodes_decodable_lossy_copies_at_a_low_rate(tmp_path: Path) -> None:
    # Each codec's copy must be the same speech (correlated with the source, same rate and length up
    # to the codec's padding) at a lossy bit rate (16-bit PCM would be 256 kbit/s), and a second call
    # keeps the copies already written.
    import sys

    import numpy as np
    import soundfile as sf

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from audio_codecs import CODECS, encode

    from .bad_audio import speechlike

    clips = []
    for k in range(2):
        clips.append(tmp_path / f"c{k}.flac")
        sf.write(clips[-1], speechlike(16000, 2.0, seed=k), 16000, format="FLAC")
    for codec, (suffix, fmt, subtype, _) in CODECS.items():
        if subtype not in sf.available_subtypes(fmt):
            continue
        kbps = encode(clips, codec, tmp_path / codec)
        assert 5.0 < kbps < 128.0, (codec, kbps)
        for clip in clips:
            src, rate = sf.read(clip)
            copy, copy_rate = sf.read(tmp_path / codec / (clip.stem + suffix))
            assert copy_rate == rate and abs(len(copy) - len(src)) <= rate // 10, codec
            n = min(len(copy), len(src))
            lag = max(range(0, 1200), key=lambda d: float(np.dot(src[: n - d], copy[d:n])))
            assert np.corrcoef(src[: n - lag], copy[lag:n])[0, 1] > 0.9, codec
        stamp = (tmp_path / codec / (clips[0].stem + suffix)).stat().st_mtime_ns
        encode(clips, codec, tmp_path / codec)
        assert (tmp_path / codec / (clips[0].stem + suffix)).stat().st_mtime_ns == stamp


def test_framing_probe_finds_a_size_bias_and_nothing_where_there_is_none(tmp_path: Path) -> None:
    # Fakes framed larger than reals (face side 0.55 vs 0.45 of the image), landmarks of the same
    # shape: framing must score near 1 out of fold and on test, shape near chance. A probe that
    # scored rows it trained on, or leaked the label, would score the shape too.
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(1)
    rows, labels = [], []
    for i in range(240):
        target, split = i % 2, "train" if i < 180 else "test"
        side = (0.55 if target else 0.45) * 320 + rng.normal(0, 8)
        x0, y0 = 160 - side / 2 + rng.normal(0, 5), 150 - side / 2 + rng.normal(0, 5)
        eye = 0.4 * side
        marks = np.array([[-0.5, 0], [0.5, 0], [0, 0.5], [-0.4, 1.0], [0.4, 1.0]]) * eye
        marks = marks + [x0 + side / 2, y0 + 0.35 * side] + rng.normal(0, 0.04 * eye, size=(5, 2))
        rows.append({"Id": f"i{i}", "split": split, "status": "face", "src_width": 320, "src_height": 320,
                     "face_box": f"{x0} {y0} {x0 + side} {y0 + side}",
                     "landmarks": " ".join(f"{v:.2f}" for v in marks.ravel())})
        labels.append({"Id": f"i{i}", "split": split, "target_feature": target})
    rows.append({"Id": "nf", "split": "train", "status": "fallback", "src_width": 320, "src_height": 320,
                 "face_box": "", "landmarks": ""})  # no face: left out, not a crash
    faces = tmp_path / "faces"
    faces.mkdir()
    pd.DataFrame(rows).to_csv(faces / "faces.csv", index=False)
    frame = pd.DataFrame(labels)
    for split in ("train", "test"):
        frame[frame["split"] == split][["Id", "target_feature"]].to_csv(tmp_path / f"{split}_solution.csv", index=False)
    proc = run_cli(["benchmarks/framing_probe.py", str(tmp_path), "--faces", str(faces)])
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = {line.split()[0]: line for line in proc.stdout.splitlines()[1:]}
    assert "180 train faces, 60 test faces" in proc.stdout.splitlines()[0]

    def aucs(group: str) -> tuple[float, float]:
        parts = lines[group].split()
        return float(parts[3]), float(parts[11])

    assert min(aucs("framing")) > 0.9
    assert max(aucs("shape")) < 0.75


def test_frozen_probe_calibrates_its_folds_and_finds_no_signal_in_noise() -> None:
    # 200 rows, the label weakly in 100 of 1,000 features. The inner CV picks a strong L2 (C 1e-4),
    # whose logits sit in a narrow band at an offset that differs per fold: pooled uncalibrated, the
    # OOF AUC was 0.62 for a probe whose single-model test AUC is 0.83. Calibrated, the OOF figure
    # must agree with the test one. On pure noise it must stay near chance.
    import sys

    import numpy as np

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import frozen_probe

    from deepfake_pipeline.metrics import binary_metrics

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    x = rng.normal(size=(200, 1000)).astype(np.float32)
    signal = x.copy()
    signal[:, :100] += 0.3 * y[:, None]
    folds = np.arange(200) % 5
    oof, (test,) = frozen_probe.oof_and_test(signal[:160], y[:160], folds[:160], signal[160:])
    assert binary_metrics(y[:160], oof)["auc"] > 0.8
    assert binary_metrics(y[160:], test)["auc"] > 0.8
    noise_oof, _ = frozen_probe.oof_and_test(x[:160], y[:160], folds[:160], x[160:])
    assert abs(binary_metrics(y[:160], noise_oof)["auc"] - 0.5) < 0.15


def test_generator_split_holds_out_the_named_generators_and_keeps_the_speaker_split(tmp_path: Path) -> None:
    import sys

    import pandas as pd

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from generator_split import PROTOCOLS, write_layout

    source = tmp_path / "set"
    rows = []
    for split, speakers in (("train", ("a", "b")), ("test", ("c",))):
        (source / f"{split}_audio").mkdir(parents=True, exist_ok=True)
        for speaker in speakers:
            for generator in ("real", "yourtts_tts", "sc_glowtts", "yourtts_vc"):
                ident = f"{split}_{speaker}_{generator}"
                (source / f"{split}_audio" / f"{ident}.flac").write_bytes(b"x")
                rows.append({"Id": ident, "split": split, "target_feature": int(generator != "real"),
                             "speaker": speaker, "generator": generator})
    meta = pd.DataFrame(rows)
    meta.to_csv(source / "meta.csv", index=False)
    meta[meta["split"] == "train"][["Id", "target_feature", "speaker"]].to_csv(source / "train_solution.csv", index=False)
    out = tmp_path / "tts2vc"
    counts = write_layout(source, out, *PROTOCOLS["tts2vc"])
    assert counts == {"train_real": 2, "train_fake": 4, "test_real": 1, "test_fake": 1}
    train = pd.read_csv(out / "train_solution.csv")
    assert set(train.columns) == {"Id", "target_feature", "speaker"}  # the speaker column kept for the folds
    assert not train["Id"].str.contains("vc").any() and train["Id"].str.startswith("train_").all()
    test = pd.read_csv(out / "test_solution.csv")
    assert sorted(test["Id"]) == ["test_c_real", "test_c_yourtts_vc"]
    assert sorted(p.stem for p in (out / "test_audio").iterdir()) == sorted(test["Id"])  # only the scored clips
    assert all(p.is_symlink() for p in (out / "train_audio").iterdir())
    selfmade = write_layout(source, tmp_path / "selfmade", *PROTOCOLS["selfmade"])
    assert selfmade == {"train_real": 2, "train_fake": 0, "test_real": 1, "test_fake": 3}
    with pytest.raises(SystemExit, match="no generator 'wavenet'"):
        write_layout(source, tmp_path / "bad", ("wavenet",), ())


def test_threshold_rules_scores_each_cap_on_the_oof_and_the_test_set(tmp_path: Path) -> None:
    """A run whose test fakes (an unseen generator) score 0.2, below the training fakes (0.9) but above
    the reals: the F1 threshold calls none of them fake, a 5% cap on the OOF reals calls them all."""
    import numpy as np
    import pandas as pd

    from benchmarks.threshold_rules import rule_rows

    reals = np.linspace(0.0, 0.1, 100)
    pd.DataFrame({"Id": [f"o{i}" for i in range(200)], "fold": np.arange(200) % 2,
                  "target": np.r_[np.zeros(100, int), np.ones(100, int)], "logit": 0.0,
                  "prob": np.r_[reals, np.full(100, 0.9)]}).to_csv(tmp_path / "oof.csv", index=False)
    ids = [f"t{i}" for i in range(40)]
    pd.DataFrame({"Id": ids, "prob": np.r_[np.linspace(0.0, 0.05, 20), np.full(20, 0.2)]}).to_csv(
        tmp_path / "test_probs.csv", index=False)
    pd.DataFrame({"Id": ids[::-1], "target_feature": np.r_[np.ones(20, int), np.zeros(20, int)]}).to_csv(
        tmp_path / "solution.csv", index=False)  # another order: rows are matched by Id
    plain, capped = rule_rows(tmp_path, tmp_path / "solution.csv", [None, 0.05])
    assert plain["cap"] == "none" and plain["test_fake_called"] == 0.0 and plain["test_f1"] == 0.0
    assert capped["cap"] == "0.05" and capped["oof_real_fpr"] == 0.05 and reals[94] < capped["threshold"] <= reals[95]
    assert capped["test_fake_called"] == 1.0 and capped["test_real_called"] == 0.0 and capped["test_f1"] == 1.0
    assert capped["test_true_share"] == 0.5 and capped["oof_f1_heldout"] < plain["oof_f1_heldout"] == 1.0


def test_speaker_encoder_probe_loads_every_tensor_and_scores_out_of_fold(tmp_path: Path) -> None:
    # Resemblyzer's wheel is no requirement: random weights of its shapes stand in. On the synthetic
    # set the log mel statistics must find the fakes' high-band trace (a front end that read the
    # wrong rate or scale would not); a weights file lacking a tensor must fail, not load partly.
    import re

    import torch

    from deepfake_pipeline.demo_audio import generate

    generate(tmp_path / "ds", n=48, seed=5, n_speakers=8)
    lstm, linear = torch.nn.LSTM(40, 256, 3, batch_first=True), torch.nn.Linear(256, 256)
    state = {**{f"lstm.{k}": v for k, v in lstm.state_dict().items()},
             **{f"linear.{k}": v for k, v in linear.state_dict().items()}}
    torch.save({"model_state": state}, tmp_path / "pretrained.pt")
    args = ["benchmarks/speaker_encoder_probe.py", "--weights", str(tmp_path / "pretrained.pt"),
            "--train", str(tmp_path / "ds"), "--score", str(tmp_path / "ds")]
    proc = run_cli(args, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    logmel = re.search(r"logmel +trained on ds: OOF ([0-9.]+).*\n +ds test: ([0-9.]+)", proc.stdout)
    assert logmel and float(logmel.group(1)) > 0.8 and float(logmel.group(2)) > 0.8, proc.stdout
    assert {"emb", "lstm"} <= set(re.findall(r"^(\w+) +trained on", proc.stdout, re.M)), proc.stdout

    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from speaker_encoder_probe import SpeakerEncoder

    del state["lstm.weight_hh_l2"]
    torch.save(state, tmp_path / "partial.pt")
    with pytest.raises(RuntimeError, match="weight_hh_l2"):
        SpeakerEncoder(tmp_path / "partial.pt")


def test_speaker_encoder_mel_bank_is_librosas() -> None:
    # Values of librosa 0.11's filters.mel(sr=16000, n_fft=400, n_mels=40) (Slaney scale and area
    # norm), which the encoder was trained on; an HTK scale or another norm moves every one of them.
    import sys

    import numpy as np

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from speaker_encoder_probe import slaney_mel_bank

    bank = slaney_mel_bank()
    assert bank.shape == (40, 201)
    assert np.allclose(bank[[0, 10, 39]].sum(axis=1), [0.02480904, 0.02480904, 0.02497876], atol=1e-7)
    assert list(bank.argmax(axis=1)[[0, 10, 20, 39]]) == [2, 20, 44, 185]
    assert abs(bank[10].max() - 0.01187948975712061) < 1e-8 and abs(bank[0, 1] - 0.007390209473669529) < 1e-8


def test_paired_auc_resamples_groups_and_finds_the_better_run(tmp_path: Path) -> None:
    """Run B's logits carry the target more strongly than A's on the same 200 rows in 100 pairs."""
    import numpy as np
    import pandas as pd

    from benchmarks.paired_auc import paired_difference, paired_rows

    rng = np.random.default_rng(0)
    ids, target = [f"i{i}" for i in range(200)], np.arange(200) % 2
    noise = rng.normal(size=200)
    for name, weight in (("a", 0.5), ("b", 1.5), ("same", 0.5)):
        (tmp_path / name / "fold0").mkdir(parents=True)
        pd.DataFrame({"Id": ids, "target": target, "logit": weight * target + noise}).to_csv(
            tmp_path / name / "fold0" / "val_preds.csv", index=False)
    pd.DataFrame({"Id": ids, "target": target, "fold": 0, "group": [f"v{i // 2}" for i in range(200)]}).to_csv(
        tmp_path / "a" / "folds.csv", index=False)
    rows = paired_rows(tmp_path / "a", tmp_path / "b", 0)
    assert rows["group"].nunique() == 100 and len(rows) == 200
    better = paired_difference(rows, resamples=200)
    assert better["diff"] > 0.1 and better["share_above_0"] == 1.0 and 0.0 < better["se"] < better["diff"] / 3
    same = paired_difference(paired_rows(tmp_path / "a", tmp_path / "same", 0), resamples=50)
    assert same["diff"] == 0.0 and same["se"] == 0.0
    # Every row written twice, the copies in one group: resampling the groups must see about sqrt(2) x the
    # SE of resampling single rows (a row-level bootstrap would see the same SE both ways)
    twice = pd.concat([rows.assign(group=rows["Id"])] * 2, ignore_index=True)
    by_group = paired_difference(twice, resamples=400)["se"]
    by_row = paired_difference(twice.assign(group=np.arange(len(twice))), resamples=400)["se"]
    assert 1.2 < by_group / by_row < 1.7
    pd.read_csv(tmp_path / "b" / "fold0" / "val_preds.csv").iloc[:150].to_csv(
        tmp_path / "b" / "fold0" / "val_preds.csv", index=False)
    with pytest.raises(ValueError, match="same rows"):
        paired_rows(tmp_path / "a", tmp_path / "b", 0)


def test_paired_auc_reads_finished_runs_oof_and_test_rows(tmp_path: Path) -> None:
    """A run and a better one (or a blend folder: the same files) on their OOF and test rows: the OOF
    rows resample the dataset's groups and leave self-made fakes out; the test rows take their targets
    from test_solution.csv, in its order or not. Scoring the test rows against the wrong targets, a
    self-made fake counted, or rows resampled alone where the dataset groups them fails this."""
    import numpy as np
    import pandas as pd

    from benchmarks.paired_auc import paired_difference, paired_rows

    rng = np.random.default_rng(1)
    n = 200
    ids, target = [f"0{i}" for i in range(n)], np.arange(n) % 2  # leading zeros: Ids stay strings
    noise = rng.normal(size=n)
    data = tmp_path / "data"
    data.mkdir()
    pd.DataFrame({"Id": ids, "target_feature": target, "group": [f"v{i // 2}" for i in range(n)]}).to_csv(
        data / "train_solution.csv", index=False)
    pd.DataFrame({"Id": ids[::-1], "target_feature": target[::-1]}).to_csv(data / "test_solution.csv", index=False)
    for name, weight in (("a", 0.5), ("b", 1.5)):
        run = tmp_path / name
        run.mkdir()
        prob = 1 / (1 + np.exp(-(weight * (2 * target - 1) + noise)))
        made = pd.DataFrame({"Id": ["0~made"], "target": [1], "prob": [0.0 if name == "b" else 1.0],
                             "made_by": ["hifigan16"]})
        pd.concat([pd.DataFrame({"Id": ids, "target": target, "prob": prob, "made_by": ""}), made]).to_csv(
            run / "oof.csv", index=False)
        pd.DataFrame({"Id": ids, "prob": prob}).to_csv(run / "test_probs.csv", index=False)
    oof = paired_rows(tmp_path / "a", tmp_path / "b", rows="oof", dataset=data)
    assert len(oof) == n and "0~made" not in set(oof["Id"]) and oof["group"].nunique() == n // 2
    better = paired_difference(oof, resamples=200)
    assert better["diff"] > 0.1 and better["share_above_0"] == 1.0
    test = paired_rows(tmp_path / "a", tmp_path / "b", rows="test", dataset=data)
    assert test["group"].nunique() == n  # no group column in test_solution.csv: each row alone
    assert abs(paired_difference(test, resamples=50)["auc_b"] - better["auc_b"]) < 1e-12
    with pytest.raises(ValueError, match="--dataset"):
        paired_rows(tmp_path / "a", tmp_path / "b", rows="test")
    # Rows the dataset does not list (a run with data.extra_roots) take run A's folds.csv groups, not
    # groups of one; a dataset whose labels differ from the runs' is refused
    pd.DataFrame({"Id": [*ids, "x__1", "x__2"], "target": [*target, 0, 1], "fold": 0, "is_pseudo": 0,
                  "group": [*(f"v{i // 2}" for i in range(n)), "x__v", "x__v"]}).to_csv(
        tmp_path / "a" / "folds.csv", index=False)
    for name in ("a", "b"):
        extra = pd.DataFrame({"Id": ["x__1", "x__2"], "target": [0, 1], "prob": [0.4, 0.6], "made_by": ""})
        pd.concat([pd.read_csv(tmp_path / name / "oof.csv", dtype={"Id": str}, keep_default_na=False), extra]).to_csv(
            tmp_path / name / "oof.csv", index=False)
    mixed = paired_rows(tmp_path / "a", tmp_path / "b", rows="oof", dataset=data)
    assert mixed.attrs["groups_from"] == {"dataset": n, "a/folds.csv": 2, "alone": 0}
    assert mixed["group"].nunique() == n // 2 + 1
    (data / "train_solution.csv").write_text((data / "train_solution.csv").read_text().replace("\n00,0,", "\n00,1,"))
    with pytest.raises(ValueError, match="another label"):
        paired_rows(tmp_path / "a", tmp_path / "b", rows="oof", dataset=data)
    # Runs that saw real items only beside self-made fakes: their AUC is read on both, as the pipeline's is
    for name in ("a", "b"):
        pd.DataFrame({"Id": ["r1", "r2", "r1~m", "r2~m"], "target": [0, 0, 1, 1], "prob": [0.2, 0.3, 0.7, 0.9],
                      "made_by": ["", "", "m", "m"]}).to_csv(tmp_path / name / "oof.csv", index=False)
    assert len(paired_rows(tmp_path / "a", tmp_path / "b", rows="oof")) == 4
    pd.DataFrame({"Id": ids[:-1], "target_feature": target[:-1]}).to_csv(data / "test_solution.csv", index=False)
    with pytest.raises(ValueError, match="not in"):
        paired_rows(tmp_path / "a", tmp_path / "b", rows="test", dataset=data)
