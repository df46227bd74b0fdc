"""Forensic input channels computed on the device: RGB, FFT log-amplitude, SRM noise residuals.

Input everywhere: a float RGB batch in [0, 1], shape (B, 3, H, W), any size, any device, any memory
format. Each group gives 3 channels; :class:`ForensicInput` stacks the groups in the order asked for.
The FFT and SRM groups are always computed in float32 (autocast is switched off locally): the FFT
log-amplitude and the small SRM residuals lose too much in bf16/fp16.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import ConfigError

GROUPS = ("rgb", "fft", "srm")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# SRM high-pass kernels of Zhou et al. (CVPR 2018, RGB-N), integer taps and their divisors.
_SRM_KERNELS = (
    (  # "KV" third-order 5x5 kernel, / 12
        (-1, 2, -2, 2, -1),
        (2, -6, 8, -6, 2),
        (-2, 8, -12, 8, -2),
        (2, -6, 8, -6, 2),
        (-1, 2, -2, 2, -1),
    ),
    (  # second-order 5x5 kernel, / 4
        (0, 0, 0, 0, 0),
        (0, -1, 2, -1, 0),
        (0, 2, -4, 2, 0),
        (0, -1, 2, -1, 0),
        (0, 0, 0, 0, 0),
    ),
    (  # first-order horizontal 3x3 kernel padded to 5x5, / 2
        (0, 0, 0, 0, 0),
        (0, 0, 0, 0, 0),
        (0, 1, -2, 1, 0),
        (0, 0, 0, 0, 0),
        (0, 0, 0, 0, 0),
    ),
)
_SRM_DIVISORS = (12.0, 4.0, 2.0)
# Residuals are taken on the 0-255 scale and summed over the 3 colour channels; dividing by this
# brings natural-image residuals to O(1) (std 0.7-1.1 on a 512x600 JPEG portrait), and clipping at
# +-_SRM_CLIP is the truncation of the rich models (Fridrich & Kodovsky 2012): strong edges (2-5% of
# pixels there) saturate instead of dominating the channel.
_SRM_SCALE = 16.0
_SRM_CLIP = 3.0
_EPS = 1e-6


def srm_weight() -> Tensor:
    """The fixed SRM conv weight, shape (3 out, 3 in, 5, 5): each filter summed over R, G and B."""
    kernels = torch.tensor(_SRM_KERNELS, dtype=torch.float64)
    divisors = torch.tensor(_SRM_DIVISORS, dtype=torch.float64).view(3, 1, 1)
    kernels = kernels / divisors / _SRM_SCALE
    return kernels.unsqueeze(1).expand(3, 3, 5, 5).contiguous().float()


def standardize(x: Tensor, eps: float = _EPS) -> Tensor:
    """Zero mean, unit std per image and channel over H, W (a flat map becomes all zeros)."""
    mean = x.mean(dim=(-2, -1), keepdim=True)
    std = x.std(dim=(-2, -1), keepdim=True, unbiased=False)
    return (x - mean) / (std + eps)


def fft_log_amplitude(x: Tensor) -> Tensor:
    """log(1 + |FFT2|) per channel, fftshift'ed so that DC sits at (H // 2, W // 2); float32."""
    spec = torch.fft.fft2(x.float(), dim=(-2, -1))
    return torch.fft.fftshift(torch.log1p(spec.abs()), dim=(-2, -1))


def srm_residuals(x: Tensor, weight: Tensor) -> Tensor:
    """SRM residuals of an RGB batch in [0, 1] with :func:`srm_weight`; float32, clipped to +-3.

    The kernels sum to zero, so subtracting any per-channel constant leaves the result unchanged
    in exact arithmetic; subtracting the top-left pixel makes a flat image exactly zero in floating
    point too (and keeps magnitudes small). Reflect padding keeps flat borders flat.
    """
    x = x.float()
    x = (x - x[..., :1, :1]) * 255.0
    pad = weight.shape[-1] // 2
    mode = "reflect" if min(x.shape[-2:]) > pad else "replicate"
    x = F.pad(x, (pad, pad, pad, pad), mode=mode)
    out = F.conv2d(x, weight.to(device=x.device, dtype=torch.float32))
    return out.clamp(-_SRM_CLIP, _SRM_CLIP)


class ForensicInput(nn.Module):
    """Stacks the requested 3-channel groups ("rgb", "fft", "srm") in the given order.

    ``mean``/``std`` normalise the rgb group (ImageNet's by default; pretrained weights bring their
    own, :func:`.weights.input_norm`). No learned parameters: the normalisation constants and SRM kernels are buffers, so the module
    follows ``.to(device)`` and is part of no optimizer group.
    """

    def __init__(
        self, channels: Sequence[str], mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
    ) -> None:
        super().__init__()
        channels = list(channels)
        if not channels:
            raise ConfigError("model.channels: at least one input group is needed")
        unknown = [c for c in channels if c not in GROUPS]
        if unknown:
            raise ConfigError(f"model.channels: unknown group(s) {unknown} (choose from {', '.join(GROUPS)})")
        if len(set(channels)) != len(channels):
            raise ConfigError(f"model.channels: duplicated group in {channels}")
        self.channels = channels
        self.out_channels = 3 * len(channels)
        self.register_buffer("mean", torch.tensor(tuple(mean)).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(tuple(std)).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("srm_weight", srm_weight(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"ForensicInput expects an RGB batch (B, 3, H, W), got {tuple(x.shape)}")
        channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        parts = []
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = x.float()
            for name in self.channels:
                if name == "rgb":
                    parts.append((x - self.mean.float()) / self.std.float())
                elif name == "fft":
                    parts.append(standardize(fft_log_amplitude(x)))
                else:
                    parts.append(srm_residuals(x, self.srm_weight))
        out = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        return out.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, out_channels={self.out_channels}"
