"""The photometric check of a pair: does patch B equal patch A warped by H on the interior,
``B(q) = A(H q)`` (CONVENTIONS.md)? Tolerances per photometric level and how they were measured:
:mod:`homogen.validate`'s docstring."""

from __future__ import annotations

import functools

import cv2
import numpy as np

from homogen.geometry import warp_by_h
from homogen.sampling import PHOTOMETRIC_LEVELS

INTERIOR_MARGIN_PX = 2
PIXEL_TOL = 0.5
"""Mean abs error (8-bit levels) allowed between B and A warped by H without photometric changes."""

PHOTOMETRIC_BLUR_SIGMA = 2.0
MIN_COMPARABLE_PX = 256


def pixel_tolerance(level: str) -> float:
    """Mean abs error allowed by :func:`pixel_residual` at photometric ``level`` (module docstring)."""
    if level == "none":
        return PIXEL_TOL
    if level not in PHOTOMETRIC_LEVELS:
        raise ValueError(f"unknown photometric level {level!r}: use one of {['none', *PHOTOMETRIC_LEVELS]}")
    _, spread, sigma = PHOTOMETRIC_LEVELS[level]
    alpha_max = (1.0 + spread) / (1.0 - spread)
    return PIXEL_TOL + 0.2 * sigma * float(np.sqrt(1.0 + alpha_max**2))


@functools.lru_cache(maxsize=4)
def _pixel_grid(patch_size: int) -> np.ndarray:
    """(1, P*P, 2) float64 centres (x, y) of a P x P patch's pixels, row by row."""
    p = np.arange(patch_size, dtype=np.float64)
    grid = np.stack(np.meshgrid(p, p), -1).reshape(1, -1, 2)
    grid.flags.writeable = False
    return grid


def interior_mask(h: np.ndarray, patch_size: int, margin: float = INTERIOR_MARGIN_PX) -> np.ndarray:
    """Pixels q of B whose H q lies inside patch A, ``margin`` px from its border.

    Args:
        h: (3, 3) patch-local homography (B-points to A-points).
    Returns:
        (P, P) bool.
    """
    p = patch_size
    a = cv2.perspectiveTransform(_pixel_grid(p), np.asarray(h, np.float64))[0]
    x, y = a[:, 0], a[:, 1]
    hi = p - 1 - margin
    return ((x >= margin) & (x <= hi) & (y >= margin) & (y <= hi)).reshape(p, p)


def warp_a_by_h(a: np.ndarray, h: np.ndarray, border: int = cv2.BORDER_CONSTANT) -> np.ndarray:
    """``A(H q)`` for every pixel q of B (bilinear): what B should be. (P, P) same dtype as ``a``
    (:func:`homogen.geometry.warp_by_h` on the patch)."""
    return warp_by_h(a, h, (a.shape[1], a.shape[0]), borderMode=border)


def pixel_residual(a: np.ndarray, b: np.ndarray, h: np.ndarray, level: str = "none") -> tuple[float, int]:
    """Mean abs difference (8-bit levels) between B and A warped by H on the interior.

    ``level='none'``: the plain difference. Otherwise: unclipped pixels only, both images smoothed
    by a masked Gaussian, B fitted as alpha * A_warped + beta first (module docstring).

    Args:
        a, b: (P, P) uint8.
        h: (3, 3) patch-local homography (B-points to A-points).
    Returns:
        (error, number of pixels compared); error is NaN when none could be compared.
    """
    p = a.shape[0]
    inside = interior_mask(h, p)
    if level == "none":
        if not inside.any():
            return float("nan"), 0
        diff = np.abs(warp_a_by_h(a, h).astype(np.float64) - b.astype(np.float64))
        return float(diff[inside].mean()), int(inside.sum())
    clipped_a = ((a == 0) | (a == 255)).astype(np.uint8)
    touched = warp_a_by_h(clipped_a, h, cv2.BORDER_REPLICATE) > 0
    mask = (inside & ~touched & (b != 0) & (b != 255)).astype(np.float64)
    weight = cv2.GaussianBlur(mask, (0, 0), PHOTOMETRIC_BLUR_SIGMA)
    use = (mask > 0) & (weight > 0.5)
    n = int(use.sum())
    if n == 0:
        return float("nan"), 0
    wa = cv2.GaussianBlur(
        warp_a_by_h(a, h, cv2.BORDER_REPLICATE).astype(np.float64) * mask, (0, 0), PHOTOMETRIC_BLUR_SIGMA
    )
    wb = cv2.GaussianBlur(b.astype(np.float64) * mask, (0, 0), PHOTOMETRIC_BLUR_SIGMA)
    x, y = wa[use] / weight[use], wb[use] / weight[use]
    cov = np.cov(x, y)  # least-squares fit y ~ alpha * x + beta
    alpha = cov[0, 1] / cov[0, 0] if cov[0, 0] > 0 else 0.0
    fitted = y.mean() + alpha * (x - x.mean())
    return float(np.abs(fitted - y).mean()), n
