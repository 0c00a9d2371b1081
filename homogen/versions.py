"""Dataset versions: a short content id of everything that decides a dataset's bytes.

The version covers:

- the recipe (``sampling``) and the split parameters (``train_split``, ``test_split``,
  ``test_fraction``, ``val_fraction``);
- every planned source image: its id, its name (path relative to the source root), its split and
  the digest of its bytes (:mod:`homogen.digests`), as one :class:`SourceTable`;
- the generator and schema versions.

Equal inputs give equal versions; changing one byte of one image, or any of the above, gives a new
one. Where the data is written (path, format, shard and chunk sizes) and where the images are read
from (the root) are not part of it: those change the storage, not the dataset.

A store records the whole table (``Dataset.sources["files"]``, a file beside the arrays:
:mod:`homogen.store.source_table`), so :func:`check_version` recomputes the version from the
manifest and that table alone, and :func:`check_sources` re-hashes the images and names those that
changed since.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, Sequence

import fsspec

from homogen.config import GenerateConfig
from homogen.digests import HASH_NAME, DigestError, changed_files, digest_files
from homogen.redaction import redact
from homogen.schema import SCHEMA_VERSION
from homogen.validation.report import CheckResult

if TYPE_CHECKING:
    from homogen.sources import ImageRecord

GENERATOR_VERSION = "1.2"
"""Bump when the pixels or labels produced for a given config change.

1.1: strict JPEG decoding (homogen.images): JPEGs with corrupt entropy-coded data are quarantined
instead of decoded to garbage. Intact files give the same pixels as 1.0 (checked on 364 encodings).
1.2: flat frames (no texture) and non-regular files are quarantined; JPEGs and PNGs with bytes after
their end are used; images with the same bytes share one split (homogen.splits). Other sources
give the same pixels and labels as 1.1."""

SPLIT_PARAMETERS = ("train_split", "test_split", "test_fraction", "val_fraction")
"""The fields of ``SourceConfig`` that decide the splits (the others only decide the image list)."""

MAX_NAMED = 20
"""Changed images named in a check's detail (all of them are in its examples)."""


@dataclass(frozen=True)
class SourceTable:
    """Every planned source image, in the plan's order (by image id): four columns of equal length.

    ``name`` is the path relative to the source root (``train2017/000000000009.jpg``); ``digest``
    is the content digest (:mod:`homogen.digests`), ``None`` for a file missing at planning time
    (generation quarantines it).
    """

    image_id: tuple[int, ...]
    name: tuple[str, ...]
    split: tuple[str, ...]
    digest: tuple[str | None, ...]
    hash: str = HASH_NAME

    def __len__(self) -> int:
        return len(self.image_id)

    @cached_property
    def list_digest(self) -> str:
        """SHA-256 (64 hex) of the whole table: equal tables, equal digests (computed once per table)."""
        h = hashlib.sha256(f"{self.hash}\n".encode())
        for row in zip(self.image_id, self.name, self.split, self.digest):
            h.update("{}\t{}\t{}\t{}\n".format(*(("-" if v is None else v) for v in row)).encode())
        return h.hexdigest()

    def to_manifest(self) -> dict[str, Any]:
        """JSON columns: ``{"hash", "image_id": [...], "name": [...], "split": [...], "digest": [...]}``."""
        return {
            "hash": self.hash,
            "image_id": list(self.image_id),
            "name": list(self.name),
            "split": list(self.split),
            "digest": list(self.digest),
        }

    @classmethod
    def from_manifest(cls, files: dict[str, Any]) -> "SourceTable":
        """The table written by :meth:`to_manifest`; ValueError if a column is missing or short."""
        columns = ("image_id", "name", "split", "digest")
        missing = [c for c in ("hash",) + columns if c not in files]
        if missing:
            raise ValueError(f"the manifest's source.files lacks {', '.join(missing)}")
        lengths = {c: len(files[c]) for c in columns}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"the manifest's source.files columns differ in length: {lengths}")
        return cls(*(tuple(files[c]) for c in columns), hash=files["hash"])

    def paths(self, root: str) -> list[str]:
        """Where each image is under ``root`` (a path or URL)."""
        base = root.rstrip("/")
        return [f"{base}/{n}" for n in self.name]


def source_table(
    records: Sequence["ImageRecord"], root: str, threads: int | None = None, progress: bool = False
) -> SourceTable:
    """Hash every record's file (in parallel threads) and name it relative to ``root``.

    Raises:
        DigestError: a file exists but cannot be read (names it).
    """
    return SourceTable(
        tuple(r.image_id for r in records),
        tuple(relative_names(root, [r.path for r in records])),
        tuple(r.split for r in records),
        tuple(digest_files([r.path for r in records], threads, progress)),
    )


def relative_names(root: str, paths: Sequence[str]) -> list[str]:
    """Each path relative to ``root`` (both as fsspec normalises them); the base name otherwise."""
    fs, base = fsspec.core.url_to_fs(root)
    base = base.rstrip("/") + "/"
    out = []
    for p in paths:
        p = fs._strip_protocol(p)
        out.append(p[len(base) :] if p.startswith(base) else p.rsplit("/", 1)[-1])
    return out


def _version(sampling: dict, split: dict, list_digest: str, generator: str, schema: int) -> str:
    payload = {
        "sampling": sampling,
        "split": split,
        "source_digest": list_digest,
        "generator": generator,
        "schema": schema,
    }
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def dataset_version(config: GenerateConfig, sources: SourceTable) -> str:
    """12 hex characters identifying the dataset that ``config`` makes from the images of ``sources``."""
    split = {k: getattr(config.source, k) for k in SPLIT_PARAMETERS}
    return _version(
        config.sampling.model_dump(mode="json"), split, sources.list_digest, GENERATOR_VERSION, SCHEMA_VERSION
    )


def manifest_version(manifest: dict, sources: dict | None = None) -> str:
    """The version that the manifest's own contents (config, source table, versions) make.

    ``sources``: the store's source section with its table (``Dataset.sources``); default the
    manifest's own ``source`` (a store written before the table moved out, or a merged dict).

    Raises:
        ValueError, KeyError: the manifest lacks what the version is made of (names it).
    """
    source = manifest["source"] if sources is None else sources
    return _manifest_version(manifest, SourceTable.from_manifest(source["files"]))


def _manifest_version(manifest: dict, table: SourceTable) -> str:
    source = manifest["config"]["source"]
    split = {k: source[k] for k in SPLIT_PARAMETERS}
    return _version(
        manifest["config"]["sampling"],
        split,
        table.list_digest,
        manifest["generator_version"],
        manifest["schema_version"],
    )


def check_version(manifest: dict, sources: dict | None = None) -> CheckResult:
    """``version_matches_content``: the manifest's ``dataset_version`` and ``source.digest`` are
    those its config, source table (``sources``, as :func:`manifest_version`) and generator/schema
    versions make (a hand edit fails)."""
    name = "version_matches_content"
    try:
        source = manifest["source"] if sources is None else sources
        table = SourceTable.from_manifest(source["files"])
        recomputed = _manifest_version(manifest, table)
    except (KeyError, ValueError, TypeError) as exc:
        what = f"missing {exc}" if isinstance(exc, KeyError) else str(exc)
        detail = (
            f"cannot recompute the version from the manifest ({what}): it was edited by hand or written by an "
            "older homogen; regenerate the dataset"
        )
        return CheckResult(name, False, checked=1, failed=1, detail=detail)
    problems = []
    if table.list_digest != source.get("digest"):
        problems.append(f"source.digest {source.get('digest')} is not the digest of source.files ({table.list_digest})")
    if len(table) != source.get("images"):
        problems.append(f"source.images {source.get('images')} but source.files lists {len(table)} images")
    if recomputed != manifest.get("dataset_version"):
        problems.append(
            f"dataset_version {manifest.get('dataset_version')} is not the version of the manifest's "
            f"contents ({recomputed})"
        )
    if problems:
        detail = "; ".join(problems) + (
            ": the manifest was edited after generation; regenerate the dataset or restore the manifest"
        )
        return CheckResult(name, False, checked=1, failed=1, detail=detail, examples=problems)
    detail = (
        f"version {recomputed} recomputed from the config, {len(table)} image digests ({table.hash}) and "
        f"generator {manifest['generator_version']} / schema {manifest['schema_version']}"
    )
    return CheckResult(name, True, checked=1, failed=0, detail=detail)


def check_sources(sources: dict, requested: bool, root: str | None = None, threads: int | None = None) -> CheckResult:
    """``sources_unchanged``: re-hash every source image under ``root`` (default: the recorded
    source root) and name each one whose bytes differ from the recorded digest (n/a unless
    ``requested``: it reads every image). ``sources``: the store's source section with its table
    (``Dataset.sources``)."""
    name = "sources_unchanged"
    if not requested:
        return CheckResult(name, None, 0, 0, "not requested (--sources re-hashes the source images)")
    try:
        table = SourceTable.from_manifest(sources["files"])
    except (KeyError, ValueError, TypeError) as exc:
        return CheckResult(name, False, 0, 0, f"the manifest records no image digests ({exc}): regenerate the dataset")
    if table.hash != HASH_NAME:
        return CheckResult(name, None, 0, 0, f"digests were made with {table.hash}, this homogen makes {HASH_NAME}")
    root = root or sources["root"]
    paths = table.paths(root)
    try:
        changes = changed_files(paths, table.digest, threads)
    except DigestError as exc:
        return CheckResult(name, False, 0, 0, str(exc))
    by_path = {p: (i, n) for p, i, n in zip(paths, table.image_id, table.name)}
    examples = [{"image_id": by_path[p][0], "name": by_path[p][1], "now": what} for p, what in changes]
    if not changes:
        return CheckResult(name, True, len(table), 0, f"{len(table)} images under {redact(root)} hash as recorded")
    named = ", ".join(f"{e['name']} ({e['now']})" for e in examples[:MAX_NAMED])
    more = f" and {len(examples) - MAX_NAMED} more" if len(examples) > MAX_NAMED else ""
    detail = (
        f"{len(changes)} of {len(table)} images under {redact(root)} differ from the dataset's: {named}{more}; "
        "the dataset was made from the recorded bytes (if the images moved, pass --source-root ROOT with --sources)"
    )
    return CheckResult(name, False, checked=len(table), failed=len(changes), detail=detail, examples=examples)
