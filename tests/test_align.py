"""Stage 1 (align_faces.py): crop policy, fallback, unreadable inputs, manifest, resume, shards."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf
from PIL import Image

from deepfake_pipeline.align import run_align, settings_hash
from deepfake_pipeline.config import AlignConfig, Config, load_config
from deepfake_pipeline.demo_data import render_image
from deepfake_pipeline.errors import ConfigError, DataValidationError, PipelineError
from deepfake_pipeline.faces import (
    Face,
    FaceDetector,
    best_prob,
    centre_box,
    choose,
    crop_box,
    crop_square,
    detection_copy,
    letterbox,
    look_closer,
    make_crop,
    native_crop,
    native_window,
)
from deepfake_pipeline.journal import Journal, Shard, parse_shard, read_journals

from .conftest import PYTHON, REPO, shared_dataset

# ---------------------------------------------------------------- helpers


def make_layout(root: Path, n_train: int = 6, n_test: int = 4, size: tuple[int, int] = (96, 72),
                seed: int = 0) -> list[tuple[str, str]]:
    """Kaggle layout of flat-colour and noise images (no faces); returns the (split, Id) keys."""
    rng = np.random.default_rng(seed)
    keys = []
    for split, folder, n in (("train", "train_images", n_train), ("test", "test_images", n_test)):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            ident = f"{split[:2]}{i:03d}"
            w, h = size
            if i % 2:
                pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            else:
                pixels = np.full((h, w, 3), rng.integers(0, 256, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / folder / f"{ident}.jpg", quality=90)
            keys.append((split, ident))
    labels = [(ident, i % 2) for i, (split, ident) in enumerate(keys) if split == "train"]
    pd.DataFrame(labels, columns=["Id", "target_feature"]).to_csv(root / "train_solution.csv", index=False)
    return keys


def write_cfg(tmp_path: Path, root: Path, out: Path, extra: str = "", name: str = "align.yaml") -> Path:
    base = (f"run: {{name: t, progress: false}}\ndata: {{root: '{root}'}}\n"
            f"align: {{out: '{out}', size: 64, workers: 0, min_face_frac: 0.3}}\n")
    merged = OmegaConf.merge(OmegaConf.create(base), OmegaConf.create(extra or "{}"))
    path = tmp_path / name
    path.write_text(OmegaConf.to_yaml(merged))
    return path


def manifest(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "faces.csv", dtype={"Id": str}, keep_default_na=False)


def cli_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def decodes_fully(path: Path) -> bool:
    """A JPEG that PIL decodes without LOAD_TRUNCATED_IMAGES (no torn file)."""
    try:
        with Image.open(path) as img:
            img.load()
        return True
    except OSError:
        return False


@pytest.fixture()
def small(tmp_path: Path) -> tuple[Config, list[tuple[str, str]], Path]:
    keys = make_layout(tmp_path / "data")
    out = tmp_path / "faces"
    return load_config(write_cfg(tmp_path, tmp_path / "data", out)), keys, out


# ---------------------------------------------------------------- crop policy


def test_crop_box_margin_and_square() -> None:
    assert crop_box((100, 100, 200, 200), 1000, 1000, 0.2) == (80, 80, 220, 220)
    # 100 x 140 face -> 140 x 196 expanded -> 196 square around the centre (150, 170)
    assert crop_box((100, 100, 200, 240), 1000, 1000, 0.2) == (52, 72, 248, 268)
    assert crop_box((100, 100, 200, 200), 1000, 1000, 0.0) == (100, 100, 200, 200)


def test_crop_box_is_shifted_inside_at_the_borders() -> None:
    assert crop_box((-10, 5, 90, 105), 300, 200, 0.2) == (0, 0, 140, 140)  # top-left corner
    assert crop_box((250, 150, 300, 200), 300, 200, 0.2) == (230, 130, 300, 200)  # bottom-right
    for box in [(-50, -50, 20, 20), (280, 190, 400, 260), (0, 0, 1, 1)]:
        x1, y1, x2, y2 = crop_box(box, 300, 200, 0.2)
        assert 0 <= x1 < x2 <= 300 and 0 <= y1 < y2 <= 200 and x2 - x1 == y2 - y1


def test_crop_box_larger_than_the_image_shrinks_to_the_short_side() -> None:
    assert crop_box((0, 0, 300, 300), 400, 200, 0.2) == (50, 0, 250, 200)
    assert crop_box((-100, -100, 900, 900), 640, 480, 0.2) == (160, 0, 640, 480)  # centre 400, 400


def test_select_prob_vs_largest_and_min_prob() -> None:
    cfg = load_config(None, ["run.name=t"]).align
    big = Face(np.array([10, 10, 110, 110], np.float32), 0.95)
    sure = Face(np.array([200, 200, 240, 240], np.float32), 0.999)
    huge_unsure = Face(np.array([0, 0, 300, 300], np.float32), 0.80)
    faces = [big, sure, huge_unsure]
    cfg.select = "prob"
    by_prob = choose(faces, 400, 400, cfg)
    assert by_prob.face is sure and by_prob.status == "face" and by_prob.n_faces == 2
    cfg.select = "largest"
    by_size = choose(faces, 400, 400, cfg)
    assert by_size.face is big  # the larger face below min_prob does not count
    assert by_size.box == crop_box(big.box, 400, 400, cfg.margin)
    none = choose([huge_unsure], 400, 300, cfg)
    assert none.status == "fallback" and none.box == centre_box(400, 300) == (50, 0, 350, 300)
    assert none.best_prob == pytest.approx(0.80) and none.n_faces == 0


def test_resize_and_letterbox_shapes() -> None:
    img = np.random.default_rng(1).integers(0, 256, (50, 100, 3), dtype=np.uint8)
    assert crop_square(img, (0, 0, 50, 50), 64).shape == (64, 64, 3)  # upscaled (cubic)
    assert crop_square(img, (10, 0, 60, 50), 32).shape == (32, 32, 3)  # downscaled (area)
    box = letterbox(img, 64)
    assert box.shape == (64, 64, 3)
    assert box[:15].max() == 0 and box[-15:].max() == 0 and box[20:44].max() > 0  # centred, black bars


def test_native_crop_copies_source_pixels_on_the_jpeg_grid() -> None:
    img = np.random.default_rng(2).integers(0, 256, (250, 300, 3), dtype=np.uint8)
    box = (100, 40, 220, 160)  # centre (160, 100)
    window = native_window(box, 300, 250, 96)
    assert window == (112, 48, 208, 144)  # centre - 48 = (112, 52), corner snapped to the 16 px grid
    crop = native_crop(img, box, 96)
    assert np.array_equal(crop, img[48:144, 112:208])  # the source pixels themselves, nothing resampled
    # at the border the window shifts inside instead of padding, to the last start on the grid: the
    # JPEG block phase never depends on where the face sits (204 = 300 - 96 is off the grid, 192 is on)
    assert native_window((0, 0, 40, 40), 300, 250, 96)[:2] == (0, 0)
    assert native_window((260, 210, 300, 250), 300, 250, 96) == (192, 144, 288, 240)
    for w, h in ((300, 250), (257, 321), (97, 113), (96, 96)):
        for cx in range(0, w, 7):
            x1, y1, x2, y2 = native_window((cx - 5, cx % h - 5, cx + 5, cx % h + 5), w, h, 96)
            assert x1 % 16 == 0 and y1 % 16 == 0 and x2 <= w and y2 <= h
        x1, y1, x2, y2 = native_window((w - 10, h - 10, w, h), w, h, 96)  # a face in the far corner
        assert w - x2 < 16 and h - y2 < 16  # as close to the edge as the grid allows
    cfg = AlignConfig(size=96, resize=False)
    face, shown = make_crop(img, box, cfg)
    assert np.array_equal(face, crop) and shown == window
    resized, square = make_crop(img, box, AlignConfig(size=96))
    assert square == box and resized.shape == (96, 96, 3) and not np.array_equal(resized, crop)


def test_native_crop_pads_an_image_smaller_than_the_window() -> None:
    img = np.random.default_rng(3).integers(0, 256, (40, 70, 3), dtype=np.uint8)
    crop = native_crop(img, (0, 0, 40, 40), 64)
    assert crop.shape == (64, 64, 3)
    assert np.array_equal(crop[:40, :64], img[:, :64])  # the image where it is, mirrored beyond
    assert np.array_equal(crop[40:, :64], img[::-1][: 24, :64])
    assert native_crop(np.zeros((1, 1, 3), np.uint8), (0, 0, 1, 1), 16).shape == (16, 16, 3)


# ---------------------------------------------------------------- the stage


def test_fallback_centre_crop_and_manifest(small: tuple[Config, list, Path]) -> None:
    cfg, keys, out = small
    summary = run_align(cfg)
    assert summary.processed == len(keys) and summary.manifest == out / "faces.csv"
    faces = manifest(out)
    assert sorted(zip(faces["split"], faces["Id"])) == sorted(keys)  # every Id exactly once
    assert not faces.duplicated(["split", "Id"]).any()
    assert set(faces["status"]) == {"fallback"}
    assert (faces["box"] == "12 0 84 72").all()  # centre square of 96 x 72
    assert (faces["src_width"] == 96).all() and (faces["src_height"] == 72).all()
    assert (faces["settings_hash"] == settings_hash(cfg)).all()
    assert set(faces.columns) >= {"prob", "n_faces", "path", "note", "landmarks"}
    src = np.asarray(Image.open(Path(cfg.data.root) / "train_images" / "tr000.jpg").convert("RGB"))
    for path in faces["path"]:
        with Image.open(path) as img:
            assert img.size == (64, 64)
    flat = np.asarray(Image.open(out / "train" / "tr000.jpg"))
    assert np.abs(flat.astype(int) - src[36, 48].astype(int)).max() <= 6  # the flat colour, cropped
    assert (out / "align_config.yaml").read_text().startswith(f"# align settings hash: {settings_hash(cfg)}")


def test_native_alignment_records_the_window_it_cut(small: tuple[Config, list, Path]) -> None:
    cfg, keys, out = small
    cfg.align.resize = False
    cfg.align.size = 48
    run_align(cfg)
    faces = manifest(out)
    assert set(faces["status"]) == {"fallback"}
    assert (faces["box"] == "32 16 80 64").all()  # a 48 px window of the 96 x 72 source, on the grid
    src = np.asarray(Image.open(Path(cfg.data.root) / "train_images" / "tr000.jpg").convert("RGB"))
    crop = np.asarray(Image.open(out / "train" / "tr000.jpg"))
    assert crop.shape == (48, 48, 3)
    assert np.abs(crop.astype(int) - src[16:64, 32:80].astype(int)).mean() < 2  # JPEG of the same pixels


def test_alignment_disabled_letterboxes_the_whole_image(small: tuple[Config, list, Path]) -> None:
    cfg, keys, out = small
    cfg.align.enabled = False
    run_align(cfg)
    faces = manifest(out)
    assert set(faces["status"]) == {"whole"} and (faces["box"] == "0 0 96 72").all()
    img = np.asarray(Image.open(out / "test" / "te000.jpg"))
    assert img.shape == (64, 64, 3) and img[:6].max() < 10  # 96x72 -> 64x48, 8 px black bars


def test_unreadable_inputs_are_recorded_and_the_share_sets_the_exit_code(tmp_path: Path) -> None:
    from align_faces import main
    from deepfake_pipeline.cli import run_main

    root = tmp_path / "data"
    keys = make_layout(root, n_train=4, n_test=4)
    (root / "test_images" / "zero.jpg").write_bytes(b"")
    (root / "test_images" / "text.jpg").write_text("this is not a JPEG\n")
    (root / "test_images" / "folder.jpg").mkdir()  # a directory named like an image
    (root / "test_images" / "notes").mkdir()  # a plain folder: not an image, ignored
    out = tmp_path / "faces"
    cfg_path = write_cfg(tmp_path, root, out)
    assert run_main(main, ["--config", str(cfg_path)]) == 2  # 3 of 11 > 1 %, after the manifest
    faces = manifest(out)
    assert len(faces) == len(keys) + 3 and not faces.duplicated(["split", "Id"]).any()
    bad = faces[faces["status"] == "unreadable"].set_index("Id")
    assert set(bad.index) == {"zero", "text", "folder"}
    assert bad.loc["zero", "note"] == "zero-byte file" and "not an image" in bad.loc["text", "note"]
    assert "a directory named like an image" in bad.loc["folder", "note"]
    assert (bad["path"] == "").all() and not (out / "test" / "zero.jpg").exists()
    ok = ["--config", str(cfg_path), "--set", "align.max_unreadable_share=0.5"]
    assert run_main(main, ok) == 0  # resumed: nothing redone, the share is now allowed


def test_validation_fails_before_any_work(tmp_path: Path) -> None:
    from align_faces import main
    from deepfake_pipeline.cli import run_main

    root = tmp_path / "data"
    make_layout(root)
    (root / "train_solution.csv").write_text("Id,target_feature\ntr000,1\nnope,0\n")
    cfg = load_config(write_cfg(tmp_path, root, tmp_path / "faces"))
    with pytest.raises(DataValidationError, match="nope"):
        run_align(cfg)
    assert run_main(main, ["--config", str(tmp_path / "align.yaml")]) == 2
    assert not (tmp_path / "faces").exists()


def test_settings_change_redoes_and_force_redoes(small: tuple[Config, list, Path]) -> None:
    cfg, keys, out = small
    assert run_align(cfg).processed == len(keys)
    again = run_align(cfg)
    assert (again.processed, again.reused) == (0, len(keys))  # resumed: nothing to do
    cfg.align.size = 48
    changed = run_align(cfg)
    assert changed.processed == len(keys)
    assert all(Image.open(p).size == (48, 48) for p in manifest(out)["path"])
    assert set(manifest(out)["settings_hash"]) == {settings_hash(cfg)}
    cfg.align.workers = 1  # runtime-only: the same settings
    assert run_align(cfg).processed == 0
    assert run_align(cfg, force=True).processed == len(keys)


def test_changed_or_deleted_files_are_redone(small: tuple[Config, list, Path]) -> None:
    cfg, keys, out = small
    run_align(cfg)
    src = Path(cfg.data.root) / "test_images" / "te001.jpg"
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(src)  # a new source image
    (out / "train" / "tr002.jpg").unlink()  # a lost output
    summary = run_align(cfg)
    assert summary.processed == 2
    row = manifest(out).set_index("Id").loc["te001"]
    assert row["src_width"] == 40 and row["box"] == "0 0 40 40"


def test_shards_merge_into_one_manifest(tmp_path: Path) -> None:
    keys = make_layout(tmp_path / "data", n_train=5, n_test=4)
    out = tmp_path / "faces"
    cfg = load_config(write_cfg(tmp_path, tmp_path / "data", out))
    first = run_align(cfg, shard=Shard(0, 2))
    assert first.manifest is None and first.pending == len(keys) // 2
    assert not (out / "faces.csv").exists()
    with pytest.raises(PipelineError, match="not aligned"):
        run_align(cfg, merge_only=True)
    second = run_align(cfg, shard=parse_shard("1/2"))
    assert second.manifest == out / "faces.csv" and second.processed == len(keys) - first.processed
    faces = manifest(out)
    assert sorted(zip(faces["split"], faces["Id"])) == sorted(keys)
    (out / "faces.csv").unlink()
    assert run_align(cfg, merge_only=True).manifest == out / "faces.csv"
    assert manifest(out).equals(faces)
    assert len(list((out / ".journal").glob("*.jsonl"))) == 2
    assert run_align(cfg).processed == 0  # an unsharded rerun reuses both shards' work
    with pytest.raises(ConfigError):
        parse_shard("2/2")


def test_split_selection_writes_complete_splits_only(small: tuple[Config, list, Path]) -> None:
    cfg, keys, out = small
    run_align(cfg, splits="test")
    assert set(manifest(out)["split"]) == {"test"}
    run_align(cfg, splits="train")
    assert sorted(zip(manifest(out)["split"], manifest(out)["Id"])) == sorted(keys)


def test_journal_ignores_and_cuts_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "out" / ".journal" / "j.jsonl"
    path.parent.mkdir(parents=True)
    path.write_bytes(b'{"Id": "a", "t": 1}\n{"Id": "b", "t"')
    assert [e["Id"] for e in read_journals(tmp_path / "out")] == ["a"]
    with Journal(path) as journal:
        journal.append({"Id": "c", "t": 2})
        with pytest.raises(PipelineError, match="in use"):
            Journal(path)  # a second writer of the same shard
    assert [e["Id"] for e in read_journals(tmp_path / "out")] == ["a", "c"]


def small_face_frame(index: int = 0) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """A 1280 x 960 frame with a synthetic portrait pasted at 160 px: the face is ~6% of the width."""
    portrait, _ = render_image(0, index, False, 256)
    frame = np.full((960, 1280, 3), 120, np.uint8)
    frame[500:660, 700:860] = cv2.resize(portrait, (160, 160), interpolation=cv2.INTER_AREA)
    return frame, (700, 500, 860, 660)


def test_closer_look_finds_a_small_face_the_fast_look_misses() -> None:
    cfg = AlignConfig()
    detector = FaceDetector.for_config(cfg, "cpu")
    frame, (x0, y0, x1, y1) = small_face_frame()
    copy, scale = detection_copy(frame, cfg.detect_max_side)
    found = detector.detect([copy], [scale])
    assert best_prob(found[0]) < cfg.min_prob  # too small for the first look's pyramid
    off = AlignConfig(retry_max_side=0)
    assert look_closer(detector, [frame], [list(found[0])], off) == 0
    assert look_closer(detector, [frame], found, cfg) == 1
    face = max(found[0], key=lambda f: f.prob)
    assert face.prob >= cfg.min_prob
    cx, cy = (face.box[0] + face.box[2]) / 2, (face.box[1] + face.box[3]) / 2
    assert x0 < cx < x1 and y0 < cy < y1  # in source pixels, inside the pasted portrait


def test_a_face_box_does_not_depend_on_its_batch_neighbours() -> None:
    """A photo judged alone (safe_inference.py --input) must get the box it got in a stage-1 batch.
    MTCNN pads a batch to its largest image and takes one minimum face size for all of it: an image
    batched with a smaller or larger one would otherwise be searched on another pyramid."""
    cfg = AlignConfig()
    detector = FaceDetector.for_config(cfg, "cpu")
    portrait = detection_copy(render_image(0, 2, False, 256)[0], cfg.detect_max_side)[0]  # 160 x 160
    wide = cv2.resize(render_image(0, 5, True, 256)[0], (160, 96), interpolation=cv2.INTER_AREA)  # 96 x 160
    tall = cv2.resize(render_image(0, 7, False, 256)[0], (120, 160), interpolation=cv2.INTER_AREA)  # 160 x 120
    alone = detector.detect([portrait])[0]
    assert alone and best_prob(alone) >= cfg.min_prob
    for batch in ([wide, portrait], [portrait, tall, wide], [tall, portrait]):
        batched = detector.detect(batch)[next(i for i, b in enumerate(batch) if b is portrait)]
        assert len(batched) == len(alone)
        for a, b in zip(alone, batched):
            assert np.array_equal(a.box, b.box) and a.prob == b.prob
    assert detector.retry_below == cfg.min_prob  # the stage's second-chance setting, wherever it is built


@pytest.mark.parametrize("workers", [0, 1])
def test_align_crops_a_small_face_in_a_large_frame(tmp_path: Path, workers: int) -> None:
    """Through run_align (main-process detection, and detection inside a CPU worker)."""
    root, out = tmp_path / "data", tmp_path / "faces"
    make_layout(root, n_train=2, n_test=1)
    frame, (x0, y0, x1, y1) = small_face_frame(1)
    Image.fromarray(frame).save(root / "train_images" / "tr000.jpg", quality=95)
    run_align(load_config(write_cfg(tmp_path, root, out, f"align: {{workers: {workers}, min_face_frac: 0.25}}")))
    row = manifest(out).set_index("Id").loc["tr000"]
    assert row["status"] == "face", row.to_dict()
    bx0, by0, bx1, by1 = map(float, row["face_box"].split())
    assert x0 < (bx0 + bx1) / 2 < x1 and y0 < (by0 + by1) / 2 < y1


def processes_tagged(tag: str) -> list[int]:
    """PIDs whose environment holds ``DFP_TEST_TAG=<tag>`` (children inherit it)."""
    pids = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if f"DFP_TEST_TAG={tag}".encode() in environ.read_bytes().split(b"\0"):
                pids.append(int(environ.parent.name))
        except OSError:
            continue
    return pids


@pytest.mark.parametrize("workers", [0, 1])
def test_resume_after_sigkill(tmp_path: Path, workers: int) -> None:
    """Kill the CLI mid-run; the rerun finishes, keeps what was done, and leaves only whole JPEGs.
    With a worker, nothing of the killed run lives on (its forkserver and worker used to, 1 GB each)."""
    root, out = tmp_path / "data", tmp_path / "faces"
    keys = make_layout(root, n_train=24, n_test=16, size=(256, 256), seed=1)
    # Slow on purpose: noise at 256 px with 12 px minimum faces, batches of 2.
    slow = f"align: {{min_face_frac: 0.04, detect_max_side: 256, batch_size: 2, workers: {workers}}}"
    cfg_path = write_cfg(tmp_path, root, out, slow)
    cmd = [PYTHON, "align_faces.py", "--config", str(cfg_path)]
    journal = out / ".journal" / "train-test-0-of-1.jsonl"
    tag = f"{os.getpid()}-{tmp_path.name}"
    env = {**cli_env(), "DFP_TEST_TAG": tag}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and proc.poll() is None:
        if journal.is_file() and journal.read_bytes().count(b"\n") >= 4:
            break
        time.sleep(0.005)
    assert proc.poll() is None, "finished before it could be killed:\n" + proc.stdout.read().decode()
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stdout.close()
    deadline = time.monotonic() + 20
    while processes_tagged(tag) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = processes_tagged(tag)
    for pid in left:  # do not leave them to the next test
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    assert not left, f"processes of the killed run still alive: {left}"
    done_before = {(e["split"], e["Id"]): e for e in read_journals(out)}
    assert 4 <= len(done_before) < len(keys)
    mtimes = {k: (out / e["path"]).stat().st_mtime_ns for k, e in done_before.items()}
    assert not (out / "faces.csv").exists()

    rerun = subprocess.run(cmd, cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"{len(done_before)} already done" in rerun.stdout
    faces = manifest(out)
    assert sorted(zip(faces["split"], faces["Id"])) == sorted(keys)
    assert all(decodes_fully(Path(p)) for p in faces["path"])
    assert not list(out.rglob("*.tmp"))  # leftovers of the kill were removed
    lines = [json.loads(x) for x in journal.read_text().splitlines()]
    counts = pd.Series([(e["split"], e["Id"]) for e in lines]).value_counts()
    assert (counts == 1).all() and len(counts) == len(keys)  # nothing done twice
    for key, mtime in mtimes.items():
        assert (out / done_before[key]["path"]).stat().st_mtime_ns == mtime  # not rewritten


# The shipped detection defaults (write_cfg's base overrides min_face_frac), as benchmarked.
TUNED = {"detect_max_side": 160, "min_face_frac": 0.25, "batch_size": 32}


def test_detection_rate_on_real_faces(tmp_path: Path) -> None:
    """>= 95% of 50 rfff portraits get a face, with the tuned detection settings."""
    rfff = shared_dataset("rfff")
    root = tmp_path / "data"
    labels = pd.read_csv(rfff / "train_solution.csv", dtype={"Id": str}).sort_values("Id").head(50)
    for folder in ("train_images", "test_images"):
        (root / folder).mkdir(parents=True)
    for ident in labels["Id"]:
        (root / "train_images" / f"{ident}.jpg").symlink_to(rfff / "train_images" / f"{ident}.jpg")
    test_id = sorted(p.name for p in (rfff / "test_images").iterdir())[0]
    (root / "test_images" / test_id).symlink_to(rfff / "test_images" / test_id)
    labels.to_csv(root / "train_solution.csv", index=False)
    cfg = load_config(write_cfg(tmp_path, root, tmp_path / "faces", OmegaConf.to_yaml({"align": TUNED})))
    run_align(cfg)
    faces = manifest(tmp_path / "faces")
    train = faces[faces["split"] == "train"]
    assert len(train) == 50
    rate = (train["status"] == "face").mean()
    assert rate >= 0.95, f"detection rate {rate:.2%}"
    hit = train[train["status"] == "face"].iloc[0]
    assert len(hit["landmarks"].split()) == 10 and len(hit["box"].split()) == 4
    assert float(hit["prob"]) >= cfg.align.min_prob and int(hit["n_faces"]) >= 1
