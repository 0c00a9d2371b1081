"""Validation of a finished dataset: is every pair what CONVENTIONS.md says it is?

One job per module: :mod:`~homogen.validation.walk` (the pass over every chunk and
:func:`validate_dataset`), :mod:`~homogen.validation.pair_checks` (the per-pair checks as rows),
:mod:`~homogen.validation.label_check` and :mod:`~homogen.validation.pixel_check` (their
geometry and pixel measures), :mod:`~homogen.validation.dataset_checks` (counts, images,
duplicates, uniformity, splits), :mod:`~homogen.validation.regenerate` (pairs remade from their
source images), :mod:`~homogen.validation.report` (results, Markdown).

:func:`validate_dataset` walks a store chunk by chunk (memory: one chunk of pixels plus ~20 bytes
per pair for the duplicate and split checks) and returns a :class:`ValidationReport` of named
checks. A check that cannot say anything (a statistical test on a handful of pairs, a regeneration
nobody asked for) is reported as *not applicable* (``passed=None``), never as a silent success.

Per pair (``checked`` / ``failed`` count pairs):

- ``readable``: every chunk of every array reads, passes its checksum (CRC32C in Zarr, Fletcher-32
  in HDF5) and decompresses, and none is missing from storage (zarr would read a missing chunk as
  zeros); each damaged chunk is named by array, chunk number, pair range and file, and the walk
  goes on with the next chunk.
- ``schema``: dtypes and shapes of the store schema (:mod:`homogen.schema`).
- ``finite``: no NaN/Inf in offsets, homography, corners.
- ``homography_normalised``: ``homography[2, 2] == 1`` (to 1e-9).
- ``homography_matches_offsets``: H re-derived from the patch corners and the offsets by an
  independent DLT (``cv2.findHomography``, method 0, on the 4 correspondences) maps the patch
  corners where the stored H maps them, within :data:`REPROJECTION_TOL_PX` (1e-3 px).
- ``offsets_in_range``: every offset in [-rho, rho].
- ``quad_convex``: the perturbed quadrilateral (patch corners + offsets) is convex.
- ``corners_in_image``: corners are the square (x, y), (x+P, y), (x+P, y+P), (x, y+P) with
  rho <= x <= W-P-rho, rho <= y <= H-P-rho, and every perturbed corner inside the W x H frame.
- ``pixels_match_homography``: B equals A warped by H, ``B(q) = A(H q)``, on the interior (pixels q
  whose H q lies inside A at least :data:`INTERIOR_MARGIN_PX` = 2 px from its border), see
  :func:`pixel_residual`.

Per dataset:

- ``counts_match_manifest``: total and per split pair counts equal the manifest's, and the
  manifest's shards tile the arrays (each starts where the previous one ends).
- ``images_accounted``: the image ids stored plus the quarantined ones are exactly the planned
  image list (``source.files`` of the manifest), none in both, each stored image with
  ``pairs_per_image`` pairs.
- ``no_duplicates``: no two pairs with the same (image id, corners, offsets), nor with identical pixels.
- ``offsets_uniform``: per label column and pooled, mean within Z standard errors of 0, standard
  deviation within Z standard errors of rho/sqrt(3) (SE rho/sqrt(3N) and rho/sqrt(15N) for a
  uniform law), and no two columns correlated beyond Z/sqrt(N); Z = :data:`UNIFORMITY_Z` = 5.
  Not applicable below :data:`MIN_PAIRS_UNIFORMITY` pairs or with rho = 0.
- ``split_disjoint``: no source image has pairs in two splits (train, val, test), where images
  with one digest in the manifest's table count as one image; every pair's ``image_id`` is in the
  manifest's per-image table and its ``split`` is the one the table gives that image.
- ``regenerate`` (``regenerate=k``): k random pairs remade from their source images with the
  library's own recipe and the manifest's config: pixels and labels must be bit-identical. Each
  image is read once (at most k reads), checked against its recorded digest, never the rest.
- ``version_matches_content``: the ``dataset_version`` recomputed from the manifest (config, the
  per-image digests, generator and schema versions) is the recorded one
  (:func:`homogen.versions.check_version`); a hand-edited manifest fails.
- ``sources_unchanged`` (``sources=True``): every source image re-hashed; names those whose bytes
  differ from the recorded digests (:func:`homogen.versions.check_sources`).

The pixel check and its tolerances, measured on 2048 pairs (16 per image) from the 128 coco-mini
photographs, rho 32, P 128: per pair mean abs error in 8-bit levels of the right direction of H,
and of a B made by the recipe with H^-1 instead of H (the classic bug):

- ``photometric='none'``: plain mean abs error on the interior. Right: max 0.001 (OpenCV's
  fixed-point interpolation differs by one level on a few pixels). Wrong: min 5.78, 1st percentile
  12.1, median 48. Tolerance :data:`PIXEL_TOL` = 0.5: 500x the worst right pair, 1/11 of the best
  wrong one.
- photometric levels (independent brightness/contrast jitter and Gaussian noise of sigma on A and
  B, then clipping to [0, 255]): raw errors of the right direction reach 95 levels (tough), more
  than the wrong direction's, so they cannot be used. We compare only pixels that no clipping
  touched (B not 0/255, no 0/255 pixel of A under the bilinear footprint), smooth A-warped and B
  with a masked (normalised) Gaussian of sigma :data:`PHOTOMETRIC_BLUR_SIGMA` = 2 px to bring the
  noise down, fit B ~ alpha * A_warped + beta by least squares (undoes brightness and contrast)
  and take the mean abs residual. The residual the noise leaves grows with sigma and with the
  largest contrast ratio alpha_max = (1+s)/(1-s) of the level
  (:data:`homogen.sampling.PHOTOMETRIC_LEVELS`), so the tolerance is
  ``0.5 + 0.2 * sigma * sqrt(1 + alpha_max**2)``. Right max / tolerance / wrong 1st percentile
  (share of wrong pairs passing): easy 0.50 / 1.13 / 6.4 (0%), hard 1.49 / 2.44 / 6.3 (0.1%),
  tough 3.82 / 5.58 / 6.2 (0.8%): noise hides the direction of a few flat pairs, never of a dataset.
  A pair with fewer than :data:`MIN_COMPARABLE_PX` comparable pixels (a mostly clipped patch) is
  not counted as checked; the detail says how many there were (1 in 2048 at hard and tough).
"""

import importlib

_EXPORTS = {
    "MAX_EXAMPLES": "homogen.validation.report",
    "CheckResult": "homogen.validation.report",
    "ValidationReport": "homogen.validation.report",
    "PER_PAIR_CHECKS": "homogen.validation.walk",
    "validate_dataset": "homogen.validation.walk",
    "pixel_tolerance": "homogen.validation.pixel_check",
    "warp_a_by_h": "homogen.validation.pixel_check",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    # imported on first use: homogen.versions uses the report's CheckResult, and the walk uses
    # homogen.versions, so importing the walk here would be a cycle
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'homogen.validation' has no attribute {name!r}")
