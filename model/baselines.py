"""Classical baselines for patch-pair homography estimation.

Every method takes one pair ``(a, b)`` of uint8 grayscale patches of side P and returns the 8
predicted corner offsets (float32, label order of CONVENTIONS.md) or ``None`` on failure (too few
matches, RANSAC found nothing, singular/degenerate H, or OpenCV raised). Callers score a failure as
the identity (zero offsets) and count it (see :func:`homogen.model.evaluate.evaluate_methods`).

Direction (CONVENTIONS.md): ``B(q) = A(H q)``, so for a match (a in A, b in B) we estimate
``a = H b`` with ``cv2.findHomography(b_pts, a_pts)``; the predicted offsets are H applied to the
patch corners (0,0), (P,0), (P,P), (0,P) minus those corners.

Plausibility: an estimate that folds the patch (mapped corners not a convex quadrilateral of the
patch's orientation) or moves a corner by more than the patch side P along x or y is degenerate
and reported as a failure, for every method alike. Two views of one scene whose corners moved by
more than a patch side barely overlap, so such an H is an artefact of the estimator, and scoring
it (errors of 10^3..10^5 px from diverged ECC runs) would let one pair dominate the mean.

ECC: ``cv2.findTransformECC(template, input, W)`` maximises the correlation of ``template(x)`` with
``input(W x)``. With ``template = B`` and ``input = A`` this is ``B(q) = A(W q)``, i.e. ``W = H``
directly (no inversion).
"""

from __future__ import annotations

from typing import Callable

import cv2
import numpy as np

from homogen.geometry import h_to_offsets, patch_corners, quads_convex

__all__ = [
    "BASELINES",
    "Method",
    "offsets_from_homography",
    "identity",
    "orb_ransac",
    "sift_ransac",
    "ecc",
]

Method = Callable[[np.ndarray, np.ndarray], "np.ndarray | None"]


def offsets_from_homography(
    h: np.ndarray | None, patch_size: int, eps: float = 1e-8, max_offset: float | None = None
) -> np.ndarray | None:
    """Offsets (8,) float32 of the patch corners under ``h``; ``None`` when ``h`` is degenerate.

    Degenerate: missing, non-finite, (near-)singular, sending a corner to/across the line at
    infinity (projective denominators of the 4 corners not all of one sign), folding the patch
    (the mapped corners are not a convex quadrilateral of the same orientation), or, when
    ``max_offset`` is given, moving a corner by more than ``max_offset`` pixels along x or y.
    """
    if h is None:
        return None
    h = np.asarray(h, dtype=np.float64)
    if h.shape != (3, 3) or not np.all(np.isfinite(h)):
        return None
    scale = np.abs(h).max()
    if scale == 0 or abs(np.linalg.det(h / scale)) < eps:
        return None
    c = patch_corners(patch_size).astype(np.float64)
    w = np.c_[c, np.ones(4)] @ h[2]  # the corners' projective denominators
    # All four corners must stay on one side of the line at infinity (a proper quadrilateral).
    if not (np.all(w > eps * scale) or np.all(w < -eps * scale)):
        return None
    off = h_to_offsets(h, patch_size)
    if not np.all(np.isfinite(off)):
        return None
    if not quads_convex(off, patch_size)[0]:
        return None
    if max_offset is not None and np.abs(off).max() > max_offset:
        return None
    return off.astype(np.float32)


def _check_pair(a: np.ndarray, b: np.ndarray) -> int:
    if a.shape != b.shape or a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"expected two square grayscale patches of equal size, got {a.shape}, {b.shape}")
    return int(a.shape[0])


def identity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Predicts no motion: zero offsets (never fails)."""
    _check_pair(a, b)
    return np.zeros(8, dtype=np.float32)


def _from_matches(a_pts: np.ndarray, b_pts: np.ndarray, p: int, min_matches: int, thresh: float) -> np.ndarray | None:
    if len(a_pts) < max(4, min_matches):
        return None
    h, inliers = cv2.findHomography(
        b_pts.reshape(-1, 1, 2).astype(np.float32), a_pts.reshape(-1, 1, 2).astype(np.float32), cv2.RANSAC, thresh
    )
    if h is None or inliers is None or int(inliers.sum()) < 4:
        return None
    return offsets_from_homography(h, p, max_offset=p)


def orb_ransac(
    a: np.ndarray, b: np.ndarray, n_features: int = 500, min_matches: int = 4, ransac_thresh: float = 3.0
) -> np.ndarray | None:
    """ORB (``n_features`` keypoints), brute-force Hamming matching with cross-check, RANSAC."""
    p = _check_pair(a, b)
    try:
        orb = cv2.ORB_create(nfeatures=n_features)
        ka, da = orb.detectAndCompute(a, None)
        kb, db = orb.detectAndCompute(b, None)
        if da is None or db is None or len(ka) < 4 or len(kb) < 4:
            return None
        matches = cv2.BFMatcher(cv2.NORM_HAMMING, crossCheck=True).match(da, db)
        a_pts = np.array([ka[m.queryIdx].pt for m in matches], dtype=np.float32).reshape(-1, 2)
        b_pts = np.array([kb[m.trainIdx].pt for m in matches], dtype=np.float32).reshape(-1, 2)
        return _from_matches(a_pts, b_pts, p, min_matches, ransac_thresh)
    except cv2.error:
        return None


_SIFT = None


def _sift():
    global _SIFT
    if _SIFT is None:
        _SIFT = cv2.SIFT_create()
    return _SIFT


def sift_ransac(
    a: np.ndarray, b: np.ndarray, ratio: float = 0.75, min_matches: int = 4, ransac_thresh: float = 3.0
) -> np.ndarray | None:
    """SIFT, 2-NN L2 matching with Lowe's ratio test (``ratio``), RANSAC."""
    p = _check_pair(a, b)
    try:
        sift = _sift()
        ka, da = sift.detectAndCompute(a, None)
        kb, db = sift.detectAndCompute(b, None)
        if da is None or db is None or len(ka) < 2 or len(kb) < 2:
            return None
        knn = cv2.BFMatcher(cv2.NORM_L2).knnMatch(da, db, k=2)
        good = [m[0] for m in knn if len(m) == 2 and m[0].distance < ratio * m[1].distance]
        a_pts = np.array([ka[m.queryIdx].pt for m in good], dtype=np.float32).reshape(-1, 2)
        b_pts = np.array([kb[m.trainIdx].pt for m in good], dtype=np.float32).reshape(-1, 2)
        return _from_matches(a_pts, b_pts, p, min_matches, ransac_thresh)
    except cv2.error:
        return None


def ecc(
    a: np.ndarray, b: np.ndarray, iterations: int = 100, eps: float = 1e-6, gauss_filt_size: int = 5
) -> np.ndarray | None:
    """OpenCV ECC (``findTransformECC``, MOTION_HOMOGRAPHY) started from the identity.

    ``template = B``, ``input = A``: the returned warp W satisfies B(q) ~ A(W q), so W = H.
    OpenCV raises when the iteration diverges; that is a failure (``None``).
    """
    p = _check_pair(a, b)
    warp = np.eye(3, dtype=np.float32)
    criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, iterations, eps)
    try:
        _, warp = cv2.findTransformECC(
            b.astype(np.float32), a.astype(np.float32), warp, cv2.MOTION_HOMOGRAPHY, criteria, None, gauss_filt_size
        )
    except cv2.error:
        return None
    return offsets_from_homography(warp, p, max_offset=p)


BASELINES: dict[str, Method] = {
    "identity": identity,
    "orb": orb_ransac,
    "sift": sift_ransac,
    "ecc": ecc,
}
