"""Image sources: a COCO layout (read with pycocotools) or a plain folder, split and sharded.

Every list is in a stable order (by image id), so the same input always gives the same shards,
and every image carries its split, decided by its identity, never by its position.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import posixpath
import re
from dataclasses import dataclass

import fsspec

from homogen.config import SourceConfig
from homogen.redaction import redact
from homogen.splits import hashed_split, training_split

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class SourceError(ValueError):
    """The source cannot be listed at all (missing folder, malformed annotations)."""


@dataclass(frozen=True)
class ImageRecord:
    """One source image: a stable integer id, where to read it, and its split (homogen.splits)."""

    image_id: int
    path: str
    split: str


@dataclass(frozen=True)
class Shard:
    """A fixed run of images, the unit of parallel work and of atomic writes."""

    index: int
    records: tuple[ImageRecord, ...]

    @property
    def name(self) -> str:
        return f"shard-{self.index:05d}"


def folder_image_id(name: str) -> int:
    """Id of a file in a plain folder: its numeric stem (COCO names) or a stable 62-bit hash."""
    stem = posixpath.splitext(posixpath.basename(name))[0]
    if re.fullmatch(r"\d{1,18}", stem):
        return int(stem)
    return int.from_bytes(hashlib.sha256(stem.encode()).digest()[:8], "big") >> 2


def _fs(root: str):
    fs, path = fsspec.core.url_to_fs(root)
    return fs, path.rstrip("/")


def _join(root: str, *parts: str) -> str:
    return root.rstrip("/") + "/" + "/".join(parts)


def detect_kind(cfg: SourceConfig) -> str:
    if cfg.kind != "auto":
        return cfg.kind
    fs, path = _fs(cfg.root)
    ann = f"{path}/annotations/instances_{cfg.train_split}.json"
    return "coco" if fs.exists(ann) else "folder"


def _load_coco(root: str, split: str):
    """pycocotools COCO index of ``root/annotations/instances_<split>.json`` (path or URL)."""
    from pycocotools.coco import COCO

    ann = _join(root, "annotations", f"instances_{split}.json")
    try:
        with fsspec.open(ann, "rb") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise SourceError(
            f"annotations file {redact(ann)} not found: a COCO root needs "
            f"annotations/instances_{split}.json (or use kind='folder' for a plain image folder)"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SourceError(
            f"annotations file {redact(ann)} is not valid JSON ({exc}): re-download it or "
            f"point the source at a plain image folder with kind='folder'"
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise SourceError(
            f"annotations file {redact(ann)} has no 'images' list: it is not a COCO instances file"
        )
    coco = COCO()
    coco.dataset = data
    data.setdefault("annotations", [])
    data.setdefault("categories", [])
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            coco.createIndex()
    except (KeyError, TypeError) as exc:
        raise SourceError(f"annotations file {redact(ann)} is malformed: missing field {exc}") from None
    return coco


def _coco_records(cfg: SourceConfig, split: str, assign) -> list[ImageRecord]:
    coco = _load_coco(cfg.root, split)
    if cfg.categories:
        names = {c["name"]: c["id"] for c in coco.loadCats(coco.getCatIds())}
        unknown = sorted(set(cfg.categories) - set(names))
        if unknown:
            raise SourceError(
                f"unknown COCO categories {unknown} in source.categories; known: {sorted(names)[:10]}..."
            )
        ids: set[int] = set()
        for name in cfg.categories:
            ids.update(coco.getImgIds(catIds=[names[name]]))
        img_ids = sorted(ids)
    else:
        img_ids = sorted(coco.getImgIds())
    if cfg.max_images:
        img_ids = img_ids[: cfg.max_images]
    out = []
    for info in coco.loadImgs(img_ids):
        out.append(
            ImageRecord(int(info["id"]), _join(cfg.root, split, info["file_name"]), assign(int(info["id"])))
        )
    return out


def _folder_records(cfg: SourceConfig) -> list[ImageRecord]:
    fs, path = _fs(cfg.root)
    if not fs.isdir(path):
        raise SourceError(f"source folder {redact(cfg.root)} does not exist: check source.root")
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    names = sorted(p for p in fs.find(path) if p.lower().endswith(IMAGE_SUFFIXES))
    recs = {}
    for name in names:
        image_id = folder_image_id(name)
        if image_id in recs:
            raise SourceError(
                f"two files in {redact(cfg.root)} map to image id {image_id} "
                f"({recs[image_id].path} and {name}): rename one of them"
            )
        full = name if protocol in ("file", "local") else f"{protocol}://{name}"
        recs[image_id] = ImageRecord(image_id, full, hashed_split(image_id, cfg.test_fraction, cfg.val_fraction))
    out = [recs[k] for k in sorted(recs)]
    if cfg.max_images:
        out = out[: cfg.max_images]
    if not out:
        raise SourceError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {redact(cfg.root)}")
    return out


def list_images(cfg: SourceConfig) -> list[ImageRecord]:
    """Every image of the source with its split, sorted by image id.

    COCO with ``test_split`` set: test_split -> 'test', train_split -> 'train' or 'val'. Otherwise
    the split is a stable hash of the image id (homogen.splits: ``test_fraction`` of them in 'test',
    ``val_fraction`` of the rest in 'val').
    """
    kind = detect_kind(cfg)
    if kind == "folder":
        return _folder_records(cfg)
    if cfg.test_split:
        train = _coco_records(cfg, cfg.train_split, lambda i: training_split(i, cfg.val_fraction))
        test = _coco_records(cfg, cfg.test_split, lambda _id: "test")
        shared = {r.image_id for r in train} & {r.image_id for r in test}
        if shared:
            raise SourceError(f"{len(shared)} image ids are in both {cfg.train_split} and {cfg.test_split}")
        return sorted(train + test, key=lambda r: r.image_id)
    return _coco_records(cfg, cfg.train_split, lambda i: hashed_split(i, cfg.test_fraction, cfg.val_fraction))


def make_shards(records: list[ImageRecord], shard_size: int) -> list[Shard]:
    """Consecutive runs of ``shard_size`` images, in the records' stable order."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1 (got {shard_size})")
    return [
        Shard(i, tuple(records[start : start + shard_size]))
        for i, start in enumerate(range(0, len(records), shard_size))
    ]
