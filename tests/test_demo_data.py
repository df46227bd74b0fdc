"""The synthetic demo dataset: layout, CSVs, stratified balance, determinism, decodability."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from deepfake_pipeline.demo_data import generate, main, render_image
from deepfake_pipeline.images import read_image

from .conftest import REPO


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("demo_data") / "demo"
    return root, generate(root, n=40, test_share=0.25, size=96, seed=7)


def test_layout_and_csvs(demo: tuple[Path, dict]) -> None:
    root, counts = demo
    assert sorted(p.name for p in root.iterdir()) == [
        "README.txt", "test_images", "test_solution.csv", "train_images", "train_solution.csv",
    ]
    assert "synthetic" in (root / "README.txt").read_text().lower()
    train = pd.read_csv(root / "train_solution.csv")
    test = pd.read_csv(root / "test_solution.csv")
    for frame, folder in ((train, "train_images"), (test, "test_images")):
        assert list(frame.columns) == ["Id", "target_feature"]
        assert frame.Id.str.fullmatch(r"demo_\d{5}").all()
        assert set(frame.target_feature) <= {0, 1}
        assert sorted(p.stem for p in (root / folder).iterdir()) == sorted(frame.Id)
        assert all(p.suffix == ".jpg" for p in (root / folder).iterdir())
    ids = pd.concat([train.Id, test.Id])
    assert ids.is_unique and len(ids) == 40
    assert sorted(ids) == [f"demo_{i:05d}" for i in range(40)]
    assert counts == {"n": 40, "train": 30, "test": 10, "train_fake": 15, "test_fake": 5, "size": 96, "seed": 7}
    assert not list(root.rglob(".*.tmp"))


def test_class_balance_is_stratified(tmp_path: Path) -> None:
    counts = generate(tmp_path, n=40, test_share=0.3, size=64, seed=1, fake_share=0.25)
    train = pd.read_csv(tmp_path / "train_solution.csv")
    test = pd.read_csv(tmp_path / "test_solution.csv")
    assert train.target_feature.sum() + test.target_feature.sum() == 10
    assert (counts["train"], counts["test"]) == (len(train), len(test)) == (28, 12)
    assert test.target_feature.sum() == round(10 * 0.3) == counts["test_fake"]
    assert abs(train.target_feature.mean() - 0.25) < 0.05 and abs(test.target_feature.mean() - 0.25) < 0.05


def test_every_file_decodes_at_the_requested_size(demo: tuple[Path, dict]) -> None:
    root, _ = demo
    files = sorted(root.glob("*_images/*.jpg"))
    assert len(files) == 40
    for path in files:
        loaded = read_image(path)
        assert loaded.pixels.shape == (96, 96, 3) and loaded.pixels.dtype == np.uint8
        assert loaded.note == ""
        assert loaded.pixels.std() > 10  # a drawn scene, not a flat image


def test_same_seed_is_byte_identical_and_independent_of_workers(tmp_path: Path, demo: tuple[Path, dict]) -> None:
    root, _ = demo
    again = tmp_path / "again"
    generate(again, n=40, test_share=0.25, size=96, seed=7, workers=2)
    assert snapshot(again) == snapshot(root)


def test_different_seed_differs(tmp_path: Path, demo: tuple[Path, dict]) -> None:
    root, _ = demo
    other = tmp_path / "other"
    generate(other, n=40, test_share=0.25, size=96, seed=8)
    a, b = snapshot(root), snapshot(other)
    images = [k for k in a if k.endswith(".jpg") and k in b]
    assert a["train_solution.csv"] != b["train_solution.csv"]
    assert sum(a[k] == b[k] for k in images) == 0


def test_real_and_fake_of_an_index_differ_only_in_the_face() -> None:
    real, q_real = render_image(3, 5, False, 128)
    fake, q_fake = render_image(3, 5, True, 128)
    assert q_real == q_fake
    diff = np.abs(real.astype(int) - fake.astype(int)).max(axis=2)
    assert diff[:, :8].max() == diff[:, -8:].max() == diff[:8].max() == 0  # background untouched
    assert diff[40:90, 40:90].mean() > 3  # inner face replaced
    np.testing.assert_array_equal(render_image(3, 5, True, 128)[0], fake)


def test_rerun_with_fewer_images_removes_stale_ones(tmp_path: Path) -> None:
    generate(tmp_path, n=12, size=64, seed=0)
    generate(tmp_path, n=6, size=64, seed=0)
    files = sorted(p.stem for p in tmp_path.glob("*_images/*.jpg"))
    assert files == [f"demo_{i:05d}" for i in range(6)]
    assert len(pd.read_csv(tmp_path / "train_solution.csv")) + len(pd.read_csv(tmp_path / "test_solution.csv")) == 6


@pytest.mark.parametrize(
    "kwargs", [{"n": 0}, {"test_share": 1.0}, {"fake_share": 1.5}, {"size": 16}, {"seed": -1}]
)
def test_bad_arguments_raise(tmp_path: Path, kwargs: dict) -> None:
    args = {"n": 4, **kwargs}
    with pytest.raises(ValueError):
        generate(tmp_path, **args)


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    assert main(["--out", str(out), "--n", "8", "--size", "64", "--test-share", "0.5", "--workers", "1"]) == 0
    assert "4 train (2 fake), 4 test (2 fake)" in capsys.readouterr().out
    assert len(list(out.glob("*_images/*.jpg"))) == 8
    assert main(["--out", str(out), "--n", "0"]) == 2


def test_module_entry_point(tmp_path: Path) -> None:
    out = tmp_path / "mod"
    cmd = [sys.executable, "-m", "deepfake_pipeline.demo_data", "--out", str(out), "--n", "4", "--size", "64"]
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, timeout=60)
    assert (out / "train_solution.csv").is_file()
