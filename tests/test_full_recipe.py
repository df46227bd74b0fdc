"""The shipped recipe, configs/default.yaml, as a GPU user runs it, here on the CPU and tiny data.

Only the data paths, the run directory and the step counts are overridden, and the hub weights the
recipe starts from (no network here; loading them is tested in test_model.py with a local file): convnextv2_tiny with
rgb+fft+srm on native 512 px faces (448 px windows), SimMIM (one step), fold 0 of the 5 (two optimizer
steps, killed after the first and resumed from last.pt), its out-of-fold calibration, prediction
with the recipe's TTA views (safe_inference.py, which answers from the finished folds), and the ONNX
export with its parity check. A fault here would otherwise first show on someone's GPU after hours of alignment. It runs
for a few minutes on a 2-core CPU (marked slow).
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pandas as pd
import pytest

from deepfake_pipeline.config import load_config
from deepfake_pipeline.demo_data import generate

from .conftest import REPO, WHOLE_CPU_THREADS
from .helpers import run_cli

pytestmark = pytest.mark.slow


@pytest.mark.timeout(1200)  # 145 s alone on the 2-core VM; make test runs another test file beside it
def test_default_recipe_end_to_end_at_512(tmp_path: Path) -> None:
    data = tmp_path / "dataset"
    generate(data, n=16, test_share=0.25, size=512, seed=11)  # 12 train (6 + 6), 4 test
    run = tmp_path / "run"
    sets = [f"data.root={data}", f"align.out={tmp_path / 'faces'}", f"run.dir={run}", "run.name=full",
            "ssl.epochs=1", "finetune.epochs=2", "finetune.run_folds=[0]",
            "model.pretrained=false"]  # the recipe starts from timm's hub weights: no network here
    args = ["--config", str(REPO / "configs/default.yaml")] + [a for s in sets for a in ("--set", s)]
    cfg = load_config(REPO / "configs/default.yaml", sets)
    # The recipe as shipped: nothing else was changed.
    assert (cfg.model.backbone, cfg.align.size, cfg.align.resize) == ("convnextv2_tiny", 512, False)
    assert (cfg.model.img_size, cfg.model.fit) == (448, "crop")  # native 448 windows of the 512 px faces
    assert cfg.model.channels == ["rgb", "fft", "srm"] and cfg.finetune.folds == 5
    assert list(cfg.predict.tta) == ["identity", "hflip"]

    env = {"OMP_NUM_THREADS": WHOLE_CPU_THREADS}
    proc = run_cli(["align_faces.py", *args], env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run_cli(["train.py", *args, "--stage", "ssl"], env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (run / "ssl" / "encoder.safetensors").is_file()
    # Fold 0 (one of the recipe's five) is killed after its second optimizer step, before that epoch's
    # checkpoint: the rerun resumes from the first epoch's last.pt.
    killed = run_cli(["train.py", *args, "--stage", "finetune"], env={**env, "DFP_FAILPOINT": "step:2"},
                     timeout=900)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert (run / "fold0" / "last.pt").is_file() and not (run / "fold0" / "done.json").exists()
    proc = run_cli(["train.py", *args, "--stage", "finetune"], env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "fold0: resumed from" in proc.stderr and "1/5 folds finished" in proc.stderr
    assert json.loads((run / "fold0" / "done.json").read_text())["steps"] == 2
    calibration = json.loads((run / "fold0" / "calibration.json").read_text())
    assert calibration["val_preds_key"]["tta"] == list(cfg.predict.tta)  # OOF with the 4 prediction views

    safe = run_cli(["safe_inference.py", "--run", str(run), "--out", str(tmp_path / "safe.csv")], env=env, timeout=900)
    assert safe.returncode == 0, safe.stderr[-3000:]
    assert "folds [0]" in safe.stdout
    sub = pd.read_csv(tmp_path / "safe.csv", dtype={"Id": str})
    assert sorted(sub["Id"]) == sorted(p.stem for p in (data / "test_images").iterdir())
    probs = pd.read_csv(tmp_path / "safe_probs.csv", dtype={"Id": str})
    assert probs["prob"].between(0, 1).all() and (probs["source"] != "prior").all()

    onnx = tmp_path / "fold0.onnx"
    export = run_cli(["-m", "deepfake_pipeline.export", "--run", str(run), "--fold", "0", "--format", "onnx",
                      "--out", str(onnx), "--check-images", "2"], env=env, timeout=900)
    assert export.returncode == 0, export.stderr[-3000:]
    sidecar = json.loads(onnx.with_name(onnx.name + ".json").read_text())
    assert sidecar["input"]["shape"] == ["batch", 3, 448, 448]
    assert sidecar["parity"]["max_abs_diff_prob"] <= sidecar["parity"]["tolerance"]
