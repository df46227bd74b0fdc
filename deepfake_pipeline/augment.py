"""Device-side augmentations (kornia) for float RGB batches in [0, 1], plus resizing and TTA views.

Everything here takes and returns ``(B, 3, H, W)`` tensors on any device. Training augmentations
draw their random parameters from torch's global CPU generator (kornia samples parameters on the
CPU whatever the image device), so ``torch.get_rng_state()`` / ``torch.set_rng_state()`` in a
checkpoint is enough to replay them after a resume. They always run in float32 with autocast
switched off and hand back the input dtype, so calling them inside a bf16/fp16 autocast region is
safe (kornia's convolutions would otherwise run in bf16 under CPU autocast, and its JPEG codec
disables autocast by itself).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import kornia.augmentation as K
import torch
import torch.nn.functional as F
from kornia.geometry.transform import rotate
from torch import Tensor, nn

from .config import AudioConfig, AugConfig, Config, ModelConfig
from .dataset import JpegReencode
from .errors import ConfigError

# Not in AugConfig: the blur's kernel side and its sigma range (drawn per image).
BLUR_KERNEL = 5
BLUR_SIGMA = (0.1, 1.5)
# Smallest share of the image area cutout erases; the largest is ``aug.cutout_frac``.
CUTOUT_MIN_FRAC = 0.02


def _check_batch(x: Tensor) -> None:
    if x.ndim != 4 or not x.is_floating_point():
        raise ValueError(f"expected a float (B, C, H, W) batch, got {tuple(x.shape)} {x.dtype}")


def _check_aug(aug: AugConfig) -> None:
    problems = []
    for name in ("hflip", "affine", "color_jitter", "blur", "jpeg", "cutout"):
        p = getattr(aug, name)
        if not 0.0 <= p <= 1.0:
            problems.append(f"aug.{name}: probability {p} is outside [0, 1]")
    if len(aug.scale) != 2 or not 0.0 < aug.scale[0] <= aug.scale[1]:
        problems.append(f"aug.scale: need [lo, hi] with 0 < lo <= hi, got {list(aug.scale)}")
    if not 0.0 <= aug.translate < 1.0:
        problems.append(f"aug.translate: {aug.translate} is outside [0, 1)")
    if aug.rotate_deg < 0:
        problems.append(f"aug.rotate_deg: {aug.rotate_deg} is negative (it is a +- range)")
    q = list(aug.jpeg_quality)
    if len(q) != 2 or not 1 <= q[0] <= q[1] <= 100:
        problems.append(f"aug.jpeg_quality: need [lo, hi] with 1 <= lo <= hi <= 100, got {q}")
    if not 0.0 < aug.cutout_frac <= 1.0:
        problems.append(f"aug.cutout_frac: {aug.cutout_frac} is outside (0, 1]")
    for name in ("freq_mask", "time_mask", "noise", "lowpass", "codec"):
        if not 0.0 <= getattr(aug, name) <= 1.0:
            problems.append(f"aug.{name}: probability {getattr(aug, name)} is outside [0, 1]")
    for name in ("freq_mask_frac", "time_mask_frac", "time_shift"):
        if not 0.0 <= getattr(aug, name) <= 1.0:
            problems.append(f"aug.{name}: {getattr(aug, name)} is outside [0, 1]")
    if aug.gain_db < 0:
        problems.append(f"aug.gain_db: {aug.gain_db} is negative (it is a +- range)")
    if len(aug.noise_db) != 2 or aug.noise_db[0] > aug.noise_db[1]:
        problems.append(f"aug.noise_db: need [lo, hi] dBFS with lo <= hi, got {list(aug.noise_db)}")
    if len(aug.lowpass_keep) != 2 or not 0.0 < aug.lowpass_keep[0] <= aug.lowpass_keep[1] <= 1.0:
        problems.append(f"aug.lowpass_keep: need [lo, hi] in (0, 1], got {list(aug.lowpass_keep)}")
    if not 0.0 <= aug.hue <= 0.5:
        problems.append(f"aug.hue: {aug.hue} is outside [0, 0.5]")
    for name in ("brightness", "contrast", "saturation"):
        if getattr(aug, name) < 0:
            problems.append(f"aug.{name}: {getattr(aug, name)} is negative")
    if problems:
        raise ConfigError("; ".join(problems))


@dataclass(frozen=True)
class SpectrogramLayout:
    """What the channels of a speech window hold (``audio.channels``): dB power mapped to [0, 1] from
    [``db_low``, ``db_high``], a time derivative centred on 0.5, or a phase deviation (0..pi -> [0, 1],
    level-free: gain and noise leave it alone)."""

    power: tuple[int, ...]
    delta: tuple[int, ...]
    db_low: float
    db_high: float
    phase: tuple[int, ...] = ()

    @property
    def db_span(self) -> float:
        return self.db_high - self.db_low


def spectrogram_layout(audio: AudioConfig) -> SpectrogramLayout:
    power = tuple(i for i, c in enumerate(audio.channels) if c in ("mel", "linear"))
    delta = tuple(i for i, c in enumerate(audio.channels) if c == "delta")
    phase = tuple(i for i, c in enumerate(audio.channels) if c == "phase")
    return SpectrogramLayout(power, delta, float(audio.db_range[0]), float(audio.db_range[1]), phase)


SPECTROGRAM_OPS = ("freq_mask", "time_mask", "gain_db", "noise", "time_shift", "lowpass")


class SpectrogramAugment(nn.Module):
    """Augmentations of spectrogram windows in [0, 1] (B, C, F, T), on the batch's device.

    Frequency and time masking (SpecAugment; a masked band takes each channel's mean, neutral for
    every channel kind), a gain in dB and an added noise floor (in the power domain, on the power
    channels), a circular time shift, and a codec-like low-pass (the highest rows drop to the floor,
    their deltas to 0, their phase to what the stage writes below the floor: pi/2). Random numbers
    come from torch's global CPU generator, like the image ops.
    """

    def __init__(self, aug: AugConfig, layout: SpectrogramLayout):
        super().__init__()
        self.aug, self.layout = aug, layout
        self.names = [n for n in SPECTROGRAM_OPS if getattr(aug, n) > 0]

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.aug, x.shape[0]
        f, t = x.shape[-2:]
        power = list(self.layout.power)
        if a.freq_mask > 0:
            x = self._mask(x, -2, a.freq_mask, a.freq_mask_frac)
        if a.time_mask > 0:
            x = self._mask(x, -1, a.time_mask, a.time_mask_frac)
        if a.gain_db > 0 and power:
            gain = (torch.rand(b) * 2 - 1) * a.gain_db / self.layout.db_span
            x = x.clone()
            x[:, power] = x[:, power] + gain.to(x.device)[:, None, None, None]
        if a.noise > 0 and power:
            hit = (torch.rand(b) < a.noise).to(x.device)
            level = (a.noise_db[0] + torch.rand(b) * (a.noise_db[1] - a.noise_db[0])).to(x.device)
            # White noise: exponentially distributed power per bin around the level.
            spread = 10 * torch.log10(-torch.log(torch.rand(b, 1, f, t).clamp_min(1e-12))).to(x.device)
            noise_db = level[:, None, None, None] + spread
            low, span = self.layout.db_low, self.layout.db_span
            signal_db = low + x[:, power] * span
            mixed = 10 * torch.log10(10 ** (signal_db / 10) + 10 ** (noise_db / 10))
            x = x.clone()
            x[:, power] = torch.where(hit[:, None, None, None], (mixed - low) / span, x[:, power])
        if a.time_shift > 0:
            shifts = (torch.randint(-int(a.time_shift * t), int(a.time_shift * t) + 1, (b,))).tolist()
            x = torch.stack([img.roll(s, dims=-1) for img, s in zip(x, shifts)])
        if a.lowpass > 0:
            hit = torch.rand(b) < a.lowpass
            keep = a.lowpass_keep[0] + torch.rand(b) * (a.lowpass_keep[1] - a.lowpass_keep[0])
            cut = ((1 - keep) * f).long()  # rows 0..cut-1 (the highest frequencies) go
            rows = torch.arange(f)[None, :] < cut[:, None]
            gone = (rows & hit[:, None]).to(x.device)[:, None, :, None]
            fill = torch.zeros_like(x)
            centred = list(self.layout.delta) + list(self.layout.phase)
            if centred:
                fill[:, centred] = 0.5
            channel = torch.zeros(x.shape[1], dtype=torch.bool, device=x.device)
            channel[power + centred] = True
            x = torch.where(gone & channel[None, :, None, None], fill, x)
        return x

    @staticmethod
    def _mask(x: Tensor, dim: int, p: float, frac: float) -> Tensor:
        b, size = x.shape[0], x.shape[dim]
        hit = torch.rand(b) < p
        width = (torch.rand(b) * frac * size).long()
        start = (torch.rand(b) * (size - width + 1).float()).long()
        pos = torch.arange(size)[None, :]
        band = ((pos >= start[:, None]) & (pos < (start + width)[:, None]) & hit[:, None]).to(x.device)
        band = band[:, None, :, None] if dim == -2 else band[:, None, None, :]
        mean = x.mean(dim=(-2, -1), keepdim=True)
        return torch.where(band, mean, x)

    def extra_repr(self) -> str:
        return ", ".join(self.names)


class TrainAugment(nn.Module):
    """The training augmentation chain: float32, autocast off, output clamped to [0, 1], input dtype kept."""

    def __init__(self, ops: Sequence[nn.Module], spectrogram: SpectrogramAugment | None = None):
        super().__init__()
        self.names = [type(op).__name__ for op in ops] + (spectrogram.names if spectrogram is not None else [])
        # No enabled op: nothing random runs and no RNG draw is made (only the clamp remains).
        self.ops = K.AugmentationSequential(*ops) if ops else None
        self.spectrogram = spectrogram if spectrogram is not None and spectrogram.names else None

    def forward(self, x: Tensor) -> Tensor:
        _check_batch(x)
        with torch.autocast(device_type=x.device.type, enabled=False):
            y = x.float()
            if self.ops is not None:
                y = self.ops(y)
            if self.spectrogram is not None:
                y = self.spectrogram(y)
            y = torch.clamp(y, 0.0, 1.0)
        return y.to(x.dtype)

    def prepare(self, x: Tensor, y: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
        """The training loop's ``prepare`` hook: augment the images, keep the targets."""
        return self(x), y

    def extra_repr(self) -> str:
        return ", ".join(self.names) or "identity"


def build_train_augment(aug: AugConfig, spectrogram: SpectrogramLayout | None = None) -> TrainAugment:
    """Kornia chain from the config; each field is a per-image probability and 0 drops that op.

    Order: hflip -> affine (rotate/scale/translate, reflection padding) -> colour jitter ->
    Gaussian blur -> cutout. JPEG re-compression (``aug.jpeg``) is not here: the loader workers do it
    with libjpeg (:func:`train_jpeg`), before the face reaches the device.
    """
    _check_aug(aug)
    ops: list[nn.Module] = []
    if aug.hflip > 0:
        ops.append(K.RandomHorizontalFlip(p=aug.hflip))
    scale = (float(aug.scale[0]), float(aug.scale[1]))
    if aug.affine > 0 and (aug.rotate_deg > 0 or aug.translate > 0 or scale != (1.0, 1.0)):
        ops.append(
            K.RandomAffine(
                degrees=float(aug.rotate_deg),
                translate=(aug.translate, aug.translate) if aug.translate > 0 else None,
                scale=scale if scale != (1.0, 1.0) else None,
                padding_mode="reflection",  # no black corners: they would be a label-free artefact
                p=aug.affine,
            )
        )
    jitter = (aug.brightness, aug.contrast, aug.saturation, aug.hue)
    if aug.color_jitter > 0 and any(v > 0 for v in jitter):
        # ColorJitter = torchvision's formulas (factor ranges [1-b, 1+b], hue shift in [-h, h]).
        ops.append(K.ColorJitter(*jitter, p=aug.color_jitter))
    if aug.blur > 0:
        ops.append(
            K.RandomGaussianBlur((BLUR_KERNEL, BLUR_KERNEL), BLUR_SIGMA, border_type="reflect", p=aug.blur)
        )
    if aug.cutout > 0:
        lo = min(CUTOUT_MIN_FRAC, aug.cutout_frac)
        ops.append(K.RandomErasing(scale=(lo, aug.cutout_frac), ratio=(0.3, 3.3), value=0.0, p=aug.cutout))
    spectral = [n for n in SPECTROGRAM_OPS if getattr(aug, n) > 0]
    if spectral and spectrogram is None:
        raise ConfigError(f"aug.{spectral[0]}: a spectrogram augmentation, for speech windows only "
                          "(data.modality audio)")
    return TrainAugment(ops, SpectrogramAugment(aug, spectrogram) if spectrogram is not None else None)


def augment_for(cfg: Config, aug: AugConfig) -> TrainAugment:
    """The stage's training augmentation: images, or speech windows with their channel layout."""
    layout = spectrogram_layout(cfg.audio) if cfg.data.modality == "audio" else None
    return build_train_augment(aug, layout)


def train_jpeg(aug: AugConfig, seed: int) -> JpegReencode | None:
    """The loader-side JPEG re-encoding of ``aug`` (None when ``aug.jpeg`` is 0)."""
    _check_aug(aug)
    if aug.jpeg <= 0:
        return None
    return JpegReencode(aug.jpeg, (int(aug.jpeg_quality[0]), int(aug.jpeg_quality[1])), seed)


def resize_batch(x: Tensor, size: int) -> Tensor:
    """Bilinear resize of a float batch to ``size x size`` on its device; antialiased when shrinking.

    Returns ``x`` itself when it already has that size.
    """
    _check_batch(x)
    h, w = x.shape[-2:]
    if h == size and w == size:
        return x
    antialias = size < h or size < w
    dtype = x.dtype
    # Antialiased interpolation has no reduced-precision kernel everywhere: compute in float32.
    with torch.autocast(device_type=x.device.type, enabled=False):
        y = F.interpolate(
            x.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=antialias
        )
    return y.to(dtype)


def random_crop(x: Tensor, size: int, grid: int = 1) -> Tensor:
    """A random ``size`` x ``size`` window of each image of a batch, never resampled.

    Offsets come from torch's global CPU generator (the training loop reseeds it per step) and are
    multiples of ``grid``: with 8, every crop keeps the JPEG 8x8 block phase of the aligned face,
    as the full face at prediction time has it. ``x`` itself when it already has that size.
    """
    _check_batch(x)
    b, _, h, w = x.shape
    if size > h or size > w:
        raise ConfigError(f"train_crop {size} is larger than the {h}x{w} faces it is cut from")
    if (h, w) == (size, size):
        return x
    grid = max(1, grid)
    tops = (torch.randint(0, (h - size) // grid + 1, (b,)) * grid).tolist()
    lefts = (torch.randint(0, (w - size) // grid + 1, (b,)) * grid).tolist()
    return torch.stack([x[i, :, t:t + size, v:v + size] for i, (t, v) in enumerate(zip(tops, lefts))])


def centre_crop(x: Tensor, size: int, grid: int = 1) -> Tensor:
    """The centre ``size`` x ``size`` window of a batch, its offset rounded down to ``grid``."""
    _check_batch(x)
    h, w = x.shape[-2:]
    if size > h or size > w:
        raise ConfigError(f"crop {size} is larger than the {h}x{w} faces it is cut from")
    grid = max(1, grid)
    top, left = (h - size) // 2 // grid * grid, (w - size) // 2 // grid * grid
    return x[..., top:top + size, left:left + size]


Prepare = Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]


@dataclass(frozen=True)
class InputFit:
    """How a batch of aligned faces becomes the network's ``size`` x ``size`` input (``model.fit``).

    ``resize``: the whole face, resampled. ``crop``: a window at the face's own resolution, random
    in training (:meth:`train`) and the centre one otherwise (:meth:`eval`).
    """

    size: int
    mode: str = "resize"
    grid: int = 8

    def train(self, x: Tensor) -> Tensor:
        return resize_batch(x, self.size) if self.mode == "resize" else random_crop(x, self.size, self.grid)

    def eval(self, x: Tensor) -> Tensor:
        return resize_batch(x, self.size) if self.mode == "resize" else centre_crop(x, self.size, self.grid)

    def then(self, prepare: Prepare) -> Prepare:
        """A training ``prepare`` step: :meth:`train`, then ``prepare`` (the augmentations)."""

        def fitted(x: Tensor, y: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
            return prepare(self.train(x), y, index)

        return fitted


def input_fit(model: ModelConfig) -> InputFit:
    return InputFit(model.img_size, model.fit, model.crop_grid)


# ---------------------------------------------------------------------------------------------
# Test-time augmentation: deterministic, shape-preserving views.


def _identity(x: Tensor) -> Tensor:
    return x


def _hflip(x: Tensor) -> Tensor:
    return x.flip(-1)


def _vflip(x: Tensor) -> Tensor:
    return x.flip(-2)


def _rotate(x: Tensor, degrees: float) -> Tensor:
    """Rotate about the image centre by ``degrees`` (positive = counter-clockwise as displayed).

    No scaling: the corners that come from outside the image are filled by reflection.
    """
    _check_batch(x)
    if degrees == 0:
        return x
    with torch.autocast(device_type=x.device.type, enabled=False):
        angle = torch.full((x.shape[0],), float(degrees), device=x.device, dtype=torch.float32)
        y = rotate(x.float(), angle, mode="bilinear", padding_mode="reflection", align_corners=True)
    return y.to(x.dtype)


@dataclass(frozen=True)
class TTAView:
    """A named deterministic view; call it on a batch."""

    name: str
    fn: Callable[[Tensor], Tensor]

    def __call__(self, x: Tensor) -> Tensor:
        return self.fn(x)


# Fixed names; "rot+N" / "rot-N" for any N degrees (decimals allowed) are parsed by get_tta.
TTA_VIEWS: dict[str, Callable[[Tensor], Tensor]] = {
    "identity": _identity,
    "hflip": _hflip,
    "vflip": _vflip,
    "rot+5": partial(_rotate, degrees=5.0),
    "rot-5": partial(_rotate, degrees=-5.0),
}
_ROT = re.compile(r"^rot([+-])(\d+(?:\.\d+)?)$")


def get_tta(name: str) -> TTAView:
    """The view called ``name``; raises ValueError for an unknown name."""
    fn = TTA_VIEWS.get(name)
    if fn is None:
        m = _ROT.match(name.strip()) if isinstance(name, str) else None
        if m is None:
            known = ", ".join(TTA_VIEWS)
            raise ValueError(f"unknown TTA view {name!r} (known: {known}, rot+N, rot-N)")
        deg = float(m.group(2)) * (1.0 if m.group(1) == "+" else -1.0)
        fn = partial(_rotate, degrees=deg)
    return TTAView(name, fn)


def apply_tta(x: Tensor, name: str) -> Tensor:
    """Apply the TTA view ``name`` to a batch (same shape and dtype)."""
    return get_tta(name)(x)


def parse_tta(names: Sequence[str] | str) -> list[TTAView]:
    """Resolve a list of TTA names up front (config check); raises ValueError on an unknown or empty list."""
    if isinstance(names, str):
        names = [names]
    views = [get_tta(n) for n in names]
    if not views:
        raise ValueError("predict.tta: at least one view is needed (use ['identity'] for none)")
    return views
