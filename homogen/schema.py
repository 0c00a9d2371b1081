"""The store schema, defined once: fields, dtypes, per-row shapes, dimension names, split codes,
shard names and the schema version.

Writers (:mod:`homogen.generate`, :mod:`homogen.store`), readers (:class:`homogen.store.Dataset`,
``homogen.model.data``), validation and the benchmarks all take these from here.

Every field is one array of ``N`` rows (one row per pair) at the store's root; ``P`` is the
patch size (``sampling.patch_size`` in the manifest).

================  =========  ===============  ==========================================
field             dtype      row shape        dimension names
================  =========  ===============  ==========================================
``pairs``         uint8      (2, P, P)        pair, ab, y, x   (ab: 0 = patch A, 1 = B)
``offsets``       float32    (8,)             pair, offset     (dx_TL, dy_TL, ..., dy_BL)
``homography``    float64    (3, 3)           pair, h_row, h_col  (patch-local H_AB)
``corners``       float32    (4, 2)           pair, corner, xy (TL, TR, BR, BL in the image)
``image_id``      int64      ()               pair
``split``         uint8      ()               pair             (:data:`SPLIT_CODES`)
================  =========  ===============  ==========================================
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SCHEMA_VERSION = 2
"""Bump when the store layout (fields, shapes, manifest keys) changes.

1: one group (Zarr) or file (HDF5) per shard, stitched by the manifest.
2: one array per field at the root, checksummed chunks, dimension names, consolidated metadata.
"""

LABEL_NAMES = ("dx_TL", "dy_TL", "dx_TR", "dy_TR", "dx_BR", "dy_BR", "dx_BL", "dy_BL")
"""The 8 columns of ``offsets``, in order (CONVENTIONS.md)."""

SPLIT_CODES = {"train": 0, "test": 1, "val": 2}
"""Value of the ``split`` field for each split."""

SPLIT_NAMES = {code: name for name, code in SPLIT_CODES.items()}

ROW_DIM = "pair"
"""Name of the first dimension of every field."""


@dataclass(frozen=True)
class Field:
    """One array of the store: ``N`` rows of ``row_shape(P)`` elements of ``dtype``."""

    name: str
    dtype: np.dtype
    shape: tuple[int | str, ...]
    """Per-row shape; the string ``"P"`` stands for the patch size."""
    dims: tuple[str, ...]
    """Dimension names of the whole array, starting with :data:`ROW_DIM`."""

    def row_shape(self, patch_size: int) -> tuple[int, ...]:
        return tuple(int(patch_size) if d == "P" else int(d) for d in self.shape)


SCHEMA: tuple[Field, ...] = (
    Field("pairs", np.dtype(np.uint8), (2, "P", "P"), (ROW_DIM, "ab", "y", "x")),
    Field("offsets", np.dtype(np.float32), (8,), (ROW_DIM, "offset")),
    Field("homography", np.dtype(np.float64), (3, 3), (ROW_DIM, "h_row", "h_col")),
    Field("corners", np.dtype(np.float32), (4, 2), (ROW_DIM, "corner", "xy")),
    Field("image_id", np.dtype(np.int64), (), (ROW_DIM,)),
    Field("split", np.dtype(np.uint8), (), (ROW_DIM,)),
)

FIELDS = tuple(f.name for f in SCHEMA)
BY_NAME = {f.name: f for f in SCHEMA}


def split_code(split: str) -> int:
    """The ``split`` value of a split name; a ValueError names the valid ones."""
    if split not in SPLIT_CODES:
        raise ValueError(f"unknown split {split!r}: use one of {', '.join(SPLIT_CODES)}")
    return SPLIT_CODES[split]


def empty_arrays(n: int, patch_size: int) -> dict[str, np.ndarray]:
    """Uninitialised arrays of the schema for ``n`` pairs: ``{field: (n, *row_shape)}``."""
    return {f.name: np.empty((n,) + f.row_shape(patch_size), f.dtype) for f in SCHEMA}


def shard_name(index: int) -> str:
    """Name of shard ``index`` while it is staged (``shard-00000``)."""
    return f"shard-{index:05d}"
