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

import hashlib
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from homogen.check_report import MAX_EXAMPLES, CheckResult, ValidationReport
from homogen.dataset_checks import (
    MIN_PAIRS_UNIFORMITY,
    UNIFORMITY_Z,
    check_counts,
    check_duplicates,
    check_images,
    check_splits,
    check_uniform,
)
from homogen.label_check import H22_TOL, REPROJECTION_TOL_PX, corner_problems, reprojection_gap
from homogen.pixel_check import MIN_COMPARABLE_PX, pixel_residual, pixel_tolerance, warp_a_by_h
from homogen.redaction import redact
from homogen.regenerate import check_regenerate
from homogen.sampling import quads_convex
from homogen.schema import FIELDS, SPLIT_CODES, empty_arrays
from homogen.stores import Dataset, missing_chunks, open_dataset
from homogen.versions import check_sources, check_version

__all__ = [  # the checks' parts live in their modules; these names are this module's interface
    "MAX_EXAMPLES",
    "MIN_PAIRS_UNIFORMITY",
    "PER_PAIR_CHECKS",
    "UNIFORMITY_Z",
    "CheckResult",
    "ValidationReport",
    "pixel_tolerance",
    "validate_dataset",
    "warp_a_by_h",
]

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


# ------------------------------------------------------------------------------ the walk


class _Tally:
    """Counts of one per-pair check, the first few failures, and the worst value seen."""

    def __init__(self, name: str):
        self.name = name
        self.checked = 0
        self.failed = 0
        self.examples: list = []
        self.worst: float | None = None
        self.notes: dict[str, int] = {}

    def add(
        self,
        ok: np.ndarray,
        where: "_Where",
        values: np.ndarray | None = None,
        why: list[str] | None = None,
        counted: np.ndarray | None = None,
    ) -> None:
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


class Walk:
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
        self.missing = (
            {(f, k) for f, ks in missing_chunks(ds.uri, ds.arrays).items() for k in ks}
            if ds.manifest.get("format") == "zarr"
            else set()
        )

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
            self.damaged.append(
                {
                    "array": f,
                    "chunk": where.chunk,
                    "pairs": f"[{where.start}, {stop})",
                    "file": self.ds.chunk_file(f, where.chunk),
                    "error": why,
                }
            )
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
        finite = (
            np.isfinite(off).all(1)
            & np.isfinite(hom).reshape(len(hom), -1).all(1)
            & np.isfinite(cor).reshape(len(cor), -1).all(1)
        )
        t["finite"].add(finite, where)
        h22 = np.abs(hom[:, 2, 2] - 1.0)
        t["homography_normalised"].add(h22 <= H22_TOL, where, values=hom[:, 2, 2])
        gap = np.full(len(off), np.inf)
        if finite.any():
            gap[finite] = reprojection_gap(hom[finite], off[finite], self.p)
        t["homography_matches_offsets"].add(gap < REPROJECTION_TOL_PX, where, values=gap)
        worst = np.where(finite, np.abs(off).max(1), np.inf)
        t["offsets_in_range"].add(worst <= self.rho, where, values=worst)
        convex = np.zeros(len(off), bool)
        convex[finite] = quads_convex(off[finite], self.p)
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
            tally.note(
                f"pairs with fewer than {MIN_COMPARABLE_PX} comparable pixels (mostly clipped) not checked",
                int((~keep_a).sum()),
            )
        tally.add(errors_a <= self.tol, where, values=errors_a, counted=keep_a)

    def _accumulate(self, d: dict, where: _Where) -> None:
        n = len(d["image_id"])
        self.indices.append(np.arange(where.start, where.start + n, dtype=np.int64))
        self.pair_hashes.append(np.array([_hash64(x.tobytes()) for x in d["pairs"]], np.uint64))
        self.label_hashes.append(
            np.array(
                [
                    _hash64(i.tobytes() + c.tobytes() + o.tobytes())
                    for i, c, o in zip(d["image_id"], d["corners"], d["offsets"])
                ],
                np.uint64,
            )
        )
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
                + (
                    ""
                    if self.level == "none"
                    else f" (photometric '{self.level}': unclipped pixels, smoothed, brightness/contrast fitted)"
                )
            ),
        }
        out = []
        for name in PER_PAIR_CHECKS:
            d = detail[name]
            if t[name].worst is not None and name in (
                "homography_matches_offsets",
                "offsets_in_range",
                "pixels_match_homography",
            ):
                d += f"; worst {t[name].worst:.3g}"
            if name == "readable" and t[name].failed:
                d = f"{t[name].failed} pairs in {len(self.damaged)} damaged chunks: " + ", ".join(
                    f"{e['array']} chunk {e['chunk']} (pairs {e['pairs']}, {e['file']}: {e['error']})"
                    for e in self.damaged
                )
            out.append(t[name].result(d))
        return out


def _hash64(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


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
    walk = Walk(ds)
    for k, (a, b) in enumerate(tqdm(ds.chunks(), desc=f"validate {ds.version}", unit="chunk", disable=not progress)):
        walk.block(_Where(a, k), b)
    checks = walk.per_pair_results()
    checks += [
        check_counts(ds, walk),
        check_images(ds, walk),
        check_duplicates(walk),
        check_uniform(walk, ds.rho),
        check_splits(ds, walk),
        check_regenerate(ds, regenerate, source_root, walk.readable, seed),
        check_version(ds.manifest),
        check_sources(ds.manifest, sources, source_root),
    ]
    passed = all(c.passed is not False for c in checks)
    return ValidationReport(ds.version, redact(ds.uri), len(ds), checks, passed)
