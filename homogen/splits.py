"""Which split each source image belongs to: ``train``, ``val`` or ``test``, decided once, here.

A split is a property of the image, never of a pair's position: every pair of one image is in the
image's split, so no two splits share a source image. The assignment depends on the image id only,
so the same ids always give the same splits, however the source is listed, filtered or sharded.

One hash of the id, :func:`unit_hash`, uniform on [0, 1), decides both carve-outs:

- ``test``: the images of a separate COCO split (``--test-split val2017``), or, with one image
  set, the ids with ``u < test_fraction`` (the same rule and hash as before ``val`` existed, so
  existing test splits are unchanged);
- ``val``: carved out of the training images: the remaining ids with
  ``(u - test_fraction) / (1 - test_fraction) < val_fraction``, i.e. the next band of the same hash,
  rescaled so that ``val_fraction`` is a share of the *training* images, whichever way ``test`` was
  made.

Default ``val_fraction`` = 0.05 (SourceConfig): on full COCO train2017 that is ~5,900 images,
~23,700 pairs at 4 per image, far more than model selection needs (the standard error of a mean
MACE over that many images is about a tenth of a pixel or less), while every extra percent costs
~1,200 training images; the bundled 32-image sample still gets 2 val images (8 pairs). Pass a
larger fraction for small image sets.
"""

from __future__ import annotations

import hashlib


def unit_hash(image_id: int) -> float:
    """A stable number in [0, 1) from the image id alone (SHA-256 of its decimal form)."""
    digest = hashlib.sha256(str(int(image_id)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def hashed_split(image_id: int, test_fraction: float, val_fraction: float = 0.0) -> str:
    """'test', 'val' or 'train' for one image of a set that is split by hash.

    Args:
        test_fraction: share of all images in 'test' (0 when test images come from elsewhere).
        val_fraction: share of the remaining (training) images in 'val'.
    """
    u = unit_hash(image_id)
    if u < test_fraction:
        return "test"
    if test_fraction < 1.0 and (u - test_fraction) / (1.0 - test_fraction) < val_fraction:
        return "val"
    return "train"


def training_split(image_id: int, val_fraction: float) -> str:
    """'val' or 'train' for an image of a training set whose test images come from another split."""
    return hashed_split(image_id, 0.0, val_fraction)
