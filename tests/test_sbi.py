"""Self-Blended Images: landmarks in crop coordinates, the batch op (share, targets, masks, determinism),
and a fine-tuning run with it switched on."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from deepfake_pipeline.align import run_align
from deepfake_pipeline.config import load_config
from deepfake_pipeline.sbi import (
    BLEND_RATIOS,
    SelfBlend,
    crop_landmarks,
    draw_batch,
    face_masks,
    landmarks_table,
    with_self_blend,
)

from .helpers import run_cli, tiny_config

# Eyes, nose, mouth corners of a frontal face, as a share of the crop side.
FACE = torch.tensor([[0.36, 0.40], [0.64, 0.40], [0.50, 0.55], [0.39, 0.70], [0.61, 0.70]])


def landmarks(n: int, missing: int = 0) -> torch.Tensor:
    lm = FACE.expand(n, 5, 2).clone()
    if missing:
        lm[-missing:] = float("nan")
    return lm


def batch(n: int = 40, size: int = 48) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(n, 3, size, size, generator=gen)
    y = (torch.arange(n) % 2).float()  # half real (0), half fake (1)
    return x, y, torch.arange(n)


def test_crop_landmarks_to_aligned_pixels() -> None:
    text = "110 130 150 130 130 150 115 170 145 170"
    got = crop_landmarks(text, "100 120 200 220", size=128)
    src = np.array([float(v) for v in text.split()]).reshape(5, 2)
    expected = (src - [100, 120]) / 100 * 128
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    np.testing.assert_allclose(crop_landmarks(text, "100 120 200 220"), expected / 128, rtol=1e-6)
    for lm, box in (("", "0 0 10 10"), ("1 2 3", "0 0 10 10"), (text, ""), (text, "5 5 5 5"), (None, None)):
        assert np.isnan(crop_landmarks(lm, box)).all()


def test_landmarks_table_follows_rows_and_splits() -> None:
    lm = "20 30 40 30 30 40 22 50 38 50"
    faces = pd.DataFrame({
        "Id": ["a", "b", "a", "c"], "split": ["train", "train", "test", "train"],
        "status": ["face", "fallback", "face", "face"],
        "box": ["0 0 100 100", "0 0 50 50", "0 0 200 200", "10 10 110 110"], "landmarks": [lm, "", lm, lm],
    })
    rows = pd.DataFrame({"Id": ["c", "a", "b", "a"], "is_pseudo": [0, 0, 0, 1]})
    table = landmarks_table(faces, rows)
    assert table.shape == (4, 5, 2)
    assert torch.allclose(table[0], torch.from_numpy(crop_landmarks(lm, "10 10 110 110")))
    assert torch.allclose(table[1], torch.from_numpy(crop_landmarks(lm, "0 0 100 100")))
    assert torch.isnan(table[2]).all()  # fallback row: no landmarks
    assert torch.allclose(table[3], torch.from_numpy(crop_landmarks(lm, "0 0 200 200")))  # pseudo row: test image
    assert torch.isnan(landmarks_table(faces.drop(columns=["landmarks"]), rows)).all()


def test_masks_are_soft_inside_the_image_and_follow_the_face() -> None:
    torch.manual_seed(0)
    r = draw_batch(4)
    r["ratio"] = torch.ones(4)
    lm = landmarks(4, missing=2)
    masks = face_masks(lm, r, 64, 64)
    assert masks.shape == (4, 1, 64, 64)
    assert masks.min() >= 0 and masks.max() <= 1
    border = torch.cat([masks[..., 0, :], masks[..., -1, :], masks[..., :, 0], masks[..., :, -1]], dim=-1)
    assert border.max() == 0, "the mask stays inside the image"
    assert (masks[..., 32, 32] == 1).all(), "the face centre is fully blended"
    soft = ((masks > 0.02) & (masks < 0.98)).flatten(1).sum(1)
    assert (soft > 20).all(), "a soft band, not a hard edge"
    # Landmarks moved left move the mask left; the fallback (no landmarks) stays near the centre.
    shifted = lm.clone()
    shifted[:2, :, 0] -= 0.15
    moved = face_masks(shifted, r, 64, 64)
    cols = torch.arange(64.0)

    def centroid(m: torch.Tensor) -> torch.Tensor:
        return (m.sum(dim=(1, 2)) * cols).sum(-1) / m.sum(dim=(1, 2, 3))

    assert (centroid(moved[:2]) < centroid(masks[:2]) - 5).all()
    assert torch.allclose(centroid(moved[2:]), centroid(masks[2:]))
    assert (centroid(masks[2:]) - 32).abs().max() < 4


def test_blend_ratios_scale_the_mask() -> None:
    torch.manual_seed(1)
    r = draw_batch(64)
    masks = face_masks(landmarks(64), r, 32, 32)
    assert torch.allclose(masks.flatten(1).amax(1), r["ratio"])
    assert set(r["ratio"].tolist()) <= set(BLEND_RATIOS)


def test_share_respected_and_only_reals_turned() -> None:
    x, y, index = batch(40)
    sbi = SelfBlend(landmarks(40, missing=10), 0.5)
    torch.manual_seed(0)
    out, target = sbi(x, y, index)
    assert out.shape == x.shape and out.dtype == x.dtype and target.shape == y.shape
    turned = (target == 1) & (y == 0)
    assert int(turned.sum()) == 10  # half of the 20 real images
    assert torch.equal(target[y == 1], y[y == 1]) and torch.equal(out[y == 1], x[y == 1])
    kept = (y == 0) & ~turned
    assert torch.equal(out[kept], x[kept]) and (target[kept] == 0).all()
    assert (out[turned] != x[turned]).flatten(1).any(1).all()
    assert out.min() >= 0 and out.max() <= 1


def test_count_rounds_stochastically() -> None:
    x, _, index = batch(30)
    y = (torch.arange(30) >= 15).float()  # 15 real
    sbi = SelfBlend(landmarks(30), 0.5)
    counts = []
    for seed in range(40):
        torch.manual_seed(seed)
        counts.append(int(sbi(x, y, index)[1].sum()) - 15)
    assert set(counts) == {7, 8}
    assert abs(np.mean(counts) - 7.5) < 0.3


def test_share_zero_one_and_no_reals() -> None:
    x, y, index = batch(12)
    out, target = SelfBlend(landmarks(12), 0.0)(x, y, index)
    assert out is x and target is y
    torch.manual_seed(0)
    out, target = SelfBlend(landmarks(12), 1.0)(x, y, index)
    assert (target == 1).all() and (out[y == 0] != x[y == 0]).flatten(1).any(1).all()
    fakes = torch.ones(12)
    out, target = SelfBlend(landmarks(12), 1.0)(x, fakes, index)
    assert torch.equal(out, x) and torch.equal(target, fakes)
    with pytest.raises(ValueError, match="sbi"):
        SelfBlend(landmarks(2), 1.5)


def test_deterministic_under_a_fixed_seed() -> None:
    x, y, index = batch(16)
    sbi = SelfBlend(landmarks(16, missing=4), 0.6)
    torch.manual_seed(5)
    a = sbi(x, y, index)
    torch.manual_seed(5)
    b = sbi(x, y, index)
    torch.manual_seed(6)
    c = sbi(x, y, index)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_a_step_copies_its_inputs_once_and_inverts_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a GPU every host-to-device copy of a small tensor and every tensor made from Python data is a
    sync. A step moves its random numbers in one packed copy and the batch indices in another; the
    landmark table and the colour matrices are on the device already, made once."""
    x, y, index = batch(16)
    sbi = SelfBlend(landmarks(16, missing=4), 0.5)
    torch.manual_seed(0)
    sbi(x, y, index)  # first call: the tables reach the device
    moves = []
    original_to = torch.Tensor.to

    def counting_to(self: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        caller = sys._getframe(1).f_code.co_filename  # the moves SBI's own code makes (not kornia's)
        if caller.endswith("sbi.py") and (any(isinstance(a, (torch.device, str)) for a in args) or "device" in kwargs):
            moves.append(tuple(self.shape))
        return original_to(self, *args, **kwargs)

    def no_inverse(*args: object, **kwargs: object) -> torch.Tensor:
        raise AssertionError("a constant matrix inverted in the step")

    monkeypatch.setattr(torch.Tensor, "to", counting_to)
    monkeypatch.setattr(torch.linalg, "inv", no_inverse)
    monkeypatch.setattr(torch, "tensor", lambda *a, **k: (_ for _ in ()).throw(AssertionError("torch.tensor")))
    torch.manual_seed(1)
    out, target = sbi(x, y, index)
    assert len(moves) == 2 and moves[0] == (16, 31), moves  # the packed draws, then the turned faces' indices
    assert (target != y).any()  # it did turn some faces


def test_cpu_subset_equals_the_whole_batch_op() -> None:
    """On the CPU only the turned images are blended; the result is the whole-batch (device) op's."""
    x, y, index = batch(20)
    sbi = SelfBlend(landmarks(20, missing=5), 0.7)
    torch.manual_seed(9)
    out, target = sbi(x, y, index)
    torch.manual_seed(9)
    r = draw_batch(20)
    turn = sbi.select(y, r)
    full, _ = sbi.blend(x, index, r)
    assert torch.equal(target == 1, (y == 1) | turn)
    assert torch.allclose(out[turn], full[turn], atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu() -> None:
    x, y, index = batch(20)
    sbi = SelfBlend(landmarks(20, missing=5), 0.5)
    torch.manual_seed(2)
    cpu = sbi(x, y, index)
    torch.manual_seed(2)
    gpu = sbi(x.cuda(), y.cuda(), index)
    assert torch.equal(cpu[1], gpu[1].cpu())
    assert torch.allclose(cpu[0], gpu[0].cpu(), atol=1e-4)


def test_with_self_blend_runs_before_the_augmentation() -> None:
    seen: list[torch.Tensor] = []

    def augment(x: torch.Tensor, y: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        seen.append(y)
        return x.flip(-1), y

    rows = pd.DataFrame({"Id": [str(i) for i in range(8)], "is_pseudo": 0})
    faces = pd.DataFrame(columns=["Id", "split", "status", "box", "landmarks"])
    assert with_self_blend(augment, 0.0, faces, rows) is augment
    prepare = with_self_blend(augment, 1.0, faces, rows)
    x, y, index = batch(8)
    torch.manual_seed(0)
    out, target = prepare(x, y, index)
    assert (seen[-1] == 1).all() and (target == 1).all()  # the augmentation saw the pseudo-fakes' targets


def test_finetune_with_sbi_completes(tmp_path: Path, demo_root: Path) -> None:
    cfg = tiny_config(tmp_path, demo_root, "finetune: {init: scratch, epochs: 1, aug: {sbi: 0.5}}")
    run_align(load_config(cfg))  # whole images (align.enabled false): the centre-ellipse masks
    proc = run_cli(["train.py", "--config", str(cfg), "--stage", "finetune"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Self-Blended Images on 50% of the real faces" in proc.stderr
    run = tmp_path / "runs" / "t"
    assert (run / "oof.csv").is_file() and (run / "threshold.json").is_file()


def test_finetune_with_sbi_resumes_bitwise(tmp_path: Path, demo_root: Path) -> None:
    """SBI draws from the step-seeded global RNG: a killed and resumed fold ends with the same weights."""
    from safetensors.torch import load_file

    extra = "finetune: {init: scratch, epochs: 1, save_every: 1, run_folds: [0], aug: {sbi: 0.5}}"
    runs = {}
    for name in ("ref", "cut"):
        (tmp_path / name).mkdir()
        runs[name] = tiny_config(tmp_path / name, demo_root, extra)
        run_align(load_config(runs[name]))
    assert run_cli(["train.py", "--config", str(runs["ref"]), "--stage", "finetune"]).returncode == 0
    killed = run_cli(["train.py", "--config", str(runs["cut"]), "--stage", "finetune"], env={"DFP_FAILPOINT": "step:2"})
    assert killed.returncode != 0
    resumed = run_cli(["train.py", "--config", str(runs["cut"]), "--stage", "finetune"])
    assert resumed.returncode == 0 and "resumed from" in resumed.stderr, resumed.stderr[-2000:]
    ref = load_file(str(tmp_path / "ref/runs/t/fold0/best.safetensors"))
    cut = load_file(str(tmp_path / "cut/runs/t/fold0/best.safetensors"))
    assert ref.keys() == cut.keys() and all(torch.equal(ref[k], cut[k]) for k in ref)
