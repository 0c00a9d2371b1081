"""Validation of a finished dataset: is every pair what CONVENTIONS.md says it is?

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
- ``split_disjoint``: no source image has pairs in two splits (train, val, test).
- ``regenerate`` (``regenerate=k``): k random pairs remade from their source images with the
  library's own recipe and the manifest's config: pixels and labels must be bit-identical.
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

from __future__ import annotations

import functools
import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any

import cv2
import numpy as np
from tqdm.auto import tqdm

from homogen.config import SamplingConfig, SourceConfig
from homogen.generate import image_pairs
from homogen.images import BadImage, load_gray
from homogen.sampling import PHOTOMETRIC_LEVELS, patch_corners, quads_convex
from homogen.redaction import redact
from homogen.sources import SourceError, list_images
from homogen.schema import FIELDS, SPLIT_CODES, empty_arrays
from homogen.stores import Dataset, missing_chunks, open_dataset
from homogen.versions import check_sources, check_version, source_table

REPROJECTION_TOL_PX = 1e-3
"""Largest distance between patch corners mapped by the stored and the re-derived H."""

H22_TOL = 1e-9
INTERIOR_MARGIN_PX = 2
PIXEL_TOL = 0.5
"""Mean abs error (8-bit levels) allowed between B and A warped by H without photometric changes."""

PHOTOMETRIC_BLUR_SIGMA = 2.0
MIN_COMPARABLE_PX = 256
UNIFORMITY_Z = 5.0
MIN_PAIRS_UNIFORMITY = 20
MAX_EXAMPLES = 5

PER_PAIR_CHECKS = (
    "readable",
    "schema",
    "finite",
    "homography_normalised",
    "homography_matches_offsets",
    "offsets_in_range",
    "quad_convex",
    "corners_in_image",
    "pixels_match_homography",
)


# ------------------------------------------------------------------------------------ results


@dataclass
class CheckResult:
    """One check: ``passed`` is True, False, or None for not applicable (``detail`` says why)."""

    name: str
    passed: bool | None
    checked: int = 0
    failed: int = 0
    detail: str = ""
    examples: list = field(default_factory=list)


@dataclass
class ValidationReport:
    """All checks of one dataset; ``passed`` is False as soon as one check failed."""

    dataset_version: str
    uri: str
    num_pairs: int
    checks: list[CheckResult]
    passed: bool

    def check(self, name: str) -> CheckResult:
        """The check called ``name`` (KeyError naming the known checks otherwise)."""
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(f"no check {name!r}; checks: {[c.name for c in self.checks]}")

    @property
    def failed_checks(self) -> list[str]:
        return [c.name for c in self.checks if c.passed is False]

    def to_dict(self) -> dict:
        return asdict(self)

    def to_markdown(self) -> str:
        """A heading line, a table (check, result, samples checked, failed, detail), failing examples."""
        verdict = "PASSED" if self.passed else f"FAILED ({', '.join(self.failed_checks)})"
        lines = [
            f"# Validation of dataset {self.dataset_version}: {verdict}",
            "",
            f"Store `{self.uri}`, {self.num_pairs} pairs.",
            "",
            "| check | result | samples checked | failed | detail |",
            "|---|---|---|---|---|",
        ]
        for c in self.checks:
            result = {True: "pass", False: "**FAIL**", None: "n/a"}[c.passed]
            lines.append(f"| {c.name} | {result} | {c.checked} | {c.failed} | {_md_cell(c.detail)} |")
        for c in self.checks:
            if c.passed is False and c.examples:
                lines += ["", f"Examples for {c.name}:"]
                lines += [f"- {_md_cell(_format_example(e))}" for e in c.examples]
        return "\n".join(lines) + "\n"


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _format_example(example: Any) -> str:
    if isinstance(example, dict):
        return ", ".join(f"{k}={v}" for k, v in example.items())
    return str(example)


class _Tally:
    """Counts of one per-pair check, the first few failures, and the worst value seen."""

    def __init__(self, name: str):
        self.name = name
        self.checked = 0
        self.failed = 0
        self.examples: list = []
        self.worst: float | None = None
        self.notes: dict[str, int] = {}

    def add(self, ok: np.ndarray, where: "_Where", values: np.ndarray | None = None,
            why: list[str] | None = None, counted: np.ndarray | None = None) -> None:
        """Record ``ok`` (bool per pair of the block at ``where``); rows outside ``counted`` are not checked.

        ``values`` (the measured quantity) and ``why`` (a sentence) describe failures.
        """
        ok = np.asarray(ok, bool)
        counted = np.ones(ok.shape, bool) if counted is None else np.asarray(counted, bool)
        self.checked += int(counted.sum())
        bad = np.flatnonzero(counted & ~ok)
        self.failed += int(bad.size)
        if values is not None:
            v = np.asarray(values, np.float64)[counted]
            v = v[np.isfinite(v)]
            if v.size:
                self.worst = max(-np.inf if self.worst is None else self.worst, float(v.max()))
        for j in bad[: max(0, MAX_EXAMPLES - len(self.examples))]:
            ex = where.describe(int(j))
            if values is not None:
                ex["value"] = float(np.asarray(values)[j])
            if why is not None:
                ex["why"] = why[j]
            self.examples.append(ex)

    def note(self, what: str, count: int = 1) -> None:
        self.notes[what] = self.notes.get(what, 0) + count

    def result(self, detail: str) -> CheckResult:
        extra = "; ".join(f"{n} {what}" for what, n in self.notes.items())
        detail = f"{detail}; {extra}" if extra else detail
        if self.checked == 0:
            return CheckResult(self.name, None, 0, 0, f"no pair could be checked: {detail}", self.examples)
        return CheckResult(self.name, self.failed == 0, self.checked, self.failed, detail, self.examples)


@dataclass
class _Where:
    """A block of pairs: its global start index and its storage chunk number."""

    start: int
    chunk: int

    def describe(self, j: int) -> dict:
        return {"index": self.start + j, "chunk": self.chunk}


# ------------------------------------------------------------------------------- pixel check


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
    """``A(H q)`` for every pixel q of B (bilinear): what B should be. (P, P) same dtype as ``a``."""
    p = a.shape[0]
    return cv2.warpPerspective(a, np.asarray(h, np.float64), (p, p), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=border)


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
    wa = cv2.GaussianBlur(warp_a_by_h(a, h, cv2.BORDER_REPLICATE).astype(np.float64) * mask, (0, 0), PHOTOMETRIC_BLUR_SIGMA)
    wb = cv2.GaussianBlur(b.astype(np.float64) * mask, (0, 0), PHOTOMETRIC_BLUR_SIGMA)
    x, y = wa[use] / weight[use], wb[use] / weight[use]
    cov = np.cov(x, y)  # least-squares fit y ~ alpha * x + beta
    alpha = cov[0, 1] / cov[0, 0] if cov[0, 0] > 0 else 0.0
    fitted = y.mean() + alpha * (x - x.mean())
    return float(np.abs(fitted - y).mean()), n


# ------------------------------------------------------------------------ per-pair geometry


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


def map_points(h: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Points mapped by homographies: (N, 3, 3) x (K, 2) -> (N, K, 2)."""
    hom = np.concatenate([pts, np.ones((len(pts), 1))], axis=1)
    m = np.einsum("nij,kj->nki", np.asarray(h, np.float64), hom)
    with np.errstate(divide="ignore", invalid="ignore"):
        return m[..., :2] / m[..., 2:]


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


# ------------------------------------------------------------------------------ the walk


class _Walk:
    """State of one pass over the store: per-pair tallies and per-dataset accumulators."""

    def __init__(self, ds: Dataset):
        self.ds = ds
        self.sampling = ds.sampling
        self.p, self.rho = ds.patch_size, ds.rho
        self.level = self.sampling.get("photometric", "none")
        self.tol = pixel_tolerance(self.level)
        self.schema = empty_arrays(0, self.p)
        self.tallies = {name: _Tally(name) for name in PER_PAIR_CHECKS}
        self.pair_hashes: list[np.ndarray] = []
        self.label_hashes: list[np.ndarray] = []
        self.indices: list[np.ndarray] = []
        self.image_splits: list[np.ndarray] = []
        self.image_ids: list[np.ndarray] = []
        self.split_counts = {s: 0 for s in SPLIT_CODES}
        self.n_off = 0
        self.sum_off = np.zeros(8)
        self.cross_off = np.zeros((8, 8))
        self.readable: list[tuple[int, int]] = []
        self.damaged: list[dict] = []  # every damaged chunk: array, chunk, pairs, file, error
        self.missing = {(f, k) for f, ks in missing_chunks(ds.uri, ds.arrays).items() for k in ks} \
            if ds.manifest.get("format") == "zarr" else set()

    def block(self, where: _Where, stop: int) -> None:
        """Read pairs ``where.start:stop`` and run every per-pair check on them."""
        data = self._read(where, stop)
        if data is None:
            return
        if not self._check_schema(data, where):
            return
        self.readable.append((where.start, stop))
        self._check_labels(data, where)
        self._check_pixels(data, where)
        self._accumulate(data, where)

    def _read(self, where: _Where, stop: int) -> dict | None:
        """Every array's rows of one chunk; each array whose chunk is missing or fails to decode
        (checksum, codec) is recorded in :attr:`damaged` and the block is skipped."""
        data, bad = {}, {}
        for f in FIELDS:
            if (f, where.chunk) in self.missing:  # absent from storage: zarr would read the fill value, silently
                bad[f] = "chunk file missing from storage"
                continue
            try:
                data[f] = np.asarray(self.ds.arrays[f][where.start : stop])
            except Exception as exc:  # noqa: BLE001 - codecs and HDF5 raise many types on damage
                bad[f] = f"{type(exc).__name__}: {str(exc)[:160]}"
        n = stop - where.start
        if bad:
            self._unreadable(where, stop, bad)
            return None
        self.tallies["readable"].add(np.ones(n, bool), where)
        return data

    def _unreadable(self, where: _Where, stop: int, bad: dict[str, str]) -> None:
        tally, n = self.tallies["readable"], stop - where.start
        tally.checked += n
        tally.failed += n
        for f, why in sorted(bad.items()):
            self.damaged.append({
                "array": f, "chunk": where.chunk, "pairs": f"[{where.start}, {stop})",
                "file": self.ds.chunk_file(f, where.chunk), "error": why,
            })
        tally.examples = self.damaged[:MAX_EXAMPLES]

    def _check_schema(self, data: dict, where: _Where) -> bool:
        n = len(data["image_id"])
        wrong = [
            f"{f}: {data[f].dtype}{tuple(data[f].shape)} != {self.schema[f].dtype}{(n,) + self.schema[f].shape[1:]}"
            for f in FIELDS
            if data[f].dtype != self.schema[f].dtype or data[f].shape != (n,) + self.schema[f].shape[1:]
        ]
        tally = self.tallies["schema"]
        tally.add(np.full(n, not wrong), where, why=["; ".join(wrong)] * n)
        return not wrong

    def _check_labels(self, d: dict, where: _Where) -> None:
        t = self.tallies
        off, hom, cor = d["offsets"], d["homography"], d["corners"]
        finite = np.isfinite(off).all(1) & np.isfinite(hom).reshape(len(hom), -1).all(1) & np.isfinite(cor).reshape(len(cor), -1).all(1)
        t["finite"].add(finite, where)
        h22 = np.abs(hom[:, 2, 2] - 1.0)
        t["homography_normalised"].add(h22 <= H22_TOL, where, values=hom[:, 2, 2])
        ok = finite
        gap = np.full(len(off), np.inf)
        if ok.any():
            gap[ok] = reprojection_gap(hom[ok], off[ok], self.p)
        t["homography_matches_offsets"].add(gap < REPROJECTION_TOL_PX, where, values=gap)
        worst = np.where(finite, np.abs(off).max(1), np.inf)
        t["offsets_in_range"].add(worst <= self.rho, where, values=worst)
        convex = np.zeros(len(off), bool)
        convex[ok] = quads_convex(off[ok], self.p)
        t["quad_convex"].add(convex, where)
        problems = corner_problems(cor, off, self.sampling)
        t["corners_in_image"].add(np.array([not s for s in problems]), where, why=problems)

    def _check_pixels(self, d: dict, where: _Where) -> None:
        tally = self.tallies["pixels_match_homography"]
        errors, keep = [], []
        for pair, h in zip(d["pairs"], d["homography"]):
            if not np.isfinite(h).all():
                errors.append(np.inf)
                keep.append(True)
                continue
            err, n = pixel_residual(pair[0], pair[1], h, self.level)
            comparable = n >= MIN_COMPARABLE_PX
            errors.append(err if comparable else np.nan)
            keep.append(comparable)
        errors_a, keep_a = np.asarray(errors, np.float64), np.asarray(keep, bool)
        if (~keep_a).any():
            tally.note(f"pairs with fewer than {MIN_COMPARABLE_PX} comparable pixels (mostly clipped) not checked", int((~keep_a).sum()))
        tally.add(errors_a <= self.tol, where, values=errors_a, counted=keep_a)

    def _accumulate(self, d: dict, where: _Where) -> None:
        n = len(d["image_id"])
        self.indices.append(np.arange(where.start, where.start + n, dtype=np.int64))
        self.pair_hashes.append(np.array([_hash64(x.tobytes()) for x in d["pairs"]], np.uint64))
        self.label_hashes.append(np.array(
            [_hash64(i.tobytes() + c.tobytes() + o.tobytes()) for i, c, o in zip(d["image_id"], d["corners"], d["offsets"])],
            np.uint64))
        self.image_splits.append(np.unique(np.stack([d["image_id"], d["split"].astype(np.int64)], 1), axis=0))
        self.image_ids.append(np.asarray(d["image_id"], np.int64))
        for name, code in SPLIT_CODES.items():
            self.split_counts[name] += int(np.count_nonzero(d["split"] == code))
        off = np.asarray(d["offsets"], np.float64)
        off = off[np.isfinite(off).all(1)]
        self.n_off += len(off)
        self.sum_off += off.sum(0)
        self.cross_off += off.T @ off

    # -- per-pair results -------------------------------------------------------------------
    def per_pair_results(self) -> list[CheckResult]:
        t = self.tallies
        detail = {
            "readable": "every chunk of every field read and decompressed",
            "schema": "dtypes and shapes per the store schema",
            "finite": "offsets, homography, corners free of NaN/Inf",
            "homography_normalised": f"|H[2,2] - 1| <= {H22_TOL:g}",
            "homography_matches_offsets": f"corners mapped by stored H vs DLT of the offsets within {REPROJECTION_TOL_PX:g} px",
            "offsets_in_range": f"all offsets within [-{self.rho}, {self.rho}]",
            "quad_convex": "perturbed quadrilateral convex",
            "corners_in_image": "square patch with every perturbed corner inside the frame",
            "pixels_match_homography": (
                f"mean |B - A(H q)| on the interior <= {self.tol:.3g} levels"
                + ("" if self.level == "none" else f" (photometric '{self.level}': unclipped pixels, smoothed, brightness/contrast fitted)")
            ),
        }
        out = []
        for name in PER_PAIR_CHECKS:
            d = detail[name]
            if t[name].worst is not None and name in ("homography_matches_offsets", "offsets_in_range", "pixels_match_homography"):
                d += f"; worst {t[name].worst:.3g}"
            if name == "readable" and t[name].failed:
                d = f"{t[name].failed} pairs in {len(self.damaged)} damaged chunks: " + ", ".join(
                    f"{e['array']} chunk {e['chunk']} (pairs {e['pairs']}, {e['file']}: {e['error']})" for e in self.damaged)
            out.append(t[name].result(d))
        return out


def _hash64(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


# --------------------------------------------------------------------------- dataset checks


def check_counts(ds: Dataset, walk: _Walk) -> CheckResult:
    """Total and per-split counts against the manifest; the manifest's shards tile the arrays."""
    m = ds.manifest
    problems = []
    if len(ds) != m.get("num_pairs"):
        problems.append(f"store holds {len(ds)} pairs, manifest says {m.get('num_pairs')}")
    lengths = {f: int(a.shape[0]) for f, a in ds.arrays.items()}
    if len(set(lengths.values())) > 1:
        problems.append(f"arrays of different lengths {lengths}")
    at = 0
    for entry in m["shards"]:
        if entry.get("start") != at:
            problems.append(f"{entry.get('name')} starts at pair {entry.get('start')}, the previous shard ends at {at}")
        at = int(entry.get("start") or 0) + int(entry.get("pairs") or 0)
    if at != len(ds):
        problems.append(f"the manifest's shards end at pair {at}, the arrays hold {len(ds)}")
    if walk.tallies["readable"].failed == 0 and walk.split_counts != m.get("splits"):
        problems.append(f"splits {walk.split_counts}, manifest says {m.get('splits')}")
    detail = "; ".join(problems) if problems else (
        f"{len(ds)} pairs from {len(m['shards'])} shards, splits {walk.split_counts} as in the manifest")
    if walk.tallies["readable"].failed:
        detail += "; split counts not compared (damaged chunks)"
    return CheckResult("counts_match_manifest", not problems, len(ds), len(problems), detail, problems[:MAX_EXAMPLES])


def check_images(ds: Dataset, walk: _Walk) -> CheckResult:
    """Stored image ids plus quarantined ones equal the planned image list; each stored image has
    ``pairs_per_image`` pairs."""
    name = "images_accounted"
    m = ds.manifest
    if walk.tallies["readable"].failed:
        return CheckResult(name, None, 0, 0, "not checked: damaged chunks (see readable)")
    try:
        planned = np.asarray(m["source"]["files"]["image_id"], np.int64)
        quarantined = np.asarray([q["image_id"] for q in m.get("quarantine", [])], np.int64)
    except (KeyError, TypeError, ValueError) as exc:
        return CheckResult(name, False, 1, 1, f"the manifest has no planned image list ({exc!r}): regenerate the dataset")
    ids, counts = np.unique(np.concatenate(walk.image_ids) if walk.image_ids else np.empty(0, np.int64), return_counts=True)
    ppi = int(ds.sampling["pairs_per_image"])
    problems = []
    for what, values in (
        ("stored but not planned", np.setdiff1d(ids, planned)),
        ("quarantined but not planned", np.setdiff1d(quarantined, planned)),
        ("both stored and quarantined", np.intersect1d(ids, quarantined)),
        ("planned but neither stored nor quarantined", np.setdiff1d(planned, np.union1d(ids, quarantined))),
        (f"stored with other than {ppi} pairs", ids[counts != ppi]),
    ):
        if len(values):
            problems.append(f"{len(values)} images {what} (ids {values[:10].tolist()})")
    detail = "; ".join(problems) if problems else (
        f"{len(ids)} images stored ({ppi} pairs each) + {len(quarantined)} quarantined = the {len(planned)} planned")
    return CheckResult(name, not problems, len(planned), len(problems), detail, problems[:MAX_EXAMPLES])


def check_duplicates(walk: _Walk) -> CheckResult:
    """No repeated (image id, corners, offsets) and no repeated pair pixels."""
    if not walk.indices:
        return CheckResult("no_duplicates", None, 0, 0, "no readable pairs")
    idx = np.concatenate(walk.indices)
    failed, examples, parts = 0, [], []
    for what, hashes in (("same image id, corners and offsets", walk.label_hashes), ("identical pixels", walk.pair_hashes)):
        h = np.concatenate(hashes)
        _, inverse, counts = np.unique(h, return_inverse=True, return_counts=True)
        dup = counts[inverse] > 1
        n_dup = int(dup.sum() - np.count_nonzero(counts > 1))  # rows beyond the first of each group
        if n_dup:
            failed += n_dup
            parts.append(f"{n_dup} repeated pairs ({what})")
            for g in np.flatnonzero(counts > 1)[:MAX_EXAMPLES]:
                examples.append({"kind": what, "indices": idx[inverse == g].tolist()[:10]})
    detail = "; ".join(parts) if parts else "no two pairs share (image id, corners, offsets) or pixels"
    return CheckResult("no_duplicates", failed == 0, len(idx), failed, detail, examples[:MAX_EXAMPLES])


def check_uniform(walk: _Walk, rho: float) -> CheckResult:
    """Offsets spread uniformly over [-rho, rho]: means, standard deviations, correlations."""
    n = walk.n_off
    name = "offsets_uniform"
    if rho == 0:
        return CheckResult(name, None, n, 0, "not applicable: rho = 0 (offsets_in_range checks they are all 0)")
    if n < MIN_PAIRS_UNIFORMITY:
        return CheckResult(name, None, n, 0, f"not applicable: {n} pairs, a uniformity test needs at least {MIN_PAIRS_UNIFORMITY}")
    mean = walk.sum_off / n
    cov = walk.cross_off / n - np.outer(mean, mean)
    std = np.sqrt(np.clip(np.diag(cov), 0, None))
    sigma = rho / np.sqrt(3.0)
    se_mean, se_std = sigma / np.sqrt(n), rho / np.sqrt(15.0 * n)
    pooled_mean = mean.mean()
    pooled_std = np.sqrt(np.clip(np.diag(walk.cross_off).sum() / (8 * n) - pooled_mean**2, 0, None))
    z = UNIFORMITY_Z
    problems = []
    labels = ["dx_TL", "dy_TL", "dx_TR", "dy_TR", "dx_BR", "dy_BR", "dx_BL", "dy_BL"]
    for k in range(8):
        if abs(mean[k]) > z * se_mean:
            problems.append(f"{labels[k]} mean {mean[k]:.3g} (|.| > {z * se_mean:.3g})")
        if abs(std[k] - sigma) > z * se_std:
            problems.append(f"{labels[k]} std {std[k]:.3g} (expected {sigma:.3g} +- {z * se_std:.3g})")
    if abs(pooled_mean) > z * se_mean / np.sqrt(8):
        problems.append(f"pooled mean {pooled_mean:.3g}")
    if abs(pooled_std - sigma) > z * se_std / np.sqrt(8):
        problems.append(f"pooled std {pooled_std:.3g} (expected {sigma:.3g})")
    with np.errstate(divide="ignore", invalid="ignore"):
        corr = cov / np.outer(std, std)
    limit = z / np.sqrt(n)
    for i in range(8):
        for j in range(i + 1, 8):
            if not abs(corr[i, j]) <= limit:
                problems.append(f"{labels[i]} and {labels[j]} correlated ({corr[i, j]:.3g}, limit {limit:.3g})")
    detail = "; ".join(problems) if problems else (
        f"means |.| <= {np.abs(mean).max():.3g} (limit {z * se_mean:.3g}), stds {std.min():.3g}..{std.max():.3g} "
        f"(expected {sigma:.3g} +- {z * se_std:.3g}), |corr| <= {np.nanmax(np.abs(corr - np.eye(8))):.3g} "
        f"(limit {limit:.3g}), {z:g} standard errors"
    )
    return CheckResult(name, not problems, n, len(problems), detail, problems[:MAX_EXAMPLES])


def check_splits(walk: _Walk) -> CheckResult:
    """No source image in two splits (train, val, test)."""
    if not walk.image_splits:
        return CheckResult("split_disjoint", None, 0, 0, "no readable pairs")
    pairs = np.unique(np.concatenate(walk.image_splits), axis=0)
    ids, counts = np.unique(pairs[:, 0], return_counts=True)
    both = ids[counts > 1]
    detail = (
        f"{len(both)} source images have pairs in more than one split" if len(both)
        else f"{len(ids)} source images, each in one split"
    )
    return CheckResult("split_disjoint", len(both) == 0, len(ids), len(both), detail + " (counts are images)",
                       [{"image_id": int(i)} for i in both[:MAX_EXAMPLES]])


# ------------------------------------------------------------------------------ regeneration


def check_regenerate(ds: Dataset, k: int, source_root: str | None, readable: list[tuple[int, int]], seed: int = 0) -> CheckResult:
    """Remake ``k`` random pairs from their source images; pixels and labels must be bit-identical."""
    name = "regenerate"
    if k <= 0:
        return CheckResult(name, None, 0, 0, "not requested (pass regenerate=k to remake k pairs from the source)")
    cfg = ds.manifest["config"]
    root = source_root or cfg["source"]["root"]
    sampling = SamplingConfig.model_validate(cfg["sampling"])
    source = SourceConfig.model_validate({**cfg["source"], "root": root})
    try:
        records = list_images(source)
        digest = source_table(records, root).list_digest
    except (SourceError, OSError, ValueError) as exc:
        return CheckResult(name, False, 0, 0, (
            f"cannot list the source {root!r} ({exc}): pass source_root= pointing at the images "
            f"the dataset was made from (the manifest stores the root without credentials)"))
    if digest != ds.manifest["source"]["digest"]:
        return CheckResult(name, False, 0, 0, (
            f"the images listed under {root!r} differ from those the dataset was made from "
            f"(digest {digest[:12]} != {ds.manifest['source']['digest'][:12]}): pass source_root= of the original images"))
    by_id = {r.image_id: r for r in records}
    pool = np.concatenate([np.arange(a, b) for a, b in readable]) if readable else np.empty(0, np.int64)
    if pool.size == 0:
        return CheckResult(name, None, 0, 0, "no readable pairs to regenerate")
    chosen = np.sort(np.random.default_rng(seed).choice(pool, size=min(k, pool.size), replace=False))
    ppi = sampling.pairs_per_image
    failed, examples = 0, []
    frames: dict[int, np.ndarray] = {}
    for i in chosen:
        i = int(i)
        stored = ds[i]
        iid = int(stored["image_id"])
        why = ""
        if iid not in by_id:
            why = f"image id {iid} not in the source listing"
        else:
            try:
                if iid not in frames:
                    frames[iid] = load_gray(by_id[iid].path, sampling.image_width, sampling.image_height, min_side=sampling.patch_size)
                out = empty_arrays(ppi, sampling.patch_size)
                image_pairs(frames[iid], by_id[iid], sampling, out, 0)
                row = i % ppi  # every stored image holds ppi consecutive pairs
                differ = [f for f in FIELDS if not np.array_equal(out[f][row], stored[f])]
                if differ:
                    why = f"differs in {', '.join(differ)}"
            except BadImage as exc:
                why = f"source image unusable: {exc.reason}"
        if why:
            failed += 1
            if len(examples) < MAX_EXAMPLES:
                examples.append({"index": i, "image_id": iid, "why": why})
    detail = (f"{len(chosen)} pairs remade from {root}: " +
              ("bit-identical pixels and labels" if not failed else f"{failed} differ"))
    return CheckResult(name, failed == 0, len(chosen), failed, detail, examples)


# ------------------------------------------------------------------------------ entry point


def validate_dataset(
    path_or_ds: str | Dataset,
    regenerate: int = 0,
    source_root: str | None = None,
    progress: bool = True,
    seed: int = 0,
    sources: bool = False,
) -> ValidationReport:
    """Run every check on a finished store (path, URL or open :class:`Dataset`).

    Args:
        regenerate: remake this many random pairs from the source images (0: skip, reported n/a).
        source_root: the images' root when the manifest's (credentials stripped) is not usable.
        seed: which pairs ``regenerate`` picks.
        sources: also re-hash every source image (under ``source_root`` or the manifest's root)
            and name those whose bytes changed (homogen.versions.check_sources).
    """
    ds = path_or_ds if isinstance(path_or_ds, Dataset) else open_dataset(path_or_ds, check_chunks=False)
    walk = _Walk(ds)
    for k, (a, b) in enumerate(tqdm(ds.chunks(), desc=f"validate {ds.version}", unit="chunk", disable=not progress)):
        walk.block(_Where(a, k), b)
    checks = walk.per_pair_results()
    checks += [
        check_counts(ds, walk),
        check_images(ds, walk),
        check_duplicates(walk),
        check_uniform(walk, ds.rho),
        check_splits(walk),
        check_regenerate(ds, regenerate, source_root, walk.readable, seed),
        check_version(ds.manifest),
        check_sources(ds.manifest, sources, source_root),
    ]
    passed = all(c.passed is not False for c in checks)
    return ValidationReport(ds.version, redact(ds.uri), len(ds), checks, passed)
