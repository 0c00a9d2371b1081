"""The per-pair checks, as rows: a name, a function of one block of pairs, and the sentence the
report shows. The walk (:mod:`homogen.validation.walk`) runs every row on every readable block.

A row's function gets the block (``{field: array}`` of the store schema, N rows) and the
:class:`Context` of the dataset, and returns an :class:`Outcome`: ``ok`` per pair, and optionally
the measured value per pair (its worst is reported), a sentence per pair for failures, and which
pairs were counted as checked at all (a pixel check needs enough comparable pixels).

The checks are documented, with their tolerances and how they were measured, in
:mod:`homogen.validation`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from homogen.sampling import quads_convex
from homogen.validation.label_check import H22_TOL, REPROJECTION_TOL_PX, corner_problems, reprojection_gap
from homogen.validation.pixel_check import MIN_COMPARABLE_PX, pixel_residual, pixel_tolerance


@dataclass(frozen=True)
class Context:
    """What every check needs to know about the dataset: its recipe, from the manifest."""

    sampling: dict

    @property
    def p(self) -> int:
        return int(self.sampling["patch_size"])

    @property
    def rho(self) -> int:
        return int(self.sampling["rho"])

    @property
    def level(self) -> str:
        return self.sampling.get("photometric", "none")

    @property
    def tol(self) -> float:
        return pixel_tolerance(self.level)


@dataclass
class Outcome:
    ok: np.ndarray
    values: np.ndarray | None = None
    why: list[str] | None = None
    counted: np.ndarray | None = None
    note: tuple[str, int] | None = None
    """A remark counted over the dataset (what was not checked, and how often)."""


@dataclass(frozen=True)
class PairCheck:
    name: str
    run: Callable[[dict, Context], Outcome]
    detail: Callable[[Context], str]
    worst: bool = False
    """Report the largest measured value."""


def _finite(d: dict) -> np.ndarray:
    off, hom, cor = d["offsets"], d["homography"], d["corners"]
    return (
        np.isfinite(off).all(1)
        & np.isfinite(hom).reshape(len(hom), -1).all(1)
        & np.isfinite(cor).reshape(len(cor), -1).all(1)
    )


def finite(d: dict, ctx: Context) -> Outcome:
    return Outcome(_finite(d))


def homography_normalised(d: dict, ctx: Context) -> Outcome:
    hom = d["homography"]
    return Outcome(np.abs(hom[:, 2, 2] - 1.0) <= H22_TOL, values=hom[:, 2, 2])


def homography_matches_offsets(d: dict, ctx: Context) -> Outcome:
    ok = _finite(d)
    gap = np.full(len(d["offsets"]), np.inf)
    if ok.any():
        gap[ok] = reprojection_gap(d["homography"][ok], d["offsets"][ok], ctx.p)
    return Outcome(gap < REPROJECTION_TOL_PX, values=gap)


def offsets_in_range(d: dict, ctx: Context) -> Outcome:
    worst = np.where(_finite(d), np.abs(d["offsets"]).max(1), np.inf)
    return Outcome(worst <= ctx.rho, values=worst)


def quad_convex(d: dict, ctx: Context) -> Outcome:
    ok = _finite(d)
    convex = np.zeros(len(ok), bool)
    convex[ok] = quads_convex(d["offsets"][ok], ctx.p)
    return Outcome(convex)


def corners_in_image(d: dict, ctx: Context) -> Outcome:
    problems = corner_problems(d["corners"], d["offsets"], ctx.sampling)
    return Outcome(np.array([not s for s in problems], bool), why=problems)


def pixels_match_homography(d: dict, ctx: Context) -> Outcome:
    errors, keep = [], []
    for pair, h in zip(d["pairs"], d["homography"]):
        if not np.isfinite(h).all():
            errors.append(np.inf)
            keep.append(True)
            continue
        err, n = pixel_residual(pair[0], pair[1], h, ctx.level)
        comparable = n >= MIN_COMPARABLE_PX
        errors.append(err if comparable else np.nan)
        keep.append(comparable)
    errors_a, keep_a = np.asarray(errors, np.float64), np.asarray(keep, bool)
    skipped = int((~keep_a).sum())
    note = (
        (f"pairs with fewer than {MIN_COMPARABLE_PX} comparable pixels (mostly clipped) not checked", skipped)
        if skipped
        else None
    )
    return Outcome(errors_a <= ctx.tol, values=errors_a, counted=keep_a, note=note)


def _pixel_detail(ctx: Context) -> str:
    extra = (
        ""
        if ctx.level == "none"
        else f" (photometric '{ctx.level}': unclipped pixels, smoothed, brightness/contrast fitted)"
    )
    return f"mean |B - A(H q)| on the interior <= {ctx.tol:.3g} levels" + extra


PAIR_CHECKS: tuple[PairCheck, ...] = (
    PairCheck("finite", finite, lambda c: "offsets, homography, corners free of NaN/Inf"),
    PairCheck("homography_normalised", homography_normalised, lambda c: f"|H[2,2] - 1| <= {H22_TOL:g}"),
    PairCheck(
        "homography_matches_offsets",
        homography_matches_offsets,
        lambda c: f"corners mapped by stored H vs DLT of the offsets within {REPROJECTION_TOL_PX:g} px",
        worst=True,
    ),
    PairCheck("offsets_in_range", offsets_in_range, lambda c: f"all offsets within [-{c.rho}, {c.rho}]", worst=True),
    PairCheck("quad_convex", quad_convex, lambda c: "perturbed quadrilateral convex"),
    PairCheck(
        "corners_in_image", corners_in_image, lambda c: "square patch with every perturbed corner inside the frame"
    ),
    PairCheck("pixels_match_homography", pixels_match_homography, _pixel_detail, worst=True),
)
"""Every per-pair check after ``readable`` and ``schema`` (which the walk runs itself: a block
that fails them is not given to these), in report order."""
