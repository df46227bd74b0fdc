"""timm backbone (ConvNeXt V2, or EfficientNet-Lite) behind the forensic input stem, the binary
classifier, and helpers to move the SSL encoder into the classifier and to build AdamW parameter groups.

Backbone state dicts are the timm model's own keys (``stem.0.weight``, ``stages.1.blocks.0...``,
``head.norm.weight``), identical in :class:`DeepfakeClassifier` and :class:`~.simmim.SimMIM`, so an
SSL encoder saved with :func:`backbone_state_dict` loads 1:1 into the classifier.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
from torch import Tensor, nn

from . import weights
from .config import ModelConfig
from .errors import CheckpointError, ConfigError
from .features import ForensicInput

log = logging.getLogger(__name__)

_SHOWN = 5  # keys named per category in error messages


FAMILIES = ("convnext", "efficientnet_lite")  # timm architecture prefixes the pipeline supports


def family(name: str) -> str:
    """``convnext`` or ``efficientnet_lite``: the backbone family of a timm model name."""
    arch = name.split(".", 1)[0]
    for prefix in FAMILIES:
        if arch.startswith(prefix) and timm.is_model(name):
            return prefix
    known = ", ".join(timm.list_models("convnext*") + timm.list_models("efficientnet_lite*"))
    raise ConfigError(f"model.backbone: {name!r} is not a supported timm ConvNeXt or EfficientNet-Lite model ({known})")


def _check_backbone_name(name: str) -> None:
    family(name)


def default_depths(name: str) -> list[int]:
    """Blocks per stage of a timm ConvNeXt variant, read from a meta-device instance (no memory)."""
    if family(name) != "convnext":
        raise ConfigError(f"model.depths: only ConvNeXt depths can be set, not {name}'s")
    with torch.device("meta"):
        ref = timm.create_model(name, pretrained=False, num_classes=0)
    return [len(stage.blocks) for stage in ref.stages]


def build_backbone(cfg: ModelConfig, in_chans: int, pretrained_file: str | Path | None = None) -> nn.Module:
    """timm backbone with ``num_classes=0`` (forward gives pooled features).

    ``cfg.depths`` is passed through timm to the ConvNeXt constructor. With ``cfg.pretrained``:
    ``cfg.weights`` (an installed package or a file, :mod:`.weights`) when set, else timm's own RGB
    weights (the Hugging Face hub, or ``pretrained_file`` on offline machines). Either way the stem
    is widened to ``in_chans`` with zeros for the added channels: the pretrained function at step 0.
    """
    _check_backbone_name(cfg.backbone)
    if pretrained_file is None:
        pretrained_file = cfg.pretrained_file
    kwargs: dict[str, Any] = {}
    if cfg.depths:
        depths = [int(d) for d in cfg.depths]
        if len(depths) != 4 or min(depths) < 1:
            raise ConfigError(f"model.depths: need 4 stages with at least 1 block each, got {cfg.depths}")
        if cfg.pretrained and depths != default_depths(cfg.backbone):
            # timm loads pretrained weights non-strictly when num_classes differs from the checkpoint,
            # so a depth override would silently keep some blocks and randomly init others.
            raise ConfigError(
                f"model.depths={depths} differs from {cfg.backbone}'s pretrained depths "
                f"{default_depths(cfg.backbone)}: pretrained weights cannot be loaded into it; "
                "set model.pretrained=false or drop model.depths"
            )
        kwargs["depths"] = tuple(depths)
    if cfg.pretrained and cfg.weights:
        if pretrained_file is not None:
            raise ConfigError("model.weights and model.pretrained_file both name pretrained weights: keep one")
        backbone = timm.create_model(cfg.backbone, pretrained=False, in_chans=in_chans, num_classes=0,
                                     drop_path_rate=cfg.drop_path, **kwargs)
        loaded = weights.load_into(backbone, cfg.weights, cfg.channels, cfg.backbone.split(".", 1)[0])
        log.info("backbone %s: %d pretrained tensors from %s", cfg.backbone, loaded, cfg.weights)
        return backbone
    if pretrained_file is not None:
        if not cfg.pretrained:
            raise ConfigError("a pretrained weights file was given but model.pretrained is false")
        if not Path(pretrained_file).is_file():
            raise CheckpointError(f"pretrained weights file not found: {pretrained_file}")
        kwargs["pretrained_cfg_overlay"] = {"file": str(pretrained_file)}
    create = dict(in_chans=in_chans, num_classes=0, drop_path_rate=cfg.drop_path, **kwargs)
    backbone = timm.create_model(cfg.backbone, pretrained=False, **create)
    if not cfg.pretrained:
        return backbone
    try:  # timm's RGB weights (hub or file); the stem is widened here, not by timm (see weights.widen_stem)
        rgb = timm.create_model(cfg.backbone, pretrained=True, **{**create, "in_chans": 3})
    except Exception as exc:  # network, cache and state-dict errors all mean "no pretrained weights"
        raise CheckpointError(
            f"could not load pretrained weights for {cfg.backbone}: {type(exc).__name__}: {exc} "
            "(no internet? give a local weights file or set model.pretrained=false)"
        ) from exc
    state = rgb.state_dict()
    stem_key = f"{backbone.pretrained_cfg['first_conv']}.weight"
    state[stem_key] = weights.widen_stem(state[stem_key], cfg.channels)
    backbone.load_state_dict(state, strict=True)
    return backbone


def forensic_input(cfg: ModelConfig) -> ForensicInput:
    """The forensic channels, with the RGB normalisation of ``cfg.weights`` (ImageNet's without)."""
    mean, std = weights.input_norm(cfg.weights)
    return ForensicInput(cfg.channels, mean=mean, std=std)


class DeepfakeClassifier(nn.Module):
    """forensic channels -> backbone pooled features -> dropout -> linear: one logit per image.

    ``cfg.pool`` global: timm's own head (ConvNeXt: mean over the feature map, LayerNorm). time
    (ConvNeXt only): the mean over columns only, the same LayerNorm per row, rows concatenated: the
    linear head has one weight set per band of ``img_size / 32`` input rows (a spectrogram's
    frequency bands).

    ``freeze_bn``: BatchNorm layers stay in eval mode in training (their running statistics keep the
    pretrained values; their affine weights still learn): small CPU batches give noisy statistics.
    :meth:`freeze_stages` fixes the stem and the first stages outright (see there).
    """

    def __init__(self, cfg: ModelConfig, pretrained_file: str | Path | None = None) -> None:
        super().__init__()
        self.forensic = forensic_input(cfg)
        self.backbone = build_backbone(cfg, self.forensic.out_channels, pretrained_file)
        self.pool = cfg.pool
        self.rows = 1
        self.freeze_bn = False
        if cfg.pool == "time" and family(cfg.backbone) != "convnext":
            raise ConfigError(f"model.pool time: needs a ConvNeXt backbone, not {cfg.backbone}")
        if cfg.pool == "time":
            reduction = int(self.backbone.feature_info[-1]["reduction"])
            if cfg.img_size % reduction:
                raise ConfigError(f"model.pool time: model.img_size {cfg.img_size} is not a multiple of {reduction}")
            self.rows = cfg.img_size // reduction
        elif cfg.pool != "global":
            raise ConfigError(f"model.pool: {cfg.pool!r} is not one of global, time")
        self.num_features: int = self.backbone.num_features * self.rows
        self.head = nn.Sequential(nn.Dropout(cfg.head_dropout), nn.Linear(self.num_features, 1))
        self.frozen: list[nn.Module] = []

    def freeze_stages(self, n: int) -> None:
        """The stem and the first ``n`` stages become a fixed feature extractor: no gradients (so the
        backward pass stops above them, the cheap part of a CPU step at a large input) and eval mode
        in training too (BatchNorm statistics, dropout and drop-path as at inference)."""
        prefix = frozen_prefix(self.backbone, n)
        for module in prefix:
            module.requires_grad_(False)
        self.frozen = prefix
        self.train(self.training)

    def train(self, mode: bool = True) -> DeepfakeClassifier:
        super().train(mode)
        if mode and self.freeze_bn:
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        if mode:
            for module in self.frozen:
                module.eval()
        return self

    def forward_features(self, x: Tensor) -> Tensor:
        """Pooled backbone features (B, num_features) of an RGB batch in [0, 1]."""
        x = self.forensic(x)
        if self.pool == "global":
            return self.backbone(x)
        fmap = self.backbone.forward_features(x)  # (B, C, rows, cols)
        if fmap.shape[2] != self.rows:
            raise ValueError(f"model.pool time: the head was built for {self.rows} feature rows "
                             f"(model.img_size), the input gives {fmap.shape[2]}")
        # timm's head norm is a LayerNorm over channels: applied to each row's column mean.
        return self.backbone.head.norm(fmap.mean(dim=3, keepdim=True)).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        """Logits, shape (B,), of a float RGB batch in [0, 1] (B, 3, H, W); 1 = fake."""
        return self.head(self.forward_features(x)).squeeze(1)


def frozen_prefix(backbone: nn.Module, n: int) -> list[nn.Module]:
    """The stem's modules and the first ``n`` stages of a timm ConvNeXt (``stem``, ``stages``) or
    EfficientNet (``conv_stem``, ``bn1``, ``blocks``), in forward order; none for ``n`` 0."""
    if hasattr(backbone, "stages"):
        stem, stages = [backbone.stem], backbone.stages
    elif hasattr(backbone, "blocks") and hasattr(backbone, "conv_stem"):
        stem, stages = [backbone.conv_stem, backbone.bn1], backbone.blocks
    else:
        raise ConfigError(f"finetune.freeze_stages: {type(backbone).__name__} has no known stem and stages")
    if not 0 <= n <= len(stages):
        raise ConfigError(f"finetune.freeze_stages: {n} is not in 0..{len(stages)} (the backbone's stages)")
    return [*stem, *list(stages)[:n]] if n else []


def build_classifier(cfg: ModelConfig, pretrained_file: str | Path | None = None) -> DeepfakeClassifier:
    return DeepfakeClassifier(cfg, pretrained_file)


def _backbone_of(model: nn.Module) -> nn.Module:
    backbone = getattr(model, "backbone", model)
    if not isinstance(backbone, nn.Module):
        raise TypeError(f"{type(model).__name__} has no backbone module")
    return backbone


def backbone_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The timm backbone's state dict, detached and contiguous (safetensors refuses channels_last)."""
    return {k: v.detach().contiguous() for k, v in _backbone_of(model).state_dict().items()}


@dataclass
class LoadReport:
    loaded: int
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)  # "key: saved shape vs model shape"

    def __str__(self) -> str:
        return (
            f"backbone: {self.loaded} tensors loaded, {len(self.missing)} missing, "
            f"{len(self.unexpected)} unexpected, {len(self.mismatched)} shape-mismatched"
        )


def _first(keys: list[str]) -> str:
    more = f", ... (+{len(keys) - _SHOWN})" if len(keys) > _SHOWN else ""
    return ", ".join(keys[:_SHOWN]) + more


def load_backbone_state(model: nn.Module, state: Mapping[str, Tensor], strict: bool = True) -> LoadReport:
    """Load a backbone state dict (e.g. the SSL encoder) into ``model.backbone`` (or ``model``).

    strict: any missing, unexpected or shape-mismatched key raises :class:`CheckpointError` naming the
    first few of each. Not strict: loads the keys whose shapes match and reports the rest.
    """
    backbone = _backbone_of(model)
    state = dict(state)
    own = backbone.state_dict()
    # A whole-model state dict (classifier or SimMIM) works too: keep its backbone part.
    if state and not (state.keys() & own.keys()) and any(k.startswith("backbone.") for k in state):
        state = {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")}
    missing = sorted(own.keys() - state.keys())
    unexpected = sorted(state.keys() - own.keys())
    mismatched = sorted(
        f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own.keys() & state.keys()
        if state[k].shape != own[k].shape
    )
    if strict and (missing or unexpected or mismatched):
        parts = [
            f"{label} ({len(keys)}): {_first(keys)}"
            for label, keys in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("shape mismatch", mismatched),
            )
            if keys
        ]
        raise CheckpointError("backbone state does not match the model: " + "; ".join(parts))
    bad = {m.split(":", 1)[0] for m in mismatched}
    usable = {k: v for k, v in state.items() if k in own and k not in bad}
    backbone.load_state_dict(usable, strict=strict)
    return LoadReport(loaded=len(usable), missing=missing, unexpected=unexpected, mismatched=mismatched)


# ---------------------------------------------------------------------------------------------
# Optimizer parameter groups

_NO_DECAY_NAMES = ("gamma", "beta", "mask_token")


def is_no_decay(name: str, param: Tensor) -> bool:
    """Norm weights/biases, biases, GRN weight/bias (timm: ``mlp.grn.weight``/``mlp.grn.bias``, 1-D),
    ConvNeXt V1 layer scale ``gamma``, and the SimMIM mask token take no weight decay."""
    leaf = name.rsplit(".", 1)[-1]
    return param.ndim <= 1 or leaf == "bias" or ".grn." in f".{name}" or leaf in _NO_DECAY_NAMES


def _layer_ids(model: nn.Module) -> tuple[dict[str, int], int]:
    """Layer index per parameter for layer-wise LR decay on a ConvNeXt: stem (and the mask token) 0,
    then every block in order (a stage's downsample goes with its first block), then the head."""
    backbone = getattr(model, "backbone", None)
    if backbone is None or not hasattr(backbone, "stages"):
        raise ConfigError("optim.layer_decay: layer-wise LR decay needs a ConvNeXt backbone "
                          "(EfficientNet-Lite: use optim.backbone_lr_scale)")
    offsets, total = [], 0
    for stage in backbone.stages:
        offsets.append(total)
        total += len(stage.blocks)
    last = total + 1
    ids = {}
    for name, _ in model.named_parameters():
        if not name.startswith("backbone."):
            layer = 0 if name.split(".")[0] in ("mask_token", "forensic") else last  # head / decoder
        else:
            rest = name[len("backbone.") :]
            block = re.match(r"stages\.(\d+)\.blocks\.(\d+)\.", rest)
            down = re.match(r"stages\.(\d+)\.downsample\.", rest)
            if rest.startswith("stem."):
                layer = 0
            elif block:
                layer = offsets[int(block[1])] + int(block[2]) + 1
            elif down:
                layer = offsets[int(down[1])] + 1
            else:  # norm_pre, head.norm
                layer = last
        ids[name] = layer
    return ids, last


def param_groups(
    model: nn.Module,
    weight_decay: float,
    layer_decay: float | None = None,
    base_lr: float | None = None,
    backbone_lr_scale: float = 1.0,
) -> list[dict[str, Any]]:
    """AdamW parameter groups: decay / no-decay, optionally split per layer with an ``lr_scale``.

    Every group has ``lr_scale`` for the scheduler to multiply its LR by: 1.0, times
    ``layer_decay ** (last - layer)`` with layer decay, times ``backbone_lr_scale`` for the backbone's
    parameters (a pretrained backbone learns slower than the new head); and ``group_name``. ``lr`` is
    set when ``base_lr`` is. Frozen parameters (requires_grad False) are left out.
    """
    if layer_decay is not None and not 0.0 < layer_decay <= 1.0:
        raise ConfigError(f"optim.layer_decay: must be in (0, 1], got {layer_decay}")
    if not 0.0 < backbone_lr_scale <= 1.0:
        raise ConfigError(f"optim.backbone_lr_scale: must be in (0, 1], got {backbone_lr_scale}")
    ids, last = _layer_ids(model) if layer_decay is not None else ({}, 0)
    groups: dict[tuple[int, bool, bool], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = is_no_decay(name, param)
        layer = ids.get(name, 0)
        in_backbone = backbone_lr_scale != 1.0 and name.startswith("backbone.")
        key = (layer, no_decay, in_backbone)
        if key not in groups:
            scale = layer_decay ** (last - layer) if layer_decay is not None else 1.0
            scale *= backbone_lr_scale if in_backbone else 1.0
            groups[key] = {
                "params": [],
                "weight_decay": 0.0 if no_decay else weight_decay,
                "lr_scale": scale,
                "group_name": ("no_decay" if no_decay else "decay")
                + (f"_layer{layer}" if layer_decay is not None else "") + ("_backbone" if in_backbone else ""),
            }
            if base_lr is not None:
                groups[key]["lr"] = base_lr * scale
        groups[key]["params"].append(param)
    return [groups[k] for k in sorted(groups)]
