"""The old import path of :mod:`homogen.store` (kept so that ``from homogen.stores import
open_dataset`` goes on working); new code imports from :mod:`homogen.store`."""

from homogen.schema import FIELDS, SPLIT_CODES
from homogen.store import (
    ATTR,
    DamagedChunk,
    Dataset,
    HDF5Writer,
    StoreConflict,
    StoreError,
    StoreLocked,
    StoreWriter,
    ZarrWriter,
    check_manifest,
    chunk_key,
    detect_format,
    is_local,
    local_path,
    missing_chunks,
    open_dataset,
    open_writer,
    quiet_zarr,
    read_zarr_manifest,
)

__all__ = [
    "ATTR",
    "FIELDS",
    "SPLIT_CODES",
    "DamagedChunk",
    "Dataset",
    "HDF5Writer",
    "StoreConflict",
    "StoreError",
    "StoreLocked",
    "StoreWriter",
    "ZarrWriter",
    "check_manifest",
    "chunk_key",
    "detect_format",
    "is_local",
    "local_path",
    "missing_chunks",
    "open_dataset",
    "open_writer",
    "quiet_zarr",
    "read_zarr_manifest",
]
