"""SimMIM masked image modelling for a timm ConvNeXt: a dense stand-in for ConvNeXt V2's FCMAE.

The encoder is the very backbone the classifier uses (same :func:`~.model.build_backbone`), so its
state dict transfers 1:1. Masks live on a grid of ``mask_patch`` pixels (a multiple of ConvNeXt's
output stride 32), so every masked cell covers whole pixels at every stage.

What the encoder sees and what it must rebuild: the masked cells of the RGB image are filled with
the mean colour of its visible pixels *before* the forensic channels are computed, so no channel
carries information about the hidden pixels (the FFT log-amplitude is global and point-symmetric:
computed from the whole image, its visible cells would give the masked ones away). The targets are
the spatial channels of the unmasked image, RGB and SRM residuals, on the masked pixels (L1); the
FFT channel, a spectrum rather than a picture, is input only.

With ``remask`` the features are multiplied by the keep-mask after every downsampling layer, as
the sparse convolutions of FCMAE would see them: masked regions start each stage empty and only
the stage's own blocks fill them from visible context, so the mask pattern does not wash out with
depth. Stage 0 has no downsampling; its input is the stem output with the mask token in place.
"""

from __future__ import annotations

from pathlib import Path

import torch
from timm.models import checkpoint_seq
from torch import Tensor, nn

from .config import ModelConfig, SSLConfig
from .errors import ConfigError
from .features import ForensicInput
from .model import backbone_state_dict, build_backbone, family, forensic_input


def generate_masks(
    batch: int,
    grid_h: int,
    grid_w: int,
    ratio: float,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Boolean masks (B, grid_h, grid_w), True = masked, exactly round(ratio * grid_h * grid_w)
    masked cells per sample (a random permutation each); deterministic for a seeded generator."""
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"mask ratio must be in (0, 1), got {ratio}")
    n = grid_h * grid_w
    n_mask = round(ratio * n)
    if n_mask < 1:
        raise ValueError(f"mask ratio {ratio} masks no cell of a {grid_h}x{grid_w} grid")
    gen_device = generator.device if generator is not None else "cpu"
    noise = torch.rand(batch, n, generator=generator, device=gen_device)
    ranks = noise.argsort(dim=1).argsort(dim=1)  # rank of each cell in a random permutation
    return (ranks < n_mask).view(batch, grid_h, grid_w).to(device or gen_device)


def upsample_mask(mask: Tensor, height: int, width: int) -> Tensor:
    """(B, gh, gw) mask -> float (B, 1, height, width) by exact nearest (integer) upsampling."""
    gh, gw = mask.shape[-2:]
    if height % gh or width % gw:
        raise ValueError(f"a {gh}x{gw} mask grid does not divide a {height}x{width} map")
    m = mask.float().unsqueeze(1)
    return m.repeat_interleave(height // gh, dim=2).repeat_interleave(width // gw, dim=3)


def masked_l1(pred: Tensor, target: Tensor, pixel_mask: Tensor) -> Tensor:
    """Mean |pred - target| over masked pixels x channels; pixel_mask (B, 1|, H, W), 1 = masked."""
    if pixel_mask.ndim == 3:
        pixel_mask = pixel_mask.unsqueeze(1)
    m = pixel_mask.to(torch.float32)
    err = (pred.float() - target.float()).abs() * m
    denom = m.sum() * (pred.shape[1] if m.shape[1] == 1 else 1)
    return err.sum() / denom.clamp_min(1.0)


def hide(x: Tensor, pixel_mask: Tensor) -> Tensor:
    """``x`` with its masked pixels (``pixel_mask`` 1) set to the mean colour of its visible pixels."""
    visible = 1.0 - pixel_mask
    mean = (x * visible).sum(dim=(-2, -1), keepdim=True) / visible.sum(dim=(-2, -1), keepdim=True).clamp_min(1.0)
    return x * visible + mean * pixel_mask


class SimMIM(nn.Module):
    """Masked reconstruction of the forensic input: stem -> mask token -> stages -> 1x1 conv decoder
    + PixelShuffle back to input resolution."""

    def __init__(
        self,
        cfg: ModelConfig,
        mask_patch: int = 32,
        remask: bool = True,
        pretrained_file: str | Path | None = None,
    ) -> None:
        super().__init__()
        if family(cfg.backbone) != "convnext":
            raise ConfigError(f"SimMIM (ssl.enabled, finetune.init ssl) needs a ConvNeXt backbone, not {cfg.backbone}: "
                              "set ssl.enabled=false and finetune.init=pretrained or scratch")
        self.forensic = forensic_input(cfg)
        self.in_chans = self.forensic.out_channels
        self.backbone = build_backbone(cfg, self.in_chans, pretrained_file)
        self.stride: int = self.backbone.feature_info[-1]["reduction"]
        if mask_patch <= 0 or mask_patch % self.stride:
            raise ConfigError(
                f"ssl.mask_patch={mask_patch} must be a positive multiple of the backbone's output "
                f"stride {self.stride}"
            )
        if cfg.img_size % mask_patch:
            raise ConfigError(
                f"model.img_size={cfg.img_size} must be a multiple of ssl.mask_patch={mask_patch}"
            )
        self.mask_patch = mask_patch
        self.remask = remask
        # The spatial channel groups are the reconstruction targets (see the module docstring).
        self.target_groups = [g for g in cfg.channels if g != "fft"]
        if not self.target_groups:
            raise ConfigError("SimMIM needs an rgb or srm channel group to reconstruct (model.channels is fft only)")
        self.targets = ForensicInput(self.target_groups)
        stem_chans = self.backbone.feature_info[0]["num_chs"]
        self.mask_token = nn.Parameter(torch.zeros(1, stem_chans, 1, 1))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.decoder = nn.Sequential(
            nn.Conv2d(self.backbone.num_features, self.stride**2 * self.targets.out_channels, kernel_size=1),
            nn.PixelShuffle(self.stride),
        )
        # The classifier's pooled-feature norm is not used here; freezing it keeps DDP from failing
        # on parameters without gradients. It still travels in the encoder state dict.
        for p in self.backbone.head.parameters():
            p.requires_grad_(False)

    def mask_grid(self, height: int, width: int) -> tuple[int, int]:
        """Mask grid (gh, gw) for an input of height x width pixels."""
        if height % self.mask_patch or width % self.mask_patch:
            raise ValueError(f"input {height}x{width} is not a multiple of mask_patch={self.mask_patch}")
        return height // self.mask_patch, width // self.mask_patch

    def forward(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """x: float RGB in [0, 1] (B, 3, H, W); mask: (B, H / mask_patch, W / mask_patch), 1 = masked.

        Returns (loss, reconstruction): a scalar L1 over masked pixels and the reconstructed target
        channels (B, 3 x len(target_groups), H, W).
        """
        grid = self.mask_grid(*x.shape[-2:])
        if tuple(mask.shape) != (x.shape[0], *grid):
            raise ValueError(f"mask shape {tuple(mask.shape)} does not match {(x.shape[0], *grid)}")
        mask = mask.to(x.device)
        pixel_mask = upsample_mask(mask, *x.shape[-2:]).to(x.dtype)
        with torch.no_grad():
            target = self.targets(x)
            inputs = self.forensic(hide(x, pixel_mask))
        z = self.backbone.stem(inputs)
        m = upsample_mask(mask, *z.shape[-2:]).to(z.dtype)
        z = z * (1.0 - m) + self.mask_token.to(z.dtype) * m
        for stage in self.backbone.stages:
            z = stage.downsample(z)
            if self.remask and not isinstance(stage.downsample, nn.Identity):
                z = z * (1.0 - upsample_mask(mask, *z.shape[-2:]).to(z.dtype))
            if stage.grad_checkpointing and self.training and not torch.jit.is_scripting():
                z = checkpoint_seq(stage.blocks, z)
            else:
                z = stage.blocks(z)
        z = self.backbone.norm_pre(z)
        rec = self.decoder(z)  # (B, in_chans, H, W): H, W are multiples of the stride
        loss = masked_l1(rec, target, pixel_mask)
        return loss, rec

    def encoder_state_dict(self) -> dict[str, Tensor]:
        """The backbone state dict (keys as in the classifier's ``backbone``), ready for safetensors."""
        return backbone_state_dict(self)


def build_simmim(cfg: ModelConfig, ssl: SSLConfig, pretrained_file: str | Path | None = None) -> SimMIM:
    return SimMIM(cfg, mask_patch=ssl.mask_patch, remask=ssl.remask, pretrained_file=pretrained_file)
