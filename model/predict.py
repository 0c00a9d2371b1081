"""Homography between two images with a trained HomographyNet.

Input handling: both images are decoded as grayscale and each is resized as a whole (no crop,
aspect ratio not kept) to the model's patch side P x P with ``cv2.INTER_AREA``. The network was
trained on P x P crops of 320x240 images with corners moved by up to rho pixels, so it works best
on two views of about that scale and overlap (e.g. two crops of one photograph); farther apart
than that, its answer is an extrapolation.

Output: the 3x3 ``H`` that maps a pixel of image B to the pixel of image A showing the same point,
``a ~ H b`` in homogeneous coordinates, in each input image's own pixel coordinates (x right, y
down, pixel centres at integer coordinates: OpenCV's convention), normalised so that
``H[2, 2] = 1``. Hence ``cv2.warpPerspective(B, H, (width_A, height_A))`` brings B into A's frame.
It is ``H = S_A^-1 H_p S_B``, where ``H_p`` is the patch-local homography of the 8 predicted
offsets (CONVENTIONS.md, maps B-patch to A-patch) and ``S_X`` the resize of image X to the patch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from homogen.geometry import map_points, patch_homography, warp_by_h
from homogen.images import BadImage, load_gray

__all__ = [
    "Prediction",
    "format_homography",
    "overlay",
    "predict_homography",
    "read_gray",
    "resize_matrix",
]


def read_gray(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file as uint8 grayscale :math:`(H, W)`, at its own size, checked as generation checks sources.

    The decode is :func:`homogen.images.load_gray`'s: JPEGs by libjpeg-turbo in strict mode, so a
    truncated or corrupt file is refused rather than decoded into grey blocks.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not an image the recipe can use (damaged, truncated, CMYK, ...);
            the message names the file and the reason.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no image file {path}")
    try:
        return load_gray(path, None, None)
    except BadImage as exc:
        raise ValueError(f"cannot use image {path}: {exc.reason}") from exc


def resize_matrix(src_wh: tuple[int, int], dst_wh: tuple[int, int]) -> np.ndarray:
    """3x3 map of pixel coordinates under ``cv2.resize`` from ``src_wh`` to ``dst_wh`` (pixel centres at integers)."""
    sx, sy = dst_wh[0] / src_wh[0], dst_wh[1] / src_wh[1]
    return np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1]], dtype=np.float64)


@dataclass
class Prediction:
    """``homography``: 3x3 mapping B pixels to A pixels (input images' coordinates, module docstring);
    ``offsets``: the 8 predicted patch offsets (label order); ``patch_homography``: patch-local H."""

    homography: np.ndarray
    offsets: np.ndarray
    patch_homography: np.ndarray
    patch_size: int


def predict_homography(model: Any, img_a: np.ndarray, img_b: np.ndarray) -> Prediction:
    """Run ``model`` (uint8 (1,2,P,P) -> (1,8)) on two grayscale images of any sizes."""
    from homogen.model.evaluate import predict_network

    p = int(getattr(model, "patch_size", 128))
    if img_a.ndim != 2 or img_b.ndim != 2:
        raise ValueError("expected two grayscale images")
    pa = cv2.resize(img_a, (p, p), interpolation=cv2.INTER_AREA)
    pb = cv2.resize(img_b, (p, p), interpolation=cv2.INTER_AREA)
    pred, _ = predict_network(model, np.stack([pa, pb])[None])  # the one predict loop
    off = pred.reshape(8)
    if not np.all(np.isfinite(off)):
        raise ValueError(f"the model predicted non-finite offsets {off.tolist()}: it is not a usable model")
    hp = patch_homography(off, p)
    s_a = resize_matrix((img_a.shape[1], img_a.shape[0]), (p, p))
    s_b = resize_matrix((img_b.shape[1], img_b.shape[0]), (p, p))
    h = np.linalg.inv(s_a) @ hp @ s_b
    return Prediction(
        homography=h / h[2, 2], offsets=off.astype(np.float32), patch_homography=hp / hp[2, 2], patch_size=p
    )


def overlay(img_a: np.ndarray, img_b: np.ndarray, h: np.ndarray) -> np.ndarray:
    """BGR overlay in A's frame: B brought into it by ``h`` (B->A) blended with A.

    The blend is in false colour where both exist: green = A, magenta = warped B, so aligned
    structure looks grey and misalignment shows as green/magenta fringes; outside warped B's
    footprint, A alone (grey).
    The outline of B's border in A is drawn in yellow.
    """
    ha, wa = img_a.shape
    to_b = np.linalg.inv(h)  # out(a) = B(H^-1 a): B in A's frame
    warped = warp_by_h(img_b, to_b, (wa, ha))
    mask = warp_by_h(np.full(img_b.shape, 255, np.uint8), to_b, (wa, ha), flags=cv2.INTER_NEAREST) > 0
    out = np.dstack([img_a, img_a, img_a]).astype(np.uint8)
    blend = np.dstack([warped, img_a, warped])
    out[mask] = blend[mask]
    hb, wb = img_b.shape
    border = np.array([[0, 0], [wb - 1, 0], [wb - 1, hb - 1], [0, hb - 1]], np.float64)
    w = np.c_[border, np.ones(4)] @ np.asarray(h, np.float64)[2]
    if np.all(w > 1e-9):
        pts = map_points(h, border).round().astype(np.int32)
        if np.abs(pts).max() < 1e6:
            cv2.polylines(out, [pts.reshape(-1, 1, 2)], True, (0, 255, 255), 1, cv2.LINE_AA)
    return out


def format_homography(h: np.ndarray) -> str:
    """The 3x3 matrix as three aligned lines."""
    return "\n".join("  ".join(f"{v: .6g}".rjust(13) for v in row) for row in np.asarray(h))
