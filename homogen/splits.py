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

Images with the same bytes (a copy, a symlink, the same COCO file listed under two ids) are one
image for the splits: :func:`unify_same_bytes` gives every member of such a group the split of
its lowest id, and the manifest records the groups (``source.same_bytes``), so a photo never
trains and tests at once. Such a source is never refused for it.

Default ``val_fraction`` = 0.05 (SourceConfig): on full COCO train2017 that is ~5,900 images,
~23,700 pairs at 4 per image, far more than model selection needs (the standard error of a mean
MACE over that many images is about a tenth of a pixel or less), while every extra percent costs
~1,200 training images; the bundled 32-image sample still gets 2 val images (8 pairs). Pass a
larger fraction for small image sets.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from homogen.sources import ImageRecord


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


def same_bytes_groups(image_ids: Sequence[int], digests: Sequence[str | None]) -> list[list[int]]:
    """The ids of images that share a content digest, as sorted lists of two or more ids, ordered
    by their lowest id (images without a digest, i.e. missing or unreadable, share nothing)."""
    by_digest: dict[str, list[int]] = {}
    for image_id, digest in zip(image_ids, digests):
        if digest is not None:
            by_digest.setdefault(digest, []).append(int(image_id))
    return sorted((sorted(ids) for ids in by_digest.values() if len(ids) > 1), key=lambda g: g[0])


def unify_same_bytes(
    records: Sequence["ImageRecord"], digests: Sequence[str | None]
) -> tuple[list["ImageRecord"], list[list[int]]]:
    """``records`` with every image of a same-bytes group in the split of the group's lowest id,
    and the groups (:func:`same_bytes_groups`)."""
    groups = same_bytes_groups([r.image_id for r in records], digests)
    split_of = {r.image_id: r.split for r in records}
    rule = {i: split_of[g[0]] for g in groups for i in g}
    out = [
        r if rule.get(r.image_id, r.split) == r.split else dataclasses.replace(r, split=rule[r.image_id])
        for r in records
    ]
    return out, groups
