"""Cutting a pair (A, B) from a frame with one small warp.

The recipe warps the whole frame by H_BA = inverse(H_AB) and crops B at the unperturbed corners.
The same pixels come from warping only B's P x P window: B(q) = I(T H q), with T the translation
to the patch's top-left corner, so ``warpPerspective(I, T @ H, (P, P), WARP_INVERSE_MAP)``.
"""

from __future__ import annotations

import cv2
import numpy as np


def translation(x: float, y: float) -> np.ndarray:
    """(3, 3) float64 translation by (x, y)."""
    return np.array([[1.0, 0.0, x], [0.0, 1.0, y], [0.0, 0.0, 1.0]])


def cut_pair(
    image: np.ndarray, x: int, y: int, h_patch: np.ndarray, patch_size: int, out: np.ndarray | None = None
) -> np.ndarray:
    """Patch A (a crop) and patch B (A's frame seen through H) from one grayscale frame.

    Args:
        image: (H, W) uint8 frame.
        x, y: patch top-left corner in ``image``.
        h_patch: (3, 3) patch-local homography (B-points to A-points).
        out: optional (2, P, P) uint8 C-contiguous array to write into (no allocation).
    Returns:
        (2, P, P) uint8: [A, B], with B(q) = A(H q); ``out`` when given.
    """
    p = patch_size
    if out is None:
        out = np.empty((2, p, p), np.uint8)
    out[0] = image[y : y + p, x : x + p]
    t = translation(x, y) @ h_patch
    cv2.warpPerspective(image, t, (p, p), dst=out[1], flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
    return out


def cut_pair_full_frame(
    image: np.ndarray, x: int, y: int, h_patch: np.ndarray, patch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """The recipe as written (warp the whole frame by H_BA, crop): the reference for :func:`cut_pair`."""
    p = patch_size
    t = translation(x, y)
    h_ab = t @ h_patch @ np.linalg.inv(t)
    warped = cv2.warpPerspective(image, np.linalg.inv(h_ab), (image.shape[1], image.shape[0]))
    return image[y : y + p, x : x + p], warped[y : y + p, x : x + p]
