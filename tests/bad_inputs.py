"""A corpus of bad and unusual image files, generated (never committed as binaries)."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def _jpeg_bytes(arr: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", **kw)
    return buf.getvalue()


def _png_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **kw)
    return buf.getvalue()


def bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares width x height (the pixel data is a stub)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def gradient(h: int = 48, w: int = 64) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // max(1, w - 1), y * 255 // max(1, h - 1), (x + y) % 256], axis=2).astype(np.uint8)


def readable_corpus(folder: Path) -> dict[str, Path]:
    """Unusual but valid images: each must decode to HxWx3 uint8."""
    folder.mkdir(parents=True, exist_ok=True)
    arr = gradient()
    files: dict[str, bytes] = {
        "gray.png": _png_bytes(Image.fromarray(arr[:, :, 0], "L")),
        "rgba.png": _png_bytes(Image.fromarray(np.dstack([arr, np.full(arr.shape[:2], 128, np.uint8)]), "RGBA")),
        "palette.png": _png_bytes(Image.fromarray(arr).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)),
        "sixteen_bit.png": _png_bytes(Image.fromarray(arr[:, :, 0].astype(np.uint16) * 257)),
        "cmyk.jpg": _jpeg_bytes_cmyk(arr),
        "png_named.jpg": _png_bytes(Image.fromarray(arr)),
        "one_pixel.png": _png_bytes(Image.fromarray(np.array([[[10, 20, 30]]], np.uint8))),
        "bitmap.bmp": _bmp_bytes(arr),
    }
    # EXIF orientation 6 (rotate 90 CW on display): stored 48x64 -> displayed 64x48 (HxW).
    exif = Image.Exif()
    exif[0x0112] = 6
    files["exif_rotated.jpg"] = _jpeg_bytes(arr, exif=exif.tobytes())
    # Truncated JPEG: the first 60% of a valid file.
    full = _jpeg_bytes(gradient(120, 160), quality=90)
    files["truncated.jpg"] = full[: int(len(full) * 0.6)]
    out = {}
    for name, data in files.items():
        (folder / name).write_bytes(data)
        out[name] = folder / name
    return out


def unreadable_corpus(folder: Path) -> dict[str, Path]:
    """Files that are not usable images: each must raise ImageReadError naming the file."""
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, bytes] = {
        "zero_bytes.jpg": b"",
        "text_named.jpg": b"this is not an image, just text\n",
        "bomb.png": bomb_png(30000, 30000),
        "garbage.jpg": b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4,
        "html_named.png": b"<html><body>404</body></html>",
    }
    out = {}
    for name, data in files.items():
        (folder / name).write_bytes(data)
        out[name] = folder / name
    return out


def _jpeg_bytes_cmyk(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).convert("CMYK").save(buf, format="JPEG")
    return buf.getvalue()


def _bmp_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="BMP")
    return buf.getvalue()
