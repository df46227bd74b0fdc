"""The shipped recipe, configs/default.yaml, as a GPU user runs it, here on the CPU and tiny data.

Only the data paths, the run directory and the epoch counts are overridden: convnextv2_tiny with
rgb+fft+srm at 512 px, SimMIM at 512, 5 folds (one optimizer step each, fold 0 killed after its first
step and resumed from last.pt), the predict stage with the 4 TTA views, safe_inference.py, and the
ONNX export at 512 with its parity check. A fault here would otherwise first show on someone's GPU
after hours of alignment. It runs for a few minutes on a 2-core CPU (marked slow).
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pandas as pd
import pytest

from deepfake_pipeline.config import load_config
from deepfake_pipeline.demo_data import generate

from .conftest import REPO
from .helpers import run_cli

pytestmark = pytest.mark.slow


def test_default_recipe_end_to_end_at_512(tmp_path: Path) -> None:
    data = tmp_path / "dataset"
    generate(data, n=16, test_share=0.25, size=512, seed=11)  # 12 train (6 + 6), 4 test
    run = tmp_path / "run"
    sets = [f"data.root={data}", f"align.out={tmp_path / 'faces'}", f"run.dir={run}", "run.name=full",
            "ssl.epochs=1", "finetune.epochs=1"]
    args = ["--config", str(REPO / "configs/default.yaml")] + [a for s in sets for a in ("--set", s)]
    cfg = load_config(REPO / "configs/default.yaml", sets)
    # The recipe as shipped: nothing else was changed.
    assert (cfg.model.backbone, cfg.model.img_size, cfg.align.size) == ("convnextv2_tiny", 512, 512)
    assert cfg.model.channels == ["rgb", "fft", "srm"] and cfg.finetune.folds == 5
    assert list(cfg.predict.tta) == ["identity", "hflip", "rot+5", "rot-5"]

    env = {"OMP_NUM_THREADS": "2"}
    proc = run_cli(["align_faces.py", *args], env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run_cli(["train.py", *args, "--stage", "ssl"], env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (run / "ssl" / "encoder.safetensors").is_file()
    # Fold 0 is killed right after its first optimizer step, then resumed from last.pt.
    killed = run_cli(["train.py", *args, "--stage", "finetune", "--set", "finetune.run_folds=[0]"],
                     env={**env, "DFP_FAILPOINT": "step:1"}, timeout=900)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert (run / "fold0" / "last.pt").is_file() and not (run / "fold0" / "done.json").exists()
    proc = run_cli(["train.py", *args, "--stage", "all"], env=env, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "fold0: resumed from" in proc.stderr
    for k in range(5):
        done = json.loads((run / f"fold{k}" / "done.json").read_text())
        assert done["steps"] == 1
    threshold = json.loads((run / "threshold.json").read_text())
    assert threshold["tta"] == ["identity", "hflip", "rot+5", "rot-5"] and threshold["n"] == 12
    sub = pd.read_csv(run / "submission.csv", dtype={"Id": str})
    assert sorted(sub["Id"]) == sorted(p.stem for p in (data / "test_images").iterdir())

    safe = run_cli(["safe_inference.py", "--run", str(run), "--out", str(tmp_path / "safe.csv")], env=env, timeout=900)
    assert safe.returncode == 0, safe.stderr[-3000:]
    probs = pd.read_csv(run / "test_probs.csv", dtype={"Id": str}).set_index("Id")["prob"]
    safe_probs = pd.read_csv(tmp_path / "safe_probs.csv", dtype={"Id": str}).set_index("Id")["prob"]
    assert (safe_probs - probs.loc[safe_probs.index]).abs().max() < 1e-4  # the same ensemble, another code path

    onnx = tmp_path / "fold0.onnx"
    export = run_cli(["-m", "deepfake_pipeline.export", "--run", str(run), "--fold", "0", "--format", "onnx",
                      "--out", str(onnx), "--check-images", "2"], env=env, timeout=900)
    assert export.returncode == 0, export.stderr[-3000:]
    sidecar = json.loads(onnx.with_name(onnx.name + ".json").read_text())
    assert sidecar["input"]["shape"] == ["batch", 3, 512, 512]
    assert sidecar["parity"]["max_abs_diff_prob"] <= sidecar["parity"]["tolerance"]
