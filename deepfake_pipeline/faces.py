"""MTCNN face detection (batched, on a downscaled copy) and the crop policy.

Crop policy, in source pixels: take the chosen face box, expand it by ``margin`` of its width
and height on each side, make it square around the centre of the expanded box, then fit it in
the image (shift it inside; a square larger than the image shrinks to the image's short side).
The square is resized to ``size`` (INTER_AREA down, INTER_CUBIC up). Without a usable face the
centre square of the image is taken instead (``fallback``). With alignment disabled the whole
image is letterboxed: resized to fit ``size`` keeping its aspect ratio, centred on black.

With ``align.resize: false`` nothing is resampled (:func:`native_crop`): the crop is a ``size`` x
``size`` window of source pixels centred on the square, its corner on the 16-pixel grid of the
source's JPEG blocks. Resampling is a low-pass filter: it removes the high-frequency traces
(resampling, blending, codec) that tell many fakes apart.

Detection runs on a copy whose longest side is at most ``detect_max_side``, in padded batches,
with a minimum face size of ``min_face_frac`` x the copy's short side; images without a face
get a second look on a copy framed by a black border (see :class:`FaceDetector`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch

from .config import AlignConfig

log = logging.getLogger(__name__)

MIN_FACE_PX = 12  # MTCNN's P-net cell: smaller faces are never found without upscaling
Box = tuple[int, int, int, int]
Scale = tuple[float, float]  # (x, y) detection pixels per source pixel


@dataclass
class Face:
    """One detection in source pixels: box (x1, y1, x2, y2), prob, 5 landmarks (x, y)."""

    box: np.ndarray  # float32 (4,)
    prob: float
    landmarks: np.ndarray | None = None  # float32 (5, 2): eyes, nose, mouth corners

    @property
    def area(self) -> float:
        return float(max(self.box[2] - self.box[0], 0.0) * max(self.box[3] - self.box[1], 0.0))


@dataclass
class Choice:
    """What the policy decided for one image."""

    status: str  # face | fallback
    box: Box  # the crop square in source pixels
    face: Face | None = None  # the chosen face (status face)
    best_prob: float | None = None  # highest detection prob, also for fallback
    n_faces: int = 0  # detections with prob >= min_prob
    faces: list[Face] = field(default_factory=list)


# ---------------------------------------------------------------- crop policy (pure functions)


def crop_box(face_box: np.ndarray | tuple[float, float, float, float], width: int, height: int,
             margin: float) -> Box:
    """The square crop for a face box: expanded by ``margin``, squared, fitted into the image."""
    x1, y1, x2, y2 = (float(v) for v in face_box)
    w, h = max(x2 - x1, 1.0), max(y2 - y1, 1.0)
    ex1, ey1, ex2, ey2 = x1 - margin * w, y1 - margin * h, x2 + margin * w, y2 + margin * h
    cx, cy = (ex1 + ex2) / 2.0, (ey1 + ey2) / 2.0
    side = int(round(max(ex2 - ex1, ey2 - ey1)))
    side = max(1, min(side, width, height))  # larger than the image: the image's short side
    left = int(round(cx - side / 2.0))
    top = int(round(cy - side / 2.0))
    left = min(max(left, 0), width - side)  # shift inside, keeping the size
    top = min(max(top, 0), height - side)
    return left, top, left + side, top + side


def centre_box(width: int, height: int) -> Box:
    """The largest centred square of a ``width`` x ``height`` image."""
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def resize_to(pixels: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize with INTER_AREA when shrinking and INTER_CUBIC when enlarging."""
    h, w = pixels.shape[:2]
    if (w, h) == (width, height):
        return np.ascontiguousarray(pixels)
    interp = cv2.INTER_AREA if width * height < w * h else cv2.INTER_CUBIC
    return cv2.resize(pixels, (width, height), interpolation=interp)


def crop_square(pixels: np.ndarray, box: Box, size: int) -> np.ndarray:
    x1, y1, x2, y2 = box
    return resize_to(pixels[y1:y2, x1:x2], size, size)


# The window corner snaps to this grid: a JPEG source's 8x8 luma and 16x16 (4:2:0) chroma blocks
# then stay where they were, and the crop's own JPEG re-encoding lands on the same block grid.
NATIVE_GRID = 16


def native_window(box: Box, width: int, height: int, size: int, grid: int = NATIVE_GRID) -> Box:
    """A ``size`` x ``size`` window centred on ``box``, corner snapped to ``grid``, shifted inside the image
    (to the last grid position that fits: every start is a multiple of ``grid``).

    Where the image is smaller than ``size`` the window starts at 0 and reaches past the image
    (:func:`native_crop` pads that part).
    """
    cx, cy = (box[0] + box[2]) / 2.0, (box[1] + box[3]) / 2.0

    def start(centre: float, extent: int) -> int:
        if extent <= size:
            return 0
        s = int(round((centre - size / 2.0) / grid)) * grid
        # The last grid start that fits: near an edge the window may stop short of it (by < grid px)
        # rather than leave the grid, so the block phase never depends on where the face sits.
        return min(max(s, 0), (extent - size) // grid * grid)

    left, top = start(cx, width), start(cy, height)
    return left, top, left + size, top + size


def native_crop(pixels: np.ndarray, box: Box, size: int) -> np.ndarray:
    """The :func:`native_window` of ``box`` in source pixels, never resampled.

    An image smaller than ``size`` along a side is padded by mirroring (keeping one tensor size for
    batching); the padding is recorded by the caller through the source size.
    """
    h, w = pixels.shape[:2]
    x1, y1, x2, y2 = native_window(box, w, h, size)
    crop = pixels[y1:min(y2, h), x1:min(x2, w)]
    pad_y, pad_x = size - crop.shape[0], size - crop.shape[1]
    if pad_y or pad_x:
        crop = np.pad(crop, ((0, pad_y), (0, pad_x), (0, 0)), mode="symmetric")
    return np.ascontiguousarray(crop)


def make_crop(pixels: np.ndarray, box: Box, cfg: AlignConfig) -> tuple[np.ndarray, Box]:
    """(aligned face, the source square it shows) for the crop square ``box``: resized to ``cfg.size``,
    or with ``cfg.resize`` false the native window around it (which the manifest then records, so
    landmarks map onto the crop either way)."""
    if cfg.resize:
        return crop_square(pixels, box, cfg.size), box
    h, w = pixels.shape[:2]
    return native_crop(pixels, box, cfg.size), native_window(box, w, h, cfg.size)


def letterbox(pixels: np.ndarray, size: int) -> np.ndarray:
    """The whole image resized to fit ``size`` x ``size`` (aspect kept), centred on black."""
    h, w = pixels.shape[:2]
    scale = size / max(w, h)
    nw, nh = max(1, min(size, round(w * scale))), max(1, min(size, round(h * scale)))
    canvas = np.zeros((size, size, 3), dtype=np.uint8)
    top, left = (size - nh) // 2, (size - nw) // 2
    canvas[top:top + nh, left:left + nw] = resize_to(pixels, nw, nh)
    return canvas


def choose(faces: list[Face], width: int, height: int, cfg: AlignConfig) -> Choice:
    """Pick the face (``cfg.select``: prob or largest, among faces >= min_prob) and its crop."""
    best_prob = max((f.prob for f in faces), default=None)
    usable = [f for f in faces if f.prob >= cfg.min_prob]
    if not usable:
        return Choice("fallback", centre_box(width, height), None, best_prob, 0, faces)
    key = (lambda f: f.area) if cfg.select == "largest" else (lambda f: f.prob)
    face = max(usable, key=key)
    return Choice("face", crop_box(face.box, width, height, cfg.margin), face, best_prob, len(usable), faces)


# ---------------------------------------------------------------- detection


def detection_copy(pixels: np.ndarray, max_side: int) -> tuple[np.ndarray, Scale]:
    """(copy downscaled so its longest side is <= ``max_side``, (x, y) detection px per source px).

    Smaller images are returned as they are (never upscaled).
    """
    h, w = pixels.shape[:2]
    longest = max(h, w)
    if max_side <= 0 or longest <= max_side:
        return pixels, (1.0, 1.0)
    scale = max_side / longest
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    small = cv2.resize(pixels, (nw, nh), interpolation=cv2.INTER_AREA)
    return small, (nw / w, nh / h)


def min_face_size(short_side: int, frac: float) -> int:
    """MTCNN ``min_face_size`` for a detection image: ``frac`` of its short side, >= 12 px."""
    return max(MIN_FACE_PX, int(round(frac * short_side)))


def resolve_device(name: str) -> torch.device:
    """auto: cuda:<LOCAL_RANK> when CUDA is available, else cpu (ConfigError for missing CUDA)."""
    import os

    from .runtime import pick_device

    return pick_device(name, int(os.environ.get("LOCAL_RANK", "0")))


Raw = tuple[np.ndarray, np.ndarray]  # (N x 5 boxes + prob, N x 5 x 2 landmarks) in copy pixels


def _by_shape(copies: list[np.ndarray]) -> list[list[int]]:
    """Indices of ``copies`` grouped by image shape, in first-seen order."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, c in enumerate(copies):
        groups.setdefault(tuple(c.shape), []).append(i)
    return list(groups.values())


def _no_faces() -> Raw:
    return np.zeros((0, 5), np.float32), np.zeros((0, 5, 2), np.float32)


def _best(raw: Raw) -> float:
    return float(raw[0][:, 4].max()) if len(raw[0]) else -1.0


class FaceDetector:
    """facenet-pytorch MTCNN on batches of detection copies.

    Copies of one shape share a forward pass; boxes and landmarks come back divided by each image's
    scale, i.e. in source pixels. ``min_face_size`` is ``min_face_frac`` x the copy's short side
    (>= 12 px): on portrait-style images, where faces are large, this prunes most of the image
    pyramid and is the main speed lever. An image's faces never depend on its batch neighbours:
    images of other shapes go in passes of their own (MTCNN pads a batch to its largest image and
    takes one minimum face size for all, either of which would move a box), so a photo judged alone
    gets the box it got in the stage-1 batch. The nets run in channels_last.

    Second chance: images whose best face is below ``retry_below`` (pass ``align.min_prob``; None
    turns it off) are detected once more on a copy framed by a black border of ``retry_pad`` x
    its longest side, with half the minimum face size. MTCNN's pyramid never looks at a window
    larger than the image, so close-ups whose face fills or leaves the frame are often missed; the
    border gives them context, and the smaller minimum catches faces below ``min_face_frac``. The
    better of the two answers is kept, so this only adds detections, at the cost of the misses.
    """

    def __init__(self, min_face_frac: float, device: torch.device | str = "cpu",
                 thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7), factor: float = 0.709,
                 retry_below: float | None = 0.9, retry_pad: float = 0.25):
        from facenet_pytorch import MTCNN

        self.device = torch.device(device)
        self.min_face_frac = min_face_frac
        self.thresholds = list(thresholds)
        self.factor = factor
        self.retry_below = retry_below
        self.retry_pad = retry_pad
        self.mtcnn = MTCNN(keep_all=True, select_largest=False, device=self.device).eval()
        # channels_last: max-pooling (most of R-net/O-net time on CPU) runs ~10x faster; same maths.
        self.mtcnn.to(memory_format=torch.channels_last)

    @classmethod
    def for_config(cls, cfg: AlignConfig, device: torch.device | str = "cpu") -> FaceDetector:
        """The detector of the ``align`` settings: every stage-1 path (align_faces.py, its workers,
        safe inference's on-the-fly alignment) builds it here, so all of them detect alike."""
        return cls(cfg.min_face_frac, device, retry_below=cfg.min_prob)

    def detect(self, copies: list[np.ndarray], scales: list[Scale] | None = None,
               min_face_frac: float | None = None) -> list[list[Face]]:
        """Faces of each image (HxWx3 uint8 RGB detection copies), in source pixels.

        ``min_face_frac`` overrides the detector's own for this call.
        """
        if not copies:
            return []
        frac = self.min_face_frac if min_face_frac is None else min_face_frac
        scales = scales if scales is not None else [(1.0, 1.0)] * len(copies)
        raw: list[Raw] = [_no_faces()] * len(copies)
        for group in _by_shape(copies):
            found = self._detect_safe([copies[i] for i in group], min_face_size(min(copies[group[0]].shape[:2]), frac))
            for i, r in zip(group, found):
                raw[i] = r
        if self.retry_below is not None:
            self._second_chance(copies, raw, frac)
        out = []
        for (boxes, points), (sx, sy) in zip(raw, scales):
            box_div = np.array([sx, sy, sx, sy], np.float32)
            pt_div = np.array([sx, sy], np.float32)
            out.append([Face(r[:4] / box_div, float(r[4]), pts / pt_div) for r, pts in zip(boxes, points)])
        return out

    def _second_chance(self, copies: list[np.ndarray], raw: list[Raw], frac: float) -> None:
        assert self.retry_below is not None
        redo = [i for i, r in enumerate(raw) if _best(r) < self.retry_below]
        if not redo:
            return
        for group in _by_shape([copies[i] for i in redo]):
            ids = [redo[j] for j in group]
            q = int(round(self.retry_pad * max(copies[ids[0]].shape[:2])))
            framed = [cv2.copyMakeBorder(copies[i], q, q, q, q, cv2.BORDER_CONSTANT, value=(0, 0, 0)) for i in ids]
            # Min face from the unframed short side, halved: the second look also finds smaller faces.
            again = self._detect_safe(framed, min_face_size(min(copies[ids[0]].shape[:2]), frac / 2))
            for i, (boxes, points) in zip(ids, again):
                if _best((boxes, points)) > _best(raw[i]):
                    boxes = boxes.copy()
                    boxes[:, :4] -= q
                    raw[i] = (boxes, points - q)

    def _detect_safe(self, copies: list[np.ndarray], min_face: int) -> list[Raw]:
        try:
            return self._detect_batch(copies, min_face)
        except (RuntimeError, IndexError, ValueError) as exc:
            # MTCNN's batch code has corner cases (e.g. every candidate box empty after
            # clipping); retry image by image so one odd image does not cost the batch.
            log.debug("batched detection failed (%s); retrying one by one", exc)
        raw: list[Raw] = []
        for copy in copies:
            try:
                raw += self._detect_batch([copy], min_face)
            except (RuntimeError, IndexError, ValueError) as exc:
                log.warning("face detection failed on one image (%s): treated as no face", exc)
                raw.append(_no_faces())
        return raw

    def _detect_batch(self, copies: list[np.ndarray], min_face: int) -> list[Raw]:
        from facenet_pytorch.models.utils.detect_face import detect_face

        # Images too small for any pyramid level (MTCNN would fail on an empty list) get no faces.
        result = [_no_faces() for _ in copies]
        fit = [i for i, c in enumerate(copies) if min(c.shape[:2]) >= max(MIN_FACE_PX, min_face)]
        if not fit:
            return result
        height = max(copies[i].shape[0] for i in fit)
        width = max(copies[i].shape[1] for i in fit)
        batch = np.zeros((len(fit), height, width, 3), dtype=np.uint8)
        for k, i in enumerate(fit):
            c = copies[i]
            batch[k, : c.shape[0], : c.shape[1]] = c
        m = self.mtcnn
        with torch.inference_mode():
            boxes, points = detect_face(
                torch.from_numpy(batch), min_face,
                m.pnet, m.rnet, m.onet, self.thresholds, self.factor, self.device,
            )
        for k, i in enumerate(fit):
            result[i] = (np.asarray(boxes[k], dtype=np.float32).reshape(-1, 5),
                         np.asarray(points[k], dtype=np.float32).reshape(-1, 5, 2))
        return result


def best_prob(faces: list[Face] | None) -> float:
    return max((f.prob for f in faces), default=-1.0) if faces else -1.0


def look_closer(detector: FaceDetector, images: list[np.ndarray], found: list[list[Face]],
                cfg: AlignConfig) -> int:
    """Detect again, in place, the images of ``found`` without a face >= ``cfg.min_prob``.

    The closer look runs on copies up to ``cfg.retry_max_side`` (full-resolution ``images``)
    with faces down to ``cfg.retry_min_face_frac`` of the short side: small faces in large frames
    that the fast first look cannot see. Only misses pay for it; a better answer replaces the
    first one. Returns how many images were looked at again.
    """
    if cfg.retry_max_side <= 0:
        return 0
    redo = [i for i, faces in enumerate(found) if best_prob(faces) < cfg.min_prob]
    if not redo:
        return 0
    copies = [detection_copy(images[i], cfg.retry_max_side) for i in redo]
    again = detector.detect([c for c, _ in copies], [s for _, s in copies], cfg.retry_min_face_frac)
    for i, faces in zip(redo, again):
        if best_prob(faces) > best_prob(found[i]):
            found[i] = faces
    return len(redo)
