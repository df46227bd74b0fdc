"""Backbone construction, classifier forward, backbone state transfer, optimizer groups."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

from deepfake_pipeline.config import ModelConfig
from deepfake_pipeline.errors import CheckpointError, ConfigError
from deepfake_pipeline.model import (
    backbone_state_dict,
    build_backbone,
    build_classifier,
    default_depths,
    is_no_decay,
    load_backbone_state,
    param_groups,
)


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


def test_classifier_forward_shape_and_channels() -> None:
    model = build_classifier(tiny()).eval()
    assert model.backbone.stem[0].in_channels == 9
    with torch.no_grad():
        out = model(torch.rand(3, 3, 64, 64))
    assert out.shape == (3,)
    with torch.no_grad():
        assert model(torch.rand(1, 3, 96, 64)).shape == (1,)  # any size, batch of one stays 1-D


def test_classifier_rgb_only_and_backward() -> None:
    model = build_classifier(tiny(channels=["rgb"], head_dropout=0.2))
    assert model.backbone.stem[0].in_channels == 3
    loss = model(torch.rand(2, 3, 64, 64)).sum()
    loss.backward()
    assert model.backbone.stem[0].weight.grad is not None


def test_depth_override_changes_the_blocks() -> None:
    default = build_backbone(tiny(), 9)
    assert [len(s.blocks) for s in default.stages] == [2, 2, 6, 2] == default_depths("convnextv2_atto")
    small = build_backbone(tiny(depths=[1, 1, 2, 1]), 9)
    assert [len(s.blocks) for s in small.stages] == [1, 1, 2, 1]
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in default.parameters())


@pytest.mark.parametrize("name", ["resnet50", "convnext_does_not_exist", "vit_small_patch16_224"])
def test_unsupported_backbone_is_a_config_error(name: str) -> None:
    with pytest.raises(ConfigError, match="model.backbone"):
        build_backbone(tiny(backbone=name), 3)


def test_bad_depths_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="model.depths"):
        build_backbone(tiny(depths=[1, 1, 1]), 3)
    # timm would load such weights non-strictly (silently partial): refused up front
    with pytest.raises(ConfigError, match="pretrained"):
        build_backbone(tiny(depths=[1, 1, 2, 1], pretrained=True), 3)


def test_pretrained_from_a_local_file_adapts_the_stem(tmp_path: Path) -> None:
    src = timm.create_model("convnextv2_atto")
    path = tmp_path / "atto.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    backbone = build_backbone(tiny(pretrained=True), 9, pretrained_file=path)
    # The RGB filters as trained, zeros for the fft and srm channels (timm's own adaptation would
    # spread them over all 9 channels at 3/9 and change the pretrained function).
    assert torch.equal(backbone.stem[0].weight[:, :3], src.stem[0].weight)
    assert not backbone.stem[0].weight[:, 3:].any()
    assert torch.equal(backbone.stages[2].blocks[5].mlp.grn.weight, src.stages[2].blocks[5].mlp.grn.weight)
    with pytest.raises(CheckpointError, match="not found"):
        build_backbone(tiny(pretrained=True), 9, pretrained_file=tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="pretrained weights"):
        build_backbone(tiny(pretrained=True), 9, pretrained_file=bad)


def test_backbone_state_transfers_and_round_trips_safetensors(tmp_path: Path) -> None:
    a, b = build_classifier(tiny()), build_classifier(tiny())
    state = backbone_state_dict(a)
    assert set(state) == set(a.backbone.state_dict())
    save_file(state, str(tmp_path / "enc.safetensors"))
    report = load_backbone_state(b, load_file(str(tmp_path / "enc.safetensors")))
    assert report.loaded == len(state) and not (report.missing or report.unexpected or report.mismatched)
    for k, v in b.backbone.state_dict().items():
        assert torch.equal(v, state[k]), k
    # a whole-classifier state dict is accepted too (its backbone part)
    assert load_backbone_state(b, a.state_dict()).loaded == len(state)


def test_channels_last_backbone_state_is_saveable(tmp_path: Path) -> None:
    model = build_classifier(tiny()).to(memory_format=torch.channels_last)
    save_file(backbone_state_dict(model), str(tmp_path / "enc.safetensors"))  # needs contiguous tensors


def test_mismatched_backbone_raises_naming_keys() -> None:
    small = build_classifier(tiny(depths=[1, 1, 2, 1]))
    full = build_classifier(tiny())
    with pytest.raises(CheckpointError, match=r"missing \(\d+\): stages\.0\.blocks\.1\."):
        load_backbone_state(full, backbone_state_dict(small))
    with pytest.raises(CheckpointError, match=r"unexpected \(\d+\): stages\.0\.blocks\.1\."):
        load_backbone_state(small, backbone_state_dict(full))
    rgb_only = build_classifier(tiny(channels=["rgb"]))
    with pytest.raises(CheckpointError, match=r"shape mismatch \(1\): stem\.0\.weight: \(40, 3, 4, 4\)"):
        load_backbone_state(full, backbone_state_dict(rgb_only))
    # non-strict: loads what fits and reports the rest
    report = load_backbone_state(full, backbone_state_dict(rgb_only), strict=False)
    assert report.mismatched and report.loaded == len(backbone_state_dict(full)) - 1
    assert torch.equal(full.backbone.stem[0].bias, rgb_only.backbone.stem[0].bias)


def _names_by_group(model: torch.nn.Module, groups: list[dict]) -> dict[str, set[str]]:
    names = {id(p): n for n, p in model.named_parameters()}
    out: dict[str, set[str]] = {}
    for g in groups:
        out.setdefault("no_decay" if g["weight_decay"] == 0 else "decay", set()).update(
            names[id(p)] for p in g["params"]
        )
    return out


def test_no_weight_decay_on_norms_biases_and_grn() -> None:
    model = build_classifier(tiny())
    groups = param_groups(model, weight_decay=0.05)
    assert {g["group_name"] for g in groups} == {"decay", "no_decay"}
    assert all(g["lr_scale"] == 1.0 for g in groups)
    by = _names_by_group(model, groups)
    assert by["decay"] | by["no_decay"] == {n for n, _ in model.named_parameters()}
    assert "backbone.stages.0.blocks.0.mlp.grn.weight" in by["no_decay"]
    assert "backbone.stages.0.blocks.0.mlp.grn.bias" in by["no_decay"]
    assert "backbone.stages.1.downsample.0.weight" in by["no_decay"]  # LayerNorm2d
    assert "backbone.stages.0.blocks.0.norm.weight" in by["no_decay"]
    assert "backbone.head.norm.weight" in by["no_decay"] and "head.1.bias" in by["no_decay"]
    assert by["decay"] == {n for n, p in model.named_parameters() if n.endswith("weight") and p.ndim > 1}
    assert "head.1.weight" in by["decay"] and "backbone.stem.0.weight" in by["decay"]
    # ConvNeXt V1 layer scale `gamma` (and any 2-D GRN layout) is exempt by name as well
    assert is_no_decay("backbone.stages.0.blocks.0.gamma", torch.zeros(4))
    assert is_no_decay("stages.0.blocks.0.mlp.grn.weight", torch.zeros(1, 1, 1, 4))
    opt = torch.optim.AdamW(groups, lr=1e-3)  # extra keys (lr_scale, group_name) are accepted
    assert len(opt.param_groups) == 2


def test_layer_decay_scales() -> None:
    model = build_classifier(tiny(depths=[1, 1, 2, 1]))
    groups = param_groups(model, weight_decay=0.05, layer_decay=0.5, base_lr=1.0)
    names = {id(p): n for n, p in model.named_parameters()}
    scale = {names[id(p)]: g["lr_scale"] for g in groups for p in g["params"]}
    assert all(g["lr"] == g["lr_scale"] for g in groups)
    # 5 blocks: stem = layer 0 (0.5**6), blocks 1..5, head = layer 6 (scale 1)
    assert scale["backbone.stem.0.weight"] == 0.5**6
    assert scale["backbone.stages.0.blocks.0.conv_dw.weight"] == 0.5**5
    assert (
        scale["backbone.stages.1.downsample.1.weight"] == scale["backbone.stages.1.blocks.0.mlp.fc1.weight"]
    )
    assert scale["backbone.stages.2.blocks.1.mlp.fc2.weight"] == 0.5**2
    assert scale["backbone.stages.3.blocks.0.mlp.fc2.weight"] == 0.5
    assert scale["backbone.head.norm.weight"] == 1.0 and scale["head.1.weight"] == 1.0
    assert set(scale) == {n for n, _ in model.named_parameters()}
    with pytest.raises(ConfigError):
        param_groups(model, 0.05, layer_decay=1.5)


def test_time_pool_keeps_one_feature_set_per_row_band() -> None:
    # pool=time: the column mean of the stride-32 map, LayerNormed per row, rows side by side, so the
    # head weighs each frequency band separately. Fails if rows are averaged away, mixed up, or the
    # norm is skipped; the global pool of the same backbone is the mean of the un-normed rows.
    model = build_classifier(tiny(img_size=128, pool="time")).eval()
    c = model.backbone.num_features
    assert model.rows == 4 and model.num_features == 4 * c and model.head[1].in_features == 4 * c
    x = torch.rand(2, 3, 128, 128)
    with torch.no_grad():
        fmap = model.backbone.forward_features(model.forensic(x))
        feats = model.forward_features(x).view(2, c, 4)
        norm = model.backbone.head.norm
        for r in range(4):
            expected = norm(fmap[:, :, r:r + 1].mean(dim=3, keepdim=True)).flatten(1)
            torch.testing.assert_close(feats[:, :, r], expected)
        torch.testing.assert_close(model.backbone(model.forensic(x)),
                                   norm(fmap.mean(dim=(2, 3), keepdim=True)).flatten(1))
        # a band's content reaches its own row's features: the top rows of the input drive row 0
        y = x.clone()
        y[:, :, :32] = 0.0
        moved = (model.forward_features(y).view(2, c, 4) - feats).abs().mean(dim=(0, 1))
        assert moved[0] > moved[3]
    with pytest.raises(ValueError, match="feature rows"):
        model(torch.rand(1, 3, 96, 128))


def test_time_pool_takes_the_ssl_backbone_and_checks_its_size() -> None:
    ssl = build_classifier(tiny(img_size=128))
    model = build_classifier(tiny(img_size=128, pool="time"))
    assert load_backbone_state(model, backbone_state_dict(ssl)).loaded == len(backbone_state_dict(ssl))
    with pytest.raises(ConfigError, match="multiple of 32"):
        build_classifier(tiny(img_size=112, pool="time"))
    with pytest.raises(ConfigError, match="model.pool"):
        build_classifier(tiny(pool="rows"))
