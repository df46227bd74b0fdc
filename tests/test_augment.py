"""Augmentations: shapes, dtypes, ranges, identity at p=0, seeded determinism, TTA views."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from deepfake_pipeline.augment import (
    TTA_VIEWS,
    apply_tta,
    build_train_augment,
    parse_tta,
    random_crop,
    resize_batch,
)
from deepfake_pipeline.config import AugConfig
from deepfake_pipeline.errors import ConfigError

OPS = ("hflip", "affine", "color_jitter", "blur", "cutout")  # device ops; JPEG is re-encoded in the loader


def _off() -> AugConfig:
    return AugConfig(hflip=0.0, affine=0.0, color_jitter=0.0, blur=0.0, jpeg=0.0, cutout=0.0)


def _batch(b: int = 4, size: int = 48, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, size, size, generator=g)


def _smooth(b: int = 2, size: int = 64) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    low = torch.rand(b, 3, 8, 8, generator=g)
    return F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("prob", [0.0, 1.0])
def test_each_op_keeps_shape_dtype_range(op: str, prob: float) -> None:
    cfg = _off()
    setattr(cfg, op, prob)
    aug = build_train_augment(cfg)
    assert len(aug.names) == (1 if prob else 0)
    x = _batch()
    torch.manual_seed(0)
    y = aug(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    if prob == 0.0:
        assert torch.equal(y, x)
    elif op != "affine":  # affine with p=1 could draw ~identity params; the others always change pixels
        assert not torch.equal(y, x)
    assert torch.equal(x, _batch()), "input modified in place"


def test_all_zero_is_identity_and_draws_no_rng() -> None:
    aug = build_train_augment(_off())
    x = _batch()
    state = torch.get_rng_state()
    assert torch.equal(aug(x), x)
    assert torch.equal(torch.get_rng_state(), state)


def test_full_chain_under_bf16_autocast_and_bf16_input() -> None:
    cfg = AugConfig(hflip=1.0, affine=1.0, color_jitter=1.0, blur=1.0, jpeg=1.0, cutout=1.0)
    aug = build_train_augment(cfg)
    assert aug.names == [
        "RandomHorizontalFlip",
        "RandomAffine",
        "ColorJitter",
        "RandomGaussianBlur",
        "RandomErasing",
    ]
    x = _batch()
    torch.manual_seed(3)
    ref = aug(x)
    torch.manual_seed(3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = aug(x)
    assert y.dtype == torch.float32
    assert torch.equal(y, ref), "autocast must not change the (float32) result"
    torch.manual_seed(3)
    yb = aug(x.bfloat16())
    assert yb.dtype == torch.bfloat16 and yb.shape == x.shape
    assert float(yb.min()) >= 0.0 and float(yb.max()) <= 1.0


def test_seeded_determinism_and_rng_state_resume() -> None:
    aug = build_train_augment(
        AugConfig(hflip=0.5, affine=0.5, color_jitter=0.5, blur=0.5, jpeg=0.5, cutout=0.5)
    )
    x = _batch(b=8)
    torch.manual_seed(123)
    a1, a2 = aug(x), aug(x)
    torch.manual_seed(123)
    b1 = aug(x)
    state = torch.get_rng_state()  # what a checkpoint stores
    b2 = aug(x)
    torch.set_rng_state(state)
    b2_again = aug(x)
    assert torch.equal(a1, b1) and torch.equal(a2, b2) and torch.equal(b2, b2_again)
    assert not torch.equal(a1, a2)
    torch.manual_seed(124)
    assert not torch.equal(aug(x), a1)


def test_bad_config_is_reported() -> None:
    with pytest.raises(ConfigError, match="jpeg_quality"):
        build_train_augment(AugConfig(jpeg_quality=[50, 120]))
    with pytest.raises(ConfigError, match=r"aug\.blur"):
        build_train_augment(AugConfig(blur=1.5))


def test_resize_batch() -> None:
    x = _batch(b=2, size=40)
    assert resize_batch(x, 40) is x
    down = resize_batch(x, 16)
    up = resize_batch(x, 64)
    assert down.shape == (2, 3, 16, 16) and up.shape == (2, 3, 64, 64)
    assert down.dtype == up.dtype == torch.float32
    # Antialiasing when shrinking: matches interpolate(antialias=True), not the aliased version.
    ref = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False, antialias=True)
    assert torch.allclose(down, ref)
    rect = torch.rand(1, 3, 30, 50)
    assert resize_batch(rect, 32).shape == (1, 3, 32, 32)
    assert resize_batch(x.bfloat16(), 16).dtype == torch.bfloat16


@pytest.mark.parametrize("name", [*TTA_VIEWS, "rot+10", "rot-2.5", "rot+90"])
def test_tta_views_keep_shape_and_are_deterministic(name: str) -> None:
    x = _batch(b=2, size=32)
    y1, y2 = apply_tta(x, name), apply_tta(x, name)
    assert y1.shape == x.shape and y1.dtype == x.dtype and torch.equal(y1, y2)
    rect = torch.rand(2, 3, 24, 40)
    assert apply_tta(rect, name).shape == rect.shape
    assert apply_tta(x.bfloat16(), name).dtype == torch.bfloat16


def test_tta_flips_and_rotation_inverse() -> None:
    x = _smooth()
    assert torch.equal(apply_tta(x, "identity"), x)
    assert torch.equal(apply_tta(apply_tta(x, "hflip"), "hflip"), x)
    assert torch.equal(apply_tta(apply_tta(x, "vflip"), "vflip"), x)
    assert torch.equal(apply_tta(x, "hflip"), x.flip(-1))
    rot = apply_tta(x, "rot+5")
    assert (rot - x).abs().mean() > 1e-3  # it did rotate
    back = apply_tta(rot, "rot-5")
    c = slice(16, 48)  # centre region: no padding effects there
    assert (back - x)[..., c, c].abs().max() < 0.03
    # 90 degrees on a square image is an exact pixel permutation (counter-clockwise as displayed).
    sq = _batch(b=1, size=17)
    assert torch.allclose(apply_tta(sq, "rot+90"), torch.rot90(sq, 1, dims=(-2, -1)), atol=1e-5)


def test_parse_tta() -> None:
    views = parse_tta(["identity", "hflip", "rot+5", "rot-5", "vflip", "rot+7.5"])
    assert [v.name for v in views] == ["identity", "hflip", "rot+5", "rot-5", "vflip", "rot+7.5"]
    x = _batch(b=1, size=16)
    assert all(v(x).shape == x.shape for v in views)
    assert [v.name for v in parse_tta("hflip")] == ["hflip"]
    for bad in (["identity", "flip"], ["rot5"], ["rot+"], ["rot+x"], []):
        with pytest.raises(ValueError):
            parse_tta(bad)


def test_random_crop_cuts_windows_on_the_grid_without_resampling() -> None:
    x = torch.arange(2 * 3 * 40 * 40, dtype=torch.float32).view(2, 3, 40, 40)
    torch.manual_seed(0)
    seen = set()
    for _ in range(20):
        out = random_crop(x, 16, grid=8)
        assert out.shape == (2, 3, 16, 16)
        for i in range(2):
            top, left = divmod(int(out[i, 0, 0, 0].item() - x[i, 0, 0, 0].item()), 40)
            assert top % 8 == 0 and left % 8 == 0
            assert torch.equal(out[i], x[i, :, top:top + 16, left:left + 16])
            seen.add((top, left))
    assert len(seen) > 4  # random offsets, not one fixed window
    assert random_crop(x, 40) is x
    with pytest.raises(ConfigError, match="larger"):
        random_crop(x, 48)
    torch.manual_seed(5)
    a = random_crop(x, 16)
    torch.manual_seed(5)
    assert torch.equal(a, random_crop(x, 16))  # the step seed decides the windows


def test_input_fit_resizes_or_cuts_the_centre_window() -> None:
    from deepfake_pipeline.augment import InputFit, centre_crop

    x = torch.rand(2, 3, 48, 48)
    crop = InputFit(32, "crop", grid=8)
    assert torch.equal(crop.eval(x), x[..., 8:40, 8:40])  # (48 - 32) / 2 = 8, on the grid
    assert torch.equal(centre_crop(x, 32, grid=16), x[..., 0:32, 0:32])  # 8 rounded down to the 16 grid
    torch.manual_seed(0)
    train = crop.train(x)
    assert train.shape == (2, 3, 32, 32)
    resize = InputFit(32, "resize")
    assert torch.allclose(resize.eval(x), resize_batch(x, 32)) and torch.allclose(resize.train(x), resize_batch(x, 32))
    seen = []

    def record(images: torch.Tensor, y: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        seen.append(images.shape)
        return images, y

    out, _ = crop.then(record)(x, torch.zeros(2), torch.arange(2))
    assert seen == [(2, 3, 32, 32)] and out.shape == (2, 3, 32, 32)  # the augmentations see the fitted input


def test_loader_jpeg_is_the_real_codec_and_depends_on_epoch_and_index_only(tmp_path) -> None:  # noqa: ANN001
    import numpy as np
    from torchvision.io import decode_jpeg, encode_jpeg

    from deepfake_pipeline.augment import train_jpeg
    from deepfake_pipeline.dataset import FaceDataset
    from deepfake_pipeline.images import save_jpeg

    rng = np.random.default_rng(0)
    paths = []
    for i in range(6):
        save_jpeg(tmp_path / f"{i}.jpg", rng.integers(0, 256, (48, 48, 3), dtype=np.uint8), 95)
        paths.append(str(tmp_path / f"{i}.jpg"))
    assert train_jpeg(_off(), 0) is None
    jpeg = train_jpeg(AugConfig(jpeg=0.5, jpeg_quality=[30, 60]), seed=7)
    data = FaceDataset(paths, jpeg=jpeg)
    plain = FaceDataset(paths)
    hits = 0
    for i in range(6):
        a, b = data[(i, 0)][0], data[(i, 0)][0]
        assert torch.equal(a, b)  # the same (index, epoch): the same result in any worker, after a resume
        assert torch.equal(data[i][0], plain[i][0])  # integer keys (validation, prediction): never re-encoded
        if not torch.equal(a, plain[i][0]):
            hits += 1
            # libjpeg itself at one of the qualities in range gives exactly this image
            assert any(torch.equal(a, decode_jpeg(encode_jpeg(plain[i][0], quality=q))) for q in range(30, 61))
    assert 0 < hits < 6
    differs = sum(not torch.equal(data[(i, 0)][0], data[(i, 1)][0]) for i in range(6))
    assert differs > 0  # another epoch, other draws


def test_spectrogram_augmentations_act_on_their_axes_and_channels() -> None:
    from deepfake_pipeline.augment import SpectrogramLayout

    layout = SpectrogramLayout(power=(0, 1), delta=(2,), db_low=-100.0, db_high=0.0)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 32, 48, generator=g) * 0.5 + 0.25
    off = dict(hflip=0.0, affine=0.0, color_jitter=0.0, blur=0.0, jpeg=0.0, cutout=0.0)

    def run(**kw: float) -> torch.Tensor:
        torch.manual_seed(1)
        return build_train_augment(AugConfig(**off, **kw), layout)(x)

    freq = run(freq_mask=1.0, freq_mask_frac=0.5)
    changed_rows = (freq != x).any(dim=(0, 1, 3))
    assert changed_rows.any() and not (freq != x).all(dim=2).any()  # whole rows (frequencies), not columns
    time = run(time_mask=1.0, time_mask_frac=0.5)
    assert (time != x).any() and not (time != x).all(dim=3).any()  # whole columns
    gain = run(gain_db=10.0)
    shift = (gain - x)[:, :2].flatten(1)
    assert torch.allclose(shift.max(1).values, shift.min(1).values, atol=1e-6)  # one dB shift per window
    assert shift.abs().max() <= 0.1 + 1e-6 and torch.equal(gain[:, 2], x[:, 2])  # <= 10 dB; delta untouched
    noisy = run(noise=1.0, noise_db=[-40.0, -40.0])
    assert (noisy[:, :2] >= x[:, :2] - 1e-6).all() and torch.equal(noisy[:, 2], x[:, 2])  # power only adds
    low = run(lowpass=1.0, lowpass_keep=[0.5, 0.5])
    assert torch.equal(low[:, :2, :16], torch.zeros_like(low[:, :2, :16]))  # the top half (high band) floored
    assert torch.allclose(low[:, 2, :16], torch.full_like(low[:, 2, :16], 0.5))  # its deltas zero
    assert torch.equal(low[:, :, 16:], x[:, :, 16:])
    rolled = run(time_shift=0.25)
    assert sorted(rolled.flatten().tolist()) == pytest.approx(sorted(x.flatten().tolist()))  # a permutation
    # A phase channel (audio.channels linear, phase, delta): level-free, and below the floor pi/2 (0.5).
    layout = SpectrogramLayout(power=(0,), delta=(2,), db_low=-100.0, db_high=0.0, phase=(1,))
    assert torch.equal(run(gain_db=10.0, noise=1.0)[:, 1], x[:, 1])
    low = run(lowpass=1.0, lowpass_keep=[0.5, 0.5])
    assert torch.equal(low[:, 0, :16], torch.zeros_like(low[:, 0, :16]))
    assert torch.allclose(low[:, 1:, :16], torch.full_like(low[:, 1:, :16], 0.5))
    with pytest.raises(ConfigError, match="speech windows only"):
        build_train_augment(AugConfig(time_mask=0.5))  # no layout: an image run
