"""Shared fixtures: paths, the real datasets beside the repo, a tiny demo dataset."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO.parent / "shared" / "datasets"
PYTHON = sys.executable

# Tests run on the CPU with one thread each: two cores, several processes at once in some tests
# (two threads measured 4-6x slower than one on a busy 2-core machine).
os.environ.setdefault("OMP_NUM_THREADS", "1")


def shared_dataset(name: str) -> Path:
    path = SHARED_DATASETS / name
    if not (path / "train_solution.csv").is_file():
        pytest.skip(f"real dataset {name!r} not found at {path} (../shared/datasets beside the repo)")
    return path


def write_yaml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic Kaggle-layout dataset shared by the tests (read-only for them)."""
    from deepfake_pipeline.demo_data import generate

    root = tmp_path_factory.mktemp("demo") / "dataset"
    generate(root, n=60, test_share=0.25, size=96, seed=3)
    return root
