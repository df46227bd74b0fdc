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
# The few long single-process tests take both cores when they run alone, one beside another test
# worker (make test runs two, pytest-xdist): more torch threads than free cores spin and fight for
# them (the lfw_swap real-data test took 1221 s at two threads beside another file, 221 s alone).
WHOLE_CPU_THREADS = "1" if os.environ.get("PYTEST_XDIST_WORKER") else "2"


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


# The longest test files first (seconds alone on the 2-core VM, benchmarks/RESULTS.md "make test wall
# time"): `make test` runs two files at once (pytest-xdist, --dist loadfile, in collection order), and
# a long file started last would run alone at the end.
LONGEST_FIRST = ("test_real_data.py", "test_training.py", "test_full_recipe.py", "test_learning.py",
                 "test_gpu_check.py", "test_quality.py", "test_chaos.py", "test_amp.py", "test_audio_training.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order
