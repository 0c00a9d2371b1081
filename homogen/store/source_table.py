"""The per-image source table: an array of its own beside the arrays, read only by what needs it.

The table (every planned image's id, name, split and content digest, and the groups of images with
the same bytes) is ~10 MB of JSON on full COCO. It lives beside the arrays, not in the manifest,
so that opening a store reads a small header and the arrays' metadata only. Both formats hold it
the same way: the array ``source_table`` at the root (Zarr: ``OUT.zarr/source_table/``; HDF5: the
dataset ``/source_table``), its JSON as bytes (uint8), compressed and checksummed per chunk like
every field (Zarr: zstd + crc32c; HDF5: gzip + Fletcher-32). An array rather than a JSON file: a
file that is not a node of the hierarchy makes zarr warn on every listing, and would have no
checksum of its own. Read it without homogen: ``json.loads(zarr.open_group(p)["source_table"][:].tobytes())``.

The manifest's ``source.table`` records the array's name, the table's length and the xxh3-128 of
its bytes; every read checks both, so damage or an edit is one line naming the array and the fix.
A hand edit that also rewrites that digest still fails validation: ``source.digest`` and the
dataset version are computed from the table (:func:`homogen.versions.check_version`).

Document: ``{"files": {"hash", "image_id": [...], "name": [...], "split": [...], "digest": [...]},
"same_bytes": [[id, ...], ...]}``.
"""

from __future__ import annotations

import json
from typing import Any, Literal

import xxhash
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError, model_validator

from homogen.redaction import redact
from homogen.store.errors import StoreError, validation_problems

NAME = "source_table"
"""The table's array at the root of a store (both formats)."""

CHUNK_BYTES = 1 << 20
"""Bytes per chunk of the table's array."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class Files(_Strict):
    """The table's columns, of equal length, in the plan's order (by image id)."""

    hash: StrictStr
    image_id: list[StrictInt]
    name: list[StrictStr]
    split: list[Literal["train", "val", "test"]]
    digest: list[StrictStr | None]

    @model_validator(mode="after")
    def _same_length(self) -> "Files":
        lengths = {len(self.image_id), len(self.name), len(self.split), len(self.digest)}
        if len(lengths) != 1:
            raise ValueError("the columns image_id, name, split and digest differ in length")
        return self


class Table(_Strict):
    files: Files
    same_bytes: list[list[StrictInt]] = []


class TableRef(_Strict):
    """The manifest's ``source.table``: where the table is and what its bytes are."""

    array: Literal["source_table"]
    bytes: StrictInt = Field(ge=0)
    xxh3_128: StrictStr = Field(min_length=32, max_length=32)


def encode(files: dict[str, Any], same_bytes: list[list[int]]) -> bytes:
    """The table's bytes (compact JSON)."""
    return json.dumps({"files": files, "same_bytes": same_bytes}, separators=(",", ":")).encode()


def reference(raw: bytes) -> dict:
    """The manifest's ``source.table`` for the table ``raw`` (:class:`TableRef`)."""
    return {"array": NAME, "bytes": len(raw), "xxh3_128": xxhash.xxh3_128(raw).hexdigest()}


def decode(raw: bytes, ref: dict, where: str) -> dict:
    """The table read from ``where`` (named in errors), checked against the manifest's ``ref``.

    Returns:
        ``{"files": {...}, "same_bytes": [...]}``.

    Raises:
        StoreError: its length or digest is not the recorded one, or its JSON is not a table.
    """
    fix = "the file was edited or damaged; regenerate the store or restore it from a copy"
    if len(raw) != ref["bytes"] or xxhash.xxh3_128(raw).hexdigest() != ref["xxh3_128"]:
        raise StoreError(
            f"the source table {where} is not the one the manifest records ({len(raw)} bytes, "
            f"the manifest says {ref['bytes']} bytes of xxh3-128 {ref['xxh3_128']}): {fix}"
        )
    try:
        doc = json.loads(raw)
        Table.model_validate(doc)
    except ValueError as exc:  # JSONDecodeError and ValidationError are both ValueErrors
        what = validation_problems(exc, "table") if isinstance(exc, ValidationError) else str(exc)
        raise StoreError(f"the source table {where} cannot be read ({redact(what)[:200]}): {fix}") from None
    return doc


def unreadable(where: str, why: str) -> StoreError:
    """The table's array cannot be read as stored (missing, a linked chunk, a failed checksum)."""
    return StoreError(
        f"the source table {where} cannot be read ({why}): the store was damaged; regenerate it or restore it "
        f"from a copy"
    )
