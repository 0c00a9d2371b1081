"""Zarr details shared by the writer and the reader: codecs, chunk keys, array creation, and
the manifest in the root ``zarr.json``."""

from __future__ import annotations

import contextlib
import json
import warnings
from typing import Iterator

import fsspec
import numpy as np
from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

from homogen.redaction import redact
from homogen.schema import BY_NAME
from homogen.store.errors import StoreError
from homogen.store.manifest import ATTR
from homogen.store.source_table import CHUNK_BYTES
from homogen.store.source_table import NAME as TABLE
from homogen.store.writer import chunk_rows


@contextlib.contextmanager
def quiet_zarr() -> Iterator[None]:
    """Zarr warns that consolidated metadata is not in the v3 spec yet; we know, and use it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata")
        yield


PIXEL_ZSTD_LEVEL = -3
"""zstd's fast mode for the pixels: 1.74x smaller than raw on the bundled photographs, read 2x and
written 1.6x faster than level 1 (1.98x smaller); see docs/BENCHMARKS.md, codec table."""


def codecs(field: str, dtype: np.dtype, ndim: int) -> list:
    """zstd (fast mode) for pixels, Blosc zstd with byte shuffle for the small label arrays; each
    followed by a CRC32C of the compressed chunk."""
    if dtype == np.uint8 and ndim > 1:
        return [ZstdCodec(level=PIXEL_ZSTD_LEVEL), Crc32cCodec()]
    return [BloscCodec(cname="zstd", clevel=3, shuffle="shuffle"), Crc32cCodec()]


def create_zarr_array(group, name: str, n: int, patch_size: int, chunk_size: int):
    f = BY_NAME[name]
    row = f.row_shape(patch_size)
    return group.create_array(
        name,
        shape=(n,) + row,
        dtype=f.dtype,
        chunks=chunk_rows(n, chunk_size, row),
        compressors=codecs(name, f.dtype, 1 + len(row)),
        dimension_names=f.dims,
        fill_value=0,
        chunk_key_encoding={"name": "default", "separator": "/"},
        overwrite=True,
        # every chunk holds data: skip zarr's scan of each chunk for all-fill-value (~30% of the write)
        config={"write_empty_chunks": True},
    )


def create_table_array(group, table: bytes):
    """The source table's bytes as the 1-D uint8 array ``source_table`` (homogen.store.source_table)."""
    arr = group.create_array(
        TABLE,
        shape=(len(table),),
        dtype=np.uint8,
        chunks=(max(1, min(len(table), CHUNK_BYTES)),),
        compressors=[ZstdCodec(level=3), Crc32cCodec()],
        dimension_names=("table_byte",),
        fill_value=0,
        chunk_key_encoding={"name": "default", "separator": "/"},
        overwrite=True,
        config={"write_empty_chunks": True},
    )
    arr[...] = np.frombuffer(table, np.uint8)
    return arr


def chunk_key(index: int, ndim: int) -> str:
    """Zarr v3 key of chunk ``index`` along the pair axis of an ``ndim``-dimensional array."""
    return "c/" + "/".join([str(index)] + ["0"] * (ndim - 1))


def chunk_len(url: str) -> int:
    """Rows per chunk of the Zarr v3 array at ``url``, from its zarr.json."""
    fs, path = fsspec.core.url_to_fs(url)
    return json.loads(fs.cat_file(f"{path}/zarr.json"))["chunk_grid"]["configuration"]["chunk_shape"][0]


def has_attributes(fs, meta: str) -> bool:
    try:
        doc = json.loads(fs.cat_file(meta))
    except FileNotFoundError:
        return False
    except ValueError:
        return True  # unreadable: not ours to throw away
    return bool(doc.get("attributes")) or doc.get("node_type") != "group"


def read_zarr_manifest(url: str, missing_ok: bool = False) -> dict | None:
    """The manifest in a Zarr root's ``zarr.json``; None if there is no root (``missing_ok``).

    Raises:
        StoreError: ``zarr.json`` is unreadable (truncated, edited into invalid JSON), naming it.
    """
    fs, path = fsspec.core.url_to_fs(url)
    meta = f"{path}/zarr.json"
    try:
        raw = fs.cat_file(meta)
    except FileNotFoundError:
        if missing_ok:
            return None
        raise StoreError(f"no store at {redact(url)}: check the path, or generate it with `homogen generate`") from None
    except NotADirectoryError:  # a regular file that is not HDF5 either
        raise StoreError(
            f"{redact(url)} is a file that is neither a Zarr store (a folder) nor an HDF5 file: check the path"
        ) from None
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise StoreError(
            f"{redact(url)}/zarr.json is not valid JSON ({exc}): the file is truncated or was edited; "
            f"regenerate the store (or restore the file from a copy)"
        ) from exc
    header = doc.get("attributes", {}).get(ATTR) if isinstance(doc, dict) else None
    return dict(header) if isinstance(header, dict) else None
