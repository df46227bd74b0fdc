"""One answer per input on the shipped face recipes' own path (MTCNN, native windows, ``fit: crop``):
the predict stage, ``safe_inference.py`` and ``safe_inference.py --input`` give the same probability
and the same label. Speech windows: tests/test_audio_training.py (the same three paths on a speech run).

Tolerances: predict vs safe inference run the same fold models on the same stage-1 files, 1e-6;
``--input`` re-runs stage 1 on the raw photo (same detector settings, same crop, same JPEG bytes), 1e-5.
Labels agree wherever the probability is further than the tolerance from the threshold.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from deepfake_pipeline.align import run_align
from deepfake_pipeline.artifacts import RunPaths
from deepfake_pipeline.config import load_config
from deepfake_pipeline.errors import StaleOutputError
from deepfake_pipeline.fallback import inspect_images, list_inputs, safe_inference
from deepfake_pipeline.stages import run_stages
from deepfake_pipeline.trained import inference_runtime, load_run_config

pytestmark = pytest.mark.slow

RECIPE = """
run: {{name: p, dir: {run}, workers: 0, device: cpu, progress: false, seed: 5}}
data: {{root: {data}}}
align: {{enabled: true, size: 96, resize: false, out: {faces}, workers: 0, batch_size: 16}}
model: {{backbone: convnextv2_atto, img_size: 64, fit: crop, drop_path: 0.0}}
ssl: {{enabled: false}}
finetune: {{folds: 2, epochs: 3, batch_size: 8, init: scratch, optim: {{lr: 2.0e-3, warmup_epochs: 0.5}}}}
predict: {{tta: [identity, hflip], batch_size: 16}}
"""


def _resize_some(folder: Path) -> None:
    """Test photos of several shapes: in stage 1 they are batched with differently sized neighbours,
    alone or with others under --input (the case where MTCNN's batching moved boxes)."""
    shapes = [(150, 120), (96, 130), (200, 170), (120, 96)]
    for k, path in enumerate(sorted(folder.iterdir())):
        if k % 2 == 0:
            image = cv2.imread(str(path))
            w, h = shapes[(k // 2) % len(shapes)]
            cv2.imwrite(str(path), cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA),
                        [cv2.IMWRITE_JPEG_QUALITY, 95])


@pytest.fixture(scope="module")
def recipe_run(tmp_path_factory: pytest.TempPathFactory, demo_root: Path) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("parity")
    shutil.copytree(demo_root, base / "data")
    _resize_some(base / "data" / "test_images")
    _resize_some(base / "data" / "train_images")
    path = base / "recipe.yaml"
    path.write_text(RECIPE.format(run=base / "run", data=base / "data", faces=base / "faces"))
    cfg = load_config(path)
    run_align(cfg)
    run_stages(cfg, "all")
    return base, base / "run"


def _within(a: pd.Series, b: pd.Series, tol: float, threshold: float, la: pd.Series, lb: pd.Series) -> None:
    assert (a - b).abs().max() <= tol, (a - b).abs().max()
    clear = (b - threshold).abs() > tol
    assert la[clear].equals(lb[clear])


def test_predict_safe_inference_and_input_agree(recipe_run: tuple[Path, Path], tmp_path: Path) -> None:
    base, run = recipe_run
    faces = pd.read_csv(base / "faces" / "faces.csv", dtype={"Id": str})
    assert (faces["status"] == "face").mean() > 0.5  # the MTCNN path (the rest: centre crops)
    threshold = json.loads((run / "threshold.json").read_text())["threshold"]
    probs = pd.read_csv(run / "test_probs.csv", dtype={"Id": str}).set_index("Id")["prob"]
    labels = pd.read_csv(run / "submission.csv", dtype={"Id": str}).set_index("Id")["target_feature"]

    cfg = load_run_config(run)
    safe = safe_inference(cfg, RunPaths(run), inference_runtime("cpu"), tmp_path / "safe.csv")
    assert (safe.probs["source"] == "aligned").all() and safe.problems.empty
    sp = safe.probs.set_index("Id")["prob"].loc[probs.index]
    sl = safe.submission.set_index("Id")["target_feature"].loc[probs.index]
    _within(sp, probs, 1e-6, threshold, sl, labels)

    inputs = list_inputs(base / "data" / "test_images")
    answers = inspect_images(cfg, RunPaths(run), inference_runtime("cpu"), inputs)
    answers.index = [Path(name).stem for name in answers["Id"]]
    status = faces[faces["split"] == "test"].set_index("Id")["status"]
    assert answers.loc[probs.index, "status"].equals(status.loc[probs.index].rename("status"))
    _within(answers.loc[probs.index, "prob"].astype(float), probs, 1e-5, threshold,
            answers.loc[probs.index, "label"].astype(int), labels)
    # One photo alone gets the answer it got among the test set.
    alone = inspect_images(cfg, RunPaths(run), inference_runtime("cpu"), inputs[:1]).iloc[0]
    assert abs(alone["prob"] - probs.loc[inputs[0].stem]) <= 1e-5


def test_test_images_from_other_stage1_settings_are_refused_or_redone(recipe_run: tuple[Path, Path],
                                                                      tmp_path: Path) -> None:
    """A test face re-made with other alignment settings than the fold models trained on: the predict
    stage refuses to judge it, safe inference redoes its stage 1 with the run's settings."""
    base, run = recipe_run
    faces_dir, copy = tmp_path / "faces", tmp_path / "run"
    shutil.copytree(base / "faces", faces_dir)
    shutil.copytree(run, copy)
    manifest = pd.read_csv(faces_dir / "faces.csv", dtype={"Id": str}, keep_default_na=False)
    stale = manifest[manifest["split"] == "test"]["Id"].iloc[0]
    manifest.loc[manifest["Id"] == stale, "settings_hash"] = "0123456789abcdef"
    manifest.to_csv(faces_dir / "faces.csv", index=False)
    cfg = load_run_config(copy, [f"align.out={faces_dir}"])
    with pytest.raises(StaleOutputError, match="other stage-1 settings"):
        run_stages(cfg, "predict")
    safe = safe_inference(cfg, RunPaths(copy), inference_runtime("cpu"), tmp_path / "safe.csv")
    source = safe.probs.set_index("Id")["source"]
    assert source.loc[stale] == "realigned" and (source.drop(stale) == "aligned").all()
    expected = pd.read_csv(run / "test_probs.csv", dtype={"Id": str}).set_index("Id")["prob"]
    assert np.allclose(safe.probs.set_index("Id")["prob"].loc[expected.index], expected, atol=1e-5)


def test_on_the_fly_alignment_detects_with_the_stage_settings(tmp_path: Path) -> None:
    """safe_inference's aligner builds its detector from the run's align settings, the second look at
    weak detections (retry_below = align.min_prob) included, as align_faces.py does."""
    import torch

    from deepfake_pipeline.fallback import OnTheFlyAligner

    cfg = load_config(None, ["run.name=x", "align.min_prob=0.75", "align.min_face_frac=0.3"])
    detector = OnTheFlyAligner(cfg, torch.device("cpu"), tmp_path)._get_detector()
    assert detector is not None and detector.retry_below == 0.75 and detector.min_face_frac == 0.3
