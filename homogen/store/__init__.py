"""Stores: Zarr v3 (default) or HDF5, one schema (:mod:`homogen.schema`), one array per field.

One job per module:

- :mod:`~homogen.store.paths`: the one rule for a local path, the atomic write, can this output be
  written (:func:`check_writable`) or replaced by ``--overwrite`` (:func:`check_replaceable`);
- :mod:`~homogen.store.lock`: one generation per output (:func:`output_lock`);
- :mod:`~homogen.store.manifest`: what the manifest (a small header) holds, how it is built, the check
  every reader runs;
- :mod:`~homogen.store.source_table`: the per-image source table, an array of its own beside the fields;
- :mod:`~homogen.store.writer`: the write protocol (prepare, staged shards, commit) of both formats;
- :mod:`~homogen.store.zarr_format`, :mod:`~homogen.store.zarr_writer`: Zarr v3 (CRC32C per chunk);
- :mod:`~homogen.store.hdf5_writer`: HDF5 (Fletcher-32 per chunk);
- :mod:`~homogen.store.dataset`: the one reader, :func:`open_dataset` (and :func:`read_manifest`, the
  header alone).

Layout of a store (schema 2):

- Zarr ``OUT.zarr/``: the root group's attribute ``homogen`` is the manifest; each field is one
  array at the root (``OUT.zarr/pairs``, ...), beside them the source table
  (``OUT.zarr/source_table``, its JSON as bytes), chunked along the pair axis, with
  ``dimension_names`` and consolidated metadata. Every chunk ends in a CRC32C checksum (zarr's
  ``crc32c`` codec, required on every array), so a flipped bit is a read error, never a value.
- HDF5 ``OUT.h5``: the same fields as one dataset each at the root (gzip + shuffle + Fletcher-32
  checksum per chunk, dimension labels), the source table as ``/source_table``, the manifest as
  JSON in the root attribute ``homogen``.
  A real copy rather than virtual datasets: a virtual dataset whose source file is missing reads
  as fill values without an error, and resolves its links against the reader's working directory.
"""

from homogen.store.dataset import Dataset, chunk_problems, detect_format, missing_chunks, open_dataset, read_manifest
from homogen.store.errors import DamagedChunk, StoreConflict, StoreError, StoreLocked
from homogen.store.hdf5_writer import HDF5Writer
from homogen.store.manifest import ATTR, check_manifest
from homogen.store.paths import is_local, local_path
from homogen.store.writer import StoreWriter, open_writer
from homogen.store.zarr_format import chunk_key, quiet_zarr, read_zarr_manifest
from homogen.store.zarr_writer import ZarrWriter

__all__ = [
    "ATTR",
    "DamagedChunk",
    "Dataset",
    "HDF5Writer",
    "StoreConflict",
    "StoreError",
    "StoreLocked",
    "StoreWriter",
    "ZarrWriter",
    "check_manifest",
    "chunk_problems",
    "chunk_key",
    "detect_format",
    "is_local",
    "local_path",
    "missing_chunks",
    "open_dataset",
    "open_writer",
    "quiet_zarr",
    "read_manifest",
    "read_zarr_manifest",
]
