"""A picture of some pairs, to see what a dataset holds (and what a model predicts), OpenCV only.

For each pair, side by side:

- A, with the perturbed quadrilateral (patch corners + offsets, patch-local) in green: the part of
  A that B shows. Its corners can lie up to rho px outside A, so A sits on a dark margin of
  rho + 4 px where those corners are drawn (the pixels there were not stored: the margin is flat).
- B, with the image of that quadrilateral in B: since ``B(q) = A(H q)`` and the quadrilateral is
  H of the patch square, its image is B's own border, drawn in green.
- With ``predicted_offsets``: the predicted quadrilateral in red on A, and on B the B-points that
  the predicted corners really correspond to, ``H^-1 (corner + predicted offset)``. A perfect
  prediction puts red on green in both; the gap between them on B is the error in B's frame.

Coordinates are pixel centres (OpenCV's convention, the one H uses): corner (0, 0) is the centre
of A's first pixel, corner (P, P) the centre of the pixel just past its last one. Lines are drawn
with sub-pixel precision (``shift``), not anti-aliased, so every drawn pixel is exactly green or red.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import cv2
import numpy as np

from homogen.sampling import patch_corners
from homogen.schema import SPLIT_NAMES
from homogen.store import Dataset

GREEN = (0, 255, 0)
RED = (0, 0, 255)
BACKGROUND = (48, 48, 48)
TEXT = (255, 255, 255)
LABEL_H = 16
GAP = 6
SEP = 12
SHIFT = 4


@dataclass(frozen=True)
class GridLayout:
    """Where each pair sits in the grid; all positions are (x, y) pixels of the grid image.

    A tile is a label band of ``LABEL_H`` px above two cells (A, then B) of side ``P + 2*margin``.
    """

    patch_size: int
    margin: int
    count: int
    cols: int

    @property
    def cell(self) -> int:
        return self.patch_size + 2 * self.margin

    @property
    def tile_w(self) -> int:
        return 2 * self.cell + GAP

    @property
    def tile_h(self) -> int:
        return LABEL_H + self.cell

    @property
    def rows(self) -> int:
        return -(-self.count // self.cols)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(height, width, 3) of the grid image."""
        return (SEP + self.rows * (self.tile_h + SEP), SEP + self.cols * (self.tile_w + SEP), 3)

    def tile_origin(self, k: int) -> tuple[int, int]:
        r, c = divmod(k, self.cols)
        return SEP + c * (self.tile_w + SEP), SEP + r * (self.tile_h + SEP)

    def a_origin(self, k: int) -> tuple[int, int]:
        """Grid position of patch A's pixel (0, 0) for the k-th pair shown."""
        x, y = self.tile_origin(k)
        return x + self.margin, y + LABEL_H + self.margin

    def b_origin(self, k: int) -> tuple[int, int]:
        """Grid position of patch B's pixel (0, 0) for the k-th pair shown."""
        x, y = self.a_origin(k)
        return x + self.cell + GAP, y


def grid_layout(ds: Dataset, count: int, cols: int = 4) -> GridLayout:
    """The layout of ``count`` pairs of ``ds``, ``cols`` pairs per row."""
    return GridLayout(ds.patch_size, max(ds.rho, 0) + 4, count, max(1, min(cols, count)))


def default_indices(ds: Dataset, n: int) -> np.ndarray:
    """``n`` pair indices spread evenly over the dataset (so several shards show)."""
    if len(ds) == 0:
        raise ValueError(f"{ds!r} holds no pairs: nothing to draw")
    return np.unique(np.linspace(0, len(ds) - 1, min(n, len(ds))).round().astype(np.int64))


def _polyline(img: np.ndarray, pts: np.ndarray, origin: tuple[int, int], color: tuple[int, int, int]) -> None:
    """Closed polygon of (K, 2) float points, relative to ``origin``, at sub-pixel precision."""
    fixed = np.rint((np.asarray(pts, np.float64) + np.asarray(origin, np.float64)) * (1 << SHIFT)).astype(np.int32)
    cv2.polylines(img, [fixed.reshape(-1, 1, 2)], True, color, 1, cv2.LINE_8, SHIFT)


def _paste(img: np.ndarray, patch: np.ndarray, origin: tuple[int, int]) -> None:
    x, y = origin
    p = patch.shape[0]
    img[y : y + p, x : x + p] = cv2.cvtColor(patch, cv2.COLOR_GRAY2BGR)


def draw_pair(img: np.ndarray, layout: GridLayout, k: int, pair: dict, predicted: np.ndarray | None = None) -> None:
    """Draw one pair (a row of the dataset: pairs, offsets, homography, image_id, split) as tile ``k``."""
    p = layout.patch_size
    a_org, b_org = layout.a_origin(k), layout.b_origin(k)
    square = patch_corners(p).astype(np.float64)
    _paste(img, pair["pairs"][0], a_org)
    _paste(img, pair["pairs"][1], b_org)
    _polyline(img, square + np.asarray(pair["offsets"], np.float64).reshape(4, 2), a_org, GREEN)
    _polyline(img, square, b_org, GREEN)
    if predicted is not None:
        in_a = square + np.asarray(predicted, np.float64).reshape(4, 2)
        in_b = cv2.perspectiveTransform(in_a[None], np.linalg.inv(np.asarray(pair["homography"], np.float64)))[0]
        _polyline(img, in_a, a_org, RED)
        _polyline(img, in_b, b_org, RED)
    tx, ty = layout.tile_origin(k)
    split = SPLIT_NAMES.get(int(pair["split"]), "?")
    label = f"#{pair['index']} image {int(pair['image_id'])} {split}   A | B"
    cv2.putText(img, label, (tx + 2, ty + LABEL_H - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, TEXT, 1, cv2.LINE_AA)


def sample_grid(
    ds: Dataset,
    n: int = 8,
    indices=None,
    predicted_offsets: np.ndarray | None = None,
    cols: int = 4,
) -> np.ndarray:
    """A BGR picture of pairs of ``ds`` with their true (green) and predicted (red) quadrilaterals.

    Args:
        n: pairs shown when ``indices`` is None (spread evenly over the dataset).
        indices: pair indices to show, in order.
        predicted_offsets: (len(indices), 8) predicted labels, same order, or None.
        cols: pairs per row.
    Returns:
        (H, W, 3) uint8, H x W = :attr:`GridLayout.shape` of :func:`grid_layout`.
    """
    idx = default_indices(ds, n) if indices is None else np.asarray(indices, np.int64).reshape(-1)
    if idx.size == 0:
        raise ValueError("indices is empty: pass at least one pair index")
    bad = idx[(idx < 0) | (idx >= len(ds))]
    if bad.size:
        raise IndexError(f"pair indices {bad[:5].tolist()} out of range for {len(ds)} pairs")
    pred = None
    if predicted_offsets is not None:
        pred = np.asarray(predicted_offsets, np.float64)
        if pred.shape != (idx.size, 8):
            raise ValueError(
                f"predicted_offsets has shape {pred.shape}, expected ({idx.size}, 8): one row of 8 offsets per pair shown"
            )
    layout = grid_layout(ds, idx.size, cols)
    img = np.empty(layout.shape, np.uint8)
    img[:] = BACKGROUND
    for k, i in enumerate(idx):
        pair = {**ds[int(i)], "index": int(i)}
        draw_pair(img, layout, k, pair, None if pred is None else pred[k])
    return img


def save_png(img: np.ndarray, path: str) -> str:
    """Write ``img`` (BGR uint8) as a PNG at ``path`` (parent folders made); returns the path."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise ValueError(f"cannot encode an image of shape {img.shape} and dtype {img.dtype} as PNG: pass BGR uint8")
    with open(path, "wb") as f:
        f.write(buf.tobytes())
    return path
