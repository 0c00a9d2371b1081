"""Decoding source images to the recipe's grayscale frame, checking them first.

An image the recipe cannot use faithfully raises :class:`BadImage` with a reason a person can act
on; generation quarantines it and goes on.

JPEGs (nearly every photograph) are decoded by libjpeg-turbo through simplejpeg in strict mode:
any warning libjpeg raises about the entropy-coded data (premature end of data, corrupt data,
extraneous bytes, bad Huffman code) is an error, so a damaged file is quarantined with that reason
instead of giving grey blocks or smeared rows. Other formats go through OpenCV. Every image's pixel
count is read from its header and bounded before any pixel is decoded.
"""

from __future__ import annotations

import io
import math
import os
import stat

import cv2
import fsspec
import numpy as np
import simplejpeg
from PIL import Image, UnidentifiedImageError

from homogen.store.paths import is_local, local_path

Image.MAX_IMAGE_PIXELS = None  # only headers are read with PIL; the size limit is ours, below

MAX_IMAGE_PIXELS = 100_000_000
"""Largest image (width x height, any format) decoded; larger ones are quarantined from the header.

It bounds one decode's memory: a progressive JPEG keeps every DCT coefficient of the frame
(2 bytes per sample; about 200 MB for 100 megapixels in grayscale, 300-600 MB in colour) even when
decoded at reduced scale, and PNG/TIFF/WebP decode at full size. 100 megapixels is above the
largest common camera (about 50-60 MP)."""

MAX_DCT_REDUCTION = 8
"""JPEGs decode at 1/2, 1/4 or 1/8 size where that still covers the frame (powers of two only:
libjpeg-turbo's other M/8 factors are slower than a full-size decode)."""


class BadImage(Exception):
    """The image cannot be used; ``reason`` says why and what to do."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


_KINDS = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISDIR, "a directory"),
)


def file_kind(mode: int) -> str | None:
    """What a non-regular file is (``"a FIFO (named pipe)"``, ...), or None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    return next((what for test, what in _KINDS if test(mode)), "not a regular file")


def regular_file(path: str) -> int:
    """Open the local file ``path`` for reading, only if it is a regular file (through any symlinks).

    The type is checked by ``stat`` before the file is opened, so a FIFO, socket or device is never
    opened (opening a FIFO waits for a writer; a device can be endless); the open is non-blocking
    and re-checked with ``fstat`` in case the name was replaced meanwhile.

    Returns:
        an open file descriptor (the caller closes it).

    Raises:
        BadImage: missing, not a regular file (naming what it is), or unreadable.
    """
    try:
        kind = file_kind(os.stat(path).st_mode)
        if kind is not None:
            raise BadImage(f"not a regular file ({kind}): homogen reads only regular files; replace it with the image")
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError as exc:
        raise BadImage("missing file: the source lists it but it does not exist") from exc
    except PermissionError as exc:
        raise BadImage("unreadable file (permission denied): make it readable") from exc
    except OSError as exc:
        raise BadImage(f"unreadable file ({exc.strerror or exc})") from exc
    kind = file_kind(os.fstat(fd).st_mode)
    if kind is not None:
        os.close(fd)
        raise BadImage(f"not a regular file ({kind}): homogen reads only regular files; replace it with the image")
    return fd


def read_bytes(path: str) -> bytes:
    """The file's bytes (local path or fsspec URL); a missing, unreadable or non-regular file
    (FIFO, socket, device, directory; also through a symlink) is a :class:`BadImage`, never opened."""
    if is_local(path):  # a plain read, a tenth of a millisecond less than fsspec's
        with open(regular_file(local_path(path)), "rb") as f:
            return f.read()
    try:
        with fsspec.open(path, "rb") as f:
            return f.read()
    except FileNotFoundError as exc:
        raise BadImage("missing file: the source lists it but it does not exist") from exc
    except IsADirectoryError as exc:
        raise BadImage("not a file (a directory)") from exc
    except PermissionError as exc:
        raise BadImage("unreadable file (permission denied): make it readable") from exc


def _check_size(fmt: str, w: int, h: int, min_side: int) -> None:
    if min(w, h) < min_side:
        raise BadImage(f"too small: {w}x{h}, both sides must be at least {min_side} pixels")
    if w * h > MAX_IMAGE_PIXELS:
        raise BadImage(
            f"too large to decode in bounded memory: {w}x{h} {fmt} is {w * h / 1e6:.0f} megapixels, "
            f"above the limit of {MAX_IMAGE_PIXELS / 1e6:.0f} (homogen.images.MAX_IMAGE_PIXELS); downscale it first"
        )


def _jpeg_header(data: bytes, min_side: int) -> tuple[int, int]:
    """(width, height) of a JPEG from its header; refuses what the recipe cannot use."""
    try:
        h, w, colorspace, _ = simplejpeg.decode_jpeg_header(data, strict=True)
    except ValueError as exc:
        raise BadImage(f"corrupt JPEG header ({exc}): re-download or re-encode the file") from exc
    if colorspace in ("CMYK", "YCCK"):
        raise BadImage("CMYK image: convert it to RGB or grayscale first")
    _check_size("JPEG", w, h, min_side)
    # the end-of-image marker at the end (a plain JPEG: under a microsecond), else anywhere (a phone's
    # "motion photo" carries a video after it: ~200 us for 160 KB, paid only by such files and cut ones)
    if not data.rstrip(b"\x00").endswith(b"\xff\xd9") and b"\xff\xd9" not in data:
        raise BadImage("truncated JPEG (no end-of-image marker)")
    return w, h


def _other_header(data: bytes, min_side: int) -> str:
    """Format name of a non-JPEG image from its header (PIL); refuses what the recipe cannot use."""
    if not data:
        raise BadImage("empty file (0 bytes)")
    try:
        im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        raise BadImage("not an image (unrecognised file format)") from exc
    except Exception as exc:  # noqa: BLE001 - PIL raises many types on garbage headers
        raise BadImage(f"unreadable image header ({exc})") from exc
    fmt, mode, (w, h) = im.format or "?", im.mode, im.size
    if mode == "CMYK":
        raise BadImage("CMYK image: convert it to RGB or grayscale first")
    if mode.startswith(("I;16", "I", "F")):
        raise BadImage(f"{mode} image (16-bit or float samples): convert it to 8-bit first")
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in im.info:
        raise BadImage(f"image with an alpha channel ({mode}): flatten it onto a background first")
    _check_size(fmt, w, h, min_side)
    if fmt == "PNG":
        if data[12:16] == b"IHDR" and data[24] == 16:  # PIL opens 16-bit colour PNGs as 8-bit RGB
            raise BadImage(f"16-bit PNG ({mode}): convert it to 8-bit first")
        try:  # every chunk up to IEND, with its CRC; bytes after IEND are ignored, as by every PNG reader
            Image.open(io.BytesIO(data)).verify()
        except Exception as exc:  # noqa: BLE001 - PIL raises SyntaxError, OSError, struct.error on damage
            raise BadImage(f"truncated PNG or damaged chunk ({exc}): re-download or re-encode the file") from exc
    return fmt


MIN_FRAME_STD = 2.0
"""Frames whose grayscale standard deviation (in 8-bit levels, on the W x H frame) is below this
are quarantined: a flat or nearly flat image (one grey level, a blank scan) gives patches with no
texture, whose labels no method can recover and whose pixel check passes whatever the labels.
Photographs are far above it (the bundled 32: 33 to 84 levels; a foggy or night shot: 5 to 15);
one grey level is 0, JPEG noise on it well under 1."""


def check_texture(frame: np.ndarray) -> None:
    """Refuse a frame with no texture (std below :data:`MIN_FRAME_STD`) as a :class:`BadImage`."""
    std = float(cv2.meanStdDev(frame)[1][0, 0])
    if std < MIN_FRAME_STD:
        raise BadImage(
            f"no texture: the frame's standard deviation is {std:.2f} grey levels, below "
            f"{MIN_FRAME_STD} (homogen.images.MIN_FRAME_STD): a flat image gives pairs whose labels cannot be recovered"
        )


def reduction_factor(width: int, height: int, target_w: int, target_h: int) -> int:
    """Largest JPEG DCT scale (1, 2, 4, 8) that still leaves at least the target size."""
    f = MAX_DCT_REDUCTION
    while f > 1 and not (width // f >= target_w and height // f >= target_h):
        f //= 2
    return f


def _decode_jpeg(data: bytes, w: int, h: int, width: int, height: int) -> np.ndarray:
    """Strict grayscale decode at the largest power-of-two reduction that covers the frame.

    Returns:
        (h', w') uint8, h' = ceil(h / f), w' = ceil(w / f).
    """
    f = reduction_factor(w, h, width, height)
    try:
        # the smallest M/8 scale giving at least ceil(w/f) x ceil(h/f) is exactly 1/f
        img = simplejpeg.decode_jpeg(
            data, colorspace="GRAY", min_height=math.ceil(h / f), min_width=math.ceil(w / f), strict=True
        )
    except ValueError as exc:
        raise BadImage(f"corrupt JPEG data ({exc}): the file is damaged; re-download it") from exc
    return img[:, :, 0]


def decode_gray(data: bytes, width: int | None, height: int | None, min_side: int = 1) -> np.ndarray:
    """Decode ``data`` to a grayscale frame of ``height x width`` (``None, None``: the image's own size).

    JPEGs decode directly at 1/2, 1/4 or 1/8 size where that still covers the target (a 640x480
    JPEG decodes straight to 320x240), then resize with area interpolation.

    Returns:
        (height, width) uint8.
    """
    if data[:3] == b"\xff\xd8\xff":  # JPEG start-of-image marker and the next marker's 0xFF
        w, h = _jpeg_header(data, min_side)
        img = _decode_jpeg(data, w, h, width or w, height or h)
    else:
        fmt = _other_header(data, min_side)
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
        if img is None:
            raise BadImage(f"corrupt {fmt} data: the decoder could not read it")
    if width is not None and img.shape != (height, width):
        img = cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA)
    return img


def load_gray(path: str, width: int | None, height: int | None, min_side: int = 1) -> np.ndarray:
    """:func:`decode_gray` of the file at ``path`` (local or fsspec URL)."""
    return decode_gray(read_bytes(path), width, height, min_side)
