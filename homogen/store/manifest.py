"""The manifest: what a store records about itself, how it is built, and the check every reader runs.

The manifest is the root attribute ``homogen`` (Zarr: in the root ``zarr.json``; HDF5: JSON in the
file's root attribute): a small header, read by every open. The per-image source table is a file of
its own beside the arrays (:mod:`homogen.store.source_table`), which the manifest's ``source.table``
names with its length and digest. The manifest is built in two steps by the writer:

- :func:`new_manifest` when the store is created (``state: generating``): versions, config,
  layout, and the source summary (``source``: root, image count, digest of the table);
- at commit, :func:`commit_fields` (shards, quarantine, counts), the table's reference
  (``source.table``, written just before), and then :func:`complete`, which receives the written
  arrays just before the manifest flips to ``state: complete``.

Stores written before the table moved out hold it in the manifest (``source.files`` and
``source.same_bytes``); they open as they are (:meth:`homogen.store.Dataset.sources`).

**Adding a field**: a value known when the store is created goes into :func:`new_manifest`; one
known from the shards into :func:`commit_fields`; one computed from the written arrays (a digest of
them, say) into :func:`complete`. Declare it in :class:`Manifest` (optional, so that stores
written before it still open) and check it in validation. Unknown fields are kept as they are.

:func:`check_manifest` validates a manifest against :class:`Manifest` (pydantic, strict types:
``"2"`` is not the schema version 2) and turns any problem into one line naming the file and the
fix, so an edited or bit-flipped manifest is never a ``KeyError`` or ``TypeError`` later.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError, model_validator

from homogen.lineage.array_digest import MANIFEST_KEY as ARRAY_DIGEST
from homogen.lineage.array_digest import arrays_digest
from homogen.lineage.libraries import code_versions
from homogen.redaction import redact
from homogen.schema import SCHEMA, SCHEMA_VERSION, SPLIT_CODES, shard_name
from homogen.store.errors import StoreError, validation_problems
from homogen.store.paths import absolute_root
from homogen.store.source_table import Files, TableRef

if TYPE_CHECKING:
    from homogen.generate import Plan

ATTR = "homogen"
"""Root attribute holding the manifest."""


# ------------------------------------------------------------------------------------ building


def new_manifest(plan: "Plan", state: str, format: str, chunk_size: int) -> dict:
    """The manifest of a store of ``plan`` as it is created (``state`` 'generating') or committed."""
    from homogen.versions import GENERATOR_VERSION  # versions -> digests -> store.paths: import here

    cfg = plan.config.model_dump(mode="json")
    cfg["source"]["root"] = redact(absolute_root(cfg["source"]["root"]))
    cfg["output"] = redact(plan.output)
    return {
        "schema_version": SCHEMA_VERSION,
        "generator_version": GENERATOR_VERSION,
        "dataset_version": plan.version,
        "state": state,
        "format": format,
        "chunk_size": chunk_size,
        "shard_size": plan.config.shard_size,
        "fields": {f.name: list(f.dims) for f in SCHEMA},
        "split_codes": dict(SPLIT_CODES),
        "config": cfg,
        "source": plan.manifest_sources(),
        "code": code_versions(),
    }


def commit_fields(plan: "Plan", infos: list[dict]) -> dict:
    """What the staged shards (``infos``, in plan order) tell the manifest: ``shards`` (where each
    one's rows start), ``quarantine``, ``num_pairs``, ``num_images`` and ``splits``."""
    start, entries = 0, []
    for s, i in zip(plan.shards, infos):
        entries.append(
            {
                "index": s.index,
                "name": shard_name(s.index),
                "start": start,
                "pairs": i["pairs"],
                "images": i["images"],
                "splits": i["splits"],
                "quarantined": i["quarantined"],
            }
        )
        start += i["pairs"]
    quarantine = [{**q, "path": redact(q["path"])} for i in infos for q in i["quarantined"]]
    return {
        "shards": entries,
        "quarantine": quarantine,
        "num_pairs": start,
        "num_images": plan.num_images - len(quarantine),
        "splits": {k: sum(i["splits"].get(k, 0) for i in infos) for k in SPLIT_CODES},
    }


def complete(manifest: dict, arrays: dict[str, Any]) -> dict:
    """The manifest to write with ``state: complete``, given the root arrays just written
    (``{field: zarr.Array | h5py.Dataset}``). Fields computed from the arrays go here: the
    array digest (:mod:`homogen.lineage.array_digest`). Updates ``manifest`` in place (the writer's
    ``commit`` returns that dict) and returns it."""
    if ARRAY_DIGEST not in manifest:  # the commit made it from the shards' row hashes where it could
        manifest[ARRAY_DIGEST] = arrays_digest(arrays, int(manifest["config"]["sampling"]["patch_size"]))
    return manifest


# ------------------------------------------------------------------------------------ checking


class _Strict(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class _Sampling(_Strict):
    image_width: StrictInt = Field(gt=0)
    image_height: StrictInt = Field(gt=0)
    patch_size: StrictInt = Field(gt=0)
    rho: StrictInt = Field(ge=0)
    pairs_per_image: StrictInt = Field(gt=0)
    seed: StrictInt
    photometric: StrictStr = "none"


class _Config(_Strict):
    sampling: _Sampling
    source: dict[str, Any]


class _Shard(_Strict):
    index: StrictInt
    name: StrictStr
    start: StrictInt = Field(ge=0)
    pairs: StrictInt = Field(ge=0)
    images: StrictInt = Field(ge=0)
    splits: dict[str, StrictInt]
    quarantined: list[dict[str, Any]]


class _Source(_Strict):
    root: StrictStr
    digest: StrictStr
    images: StrictInt = Field(ge=0)
    table: TableRef | None = None  # where the per-image table is (homogen.store.source_table)
    files: Files | None = None  # a store of an older homogen: the table inside the manifest
    same_bytes: list[list[StrictInt]] = []

    @model_validator(mode="after")
    def _one_table(self) -> "_Source":
        if (self.table is None) == (self.files is None):
            raise ValueError("the manifest must record exactly one of source.table and source.files")
        return self


class _Quarantined(_Strict):
    image_id: StrictInt
    path: StrictStr
    reason: StrictStr


class _ArrayDigest(_Strict):
    hash: StrictStr
    pairs: StrictInt = Field(ge=0)
    arrays: dict[str, StrictStr]


class Manifest(_Strict):
    """A complete store's manifest, as every reader may rely on it (unknown keys are kept)."""

    schema_version: StrictInt
    generator_version: StrictStr
    dataset_version: StrictStr = Field(min_length=1)
    state: Literal["complete"]
    format: Literal["zarr", "hdf5"]
    chunk_size: StrictInt = Field(gt=0)
    shard_size: StrictInt = Field(gt=0)
    split_codes: dict[str, StrictInt]
    config: _Config
    source: _Source
    shards: list[_Shard]
    quarantine: list[_Quarantined]
    num_pairs: StrictInt = Field(ge=0)
    num_images: StrictInt = Field(ge=0)
    splits: dict[str, StrictInt]
    code: dict[str, StrictStr] | None = None  # homogen.lineage.libraries (absent: an older homogen)
    array_digest: _ArrayDigest | None = None  # homogen.lineage.array_digest (absent: an older homogen)


def check_manifest(uri: str, manifest: Any, where: str) -> dict:
    """Refuse a manifest this homogen cannot read, naming the file ``where`` and the fix.

    Returns:
        the manifest, unchanged.

    Raises:
        StoreError: no manifest, another schema, an incomplete store, or a manifest whose keys or
            types are not :class:`Manifest`'s (edited, or a flipped bit in its file).
    """
    if manifest is None:
        raise StoreError(
            f"{redact(uri)} is not a homogen store (no manifest in {where}): generate it with `homogen generate`"
        )
    if not isinstance(manifest, dict):
        raise StoreError(
            f"the manifest in {where} of {redact(uri)} is a {type(manifest).__name__}, not an object: "
            f"it was edited or damaged; regenerate the store or restore it from a copy"
        )
    schema = manifest.get("schema_version")
    if isinstance(schema, bool) or not isinstance(schema, int):
        raise StoreError(
            f"the manifest in {where} of {redact(uri)} has schema_version {schema!r:.20}, not an integer: it was "
            f"edited or damaged; regenerate the store or restore it from a copy"
        )
    if schema != SCHEMA_VERSION:
        old = " (the old layout: one group or file per shard)" if schema == 1 else ""
        raise StoreError(
            f"{redact(uri)} is a schema-{schema} homogen store{old}, and this homogen reads schema {SCHEMA_VERSION} "
            f"(one array per field): regenerate it with `homogen generate` into a new output (the old store is "
            f"kept), or read it with the homogen version that wrote it"
        )
    if manifest.get("state") != "complete":
        raise StoreError(
            f"{redact(uri)} is incomplete (generation did not finish): re-run the same generation to complete it"
        )
    try:
        Manifest.model_validate(manifest)
    except ValidationError as exc:
        raise StoreError(
            f"the manifest in {where} of {redact(uri)} was edited or damaged ({redact(validation_problems(exc, 'manifest'))}): "
            f"regenerate the store or restore it from a copy"
        ) from None
    return manifest
