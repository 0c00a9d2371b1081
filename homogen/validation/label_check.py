"""Per-pair label geometry: H re-derived from the offsets by an independent DLT, corners mapped
by H, and whether the stored corners are the recipe's square inside the frame. The DLT here is
OpenCV's least-squares ``findHomography``, not the generator's ``getPerspectiveTransform``
(:func:`homogen.geometry.patch_homography`), so that the check does not share the code it checks."""

from __future__ import annotations

import cv2
import numpy as np

from homogen.geometry import map_points, patch_corners

REPROJECTION_TOL_PX = 1e-3
"""Largest distance between patch corners mapped by the stored and the re-derived H."""

H22_TOL = 1e-9


def rederived_homographies(offsets: np.ndarray, patch_size: int) -> list[np.ndarray | None]:
    """H from patch corners to corners + offsets by DLT (``cv2.findHomography``, method 0), per pair.

    Args:
        offsets: (N, 8).
    Returns:
        N (3, 3) float64 arrays, None where the DLT found none.
    """
    src = patch_corners(patch_size).astype(np.float64)
    out = []
    for o in np.asarray(offsets, np.float64):
        h, _ = cv2.findHomography(src, src + o.reshape(4, 2), 0)
        out.append(h)
    return out


def reprojection_gap(homography: np.ndarray, offsets: np.ndarray, patch_size: int) -> np.ndarray:
    """Per pair, max distance (px) between the patch corners mapped by the stored H and by the DLT's.

    Returns:
        (N,) float64; inf where the DLT found no homography.
    """
    corners = patch_corners(patch_size).astype(np.float64)
    stored = map_points(homography, corners)
    gap = np.full(len(offsets), np.inf)
    for j, h in enumerate(rederived_homographies(offsets, patch_size)):
        if h is not None:
            mine = cv2.perspectiveTransform(corners[None], h)[0]
            gap[j] = float(np.linalg.norm(stored[j] - mine, axis=1).max())
    return np.nan_to_num(gap, nan=np.inf)


def corner_problems(corners: np.ndarray, offsets: np.ndarray, sampling: dict) -> list[str]:
    """Per pair, '' or what is wrong with its corners (square, position range, perturbed corners).

    Args:
        corners: (N, 4, 2) patch corners in the resized frame; offsets: (N, 8).
    """
    p, rho = int(sampling["patch_size"]), float(sampling["rho"])
    w, h = float(sampling["image_width"]), float(sampling["image_height"])
    out = []
    for c, o in zip(np.asarray(corners, np.float64), np.asarray(offsets, np.float64)):
        x, y = c[0]
        moved = c + o.reshape(4, 2)
        if not np.array_equal(c, patch_corners(p, x, y).astype(np.float64)):
            out.append(f"corners are not the {p}x{p} square at ({x:g}, {y:g}) in TL, TR, BR, BL order")
        elif not (rho <= x <= w - p - rho and rho <= y <= h - p - rho and x == int(x) and y == int(y)):
            out.append(f"top-left ({x:g}, {y:g}) outside [{rho:g}, {w - p - rho:g}] x [{rho:g}, {h - p - rho:g}]")
        elif not ((moved >= 0).all() and (moved[:, 0] <= w).all() and (moved[:, 1] <= h).all()):
            out.append(f"a perturbed corner leaves the {w:g}x{h:g} frame")
        else:
            out.append("")
    return out
