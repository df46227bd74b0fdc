"""Helpers for the training tests: tiny configs, subprocess runs of the CLIs."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from omegaconf import OmegaConf

from .conftest import PYTHON, REPO


def tiny_config(tmp_path: Path, data_root: Path, extra: str = "", name: str = "t") -> Path:
    """A config small enough for a 2-core CPU: convnextv2_atto at 64 px, 2 folds, 2 epochs."""
    text = f"""
run: {{name: {name}, dir: {tmp_path / 'runs' / name}, workers: 0, device: cpu, progress: false, seed: 1}}
data: {{root: {data_root}}}
align: {{size: 64, out: {tmp_path / 'faces'}, workers: 0, enabled: false}}
model: {{backbone: convnextv2_atto, img_size: 64, drop_path: 0.0}}
ssl: {{epochs: 2, batch_size: 8, mask_ratio: 0.5, save_every: 1, optim: {{lr: 2.0e-3, warmup_epochs: 0.3}}}}
finetune:
  folds: 2
  epochs: 2
  batch_size: 8
  ema_decay: 0.9
  optim: {{lr: 2.0e-3, warmup_epochs: 0.5}}
predict: {{tta: [identity, hflip], batch_size: 16}}
"""
    merged = OmegaConf.merge(OmegaConf.create(text), OmegaConf.create(extra or "{}"))
    path = tmp_path / f"{name}.yaml"
    path.write_text(OmegaConf.to_yaml(merged))
    return path


def run_cli(args: list[str], env: dict[str, str] | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([PYTHON, *args], cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout)
