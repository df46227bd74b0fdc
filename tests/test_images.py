from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deepfake_pipeline.errors import ImageReadError
from deepfake_pipeline.images import (
    atomic_path,
    atomic_write_text,
    image_header,
    read_image,
    remove_stale_temps,
    save_jpeg,
)

from .bad_inputs import readable_corpus, unreadable_corpus


def test_readable_corpus_decodes_to_rgb(tmp_path: Path) -> None:
    files = readable_corpus(tmp_path)
    for name, path in files.items():
        loaded = read_image(path)
        px = loaded.pixels
        assert px.dtype == np.uint8 and px.ndim == 3 and px.shape[2] == 3, name
    assert read_image(files["exif_rotated.jpg"]).pixels.shape[:2] == (64, 48)
    assert read_image(files["one_pixel.png"]).pixels.shape == (1, 1, 3)
    assert read_image(files["truncated.jpg"]).note == "truncated"
    assert read_image(files["gray.png"]).note == ""
    # 16-bit values are scaled, not clipped: a full-range gradient stays full-range.
    sixteen = read_image(files["sixteen_bit.png"]).pixels
    assert sixteen.max() == 255 and sixteen.min() == 0
    # Semi-transparent pixels are composited on white, so they get lighter, never black.
    rgba = read_image(files["rgba.png"]).pixels.astype(int)
    assert (rgba >= 120).all()


def test_unreadable_corpus_raises_typed_errors(tmp_path: Path) -> None:
    for name, path in unreadable_corpus(tmp_path).items():
        with pytest.raises(ImageReadError) as info:
            read_image(path, max_pixels=50_000_000)
        assert str(path) in str(info.value), name
    with pytest.raises(ImageReadError, match="zero-byte"):
        read_image(tmp_path / "zero_bytes.jpg")
    with pytest.raises(ImageReadError, match="exceeds the limit"):
        read_image(tmp_path / "bomb.png", max_pixels=50_000_000)
    with pytest.raises(ImageReadError, match="cannot open"):
        read_image(tmp_path / "missing.jpg")


def test_truncated_can_be_refused(tmp_path: Path) -> None:
    path = readable_corpus(tmp_path)["truncated.jpg"]
    with pytest.raises(ImageReadError, match="corrupt"):
        read_image(path, allow_truncated=False)


def test_header_check_matches_reader(tmp_path: Path) -> None:
    files = readable_corpus(tmp_path / "ok")
    assert image_header(files["gray.png"]) == (64, 48)
    bad = unreadable_corpus(tmp_path / "bad")
    for path in bad.values():
        with pytest.raises(ImageReadError):
            image_header(path, max_pixels=50_000_000)


def test_non_ascii_names(tmp_path: Path) -> None:
    path = tmp_path / "visage_été_顔.jpg"
    save_jpeg(path, np.full((8, 8, 3), 100, np.uint8))
    assert read_image(path).pixels.shape == (8, 8, 3)


def test_atomic_write_replaces_or_keeps(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    atomic_write_text(target, "new")
    assert target.read_text() == "new"


def test_disk_full_keeps_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "face.jpg"
    save_jpeg(target, np.full((8, 8, 3), 50, np.uint8))
    before = target.read_bytes()

    def full_disk(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left"):
        save_jpeg(target, np.full((8, 8, 3), 200, np.uint8))
    assert target.read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_remove_stale_temps(tmp_path: Path) -> None:
    (tmp_path / ".a.jpg.x1.tmp").write_bytes(b"half")
    (tmp_path / "a.jpg").write_bytes(b"whole")
    assert remove_stale_temps(tmp_path) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["a.jpg"]


def test_save_jpeg_roundtrip(tmp_path: Path) -> None:
    arr = np.random.default_rng(0).integers(0, 255, (32, 40, 3), dtype=np.uint8)
    save_jpeg(tmp_path / "x.jpg", arr, quality=95)
    with Image.open(tmp_path / "x.jpg") as img:
        assert img.size == (40, 32) and img.format == "JPEG"
