"""Self-Blended Images (Shiohara & Yamasaki, CVPR 2022): pseudo-fakes made from real faces on the device.

For a share of the real faces of a training batch, a copy of the face is jittered (colour: RGB shift,
brightness, contrast, hue, saturation; frequency: blur or sharpen; geometry: small scale and
translation) and blended back into the original through a soft face mask, and the target becomes 1.
The blend leaves what face swaps leave (a boundary, a colour and frequency mismatch, a slight
misalignment) without any face of another person, so the detector learns those traces instead of
one forgery method's fingerprint.

The mask is an ellipse placed from MTCNN's 5 landmarks (recorded in ``faces.csv``, converted to
crop coordinates): its axes follow the eye line and the eyes-to-mouth line, scaled to cover the inner
face; without landmarks (fallback and whole-image rows) it is an ellipse in the crop centre. Its
outline is deformed by random low harmonics, its boundary softened by a random width, and its
strength scaled by a random blend ratio, so blend boundaries vary from image to image.

Everything is batched torch/kornia on the batch's device, with no host synchronisation. All random
numbers come from torch's global CPU generator with sizes that depend only on the batch size, so the
training loop's per-step reseeding makes runs (and resumes) repeat exactly, on any device.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import numpy as np
import pandas as pd
import torch
from kornia.filters import gaussian_blur2d
from torch import Tensor

log = logging.getLogger(__name__)

Prepare = Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]

# Constants (candidates for config fields; kept here until the schema grows them).
# Mask from landmarks, in units of the inter-ocular distance (width) and the eyes-to-mouth distance.
MASK_HALF_WIDTH = (0.85, 1.25)
MASK_HALF_HEIGHT = (0.95, 1.35)
MASK_CENTRE = (0.45, 0.7)  # ellipse centre along eyes -> mouth (0 = eye line, 1 = mouth line)
# Fallback mask without landmarks, in units of the crop side.
FALLBACK_HALF_WIDTH = (0.2, 0.3)
FALLBACK_ASPECT = (1.15, 1.4)  # half height / half width
FALLBACK_JITTER = 0.03  # centre shift
MIN_LANDMARK_SPAN = 0.02  # eye or eyes-to-mouth distance below this share of the side: no landmarks
MASK_HARMONICS = (2, 3, 4)  # outline deformation: r(phi) = 1 + sum a_k cos(k phi + p_k)
MASK_DEFORM = 0.08  # |a_k| <= this
MASK_SOFTNESS = (0.03, 0.3)  # half width of the soft boundary, in units of the mask radius
BLEND_RATIOS = (0.25, 0.5, 0.75, 1.0, 1.0, 1.0)  # as in the paper
# Source jitter.
RGB_SHIFT = 20 / 255
BRIGHTNESS = 0.1
CONTRAST = 0.1
HUE = 0.03  # share of the colour circle
SATURATION = 0.2
SCALE = (0.95, 1.05)  # per axis, about the mask centre
TRANSLATE = 0.03  # share of the side
FREQ_P = 0.5  # chance of a blur or sharpen of the source
SHARPEN = (-1.0, 1.0)  # unsharp-mask amount: -1 = the Gaussian blur itself, > 0 sharpens
BLUR_SIGMA = (0.004, 0.012)  # Gaussian sigma as a share of the side (0.5-1.5 px at 128 px)


# ----------------------------------------------------------------------------- landmarks


def _numbers(text: object) -> list[float]:
    if text is None or (isinstance(text, float) and math.isnan(text)):
        return []
    try:
        return [float(v) for v in str(text).split()]
    except ValueError:
        return []


def crop_landmarks(landmarks: object, box: object, size: float = 1.0) -> np.ndarray:
    """MTCNN's 5 landmarks (``faces.csv``: "x y" x 5 in source pixels) in aligned-crop pixels.

    ``box`` is the crop square in source pixels ("left top right bottom"), resized to ``size``
    (the default 1.0 gives coordinates as a share of the crop side). Returns float32 (5, 2); all
    NaN when the row has no landmarks or no usable box (fallback and whole-image rows).
    """
    points, square = _numbers(landmarks), _numbers(box)
    if len(points) != 10 or len(square) != 4 or square[2] <= square[0] or square[3] <= square[1]:
        return np.full((5, 2), np.nan, dtype=np.float32)
    left, top, right, bottom = square
    xy = np.asarray(points, dtype=np.float64).reshape(5, 2)
    xy[:, 0] = (xy[:, 0] - left) / (right - left) * size
    xy[:, 1] = (xy[:, 1] - top) / (bottom - top) * size
    return xy.astype(np.float32)


def landmarks_table(faces: pd.DataFrame, rows: pd.DataFrame) -> Tensor:
    """Landmarks of ``rows`` (training rows in dataset order) as a share of the crop side, (N, 5, 2).

    Rows are looked up in the alignment manifest by (split, Id): pseudo-labelled rows
    (``is_pseudo`` == 1) are test images. Rows without landmarks are NaN.
    """
    has = "landmarks" in faces.columns and "box" in faces.columns
    table: dict[tuple[str, str], np.ndarray] = {}
    if has:
        usable = faces[faces["status"] == "face"] if "status" in faces.columns else faces
        for split, ident, lm, box in zip(usable["split"], usable["Id"], usable["landmarks"], usable["box"]):
            table[(str(split), str(ident))] = crop_landmarks(lm, box)
    pseudo = rows["is_pseudo"].to_numpy() if "is_pseudo" in rows.columns else np.zeros(len(rows), dtype=int)
    missing = np.full((5, 2), np.nan, dtype=np.float32)
    out = [table.get(("test" if p else "train", str(i)), missing) for i, p in zip(rows["Id"], pseudo)]
    return torch.from_numpy(np.stack(out)) if out else torch.zeros(0, 5, 2)


# ----------------------------------------------------------------------------- random draws


_BLEND_RATIOS = torch.tensor(BLEND_RATIOS)


def _uniform(n: int, bounds: tuple[float, float], *shape: int) -> Tensor:
    lo, hi = bounds
    return lo + (hi - lo) * torch.rand(n, *shape)


# Every random number of a batch, in a fixed order: (name, values per image). Drawn on the CPU
# generator (the step seed decides them on any device) into one tensor, which reaches the device in
# one copy.
_DRAWS = (("select", 1), ("half_w", 1), ("half_h", 1), ("centre", 1), ("fb_half_w", 1), ("fb_aspect", 1),
          ("fb_shift", 2), ("deform", len(MASK_HARMONICS)), ("phase", len(MASK_HARMONICS)), ("soft", 1),
          ("ratio", 1), ("rgb", 3), ("bright", 1), ("contrast", 1), ("hue", 1), ("sat", 1), ("scale", 2),
          ("shift", 2), ("freq_on", 1), ("sharpen", 1), ("sigma", 1))


def _uniform(n: int, bounds: tuple[float, float], *shape: int) -> Tensor:
    lo, hi = bounds
    return lo + (hi - lo) * torch.rand(n, *shape)


def _draw(n: int) -> tuple[Tensor, Tensor]:
    """(per-image draws packed as (n, width) float32, the batch's rounding draw), on the CPU generator."""
    k = len(MASK_HARMONICS)
    parts = {
        "select": torch.rand(n),
        "half_w": _uniform(n, MASK_HALF_WIDTH),
        "half_h": _uniform(n, MASK_HALF_HEIGHT),
        "centre": _uniform(n, MASK_CENTRE),
        "fb_half_w": _uniform(n, FALLBACK_HALF_WIDTH),
        "fb_aspect": _uniform(n, FALLBACK_ASPECT),
        "fb_shift": _uniform(n, (-FALLBACK_JITTER, FALLBACK_JITTER), 2),
        "deform": _uniform(n, (-MASK_DEFORM, MASK_DEFORM), k),
        "phase": _uniform(n, (0.0, 2 * math.pi), k),
        "soft": _uniform(n, MASK_SOFTNESS),
        "ratio": _BLEND_RATIOS[torch.randint(len(BLEND_RATIOS), (n,))],
        "rgb": _uniform(n, (-RGB_SHIFT, RGB_SHIFT), 3),
        "bright": _uniform(n, (-BRIGHTNESS, BRIGHTNESS)),
        "contrast": _uniform(n, (1 - CONTRAST, 1 + CONTRAST)),
        "hue": _uniform(n, (-HUE, HUE)) * 2 * math.pi,
        "sat": _uniform(n, (1 - SATURATION, 1 + SATURATION)),
        "scale": _uniform(n, SCALE, 2),
        "shift": _uniform(n, (-TRANSLATE, TRANSLATE), 2),
        "freq_on": (torch.rand(n) < FREQ_P).float(),
        "sharpen": _uniform(n, SHARPEN),
        "sigma": _uniform(n, BLUR_SIGMA),
    }
    rounding = torch.rand(())
    packed = torch.cat([parts[name].reshape(n, width) for name, width in _DRAWS], dim=1)
    return packed, rounding


def draw_batch(n: int, device: torch.device | str = "cpu") -> dict[str, Tensor]:
    """Every random number of a batch of ``n`` (from the CPU generator), on ``device`` in one copy."""
    packed, rounding = _draw(n)
    packed = torch.cat([packed, rounding.expand(n, 1)], dim=1)
    device = torch.device(device)
    if device.type == "cuda":
        packed = packed.pin_memory()  # from pageable memory the copy would wait for the device
    packed = packed.to(device, non_blocking=True)
    r = _unpack(packed[:, :-1])
    r["round"] = packed[0, -1]
    return r


def _unpack(packed: Tensor) -> dict[str, Tensor]:
    """Named views of a packed draw (on whatever device it is)."""
    out, at = {}, 0
    for name, width in _DRAWS:
        view = packed[:, at:at + width]
        out[name] = view[:, 0] if width == 1 else view
        at += width
    out["freq_on"] = out["freq_on"] > 0.5
    return out


# ----------------------------------------------------------------------------- mask


def _ellipses(landmarks: Tensor, r: dict[str, Tensor], height: int, width: int
              ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(centre (B,2), unit axes u_h (B,2) and u_v (B,2), half axes (B,) (B,)) in pixels."""
    lm = landmarks.float() * _xy(landmarks, width, height)  # (B, 5, 2): eyes, nose, mouth corners
    eyes = (lm[:, 0] + lm[:, 1]) / 2
    mouth = (lm[:, 3] + lm[:, 4]) / 2
    down = mouth - eyes
    across = lm[:, 1] - lm[:, 0]
    e, d = down.norm(dim=1), across.norm(dim=1)
    side = float(min(height, width))
    ok = torch.isfinite(lm).all(dim=(1, 2)) & (e > MIN_LANDMARK_SPAN * side) & (d > MIN_LANDMARK_SPAN * side)
    u_v = down / e.clamp_min(1e-6)[:, None]
    u_h = torch.stack([u_v[:, 1], -u_v[:, 0]], dim=1)  # u_v turned by -90 degrees: points right
    centre = eyes + r["centre"][:, None] * down
    half_w, half_h = r["half_w"] * d, r["half_h"] * e
    # Fallback: an upright ellipse near the crop centre.
    fb_centre = (0.5 + r["fb_shift"]) * _xy(landmarks, width, height)[0]
    fb_w = r["fb_half_w"] * side
    fb_h = fb_w * r["fb_aspect"]
    right, downward = torch.zeros_like(u_h), torch.zeros_like(u_v)
    right[:, 0] = 1.0
    downward[:, 1] = 1.0  # image y grows downwards
    ok2 = ok[:, None]
    return (
        torch.where(ok2, centre, fb_centre).nan_to_num(),
        torch.where(ok2, u_h, right).nan_to_num(),
        torch.where(ok2, u_v, downward).nan_to_num(),
        torch.where(ok, half_w, fb_w).nan_to_num(nan=1.0).clamp_min(1.0),
        torch.where(ok, half_h, fb_h).nan_to_num(nan=1.0).clamp_min(1.0),
    )


def _xy(like: Tensor, width: float, height: float) -> Tensor:
    """(1, 1, 2) [width, height] on ``like``'s device, made there (no host-to-device copy)."""
    xy = torch.full((1, 1, 2), float(width), device=like.device)
    xy[..., 1] = float(height)
    return xy


def face_masks(landmarks: Tensor, r: dict[str, Tensor], height: int, width: int) -> Tensor:
    """Soft blend masks (B, 1, H, W) in [0, 1] on ``landmarks``' device; ``r`` from :func:`_unpack`."""
    r = {k: v.to(landmarks.device) for k, v in r.items()}
    return _masks(_ellipses(landmarks, r, height, width), r, height, width)


def _masks(ellipses: tuple[Tensor, ...], r: dict[str, Tensor], height: int, width: int) -> Tensor:
    centre, u_h, u_v, half_w, half_h = ellipses
    device = centre.device
    ys = torch.arange(height, device=device, dtype=torch.float32) + 0.5
    xs = torch.arange(width, device=device, dtype=torch.float32) + 0.5
    dx = xs[None, None, :] - centre[:, 0, None, None]  # (B, 1, W)
    dy = ys[None, :, None] - centre[:, 1, None, None]  # (B, H, 1)
    a = (dx * u_h[:, 0, None, None] + dy * u_h[:, 1, None, None]) / half_w[:, None, None]
    b = (dx * u_v[:, 0, None, None] + dy * u_v[:, 1, None, None]) / half_h[:, None, None]
    rho = torch.sqrt(a * a + b * b)  # 1 on the ellipse
    phi = torch.atan2(b, a)
    radius = torch.ones_like(rho)
    for i, k in enumerate(MASK_HARMONICS):
        radius = radius + r["deform"][:, i, None, None] * torch.cos(k * phi + r["phase"][:, i, None, None])
    soft = r["soft"][:, None, None]
    t = ((1 + soft - rho / radius) / (2 * soft)).clamp(0, 1)
    mask = t * t * (3 - 2 * t)  # smoothstep: 1 inside, 0 outside, a soft band of random width between
    return (mask * r["ratio"][:, None, None])[:, None]


# ----------------------------------------------------------------------------- source jitter


_RGB_TO_YIQ = np.array(((0.299, 0.587, 0.114), (0.596, -0.274, -0.322), (0.211, -0.523, 0.312)))
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ)  # a constant: inverted once, not every step
# Both as one (2, 3, 3) table per device, made there once (no copy per step).
_COLOUR_TABLES: dict[torch.device, Tensor] = {}


def _colour_tables(device: torch.device) -> Tensor:
    table = _COLOUR_TABLES.get(device)
    if table is None:
        table = torch.from_numpy(np.stack([_RGB_TO_YIQ, _YIQ_TO_RGB])).float().to(device)
        _COLOUR_TABLES[device] = table
    return table


def _colour_matrix(hue: Tensor, sat: Tensor) -> Tensor:
    """Per-image 3x3 RGB matrices: hue rotation (radians, about the luma axis in YIQ), then saturation.

    Linear stand-ins for an HSV round trip, several times cheaper on the CPU.
    """
    to_yiq, from_yiq = _colour_tables(hue.device)
    cos, sin = torch.cos(hue), torch.sin(hue)
    rot = torch.zeros(hue.numel(), 3, 3, device=hue.device)
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = cos, -sin, sin, cos
    hue_m = from_yiq @ rot @ to_yiq
    luma = to_yiq[0].expand(3, 3)  # every output channel: the luma of the input
    eye = torch.eye(3, device=hue.device)
    sat_m = sat[:, None, None] * eye + (1 - sat[:, None, None]) * luma
    return sat_m @ hue_m


def _jitter_source(x: Tensor, centre: Tensor, r: dict[str, Tensor]) -> Tensor:
    """Colour, frequency and geometry jitter of ``x`` (B, 3, H, W) in [0, 1]; ``centre`` in pixels."""
    b, _, h, w = x.shape
    y = torch.einsum("bij,bjhw->bihw", _colour_matrix(r["hue"], r["sat"]), x)
    y = y + r["rgb"][:, :, None, None] + r["bright"][:, None, None, None]
    mean = y.mean(dim=(1, 2, 3), keepdim=True)
    y = ((y - mean) * r["contrast"][:, None, None, None] + mean).clamp(0, 1)
    # Blur (amount < 0) or unsharp-mask sharpening (> 0) with a per-image sigma.
    sigma = r["sigma"] * min(h, w)
    ksize = 2 * math.ceil(3 * BLUR_SIGMA[1] * min(h, w)) + 1
    blurred = gaussian_blur2d(y, (ksize, ksize), torch.stack([sigma, sigma], dim=1), border_type="reflect")
    amount = torch.where(r["freq_on"], r["sharpen"], torch.zeros_like(r["sharpen"]))
    y = (y + amount[:, None, None, None] * (y - blurred)).clamp(0, 1)
    # Scale about the mask centre and translate: output pixel p samples the source at c + (p - c) / s - t.
    c = torch.stack([centre[:, 0] / w, centre[:, 1] / h], dim=1) * 2 - 1  # normalised [-1, 1]
    s = r["scale"]
    theta = torch.zeros(b, 2, 3, device=x.device)
    theta[:, 0, 0], theta[:, 1, 1] = 1 / s[:, 0], 1 / s[:, 1]
    theta[:, :, 2] = c * (1 - 1 / s) - 2 * r["shift"]
    grid = torch.nn.functional.affine_grid(theta, [b, 3, h, w], align_corners=False)
    return torch.nn.functional.grid_sample(y, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


# ----------------------------------------------------------------------------- the batch op


class SelfBlend:
    """The training loop's ``prepare`` step that turns a share of the real faces into pseudo-fakes.

    ``landmarks``: (N, 5, 2) as a share of the crop side, indexed by dataset index (NaN rows use the
    centre ellipse). ``share``: the expected share of real images (target 0) turned per batch; the
    count is ``floor(share * n_real + u)`` with ``u ~ U(0, 1)``, so it is never off by more than one.
    """

    def __init__(self, landmarks: Tensor, share: float):
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"finetune.aug.sbi: {share} is outside [0, 1]")
        if landmarks.ndim != 3 or landmarks.shape[1:] != (5, 2):
            raise ValueError(f"landmarks: expected (N, 5, 2), got {tuple(landmarks.shape)}")
        self.landmarks = landmarks.float().cpu()
        self.share = float(share)
        self._tables: dict[torch.device, Tensor] = {}

    def _landmarks(self, device: torch.device) -> Tensor:
        """The landmark table on ``device``, copied there once."""
        table = self._tables.get(device)
        if table is None:
            table = self.landmarks.to(device)
            self._tables[device] = table
        return table

    def select(self, y: Tensor, r: dict[str, Tensor]) -> Tensor:
        """Which images to turn (bool, on ``y``'s device): a random ``share`` of those with target 0."""
        real = y < 0.5
        keys = torch.where(real, r["select"], torch.full_like(r["select"], 2.0))
        rank = torch.empty_like(keys, dtype=torch.long)
        rank[keys.argsort()] = torch.arange(keys.numel(), device=y.device)
        count = torch.floor(self.share * real.sum() + r["round"])
        return real & (rank < count)

    def blend(self, x: Tensor, index: Tensor, r: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(self-blended version of every image of ``x``, its masks): the op without the selection."""
        h, w = x.shape[-2:]
        lm = self._landmarks(x.device)[index.to(x.device, non_blocking=True).long()]
        ellipses = _ellipses(lm, r, h, w)
        mask = _masks(ellipses, r, h, w)
        source = _jitter_source(x, ellipses[0], r)
        return source * mask + x * (1 - mask), mask

    @torch.no_grad()
    def __call__(self, x: Tensor, y: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
        if self.share <= 0 or x.shape[0] == 0:
            return x, y
        n = x.shape[0]
        r = draw_batch(n, x.device)
        with torch.autocast(device_type=x.device.type, enabled=False):
            xf = x.float()
            turn = self.select(y, r)
            if x.device.type == "cpu":
                # No device to keep busy: blend only the images that are turned (same per-image result).
                out = xf.clone()
                idx = turn.nonzero().squeeze(1)
                if idx.numel():
                    part = {k: v[idx] if v.ndim and v.shape[0] == n else v for k, v in r.items()}
                    out[idx] = self.blend(xf[idx], index.cpu()[idx], part)[0]
            else:
                # Every image is blended and the turned ones kept: no host sync on a data-dependent count.
                out = torch.where(turn[:, None, None, None], self.blend(xf, index, r)[0], xf)
        return out.to(x.dtype), torch.where(turn, torch.ones_like(y), y)


def with_self_blend(augment: Prepare, share: float, faces: pd.DataFrame, rows: pd.DataFrame) -> Prepare:
    """``augment`` alone when ``share`` is 0, else Self-Blended Images first, then ``augment``.

    SBI runs on the clean aligned faces, as in the paper: the landmarks are only valid before any
    flip or affine moves the face, and the augmentations that follow (flip, affine, colour, blur,
    JPEG, cutout) then treat real faces and pseudo-fakes alike, so none of them marks a class.
    """
    if share <= 0:
        return augment
    landmarks = landmarks_table(faces, rows)
    sbi = SelfBlend(landmarks, share)
    with_lm = int(torch.isfinite(landmarks).all(dim=(1, 2)).sum())
    log.info("finetune: Self-Blended Images on %.0f%% of the real faces per batch (landmark masks for %d of %d "
             "training rows, centre ellipses for the rest)", 100 * share, with_lm, len(rows))

    def prepare(x: Tensor, y: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
        return augment(*sbi(x, y, index), index)

    return prepare
