"""Image sources: a COCO layout (read with pycocotools) or a plain folder, split and sharded.

Every list is in a stable order (by image id), so the same input always gives the same shards,
and every image carries its split, decided by its identity, never by its position.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import posixpath
import re
from dataclasses import dataclass

import fsspec

from homogen.config import SourceConfig
from homogen.images import file_kind
from homogen.redaction import redact
from homogen.schema import shard_name
from homogen.store.paths import is_local, local_path
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
        return shard_name(self.index)


def _stable_hash(text: str) -> int:
    """A stable 62-bit number from ``text`` (SHA-256)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 2


def folder_image_id(relpath: str) -> int:
    """Id of a file in a plain folder from its path relative to the folder (``/`` separated).

    A numeric stem (COCO names: ``000000000009.jpg`` -> 9) is the id; otherwise a stable 62-bit hash
    of the relative path without its suffix (for a file at the top of the folder, its stem: the ids
    of flat folders are those of earlier versions). Files that would share an id are told apart by
    :func:`_folder_ids`.
    """
    stem = posixpath.splitext(posixpath.basename(relpath))[0]
    if re.fullmatch(r"\d{1,18}", stem):
        return int(stem)
    return _stable_hash(posixpath.splitext(relpath)[0])


def _folder_ids(relpaths: list[str]) -> dict[str, int]:
    """Unique ids of the files of one folder: :func:`folder_image_id`, except that files which would
    share an id (``a.bmp`` and ``a.tif``; ``100/9.jpg`` and ``101/9.jpg``) each take the hash of
    their whole relative path, suffix included."""
    groups: dict[int, list[str]] = {}
    for rel in relpaths:
        groups.setdefault(folder_image_id(rel), []).append(rel)
    ids = {}
    for image_id, members in groups.items():
        for rel in members:
            ids[rel] = image_id if len(members) == 1 else _stable_hash(rel)
    taken: dict[int, str] = {}
    for rel, image_id in ids.items():
        if image_id in taken:  # two 62-bit hashes (or a hash and a numeric stem) that meet: never seen
            raise SourceError(f"files {taken[image_id]} and {rel} map to image id {image_id}: rename one of them")
        taken[image_id] = rel
    return ids


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
    kind = _local_kind(ann)
    if kind is not None:  # a FIFO would block the read forever, a device never end
        raise SourceError(
            f"annotations file {redact(ann)} is {kind}, not a regular file: replace it with the JSON file"
        )
    try:
        with fsspec.open(ann, "rb") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise SourceError(
            f"annotations file {redact(ann)} not found: a COCO root needs "
            f"annotations/instances_{split}.json (or use kind='folder' (--kind folder) for a plain image folder)"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SourceError(
            f"annotations file {redact(ann)} is not valid JSON ({exc}): re-download it or "
            f"point the source at a plain image folder with kind='folder' (--kind folder)"
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise SourceError(f"annotations file {redact(ann)} has no 'images' list: it is not a COCO instances file")
    _check_images(data["images"], ann)
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


def _local_kind(path: str) -> str | None:
    """What a local path that exists is when it is not a regular file (``"a FIFO (named pipe)"``...), else None."""
    if not is_local(path):
        return None
    try:
        mode = os.stat(local_path(path)).st_mode
    except OSError:
        return None  # missing: the open below says so
    return file_kind(mode)


MAX_IMAGE_ID = 2**63 - 1
"""Image ids are stored as int64."""

MAX_LISTED = 10
"""Bad annotation entries named in one error (the count says how many there are in all)."""


def coco_name(name: str) -> str:
    """A COCO ``file_name`` in its one spelling: ``./`` and repeated or trailing separators removed
    (``./000000000009.jpg`` and ``000000000009.jpg`` name one file, and are one name)."""
    return posixpath.normpath(name)


def _entry_problem(entry) -> str | None:
    """Why one ``images`` entry of a COCO file cannot be used, or None."""
    if not isinstance(entry, dict):
        return f"not an object ({type(entry).__name__})"
    image_id, name = entry.get("id"), entry.get("file_name")
    if "id" not in entry:
        return "no 'id'"
    if isinstance(image_id, bool) or not isinstance(image_id, int):
        return f"id {image_id!r} is not an integer"
    if not 0 <= image_id <= MAX_IMAGE_ID:
        return f"id {image_id} is out of range (0 to 2**63-1)"
    if "file_name" not in entry:
        return "no 'file_name'"
    if not isinstance(name, str) or not name.strip():
        return f"file_name {name!r} is not a file name"
    shown = redact(name)
    if "://" in name:
        return f"file_name {shown!r} is a URL, not a path relative to the split folder"
    if "?" in name or "#" in name:
        shown = redact("x://" + name)[4:]  # the name without its query: a signature never reaches a message
        return f"file_name {shown!r} carries a query string or fragment (a signed URL?), not a file name"
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or ".." in parts or re.match(r"[A-Za-z]:", name):
        return f"file_name {shown!r} leaves the split folder (absolute, or with '..')"
    return None


def _check_images(images: list, ann: str) -> None:
    """Refuse an ``images`` list with unusable entries (bad or duplicate id, bad or duplicate
    file_name, compared in their one spelling :func:`coco_name`), naming each by its index, before
    anything is written."""
    problems = []
    first_of_id: dict[int, int] = {}
    first_of_name: dict[str, int] = {}
    for index, entry in enumerate(images):
        why = _entry_problem(entry)
        if why is None:
            image_id, name = entry["id"], coco_name(entry["file_name"])
            if image_id in first_of_id:
                why = f"id {image_id} is also the id of entry {first_of_id[image_id]}"
            elif name in first_of_name:
                why = f"file_name {entry['file_name']!r} is also the file of entry {first_of_name[name]}"
            first_of_id.setdefault(image_id, index)
            first_of_name.setdefault(name, index)
        if why is not None:
            problems.append(f"images[{index}]: {why}")
    if problems:
        listed = "; ".join(problems[:MAX_LISTED]) + ("; ..." if len(problems) > MAX_LISTED else "")
        raise SourceError(
            f"annotations file {redact(ann)} has {len(problems)} unusable image entries ({listed}): "
            f"each needs a unique integer id in 0..2**63-1 and a unique relative file_name; fix or remove them"
        )


def _category_ids(coco, names: tuple[str, ...], ann: str) -> dict[str, list[int]]:
    """Category ids of each name in ``names``; a name shared by several categories selects them all."""
    by_name: dict[str, list[int]] = {}
    for c in coco.dataset["categories"]:
        if (
            not isinstance(c, dict)
            or not isinstance(c.get("name"), str)
            or isinstance(c.get("id"), bool)
            or not isinstance(c.get("id"), int)
        ):
            raise SourceError(
                f"annotations file {redact(ann)} has a malformed category {c!r}: each needs an integer id and a name"
            )
        by_name.setdefault(c["name"], []).append(c["id"])
    unknown = sorted(set(names) - set(by_name))
    if unknown:
        raise SourceError(
            f"unknown COCO categories {unknown} in source.categories (--category); known: {sorted(by_name)[:10]}..."
        )
    return {name: by_name[name] for name in names}


def _coco_records(cfg: SourceConfig, split: str, assign) -> list[ImageRecord]:
    coco = _load_coco(cfg.root, split)
    ann = _join(cfg.root, "annotations", f"instances_{split}.json")
    if cfg.categories:
        ids: set[int] = set()
        for cat_ids in _category_ids(coco, cfg.categories, ann).values():
            for cat_id in cat_ids:
                ids.update(coco.catToImgs.get(cat_id, ()))
        unknown = sorted(i for i in ids if i not in coco.imgs)
        if unknown:
            raise SourceError(
                f"annotations file {redact(ann)} has annotations of {len(unknown)} image ids that are not in its "
                f"'images' list (first: {unknown[:5]}): fix the annotations file, "
                f"or drop source.categories (--category)"
            )
        img_ids = sorted(ids)
        if not img_ids:
            raise SourceError(
                f"no image of {redact(ann)} has the categories {list(cfg.categories)} of source.categories: "
                f"choose categories that occur in {split}, or drop the filter"
            )
    else:
        img_ids = sorted(coco.getImgIds())
        if not img_ids:
            raise SourceError(
                f"annotations file {redact(ann)} lists no images: check source.root (--source) and the split name (--train-split/--test-split)"
            )
    if cfg.max_images:
        img_ids = img_ids[: cfg.max_images]
    out = []
    for info in coco.loadImgs(img_ids):
        out.append(ImageRecord(info["id"], _join(cfg.root, split, coco_name(info["file_name"])), assign(info["id"])))
    return out


def _local_files(path: str) -> list[str]:
    """Every file under the local folder ``path``, following symlinked folders (as COCO mode does);
    a folder reached twice (a link cycle, or two links to one folder) is walked once."""
    seen: set[tuple[int, int]] = set()
    out = []
    for folder, dirs, files in os.walk(path, followlinks=True):
        st = os.stat(folder)
        if (st.st_dev, st.st_ino) in seen:
            dirs[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirs.sort()
        out.extend(posixpath.join(folder.replace(os.sep, "/"), f) for f in files)
    return out


def check_folder_options(cfg: SourceConfig) -> None:
    """Refuse the COCO-only options (categories, test_split, a train_split other than the default)
    for a plain image folder, where they would be silently ignored.

    Raises:
        SourceError: one line naming the option (config field and CLI flag) and the fix.
    """
    default_train = SourceConfig.model_fields["train_split"].default
    for given, name, flag in (
        (bool(cfg.categories), "source.categories", "--category"),
        (cfg.test_split is not None, "source.test_split", "--test-split"),
        (cfg.train_split != default_train, "source.train_split", "--train-split"),
    ):
        if given:
            why = (
                "kind='folder' (--kind folder) reads it as a plain image folder"
                if cfg.kind == "folder"
                else f"it has no annotations/instances_{cfg.train_split}.json, so it is read as a plain image folder"
            )
            raise SourceError(
                f"{name} ({flag}) needs a COCO source (annotations/instances_<split>.json under the root), "
                f"and {why} ({redact(cfg.root)}): drop it for an image folder, or point --source at a COCO root that has this split"
            )


def _folder_records(cfg: SourceConfig) -> list[ImageRecord]:
    fs, path = _fs(cfg.root)
    if not fs.isdir(path):
        raise SourceError(f"source folder {redact(cfg.root)} does not exist: check source.root (--source)")
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    local = protocol in ("file", "local")
    files = _local_files(path) if local else fs.find(path)
    names = sorted(p for p in files if p.lower().endswith(IMAGE_SUFFIXES))
    for name in names:
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            shown = os.fsencode(name).decode("utf-8", "backslashreplace")
            raise SourceError(
                f"image file name {redact(shown)} is not valid UTF-8, and the manifest records every name: "
                f"rename it (e.g. with `convmv -f latin1 -t utf8`), or move it out of {redact(cfg.root)}"
            ) from None
    ids = _folder_ids([posixpath.relpath(name, path) for name in names])
    recs = []
    for name in names:
        image_id = ids[posixpath.relpath(name, path)]
        full = name if local else f"{protocol}://{name}"
        recs.append(ImageRecord(image_id, full, hashed_split(image_id, cfg.test_fraction, cfg.val_fraction)))
    out = sorted(recs, key=lambda r: r.image_id)
    if cfg.max_images:
        out = out[: cfg.max_images]
    if not out:
        raise SourceError(
            f"no images ({', '.join(IMAGE_SUFFIXES)}) under {redact(cfg.root)}: check source.root (--source)"
        )
    return out


def list_images(cfg: SourceConfig) -> list[ImageRecord]:
    """Every image of the source with its split, sorted by image id.

    COCO with ``test_split`` set: test_split -> 'test', train_split -> 'train' or 'val'. Otherwise
    the split is a stable hash of the image id (homogen.splits: ``test_fraction`` of them in 'test',
    ``val_fraction`` of the rest in 'val').
    """
    fs, path = _fs(cfg.root)
    if not fs.exists(path):
        raise SourceError(f"source {redact(cfg.root)} does not exist: check source.root (--source)")
    kind = detect_kind(cfg)
    if kind == "folder":
        check_folder_options(cfg)
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
