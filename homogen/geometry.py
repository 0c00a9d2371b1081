"""Patch geometry, one definition each: corners, offsets <-> H, points through H, warping by H, convexity.

Conventions (CONVENTIONS.md): a square patch of side P has corners TL, TR, BR, BL =
(0,0), (P,0), (P,P), (0,P) (plus its top-left (x, y) in an image); the 8 offsets are
``[dx_TL, dy_TL, ..., dx_BL, dy_BL]``; the patch-local homography H maps each corner to
corner + offset, i.e. B-points to A-points: ``B(q) = A(H q)``. Pixel centres are at integer
coordinates (OpenCV's convention). numpy and OpenCV only; the torch twins that training and direct
alignment need are in :mod:`homogen.model.geometry`.
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["h_to_offsets", "map_points", "patch_corners", "patch_homography", "quads_convex", "warp_by_h"]


def patch_corners(patch_size: int, x: float = 0.0, y: float = 0.0) -> np.ndarray:
    """Corners TL, TR, BR, BL of a square patch with top-left (x, y): :math:`(4, 2)` float32."""
    p = patch_size
    return np.array([[x, y], [x + p, y], [x + p, y + p], [x, y + p]], np.float32)


def patch_homography(offsets: np.ndarray, patch_size: int) -> np.ndarray:
    """Offsets -> H: the patch-local H mapping each corner to corner + offset (4-point DLT, OpenCV).

    H maps B-points to A-points: ``B(q) = A(H q)``.

    Args:
        offsets: (8,) in label order.
    Returns:
        (3, 3) float64 with ``H[2, 2] = 1``.
    """
    src = patch_corners(patch_size)
    dst = src + np.asarray(offsets, np.float32).reshape(4, 2)
    h = cv2.getPerspectiveTransform(src, dst)
    return h / h[2, 2]


def map_points(h: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Points through homographies, in homogeneous coordinates: (3, 3) x (K, 2) -> (K, 2), or
    (N, 3, 3) x (K, 2) -> (N, K, 2). A point sent to the line at infinity comes out inf/nan."""
    h = np.asarray(h, np.float64)
    pts = np.asarray(pts, np.float64).reshape(-1, 2)
    hom = np.concatenate([pts, np.ones((len(pts), 1))], axis=1)
    m = np.einsum("...ij,kj->...ki", h, hom)
    with np.errstate(divide="ignore", invalid="ignore"):
        return m[..., :2] / m[..., 2:]


def h_to_offsets(h: np.ndarray, patch_size: int) -> np.ndarray:
    """H -> offsets: the patch corners through ``h`` minus the corners, (8,) float64 (no plausibility check;
    :func:`homogen.model.baselines.offsets_from_homography` adds those)."""
    c = patch_corners(patch_size)
    return (map_points(h, c) - c).reshape(8)


def warp_by_h(image: np.ndarray, h: np.ndarray, size: tuple[int, int] | None = None, **kw) -> np.ndarray:
    """``out(q) = image(h q)`` for every pixel q of an output of ``size`` (w, h; default the image's), bilinear.

    With the patch-local H this is ``A(H q)``, what patch B should be. To bring an image B into A's
    frame by an H that maps B to A, pass ``inv(H)``. ``kw``: ``borderMode``/``borderValue`` of OpenCV.
    """
    size = size or (image.shape[1], image.shape[0])
    flags = kw.pop("flags", cv2.INTER_LINEAR) | cv2.WARP_INVERSE_MAP
    return cv2.warpPerspective(image, np.asarray(h, np.float64), size, flags=flags, **kw)


def quads_convex(offsets: np.ndarray, patch_size: int) -> np.ndarray:
    """Per pair, whether the patch corners + offsets form a convex quadrilateral turning the patch's way.

    A quadrilateral that folds (two corners crossed) or is mirrored (the patch flipped over) is not.

    Args:
        offsets: (N, 8) or (8,) in label order.
    Returns:
        (N,) bool.
    """
    q = patch_corners(patch_size).astype(np.float64)[None] + np.asarray(offsets, np.float64).reshape(-1, 4, 2)
    e = np.roll(q, -1, axis=1) - q  # edges TL->TR, TR->BR, BR->BL, BL->TL
    f = np.roll(e, -1, axis=1)
    cross = e[..., 0] * f[..., 1] - e[..., 1] * f[..., 0]
    return np.all(cross > 0, axis=1)  # image coordinates (y down): the patch itself turns with cross > 0
