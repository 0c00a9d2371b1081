"""Decoding source images to the recipe's grayscale frame, checking them first.

An image the recipe cannot use faithfully raises :class:`BadImage` with a reason a person can act
on; generation quarantines it and goes on.
"""

from __future__ import annotations

import io

import cv2
import fsspec
import numpy as np
from PIL import Image, UnidentifiedImageError

Image.MAX_IMAGE_PIXELS = None  # only headers are read with PIL; size limits are ours, below

MAX_PIXELS_FULL_DECODE = 100_000_000
"""Largest non-JPEG image decoded at full size (JPEGs decode reduced, so memory stays bounded)."""

_REDUCED = {2: cv2.IMREAD_REDUCED_GRAYSCALE_2, 4: cv2.IMREAD_REDUCED_GRAYSCALE_4, 8: cv2.IMREAD_REDUCED_GRAYSCALE_8}


class BadImage(Exception):
    """The image cannot be used; ``reason`` says why and what to do."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def read_bytes(path: str) -> bytes:
    """The file's bytes (local path or fsspec URL); a missing file is a :class:`BadImage`."""
    try:
        with fsspec.open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise BadImage("missing file: the source lists it but it does not exist") from None
    except IsADirectoryError:
        raise BadImage("not a file (a directory)") from None


def _check_header(data: bytes, min_side: int) -> tuple[str, int, int]:
    """(format, width, height) from the header; refuses what the recipe cannot use."""
    if not data:
        raise BadImage("empty file (0 bytes)")
    try:
        im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise BadImage("not an image (unrecognised file format)") from None
    except Exception as exc:  # noqa: BLE001 - PIL raises many types on garbage headers
        raise BadImage(f"unreadable image header ({exc})") from None
    fmt, mode, (w, h) = im.format or "?", im.mode, im.size
    if mode == "CMYK":
        raise BadImage("CMYK image: convert it to RGB or grayscale first")
    if mode.startswith(("I;16", "I", "F")):
        raise BadImage(f"{mode} image (16-bit or float samples): convert it to 8-bit first")
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in im.info:
        raise BadImage(f"image with an alpha channel ({mode}): flatten it onto a background first")
    if min(w, h) < min_side:
        raise BadImage(f"too small: {w}x{h}, both sides must be at least {min_side} pixels")
    if fmt == "JPEG":
        if not data.rstrip(b"\x00")[-2:] == b"\xff\xd9" and b"\xff\xd9" not in data[-4096:]:
            raise BadImage("truncated JPEG (no end-of-image marker)")
    elif fmt == "PNG":
        if data[12:16] == b"IHDR" and data[24] == 16:  # PIL opens 16-bit colour PNGs as 8-bit RGB
            raise BadImage(f"16-bit PNG ({mode}): convert it to 8-bit first")
        if b"IEND" not in data[-64:]:
            raise BadImage("truncated PNG (no IEND chunk)")
        if w * h > MAX_PIXELS_FULL_DECODE:
            raise BadImage(f"too large to decode in bounded memory: {w}x{h} PNG; downscale it first")
    elif w * h > MAX_PIXELS_FULL_DECODE:
        raise BadImage(f"too large to decode in bounded memory: {w}x{h} {fmt}; downscale it first")
    return fmt, w, h


def reduction_factor(width: int, height: int, target_w: int, target_h: int) -> int:
    """Largest JPEG DCT scale (1, 2, 4, 8) that still leaves at least the target size."""
    for f in (8, 4, 2):
        if width // f >= target_w and height // f >= target_h:
            return f
    return 1


def decode_gray(data: bytes, width: int, height: int, min_side: int = 1) -> np.ndarray:
    """Decode ``data`` to a grayscale frame of ``height x width``.

    JPEGs decode directly at 1/2, 1/4 or 1/8 size where that still covers the target (a 640x480
    JPEG decodes straight to 320x240), then resize with area interpolation.

    Returns:
        (height, width) uint8.
    """
    fmt, w, h = _check_header(data, min_side)
    buf = np.frombuffer(data, np.uint8)
    factor = reduction_factor(w, h, width, height) if fmt == "JPEG" else 1
    img = cv2.imdecode(buf, _REDUCED[factor] if factor > 1 else cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise BadImage(f"corrupt {fmt} data: the decoder could not read it")
    if img.shape != (height, width):
        img = cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA)
    return img


def load_gray(path: str, width: int, height: int, min_side: int = 1) -> np.ndarray:
    """:func:`decode_gray` of the file at ``path`` (local or fsspec URL)."""
    return decode_gray(read_bytes(path), width, height, min_side)
