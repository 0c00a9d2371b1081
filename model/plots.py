"""Pictures of an evaluation, one per method: the MACE distribution, and A warped onto B.

- ``errors_<method>.png``: histogram of per-pair MACE (log-spaced bins from 0.01 to 100 px, so
  sub-pixel and gross errors both show), with mean, median, p95 and failures in the title.
- ``overlay_<method>.png``: a few test pairs drawn by :func:`homogen.render.sample_grid` (true
  quadrilateral green, this method's red) above, for each pair, A warped by the method's H onto
  B's frame: B in green, warped A in magenta, so aligned structure is grey and a misalignment
  shows as green/magenta fringes.

:func:`write_plots` writes both for every method of a :func:`homogen.model.evaluate.evaluate_methods`
result made with ``return_predictions=True`` on the store's pairs in store order.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import cv2
import numpy as np

from homogen.render import BACKGROUND, TEXT, sample_grid, save_png
from homogen.geometry import patch_homography, warp_by_h

__all__ = ["error_histogram", "overlay", "overlay_strip", "write_plots"]

BINS = np.logspace(-2, 2, 41)
"""Histogram bin edges, pixels (errors outside are clipped into the end bins)."""
TITLE_H = 22


def error_histogram(errors: np.ndarray, path: str | os.PathLike, title: str) -> str:
    """PNG histogram of per-pair errors :math:`(n,)` in pixels, log-spaced bins. Returns the path."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    e = np.clip(np.asarray(errors, np.float64).reshape(-1), BINS[0], BINS[-1])
    fig, ax = plt.subplots(figsize=(5.0, 3.2), dpi=100)
    fig.subplots_adjust(left=0.13, right=0.97, bottom=0.16, top=0.86)
    ax.hist(e, bins=BINS, color="#4060c0")
    ax.set_xscale("log")
    ax.axvline(1.0, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xlabel("MACE per pair (px)")
    ax.set_ylabel("pairs")
    ax.set_title(title, fontsize=9)
    fig.savefig(os.fspath(path))
    plt.close(fig)
    return os.fspath(path)


def overlay(a: np.ndarray, b: np.ndarray, h: np.ndarray) -> np.ndarray:
    """A warped by H (``A(H q)``) in magenta over B in green: (P, P) uint8 x2, (3, 3) -> (P, P, 3) BGR."""
    warped = warp_by_h(a, h)
    return np.dstack([warped, b, warped])


def overlay_strip(pairs: np.ndarray, offsets: np.ndarray, width: int, cell: int, tile_w: int, sep: int) -> np.ndarray:
    """One row of :func:`overlay` cells, cell ``k`` under the ``k``-th tile of a sample grid row.

    Args:
        pairs: uint8 :math:`(k, 2, P, P)`; offsets: :math:`(k, 8)` (the method's estimates).
        width: width of the grid image; cell, tile_w, sep: its cell side, tile width and gap.
    """
    p = pairs.shape[-1]
    strip = np.empty((p + sep, width, 3), np.uint8)
    strip[:] = BACKGROUND
    for k, (pair, off) in enumerate(zip(pairs, offsets)):
        x = sep + k * (tile_w + sep) + (tile_w - p) // 2
        if x + p > width:
            break
        strip[:p, x : x + p] = overlay(pair[0], pair[1], patch_homography(off, p))
    return strip


def _title(text: str, width: int) -> np.ndarray:
    band = np.empty((TITLE_H, width, 3), np.uint8)
    band[:] = BACKGROUND
    cv2.putText(band, text, (6, TITLE_H - 7), cv2.FONT_HERSHEY_SIMPLEX, 0.45, TEXT, 1, cv2.LINE_AA)
    return band


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def write_plots(
    folder: str | os.PathLike,
    ds: Any,
    results: Mapping[str, Mapping[str, Any]],
    pairs: np.ndarray,
    indices: Sequence[int],
    n: int = 4,
) -> list[str]:
    """``errors_<method>.png`` and ``overlay_<method>.png`` for every method in ``results``.

    Args:
        ds: the store the pairs come from (for :func:`homogen.render.sample_grid`).
        results: ``{method: {"pred" (n,8), "errors" (n,), "mean", "median", "p95", "failures", "n"}}``.
        pairs: the evaluated uint8 pairs :math:`(m, 2, P, P)`, row ``j`` = store index ``indices[j]``.
        n: pairs drawn per method (the first ``n``).

    Returns:
        The paths written.
    """
    from homogen.model.evaluate import method_label

    from homogen.render import SEP, grid_layout

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    idx = np.asarray(indices, np.int64)[: min(n, len(pairs))]
    layout = grid_layout(ds, len(idx), cols=len(idx)) if len(idx) else None
    paths = []
    for name, r in results.items():
        if "pred" not in r:
            continue
        label = method_label(name)
        title = (
            f"{label}: mean {r['mean']:.2f}, median {r['median']:.2f}, p95 {r['p95']:.2f} px; "
            f"failures {r['failures']}/{r['n']}"
        )
        paths.append(error_histogram(r["errors"], out / f"errors_{_slug(name)}.png", title))
        if layout is None:
            continue
        pred = np.asarray(r["pred"])[: len(idx)]
        grid = sample_grid(ds, indices=idx, predicted_offsets=pred, cols=len(idx))
        strip = overlay_strip(pairs[: len(idx)], pred, grid.shape[1], layout.cell, layout.tile_w, SEP)
        band = _title(f"{label}: true green, estimate red; below, A warped onto B (B green, A magenta)", grid.shape[1])
        picture = np.vstack([band, grid, strip])
        paths.append(save_png(picture, str(out / f"overlay_{_slug(name)}.png")))
    return paths
