"""SimMIM: masks, masked loss, remasking, encoder transfer, and that a few steps learn."""

from __future__ import annotations

import pytest
import torch

from deepfake_pipeline.config import ModelConfig, SSLConfig
from deepfake_pipeline.errors import CheckpointError, ConfigError
from deepfake_pipeline.features import ForensicInput
from deepfake_pipeline.model import build_classifier, load_backbone_state, param_groups
from deepfake_pipeline.simmim import SimMIM, build_simmim, generate_masks, masked_l1, upsample_mask


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny tensors: OpenMP threads cost more than they give, and stall badly on a busy 2-core CPU
    # (a SimMIM step went from 1.7 s to 0.03 s). Restored afterwards for other test modules.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(**overrides) -> ModelConfig:
    base = dict(backbone="convnextv2_atto", img_size=64, drop_path=0.0, head_dropout=0.0)
    return ModelConfig(**{**base, **overrides})


@pytest.mark.parametrize("grid,ratio", [((4, 4), 0.6), ((2, 2), 0.6), ((3, 5), 0.5), ((16, 16), 0.75)])
def test_mask_ratio_is_exact(grid: tuple[int, int], ratio: float) -> None:
    masks = generate_masks(8, *grid, ratio, torch.Generator().manual_seed(0))
    assert masks.shape == (8, *grid) and masks.dtype == torch.bool
    assert (masks.flatten(1).sum(1) == round(ratio * grid[0] * grid[1])).all()


def test_masks_are_deterministic_with_a_seeded_generator() -> None:
    a = generate_masks(4, 8, 8, 0.6, torch.Generator().manual_seed(7))
    b = generate_masks(4, 8, 8, 0.6, torch.Generator().manual_seed(7))
    c = generate_masks(4, 8, 8, 0.6, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a[0], a[1])  # a fresh permutation per sample
    with pytest.raises(ValueError):
        generate_masks(1, 2, 2, 1.0)
    with pytest.raises(ValueError):
        generate_masks(1, 2, 2, 0.1)  # rounds to no masked cell


def test_mask_upsampling_is_aligned_to_the_patches() -> None:
    mask = generate_masks(2, 4, 4, 0.5, torch.Generator().manual_seed(0))
    pix = upsample_mask(mask, 128, 128)
    assert pix.shape == (2, 1, 128, 128)
    patches = pix.view(2, 4, 32, 4, 32)
    assert (patches.amax(dim=(2, 4)) == patches.amin(dim=(2, 4))).all()  # constant on each 32x32 patch
    assert torch.equal(patches[:, :, 0, :, 0], mask.float())
    with pytest.raises(ValueError):
        upsample_mask(mask, 102, 128)


def test_masked_l1_only_counts_masked_pixels() -> None:
    g = torch.Generator().manual_seed(0)
    pred, target = torch.rand(2, 9, 64, 64, generator=g), torch.rand(2, 9, 64, 64, generator=g)
    pix = upsample_mask(generate_masks(2, 2, 2, 0.5, g), 64, 64)
    loss = masked_l1(pred, target, pix)
    changed = target + (1 - pix) * 5.0  # differs on visible pixels only
    assert torch.equal(masked_l1(pred, changed, pix), loss)
    expected = (pred - target).abs()[pix.expand_as(pred).bool()].mean()
    assert torch.allclose(loss, expected)
    assert torch.allclose(masked_l1(pred, target, pix[:, 0]), loss)  # (B, H, W) mask works too
    assert masked_l1(pred, pred + 1, torch.zeros_like(pix)) == 0  # nothing masked: no loss, no NaN


def test_forward_shapes_and_loss() -> None:
    model = SimMIM(tiny(), mask_patch=32)
    x = torch.rand(2, 3, 64, 64)
    mask = generate_masks(2, *model.mask_grid(64, 64), 0.5, torch.Generator().manual_seed(0))
    loss, rec = model(x, mask)
    # targets: the rgb and srm groups (6 channels); the fft group is input only
    assert rec.shape == (2, 6, 64, 64) and loss.ndim == 0 and torch.isfinite(loss)
    target = ForensicInput(["rgb", "srm"])(x)
    assert torch.allclose(loss, masked_l1(rec, target, upsample_mask(mask, 64, 64)))
    assert model.mask_token.shape == (1, 40, 1, 1)
    with pytest.raises(ValueError):
        model(torch.rand(2, 3, 80, 64), mask)


def test_hidden_pixels_cannot_reach_the_encoder() -> None:
    """Whatever the masked pixels hold, the encoder's input and the reconstruction are the same; only
    the target changes. Fails when any input channel is computed from the unmasked image (the FFT
    log-amplitude of the whole image reveals the masked cells through its point symmetry)."""
    torch.manual_seed(0)
    model = SimMIM(tiny(img_size=128), mask_patch=32).eval()
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, 3, 128, 128, generator=g)
    mask = generate_masks(2, 4, 4, 0.5, g)
    pix = upsample_mask(mask, 128, 128)
    other = x * (1 - pix) + torch.rand(2, 3, 128, 128, generator=g) * pix  # new content under the mask
    with torch.no_grad():
        loss_a, rec_a = model(x, mask)
        loss_b, rec_b = model(other, mask)
    assert torch.equal(rec_a, rec_b)
    assert not torch.equal(loss_a, loss_b)  # the targets did change
    # and the visible pixels do reach it
    with torch.no_grad():
        _, rec_c = model(x * pix + torch.rand(2, 3, 128, 128, generator=g) * (1 - pix), mask)
    assert not torch.allclose(rec_a, rec_c)


def test_fft_only_input_has_nothing_to_reconstruct() -> None:
    with pytest.raises(ConfigError, match="fft only"):
        SimMIM(tiny(channels=["fft"]))


def test_bad_mask_patch_or_image_size_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="mask_patch"):
        SimMIM(tiny(), mask_patch=16)
    with pytest.raises(ConfigError, match="img_size"):
        SimMIM(tiny(img_size=96), mask_patch=64)


def _stage_inputs(model: SimMIM, x: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []
    hooks = [
        stage.blocks.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
        for stage in model.backbone.stages
    ]
    with torch.no_grad():
        model(x, mask)
    for h in hooks:
        h.remove()
    return seen


@pytest.mark.parametrize("remask", [True, False])
def test_remask_empties_masked_positions_at_each_stage_input(remask: bool) -> None:
    torch.manual_seed(0)
    model = SimMIM(tiny(img_size=128), mask_patch=32, remask=remask).eval()
    x = torch.rand(2, 3, 128, 128)
    mask = generate_masks(2, 4, 4, 0.5, torch.Generator().manual_seed(1))
    inputs = _stage_inputs(model, x, mask)
    # stage 0 input: the stem output with the mask token in every masked position
    m0 = upsample_mask(mask, *inputs[0].shape[-2:]).bool().expand_as(inputs[0])
    token = model.mask_token.expand_as(inputs[0])
    assert torch.equal(inputs[0][m0], token[m0])
    for z in inputs[1:]:
        m = upsample_mask(mask, *z.shape[-2:]).bool().expand_as(z)
        assert (z[m] == 0).all() == remask
        assert (z[~m] != 0).any()


def test_encoder_transfers_strictly_into_the_classifier() -> None:
    cfg = tiny()
    ssl = build_simmim(cfg, SSLConfig(mask_patch=32, remask=True))
    clf = build_classifier(cfg)
    state = ssl.encoder_state_dict()
    assert set(state) == set(clf.backbone.state_dict())
    report = load_backbone_state(clf, state)
    assert report.loaded == len(state)
    assert torch.equal(clf.backbone.stem[0].weight, ssl.backbone.stem[0].weight)
    other = build_classifier(tiny(depths=[1, 1, 2, 1]))
    with pytest.raises(CheckpointError, match=r"unexpected .*stages\.0\.blocks\.1\."):
        load_backbone_state(other, state)


def test_mask_token_gets_no_weight_decay_and_head_norm_is_frozen() -> None:
    model = SimMIM(tiny())
    names = {id(p): n for n, p in model.named_parameters()}
    groups = param_groups(model, weight_decay=0.05, layer_decay=0.9)
    no_decay = {names[id(p)] for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    decay = {names[id(p)] for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    assert "mask_token" in no_decay and "decoder.0.bias" in no_decay
    assert "decoder.0.weight" in decay
    # the unused pooled-feature norm is frozen (DDP would fail on parameters without gradients)
    assert "backbone.head.norm.weight" not in no_decay | decay
    scale = {names[id(p)]: g["lr_scale"] for g in groups for p in g["params"]}
    assert scale["mask_token"] == scale["backbone.stem.0.weight"] < scale["decoder.0.weight"] == 1.0


def test_a_few_steps_reduce_the_loss() -> None:
    torch.manual_seed(0)
    model = SimMIM(tiny(depths=[1, 1, 1, 1]), mask_patch=32, remask=True)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 64, 64, generator=g)
    mask = generate_masks(2, 2, 2, 0.5, g)
    opt = torch.optim.AdamW(param_groups(model, weight_decay=0.05), lr=3e-3)
    losses = []
    for _ in range(5):
        loss, _ = model(x, mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert model.mask_token.grad is not None and model.mask_token.grad.abs().sum() > 0
    assert losses[-1] < 0.9 * losses[0], losses
