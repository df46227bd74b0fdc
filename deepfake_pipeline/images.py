"""Robust image reading and atomic file writing, used by every stage.

``read_image`` is the one way the project turns a file into pixels: EXIF orientation applied,
every PIL mode (grayscale, RGBA, CMYK, palette, 16-bit) converted to 8-bit RGB, a pixel-count
limit checked from the header before decoding, truncated JPEGs decoded as far as they go (and
said so), and a typed :class:`ImageReadError` for anything that is not a usable image.

Every file the project writes goes through ``atomic_path``: the bytes land in a temporary file
in the same folder, are flushed to disk, and replace the target in one ``os.replace``, so a
crash leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from .errors import ImageReadError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}
DEFAULT_MAX_PIXELS = 64_000_000

# PIL's own bomb guard works on a global; we check the header ourselves against the configured
# limit, so its guard is lifted to twice the largest limit anyone would set.
Image.MAX_IMAGE_PIXELS = None
_truncated_lock = threading.Lock()
# mkstemp creates 0600 files; written outputs get the usual 0666 & ~umask (read once, at import).
_UMASK = os.umask(0o022)
os.umask(_UMASK)


@dataclass
class LoadedImage:
    pixels: np.ndarray  # HxWx3 uint8 RGB
    note: str = ""  # "" or a short remark kept in manifests (e.g. "truncated")


def _to_rgb(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(arr[:, :, None], 3, axis=2)
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        # Transparent pixels become white: a neutral, deterministic background.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def input_file_size(path: Path, kind: str = "image") -> int:
    """Size of an input file in bytes; ImageReadError for a folder named like one, a file that cannot
    be opened, and a zero-byte file (the checks every reader makes first)."""
    if path.is_dir():
        raise ImageReadError(path, f"a directory named like an {kind} file, not an {kind} file")
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ImageReadError(path, f"cannot open: {exc.strerror or exc}") from exc
    if size == 0:
        raise ImageReadError(path, "zero-byte file")
    return size


def read_image(
    path: str | os.PathLike,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    allow_truncated: bool = True,
) -> LoadedImage:
    """Decode ``path`` to 8-bit RGB. Raises :class:`ImageReadError` with the reason."""
    path = Path(path)
    input_file_size(path)
    data = path.read_bytes()
    note = ""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL's EXIF/ICC chatter; real failures raise
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            if width <= 0 or height <= 0:
                raise ImageReadError(path, f"invalid size {width}x{height}")
            if width * height > max_pixels:
                raise ImageReadError(
                    path, f"{width}x{height} = {width * height} pixels exceeds the limit of {max_pixels}"
                )
            try:
                img.load()
            except OSError as exc:
                if not (allow_truncated and "truncated" in str(exc).lower()):
                    raise
                with _truncated_lock:
                    ImageFile.LOAD_TRUNCATED_IMAGES = True
                    try:
                        img = Image.open(io.BytesIO(data))
                        img.load()
                    finally:
                        ImageFile.LOAD_TRUNCATED_IMAGES = False
                note = "truncated"
            img = ImageOps.exif_transpose(img) or img
            pixels = _to_rgb(img)
    except ImageReadError:
        raise
    except UnidentifiedImageError as exc:
        raise ImageReadError(path, "not an image file (unknown format)") from exc
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageReadError(path, f"corrupt image: {exc}") from exc
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.size == 0:
        raise ImageReadError(path, f"unexpected decoded shape {pixels.shape}")
    return LoadedImage(np.ascontiguousarray(pixels), note)


def image_header(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """(width, height) from the header only; raises :class:`ImageReadError` like ``read_image``."""
    path = Path(path)
    input_file_size(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as img:
                width, height = img.size
    except ImageReadError:
        raise
    except UnidentifiedImageError as exc:
        raise ImageReadError(path, "not an image file (unknown format)") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageReadError(path, f"corrupt image: {exc}") from exc
    if width * height > max_pixels:
        raise ImageReadError(path, f"{width}x{height} exceeds the pixel limit of {max_pixels}")
    return width, height


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, durable: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; on success it replaces ``target`` atomically.

    On any exception the temporary file is removed and ``target`` is left as it was. ``durable``
    syncs the data to disk before the rename (a power cut then never leaves an empty file under the
    name); bulk outputs whose every file is checked on resume (stage-1 images: size + mtime) skip it
    and sync once at the end of the stage instead (a sync costs milliseconds per file).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.fchmod(fd, 0o666 & ~_UMASK)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if durable:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_write_bytes(target: str | os.PathLike, data: bytes, durable: bool = True) -> None:
    with atomic_path(target, durable) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(target: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(target, text.encode("utf-8"))


def encode_jpeg(pixels: np.ndarray, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=quality, subsampling=0 if quality >= 90 else 2)
    return buf.getvalue()


def save_jpeg(target: str | os.PathLike, pixels: np.ndarray, quality: int = 95, durable: bool = True) -> None:
    """Write an HxWx3 uint8 RGB array as a JPEG, atomically (see :func:`atomic_path` for ``durable``)."""
    atomic_write_bytes(target, encode_jpeg(pixels, quality), durable)


def save_csv(target: str | os.PathLike, frame) -> None:  # frame: pandas.DataFrame
    """Write a DataFrame as CSV (no index), atomically."""
    atomic_write_text(target, frame.to_csv(index=False))


def remove_stale_temps(folder: str | os.PathLike) -> int:
    """Delete temporary files a killed writer left in ``folder`` (top level only)."""
    count = 0
    folder = Path(folder)
    if folder.is_dir():
        for tmp in folder.glob(".*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
                count += 1
    return count
