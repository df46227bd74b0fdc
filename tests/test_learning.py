"""The model learns: fine-tuning on the synthetic demo beats chance by a margin that flipped or
shuffled training labels cannot reach.

Three short runs of train.py (align -> finetune -> predict) on one synthetic dataset, scored on its
hidden test labels: with the true labels the test AUC must be high; with every training label
flipped it must be low (the model learned the inverse: labels are used as given, 1 = fake); with the
labels shuffled it must stay near chance (nothing but the labels carries the signal, so no leak from
file names, order or sizes). A pipeline that ignored, inverted or misaligned its labels fails here.
Runs without ../shared, in about three minutes on a 2-core CPU.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from deepfake_pipeline.demo_data import generate
from deepfake_pipeline.metrics import auc_standard_error, binary_metrics

from .helpers import run_cli, tiny_config

pytestmark = pytest.mark.slow

RECIPE = """
align: {enabled: true, size: 96, resize: false, detect_max_side: 256, workers: 0}
model: {img_size: 64, fit: crop, head_dropout: 0.0}
ssl: {enabled: false}
finetune:
  init: scratch
  folds: 2
  epochs: 6
  batch_size: 16
  label_smoothing: 0.0
  optim: {lr: 4.0e-3, warmup_epochs: 0.5}
  aug: {hflip: 0.5, affine: 0.0, color_jitter: 0.0, blur: 0.0, jpeg: 0.0, cutout: 0.0}
predict: {tta: [identity, hflip]}
"""


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("learning") / "dataset"
    generate(root, n=240, test_share=1 / 3, size=256, seed=21)  # 160 train, 80 test
    return root


def train_and_score(demo: Path, base: Path, relabel: str) -> tuple[float, float]:
    """(test AUC against the true test labels, its standard error) of a run whose training labels
    are ``relabel``-ed: "true", "flipped" or "shuffled"."""
    data = base / "dataset"
    shutil.copytree(demo, data)
    labels = pd.read_csv(data / "train_solution.csv", dtype={"Id": str})
    if relabel == "flipped":
        labels["target_feature"] = 1 - labels["target_feature"]
    elif relabel == "shuffled":
        labels["target_feature"] = np.random.default_rng(0).permutation(labels["target_feature"].to_numpy())
    labels.to_csv(data / "train_solution.csv", index=False)
    (data / "test_solution.csv").unlink()  # the pipeline never sees the answers
    cfg = tiny_config(base, data, RECIPE)
    for args in (["align_faces.py"], ["train.py", "--stage", "all"]):
        proc = run_cli([*args, "--config", str(cfg)], timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
    probs = pd.read_csv(base / "runs" / "t" / "test_probs.csv", dtype={"Id": str}).set_index("Id")["prob"]
    truth = pd.read_csv(demo / "test_solution.csv", dtype={"Id": str}).set_index("Id")["target_feature"]
    auc = binary_metrics(truth.to_numpy(), probs.loc[truth.index].to_numpy())["auc"]
    return auc, auc_standard_error(auc, int(truth.sum()), int((truth == 0).sum()))


def test_true_labels_are_learned_and_flipped_or_shuffled_ones_are_not(demo: Path, tmp_path: Path) -> None:
    auc, se = train_and_score(demo, tmp_path / "true", "true")
    assert auc >= 0.85, f"test AUC {auc:.3f} +- {se:.3f}: the pipeline does not learn the demo's fakes"
    flipped, _ = train_and_score(demo, tmp_path / "flipped", "flipped")
    assert flipped <= 0.15, f"flipped labels gave test AUC {flipped:.3f}: labels are not used as given"
    shuffled, se_s = train_and_score(demo, tmp_path / "shuffled", "shuffled")
    assert abs(shuffled - 0.5) <= 0.25, f"shuffled labels gave test AUC {shuffled:.3f}: signal without labels?"
    # The margin separates the runs by many standard errors (about 0.03 at AUC 0.9 and 0.065 at 0.5).
    assert auc - max(shuffled, 1 - shuffled) > 4 * se_s
