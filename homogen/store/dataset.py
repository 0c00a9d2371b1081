"""The one reader of both formats: :func:`open_dataset` checks a finished store (manifest, array
metadata, codecs, chunk files) and returns a :class:`Dataset` read in row ranges."""

from __future__ import annotations

import json
import os
from typing import Iterator

import fsspec
import h5py
import numpy as np
import zarr

from homogen.redaction import redact
from homogen.schema import FIELDS, SCHEMA, split_code
from homogen.store.errors import DamagedChunk, StoreError
from homogen.store.manifest import ATTR, check_manifest
from homogen.store.paths import is_local, local_path
from homogen.store.zarr_format import chunk_key, quiet_zarr, read_zarr_manifest


def detect_format(url: str) -> str:
    """'hdf5' for ``*.h5``/``*.hdf5`` or an existing HDF5 file, else 'zarr'."""
    u = url.rstrip("/")
    if u.endswith((".h5", ".hdf5")):
        return "hdf5"
    if is_local(u) and os.path.isfile(local_path(u)) and h5py.is_hdf5(local_path(u)):
        return "hdf5"
    return "zarr"


class Dataset:
    """A finished store of either format: one array per field, read in row ranges.

    ``len(ds)`` pairs; ``ds[i]`` / ``ds[a:b]`` / ``ds.read(a, b)`` give a dict of the schema's
    arrays; :meth:`chunks` and :meth:`iter_chunks` walk it in storage-aligned blocks. A chunk
    that fails its checksum is a :class:`DamagedChunk` naming the array, the chunk and its rows.
    """

    def __init__(self, uri: str, manifest: dict, arrays: dict, files: list | None = None):
        self.uri = uri
        self._files = list(files or [])  # open HDF5 file, closed by close()
        self.manifest = manifest
        self.arrays = arrays  # {field: zarr.Array or h5py.Dataset}, read lazily

    # -- metadata -------------------------------------------------------------------------
    @property
    def version(self) -> str:
        return self.manifest["dataset_version"]

    @property
    def sampling(self) -> dict:
        return self.manifest["config"]["sampling"]

    @property
    def patch_size(self) -> int:
        return int(self.sampling["patch_size"])

    @property
    def rho(self) -> int:
        return int(self.sampling["rho"])

    @property
    def chunk_len(self) -> int:
        """Rows per storage chunk."""
        return int(self.arrays["image_id"].chunks[0])

    def __len__(self) -> int:
        return int(self.arrays["image_id"].shape[0])

    def __repr__(self) -> str:
        return f"Dataset({redact(self.uri)!r}, version={self.version}, pairs={len(self)})"

    def close(self) -> None:
        """Release the open HDF5 file; Zarr arrays hold none."""
        for f in self._files:
            f.close()
        self._files = []

    def __enter__(self) -> "Dataset":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __reduce__(self):
        # reopen by URI in another process (h5py handles cannot be pickled; this keeps both formats alike)
        return (open_dataset, (self.uri,))

    # -- data -----------------------------------------------------------------------------
    def chunk_file(self, field: str, k: int) -> str:
        """Where chunk ``k`` of ``field`` lives (a Zarr chunk key, or the HDF5 file and dataset)."""
        if self.manifest.get("format") == "hdf5":
            return f"{self.uri} dataset /{field}"
        return f"{redact(self.uri)}/{field}/{chunk_key(k, self.arrays[field].ndim)}"

    def read_field(self, field: str, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` of one field; a damaged chunk raises :class:`DamagedChunk` naming it."""
        arr = self.arrays[field]
        try:
            return np.asarray(arr[start:stop])
        except Exception:  # a codec's checksum error, HDF5's filter failure: find the chunk
            c = self.chunk_len
            for k in range(start // c, -(-stop // c)):
                try:
                    arr[k * c : min((k + 1) * c, len(self))]
                except Exception as inner:
                    raise DamagedChunk(
                        f"{field} chunk {k} (pairs {k * c}-{min((k + 1) * c, len(self)) - 1}) of {redact(self.uri)} "
                        f"is damaged ({type(inner).__name__}: {str(inner)[:120]}), file {self.chunk_file(field, k)}: "
                        f"regenerate the dataset (`homogen generate` with --overwrite) or restore the store from a copy"
                    ) from inner
            raise

    def read(self, start: int, stop: int, fields: tuple[str, ...] = FIELDS) -> dict[str, np.ndarray]:
        """Pairs ``start:stop``: ``{field: (stop - start, *row_shape)}``."""
        start, stop = max(0, int(start)), min(len(self), int(stop))
        stop = max(start, stop)
        return {f: self.read_field(f, start, stop) for f in fields}

    def __getitem__(self, idx):
        if isinstance(idx, slice):
            start, stop, step = idx.indices(len(self))
            if step < 0:
                raise IndexError("negative steps are not supported")
            out = self.read(start, stop)
            return {k: v[::step] for k, v in out.items()} if step != 1 else out
        i = int(idx)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"pair {idx} out of range for {len(self)} pairs")
        return {k: v[0] for k, v in self.read(i, i + 1).items()}

    def chunks(self) -> list[tuple[int, int]]:
        """Global ``[start, stop)`` ranges aligned with the storage chunks, in order."""
        n, c = len(self), self.chunk_len
        return [(a, min(a + c, n)) for a in range(0, n, c)]

    def iter_chunks(
        self, split: str | None = None, fields: tuple[str, ...] = FIELDS
    ) -> Iterator[dict[str, np.ndarray]]:
        """Chunk by chunk, optionally only the rows of ``split`` ('train', 'val' or 'test')."""
        code = None if split is None else split_code(split)
        need = tuple(fields) if code is None or "split" in fields else tuple(fields) + ("split",)
        for a, b in self.chunks():
            block = self.read(a, b, need)
            if code is not None:
                keep = block["split"] == code
                if not keep.any():
                    continue
                block = {k: v[keep] for k, v in block.items()}
            yield {k: block[k] for k in fields}

    def split_counts(self) -> dict[str, int]:
        return dict(self.manifest.get("splits", {}))


def _check_arrays(uri: str, manifest: dict, arrays: dict, where: str) -> None:
    n = manifest["num_pairs"]
    p = int(manifest["config"]["sampling"]["patch_size"])
    for f in SCHEMA:
        if f.name not in arrays:
            raise StoreError(f"{redact(uri)} has no array {f.name!r} ({where}): the store is damaged; regenerate it")
        a = arrays[f.name]
        if tuple(a.shape) != (n,) + f.row_shape(p) or np.dtype(a.dtype) != f.dtype:
            raise StoreError(
                f"{redact(uri)}: array {f.name} is {a.dtype}{tuple(a.shape)}, the manifest ({where}) says "
                f"{f.dtype}{(n,) + f.row_shape(p)}: the manifest or the array was edited; regenerate the store"
            )


def missing_chunks(uri: str, arrays: dict) -> dict[str, list[int]]:
    """Per array of a Zarr store, the chunk numbers that should exist and do not (zarr would read
    them as the fill value, silently). One listing per array."""
    fs, path = fsspec.core.url_to_fs(uri)
    out = {}
    for name, arr in arrays.items():
        n, c = arr.shape[0], arr.chunks[0]
        base = f"{path}/{name}/"
        present = {p[len(base) :] for p in fs.find(base)} if n else set()
        gone = [k for k in range(-(-n // c)) if chunk_key(k, arr.ndim) not in present]
        if gone:
            out[name] = gone
    return out


def open_dataset(uri: str, check_chunks: bool = True) -> Dataset:
    """Open a finished store of either format (path or fsspec URL).

    ``check_chunks``: list each Zarr array's chunks and refuse a store that lacks one (validation
    turns it off to report every damaged chunk itself).

    Raises:
        StoreError: no store, an old layout, an incomplete or edited manifest, a truncated
            ``zarr.json``, a missing chunk: each naming the file and the fix.
    """
    uri = str(uri).rstrip("/")
    uri = local_path(uri) if is_local(uri) else uri
    if detect_format(uri) == "hdf5":
        return _open_hdf5(uri)  # one file: no chunk can go missing alone
    where = f"{redact(uri)}/zarr.json"
    manifest = check_manifest(uri, read_zarr_manifest(uri), where)
    try:
        with quiet_zarr():
            root = zarr.open_group(uri, mode="r")
            arrays = {f: root[f] for f in FIELDS if f in root}
    except (ValueError, KeyError, FileNotFoundError) as exc:
        raise StoreError(
            f"{redact(uri)}: the metadata of an array cannot be read ({exc}): regenerate the store"
        ) from exc
    _check_arrays(uri, manifest, arrays, where)
    gone = missing_chunks(uri, arrays) if check_chunks else {}
    if gone:
        files = [f"{redact(uri)}/{f}/{chunk_key(k, arrays[f].ndim)}" for f, ks in gone.items() for k in ks]
        raise DamagedChunk(
            f"{redact(uri)} lacks {len(files)} chunk file(s) ({', '.join(files[:3])}{', ...' if len(files) > 3 else ''}): "
            f"they were deleted; regenerate the dataset or restore the store from a copy"
        )
    return Dataset(uri, manifest, arrays)


def _open_hdf5(path: str) -> Dataset:
    if not os.path.isfile(path):
        raise StoreError(f"no store at {path}: check the path, or generate it with `homogen generate`")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise StoreError(
            f"{path} is not a readable HDF5 file ({exc}): it is truncated or not a store; regenerate it"
        ) from exc
    try:
        raw = f.attrs.get(ATTR)
        try:
            manifest = json.loads(raw) if raw is not None else None
        except ValueError as exc:
            raise StoreError(
                f"the manifest in {path} is not valid JSON ({exc}): it was edited; regenerate the store"
            ) from exc
        check_manifest(path, manifest, path)
        arrays = {name: f[name] for name in FIELDS if name in f}
        _check_arrays(path, manifest, arrays, path)
    except BaseException:
        f.close()
        raise
    return Dataset(path, manifest, arrays, [f])
