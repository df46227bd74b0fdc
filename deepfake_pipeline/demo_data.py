"""Deterministic synthetic dataset in the Kaggle layout, for the demo and the tests.

``python -m deepfake_pipeline.demo_data --out data/demo --n 400`` writes::

    <out>/train_images/demo_00000.jpg ...   <out>/test_images/demo_00003.jpg ...
    <out>/train_solution.csv                <out>/test_solution.csv   (Id,target_feature; 1 = fake)
    <out>/README.txt

Every image is a procedurally drawn portrait (head, hair, eyes, brows, nose, mouth, neck,
shoulders, shading, a cluttered background, sensor noise, JPEG at quality 75-95). A fake is the
same portrait with a face-swap-like trace: the inner face of another "identity" drawn on the same
head, downsampled by 2-4x and upsampled back (so it lacks the sensor noise and fine detail),
slightly off in colour, and blended in through a feathered elliptical mask. Real and fake images
share one random stream for everything else, so the classes differ only by that trace.

The content of image ``i`` depends only on ``(seed, i)`` and the arguments, never on the worker
count or the order of work: the same call writes byte-identical files.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import re
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from .images import atomic_write_text, remove_stale_temps, save_csv, save_jpeg

ID_PREFIX = "demo_"
_ID_RE = re.compile(rf"^{ID_PREFIX}\d+\.jpg$")
_SHIFT = 4  # cv2 drawing with 4 fractional bits: sub-pixel geometry
_ONE = 1 << _SHIFT

README = """\
SYNTHETIC DEMO DATA - NOT A REAL DEEPFAKE DATASET

Written by `python -m deepfake_pipeline.demo_data` ({args}).

Every image is a procedurally drawn, face-like portrait; no real person and no real face-swap
method is involved. Label 1 (fake) images carry a simple synthetic face-swap trace: the inner
face of another drawn "identity", downsampled by 2-4x, upsampled back, slightly off in colour and
blended in with a feathered elliptical seam. Label 0 (real) images have no such blend.

This data only exercises the mechanics of the pipeline (layout checks, alignment, training,
resuming, prediction, submission). Scores measured on it say nothing about how a model does on
real deepfakes.

Files: train_images/, test_images/ (<Id>.jpg), train_solution.csv and test_solution.csv
(Id,target_feature; 1 = fake, 0 = real). test_solution.csv is the answer key for scoring.
Counts: {counts}
"""

# Skin tones (RGB 0-255), light to dark, jittered per image.
_SKIN = np.array(
    [
        (255, 224, 196), (246, 206, 176), (241, 194, 167), (233, 190, 150), (224, 172, 138),
        (210, 160, 120), (198, 134, 103), (180, 130, 95), (161, 102, 73), (141, 85, 60),
        (120, 75, 52), (98, 62, 44), (80, 52, 38), (236, 188, 160), (255, 214, 180),
    ],
    dtype=np.float32,
) / 255.0
_HAIR = np.array(
    [
        (20, 16, 14), (38, 28, 22), (60, 40, 28), (92, 62, 40), (130, 92, 58), (176, 136, 88),
        (214, 180, 120), (140, 60, 30), (150, 150, 150), (210, 210, 205), (70, 55, 50),
    ],
    dtype=np.float32,
) / 255.0
_IRIS = np.array(
    [(70, 45, 25), (40, 28, 18), (60, 100, 150), (80, 120, 80), (110, 120, 125), (120, 90, 50)],
    dtype=np.float32,
) / 255.0


@dataclass(frozen=True)
class Head:
    """Head geometry in pixels; ``angle`` in degrees (clockwise roll in image coordinates)."""

    cx: float
    cy: float
    a: float  # half width
    b: float  # half height
    angle: float

    def pt(self, u: float, v: float) -> tuple[float, float]:
        """Head-local (u right, v down, pixels from the centre) to image coordinates."""
        c, s = math.cos(math.radians(self.angle)), math.sin(math.radians(self.angle))
        return self.cx + u * c - v * s, self.cy + u * s + v * c


@dataclass(frozen=True)
class Identity:
    """What a face swap replaces: the inner-face features and the skin tone."""

    skin: tuple[float, float, float]
    eye_y: float  # all in units of the head half-axes (a for x, b for y)
    eye_dx: float
    eye_w: float
    eye_h: float
    iris: tuple[float, float, float]
    iris_r: float
    brow_dy: float
    brow_w: float
    brow_tilt: float
    brow_thick: float
    nose_y: float
    nose_w: float
    mouth_y: float
    mouth_w: float
    lip_h: float
    smile: float
    lip: tuple[float, float, float]
    blush: float
    texture: float


@dataclass(frozen=True)
class Portrait:
    head: Head
    ident: Identity
    hair: tuple[float, float, float]
    hair_style: int  # 0 bald, 1 short, 2 long
    hairline: float
    fringe_tilt: float
    brow_color: tuple[float, float, float]
    cloth: tuple[float, float, float]
    light: tuple[float, float, float]  # unit vector towards the light (x, y, z)
    ambient: float
    gradient: float  # strength of the global lighting gradient
    vignette: float


# ---------------------------------------------------------------------------------------------
# Drawing helpers: shapes become soft masks inside their bounding box only (fast), then paint.


def _box(h: int, w: int, pts: np.ndarray, pad: float) -> tuple[int, int, int, int] | None:
    x0 = max(math.floor(pts[:, 0].min() - pad), 0)
    y0 = max(math.floor(pts[:, 1].min() - pad), 0)
    x1 = min(math.ceil(pts[:, 0].max() + pad) + 1, w)
    y1 = min(math.ceil(pts[:, 1].max() + pad) + 1, h)
    if x1 <= x0 or y1 <= y0:
        return None
    return y0, y1, x0, x1


def _soften(mask: np.ndarray, blur: float) -> np.ndarray:
    mask = mask.astype(np.float32) * (1.0 / 255.0)
    if blur > 0.3:
        mask = cv2.GaussianBlur(mask, (0, 0), blur)
    return mask


def _paint(img: np.ndarray, mask: np.ndarray, box: tuple[int, int, int, int], color, alpha: float = 1.0,
           clip: np.ndarray | None = None) -> None:
    y0, y1, x0, x1 = box
    if alpha != 1.0:
        mask = mask * np.float32(alpha)
    if clip is not None:
        mask = mask * clip[y0:y1, x0:x1]
    roi = img[y0:y1, x0:x1]
    delta = np.subtract(np.asarray(color, dtype=np.float32), roi)  # in place below: fewer full-size passes
    delta *= mask[:, :, None]
    roi += delta


def _ellipse_mask(shape: tuple[int, int], center, axes, angle: float, blur: float = 0.0):
    """Soft mask of a filled ellipse, cropped to its box: (mask, box) or None when off-image."""
    r = max(axes)
    pad = r + 3.0 * blur + 2.0
    box = _box(shape[0], shape[1], np.array([center], dtype=np.float64), pad)
    if box is None:
        return None
    y0, y1, x0, x1 = box
    m = np.zeros((y1 - y0, x1 - x0), np.uint8)
    c = (round((center[0] - x0) * _ONE), round((center[1] - y0) * _ONE))
    ax = (max(round(axes[0] * _ONE), 1), max(round(axes[1] * _ONE), 1))
    cv2.ellipse(m, c, ax, angle, 0, 360, 255, -1, cv2.LINE_AA, _SHIFT)
    return _soften(m, blur), box


def _poly_mask(shape: tuple[int, int], pts: np.ndarray, blur: float = 0.0, thickness: float = 0.0):
    """Filled polygon (thickness 0) or open polyline of the given thickness, as a soft mask."""
    pad = 3.0 * blur + thickness + 2.0
    box = _box(shape[0], shape[1], pts, pad)
    if box is None:
        return None
    y0, y1, x0, x1 = box
    m = np.zeros((y1 - y0, x1 - x0), np.uint8)
    p = np.round((pts - np.array([x0, y0])) * _ONE).astype(np.int32).reshape(-1, 1, 2)
    if thickness <= 0:
        cv2.fillPoly(m, [p], 255, cv2.LINE_AA, _SHIFT)
    else:
        cv2.polylines(m, [p], False, 255, max(round(thickness), 1), cv2.LINE_AA, _SHIFT)
    return _soften(m, blur), box


def _full(shape: tuple[int, int], mb) -> np.ndarray:
    """A cropped mask pasted into a full-size one (used for clipping)."""
    out = np.zeros(shape, np.float32)
    if mb is not None:
        mask, (y0, y1, x0, x1) = mb
        out[y0:y1, x0:x1] = mask
    return out


def _draw_ellipse(img, center, axes, angle, color, blur=0.0, alpha=1.0, clip=None) -> None:
    mb = _ellipse_mask(img.shape[:2], center, axes, angle, blur)
    if mb is not None:
        _paint(img, mb[0], mb[1], color, alpha, clip)


def _draw_poly(img, pts, color, blur=0.0, alpha=1.0, thickness=0.0, clip=None) -> None:
    mb = _poly_mask(img.shape[:2], np.asarray(pts, dtype=np.float64), blur, thickness)
    if mb is not None:
        _paint(img, mb[0], mb[1], color, alpha, clip)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int, channels: int = 1) -> np.ndarray:
    """Value noise: a coarse normal grid upsampled with bicubic interpolation, ~unit variance."""
    grid = rng.standard_normal((cells, cells, channels), dtype=np.float32)
    out = cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)
    return out.reshape(size, size, channels)


@functools.lru_cache(maxsize=4)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates divided by ``size`` (y, x); shared, do not modify."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    return yy, xx


def _rand_color(rng: np.random.Generator, sat: tuple[float, float], val: tuple[float, float]) -> np.ndarray:
    hsv = np.array([[[rng.uniform(0, 180), rng.uniform(*sat) * 255, rng.uniform(*val) * 255]]], np.float32)
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32) / 255.0


# ---------------------------------------------------------------------------------------------
# Random scene parameters.


def _identity(rng: np.random.Generator, skin: np.ndarray | None = None) -> Identity:
    if skin is None:
        skin = _SKIN[rng.integers(len(_SKIN))] * rng.uniform(0.9, 1.06) + rng.normal(0, 0.025, 3)
    skin = np.clip(skin, 0.12, 1.0)
    lip = np.clip(skin * np.array([0.82, 0.55, 0.55]) + np.array([0.08, 0.0, 0.02]) * rng.uniform(0, 1), 0, 1)
    return Identity(
        skin=tuple(float(x) for x in skin),
        eye_y=rng.uniform(-0.16, -0.04),
        eye_dx=rng.uniform(0.34, 0.44),
        eye_w=rng.uniform(0.17, 0.24),
        eye_h=rng.uniform(0.05, 0.085),
        iris=tuple(float(x) for x in _IRIS[rng.integers(len(_IRIS))] * rng.uniform(0.8, 1.2)),
        iris_r=rng.uniform(0.55, 0.75),
        brow_dy=rng.uniform(0.12, 0.18),
        brow_w=rng.uniform(0.22, 0.32),
        brow_tilt=rng.uniform(-0.04, 0.06),
        brow_thick=rng.uniform(0.035, 0.07),
        nose_y=rng.uniform(0.2, 0.3),
        nose_w=rng.uniform(0.12, 0.18),
        mouth_y=rng.uniform(0.47, 0.56),
        mouth_w=rng.uniform(0.26, 0.38),
        lip_h=rng.uniform(0.035, 0.06),
        smile=rng.uniform(-0.01, 0.04),
        lip=tuple(float(x) for x in lip),
        blush=rng.uniform(0.0, 0.25),
        texture=rng.uniform(0.004, 0.025),
    )


def _portrait(rng: np.random.Generator, size: int) -> Portrait:
    a = size * rng.uniform(0.15, 0.30)  # face width 30-60% of the image
    b = a * rng.uniform(1.2, 1.42)
    cx = size * 0.5 + rng.normal(0, 0.04) * size
    cy = size * 0.47 + rng.normal(0, 0.035) * size
    cy = min(max(cy, b * 0.9), size - b * 0.6)
    head = Head(cx, cy, a, b, float(np.clip(rng.normal(0, 6), -15, 15)))
    ident = _identity(rng)
    hair = _HAIR[rng.integers(len(_HAIR))] * rng.uniform(0.85, 1.15)
    lz = rng.uniform(0.5, 0.9)
    phi = rng.uniform(0, 2 * math.pi)
    lxy = math.sqrt(1 - lz * lz)
    return Portrait(
        head=head,
        ident=ident,
        hair=tuple(float(x) for x in np.clip(hair, 0, 1)),
        hair_style=int(rng.choice(3, p=[0.08, 0.5, 0.42])),
        hairline=rng.uniform(0.45, 0.65),
        fringe_tilt=rng.normal(0, 8),
        brow_color=tuple(float(x) for x in np.clip(hair * 0.7, 0, 1)),
        cloth=tuple(float(x) for x in _rand_color(rng, (0.1, 0.8), (0.15, 0.9))),
        light=(lxy * math.cos(phi), lxy * math.sin(phi) * 0.6 - 0.3, lz),
        ambient=rng.uniform(0.35, 0.6),
        gradient=rng.uniform(0.0, 0.5),
        vignette=rng.uniform(0.0, 0.35),
    )


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Gradient or textured wall plus out-of-focus clutter; float32 RGB in [0, 1]."""
    c1 = _rand_color(rng, (0.0, 0.6), (0.2, 0.95))
    c2 = _rand_color(rng, (0.0, 0.6), (0.2, 0.95))
    yy, xx = _grid(size)
    kind = rng.integers(3)
    if kind == 0:  # linear gradient
        th = rng.uniform(0, 2 * math.pi)
        t = np.clip((xx - 0.5) * math.cos(th) + (yy - 0.5) * math.sin(th) + 0.5, 0, 1)
    elif kind == 1:  # radial gradient
        t = np.clip(np.hypot(xx - rng.uniform(0.2, 0.8), yy - rng.uniform(0.2, 0.8)) * 1.3, 0, 1)
    else:  # blotchy wall
        t = np.clip(0.5 + 0.25 * _smooth_noise(rng, size, int(rng.integers(3, 7)))[:, :, 0], 0, 1)
    img = c1 * (1 - t[:, :, None]) + c2 * t[:, :, None]
    # Clutter: shelves, frames, lamps, plants: blurred shapes at random depths.
    for _ in range(int(rng.integers(2, 9))):
        col = _rand_color(rng, (0.0, 0.8), (0.1, 1.0))
        blur = rng.uniform(0.0, 4.0) * size / 256
        alpha = rng.uniform(0.4, 1.0)
        if rng.random() < 0.5:
            w, h = rng.uniform(0.05, 0.4, 2) * size
            x, y = rng.uniform(-0.1, 1.0, 2) * size
            pts = np.array([(x, y), (x + w, y), (x + w, y + h), (x, y + h)])
            _draw_poly(img, pts, col, blur, alpha)
        else:
            r = rng.uniform(0.02, 0.18, 2) * size
            _draw_ellipse(img, rng.uniform(0, 1, 2) * size, r, rng.uniform(0, 180), col, blur, alpha)
    # Texture: fabric/plaster grain of random strength and scale.
    amp = rng.uniform(0.0, 0.06)
    if amp > 0.005:
        cells = int(rng.integers(16, max(17, size // 2)))
        img += amp * _smooth_noise(rng, size, cells)
    return img.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# The portrait.


def _head_outline(h: Head, n: int = 72) -> np.ndarray:
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    taper = 1 - 0.16 * np.clip(np.sin(t), 0, None) ** 2  # narrower jaw and chin
    return np.array([h.pt(h.a * math.cos(ti) * k, h.b * math.sin(ti)) for ti, k in zip(t, taper)])


def _arc(h: Head, u0: float, u1: float, v: float, bend: float, n: int = 9) -> np.ndarray:
    """Head-local parabolic arc from u0 to u1 at height v; positive bend lifts the middle."""
    us = np.linspace(u0, u1, n)
    mid, half = (u0 + u1) / 2, max(abs(u1 - u0) / 2, 1e-6)
    return np.array([h.pt(u, v - bend * (1 - ((u - mid) / half) ** 2)) for u in us])


def _draw_face(img: np.ndarray, p: Portrait, ident: Identity, rng: np.random.Generator,
               head_mask: np.ndarray, head_box: tuple[int, int, int, int]) -> None:
    """Skin shading and inner features (the part a face swap replaces)."""
    h, d = p.head, ident
    a, b = h.a, h.b
    s = img.shape[:2]
    skin = np.array(d.skin, np.float32)
    # Pseudo-3D shading of the head ellipsoid lit from p.light.
    y0, y1, x0, x1 = head_box
    yy = np.arange(y0, y1, dtype=np.float32)[:, None]
    xx = np.arange(x0, x1, dtype=np.float32)[None, :]
    c, sn = math.cos(math.radians(h.angle)), math.sin(math.radians(h.angle))
    u = ((xx - h.cx) * c + (yy - h.cy) * sn) / a
    v = (-(xx - h.cx) * sn + (yy - h.cy) * c) / b
    nz = np.sqrt(np.clip(1 - u * u - v * v, 0, 1))
    diffuse = np.clip(u * p.light[0] + v * p.light[1] + nz * p.light[2], 0, 1)
    shade = p.ambient + (1 - p.ambient) * diffuse
    m = head_mask[y0:y1, x0:x1]
    tex = d.texture * cv2.GaussianBlur(rng.standard_normal(m.shape, dtype=np.float32), (0, 0), 0.8)
    face = skin[None, None, :] * (shade + tex)[:, :, None]
    roi = img[y0:y1, x0:x1]
    roi += (face - roi) * m[:, :, None]
    # Cheeks, eye sockets.
    for side in (-1, 1):
        _draw_ellipse(img, h.pt(side * 0.5 * a, 0.22 * b), (0.22 * a, 0.14 * b), h.angle, (0.85, 0.35, 0.35),
                      0.12 * a, d.blush, head_mask)
        _draw_ellipse(img, h.pt(side * d.eye_dx * a, d.eye_y * b), (d.eye_w * a * 1.3, d.eye_h * b * 2.6),
                      h.angle, skin * 0.55, 0.1 * a, 0.35, head_mask)
    # Eyes: sclera, iris clipped to it, pupil, highlight, lids.
    for side in (-1, 1):
        ex, ey = side * d.eye_dx * a, d.eye_y * b
        ew, eh = d.eye_w * a, d.eye_h * b * (1.0 + 0.15 * rng.uniform(-1, 1))
        sclera = _ellipse_mask(s, h.pt(ex, ey), (ew, eh), h.angle, 0.4)
        if sclera is None:
            continue
        _paint(img, sclera[0], sclera[1], (0.9, 0.87, 0.84))
        clip = _full(s, sclera)
        ir = d.iris_r * eh * 1.6
        look = rng.uniform(-0.25, 0.25) * ew
        ic = h.pt(ex + look, ey)
        _draw_ellipse(img, ic, (ir, ir), 0, d.iris, 0.5, 1.0, clip)
        _draw_ellipse(img, ic, (ir * 0.45, ir * 0.45), 0, (0.03, 0.03, 0.04), 0.4, 1.0, clip)
        _draw_ellipse(img, h.pt(ex + look - 0.3 * ir, ey - 0.3 * ir), (ir * 0.18, ir * 0.18), 0,
                      (1, 1, 1), 0.3, 0.9, clip)
        lid = _arc(h, ex - ew * 1.05, ex + ew * 1.05, ey - eh * 0.55, eh * 0.6)
        _draw_poly(img, lid, (0.08, 0.06, 0.06), 0.5, 0.9, max(1.0, eh * 0.35))
        low = _arc(h, ex - ew * 0.9, ex + ew * 0.9, ey + eh * 0.75, -eh * 0.4)
        _draw_poly(img, low, skin * 0.6, 0.6, 0.5, max(1.0, eh * 0.2))
        # Brow.
        bx0, bx1 = ex - side * d.brow_w * a * 0.55, ex + side * d.brow_w * a * 0.6
        brow = _arc(h, min(bx0, bx1), max(bx0, bx1), ey - d.brow_dy * b, d.brow_tilt * b + 0.02 * b)
        _draw_poly(img, brow, p.brow_color, 0.6, 0.9, max(1.5, d.brow_thick * b))
    # Nose: side shadow towards the dark side, nostrils, tip highlight.
    ny, nw = d.nose_y * b, d.nose_w * a
    dark = -1.0 if p.light[0] > 0 else 1.0
    ridge = np.array([h.pt(dark * nw * 0.35, d.eye_y * b + 0.05 * b), h.pt(dark * nw * 0.55, ny - 0.02 * b)])
    _draw_poly(img, ridge, skin * 0.55, 0.05 * a, 0.55, max(1.5, 0.05 * a))
    _draw_ellipse(img, h.pt(0, ny + 0.02 * b), (nw * 1.0, 0.05 * b), h.angle, skin * 0.7, 0.05 * a, 0.5)
    for side in (-1, 1):
        _draw_ellipse(img, h.pt(side * nw * 0.45, ny + 0.035 * b), (nw * 0.28, 0.018 * b), h.angle,
                      (0.12, 0.06, 0.05), 0.5, 0.8)
    _draw_ellipse(img, h.pt(-dark * nw * 0.2, ny - 0.03 * b), (nw * 0.3, 0.03 * b), h.angle,
                  np.minimum(skin * 1.25, 1), 0.04 * a, 0.5)
    # Mouth: upper lip, lower lip, the line between, shadow under the lower lip.
    my, mw, lh = d.mouth_y * b, d.mouth_w * a, d.lip_h * b
    lip = np.array(d.lip, np.float32)
    _draw_ellipse(img, h.pt(0, my + lh * 1.9), (mw * 0.5, lh * 0.6), h.angle, skin * 0.6, 0.05 * a, 0.4)
    top = np.vstack([_arc(h, -mw, mw, my, d.smile * b * 0.5 - lh * 0.2, 11),
                     _arc(h, mw, -mw, my - lh, lh * 0.3, 11)])
    _draw_poly(img, top, lip * 0.9, 0.6)
    _draw_ellipse(img, h.pt(0, my + lh * 0.75), (mw * 0.8, lh * 0.95), h.angle, lip, 0.7)
    _draw_poly(img, _arc(h, -mw, mw, my, d.smile * b * 0.5, 11), (0.2, 0.07, 0.07), 0.6, 0.9,
               max(1.0, lh * 0.3))


def _render_body(p: Portrait, bg: np.ndarray) -> np.ndarray:
    """Everything behind the head: background, hair at the back, neck, shoulders, ears."""
    img = bg.copy()
    h = p.head
    a, b = h.a, h.b
    hair, cloth = np.array(p.hair, np.float32), np.array(p.cloth, np.float32)
    skin = np.array(p.ident.skin, np.float32)  # a face swap keeps the original neck and ears
    # Long hair behind the head and shoulders.
    if p.hair_style == 2:
        _draw_ellipse(img, h.pt(0, 0.25 * b), (1.3 * a, 1.35 * b), h.angle, hair * 0.8, 1.0)
    # Shoulders and neck.
    neck = np.array([h.pt(-0.46 * a, 0.6 * b), h.pt(0.46 * a, 0.6 * b), (h.cx + 0.52 * a, h.cy + 1.5 * b),
                     (h.cx - 0.52 * a, h.cy + 1.5 * b)])
    _draw_poly(img, neck, skin * 0.72, 1.0)
    _draw_ellipse(img, (h.cx, h.cy + 2.55 * b), (2.6 * a, 1.25 * b), 0, cloth, 1.0)
    _draw_ellipse(img, (h.cx, h.cy + 1.38 * b), (0.5 * a, 0.08 * b), 0, cloth * 0.6, 1.5, 0.7)  # collar
    if p.hair_style == 1:
        _draw_ellipse(img, h.pt(0, -0.08 * b), (1.08 * a, 1.06 * b), h.angle, hair, 1.0)
    # Ears, head.
    for side in (-1, 1):
        _draw_ellipse(img, h.pt(side * 0.97 * a, -0.02 * b), (0.14 * a, 0.24 * b), h.angle, skin * 0.85, 0.8)
    return img


def _render_head(body: np.ndarray, p: Portrait, ident: Identity, rng: np.random.Generator) -> np.ndarray:
    """The head with face ``ident`` and the hair over the forehead, drawn on a copy of ``body``."""
    img = body.copy()
    size = img.shape[0]
    s = img.shape[:2]
    h = p.head
    a, b = h.a, h.b
    hair = np.array(p.hair, np.float32)
    head_mb = _poly_mask(s, _head_outline(h), 0.7)
    head_mask = _full(s, head_mb)
    _draw_face(img, p, ident, rng, head_mask, head_mb[1])
    # Hair on top of the forehead.
    if p.hair_style:
        hb = (1.0 - p.hairline) * b
        mb = _ellipse_mask(s, h.pt(0, -b + hb * 0.55), (1.06 * a, hb * 1.05), h.angle + p.fringe_tilt, 1.2)
        if mb is not None:
            mask, (y0, y1, x0, x1) = mb
            _paint(img, mask, mb[1], hair)
            strands = rng.standard_normal(mask.shape, dtype=np.float32)  # streaky hair texture
            strands = cv2.GaussianBlur(strands, (0, 0), sigmaX=0.7 * size / 256, sigmaY=2.5 * size / 256)
            img[y0:y1, x0:x1] += (0.25 * strands * mask)[:, :, None] * hair
    return img


def _lighting(p: Portrait, size: int) -> np.ndarray:
    """Global multiplicative lighting gradient and vignette, HxWx1."""
    yy, xx = _grid(size)
    yy, xx = yy - 0.5, xx - 0.5
    gain = 1 + p.gradient * (xx * p.light[0] + yy * p.light[1]) - p.vignette * (xx * xx + yy * yy)
    return gain[:, :, None]


def _swap_mask(p: Portrait, shape: tuple[int, int], rng: np.random.Generator):  # -> (mask, box)
    """Feathered ellipse over the inner face (brows to chin), as a face swap pastes it."""
    h = p.head
    center = h.pt(rng.uniform(-0.03, 0.03) * h.a, rng.uniform(0.08, 0.16) * h.b)
    axes = (h.a * rng.uniform(0.72, 0.84), h.b * rng.uniform(0.72, 0.84))
    return _ellipse_mask(shape, center, axes, h.angle, h.a * rng.uniform(0.07, 0.14))


def render_image(seed: int, index: int, fake: bool, size: int = 256) -> tuple[np.ndarray, int]:
    """Draw image ``index`` of the dataset with ``seed``: (HxWx3 uint8 RGB, JPEG quality).

    Everything but the swap trace comes from the ``(seed, index)`` stream, so the real and the
    fake version of an index are the same portrait.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, index]))
    p = _portrait(rng, size)
    bg = _background(rng, size)
    body = _render_body(p, bg)
    gain = _lighting(p, size)
    img = _render_head(body, p, p.ident, rng)
    img *= gain
    # Sensor noise: signal-dependent, partly colour-correlated, sometimes demosaic-blurred.
    sigma = rng.uniform(1.0, 6.0) / 255.0
    noise = rng.standard_normal((size, size, 3), dtype=np.float32)
    lum = (noise[:, :, 0] + noise[:, :, 1] + noise[:, :, 2]) * (0.4 / 3)
    noise *= 0.6
    noise += lum[:, :, None]
    if rng.random() < 0.5:
        noise = cv2.GaussianBlur(noise, (0, 0), 0.5)
        sigma *= 1.6
    amp = np.clip(img, 0.05, 1.0)
    amp *= 2.0 * sigma * sigma
    np.sqrt(amp, out=amp)
    amp *= noise
    img += amp
    post_scale = rng.uniform(1.0, 1.6) if rng.random() < 0.35 else 1.0
    quality = int(rng.integers(75, 96))
    if fake:
        frng = np.random.default_rng(np.random.SeedSequence([seed, index, 1]))
        skin = np.array(p.ident.skin) * frng.uniform(0.94, 1.06) + frng.normal(0, 0.02, 3)
        donor = _render_head(body, p, _identity(frng, skin), frng)
        donor *= gain
        factor = frng.uniform(2.0, 4.0)
        small = max(round(size / factor), 8)
        donor = cv2.resize(donor, (small, small), interpolation=cv2.INTER_AREA)
        interp = cv2.INTER_CUBIC if frng.random() < 0.5 else cv2.INTER_LINEAR
        donor = cv2.resize(donor, (size, size), interpolation=interp)
        donor = donor * frng.uniform(0.95, 1.05, 3).astype(np.float32) + frng.normal(0, 0.015)
        mask, (y0, y1, x0, x1) = _swap_mask(p, (size, size), frng)  # the head is never fully off-image
        roi = img[y0:y1, x0:x1]
        roi += (donor[y0:y1, x0:x1] - roi) * mask[:, :, None]
    if post_scale > 1.0:  # a platform rescale: softens real and fake images alike
        small = round(size / post_scale)
        img = cv2.resize(cv2.resize(img, (small, small), interpolation=cv2.INTER_AREA), (size, size),
                         interpolation=cv2.INTER_LINEAR)
    img *= 255.0
    img += 0.5
    return np.clip(img, 0, 255, out=img).astype(np.uint8), quality


# ---------------------------------------------------------------------------------------------
# The dataset.


def _split(n: int, test_share: float, fake_share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels and test flags for indices 0..n-1, stratified by label."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5EED]))
    n_fake = round(n * fake_share)
    labels = np.zeros(n, np.int64)
    labels[rng.permutation(n)[:n_fake]] = 1
    test = np.zeros(n, bool)
    for cls in (0, 1):
        idx = np.flatnonzero(labels == cls)
        test[rng.permutation(idx)[: round(len(idx) * test_share)]] = True
    return labels, test


def _write_one(job: tuple[Path, int, int, bool, int]) -> None:
    path, seed, index, fake, size = job
    pixels, quality = render_image(seed, index, fake, size)
    save_jpeg(path, pixels, quality)


def generate(out: Path, n: int, test_share: float = 0.25, size: int = 256, seed: int = 0,
             fake_share: float = 0.5, workers: int = 1) -> dict:
    """Write the synthetic dataset under ``out``; returns the counts.

    Earlier demo images (``demo_<digits>.jpg``) in the image folders that this call does not
    write are removed, so a smaller or re-split rerun leaves a consistent layout.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not 0.0 <= test_share < 1.0:
        raise ValueError(f"test_share must be in [0, 1), got {test_share}")
    if not 0.0 <= fake_share <= 1.0:
        raise ValueError(f"fake_share must be in [0, 1], got {fake_share}")
    if size < 64:
        raise ValueError(f"size must be >= 64, got {size}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    out = Path(out)
    labels, test = _split(n, test_share, fake_share, seed)
    width = max(5, len(str(n - 1)))
    ids = [f"{ID_PREFIX}{i:0{width}d}" for i in range(n)]
    dirs = {False: out / "train_images", True: out / "test_images"}
    jobs = []
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(d)
    for i in range(n):
        jobs.append((dirs[bool(test[i])] / f"{ids[i]}.jpg", seed, i, bool(labels[i]), size))
    keep = {job[0] for job in jobs}
    for d in dirs.values():
        for f in d.iterdir():
            if _ID_RE.match(f.name) and f not in keep:
                f.unlink()
    if workers > 1 and n > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            list(pool.map(_write_one, jobs, chunksize=max(1, n // (8 * workers))))
    else:
        for job in jobs:
            _write_one(job)
    for name, mask in (("train_solution.csv", ~test), ("test_solution.csv", test)):
        frame = pd.DataFrame({"Id": [ids[i] for i in np.flatnonzero(mask)], "target_feature": labels[mask]})
        save_csv(out / name, frame)
    counts = {
        "n": n,
        "train": int((~test).sum()),
        "test": int(test.sum()),
        "train_fake": int(labels[~test].sum()),
        "test_fake": int(labels[test].sum()),
        "size": size,
        "seed": seed,
    }
    args = f"n={n}, test_share={test_share}, size={size}, seed={seed}, fake_share={fake_share}"
    atomic_write_text(out / "README.txt", README.format(args=args, counts=counts))
    return counts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m deepfake_pipeline.demo_data",
        description="Write a deterministic synthetic deepfake dataset in the Kaggle layout.",
    )
    ap.add_argument("--out", type=Path, required=True, help="output folder (e.g. data/demo)")
    ap.add_argument("--n", type=int, default=400, help="number of images (train + test)")
    ap.add_argument("--test-share", type=float, default=0.25)
    ap.add_argument("--size", type=int, default=256, help="image side in pixels")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fake-share", type=float, default=0.5)
    ap.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                    help="processes; the output does not depend on it")
    args = ap.parse_args(argv)
    start = time.perf_counter()
    try:
        counts = generate(args.out, args.n, args.test_share, args.size, args.seed, args.fake_share, args.workers)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"demo data: {counts['train']} train ({counts['train_fake']} fake), {counts['test']} test "
        f"({counts['test_fake']} fake), {args.size}px -> {args.out} in {time.perf_counter() - start:.1f}s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
