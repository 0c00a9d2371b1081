"""The one reader of both formats: :func:`open_dataset` checks a finished store (manifest, array
metadata, codecs, chunk files) and returns a :class:`Dataset` read in row ranges."""

from __future__ import annotations

import json
import os
import stat
from functools import cached_property
from typing import Iterator

import fsspec
import h5py
import numpy as np
import zarr
from zarr.codecs import Crc32cCodec

from homogen.redaction import redact
from homogen.schema import FIELDS, SCHEMA, split_code
from homogen.store.errors import DamagedChunk, StoreError
from homogen.store.manifest import ATTR, check_manifest
from homogen.store.paths import is_local, local_path
from homogen.store.source_table import NAME as TABLE
from homogen.store.source_table import decode as decode_table
from homogen.store.source_table import unreadable as unreadable_table
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
    arrays; ``ds.manifest`` is the header, ``ds.sources`` the source section with its per-image
    table (read on first use); :meth:`chunks` and :meth:`iter_chunks` walk it in storage-aligned blocks. A chunk
    that fails its checksum is a :class:`DamagedChunk` naming the array, the chunk and its rows.
    """

    def __init__(self, uri: str, manifest: dict, arrays: dict, files: list | None = None, table=None):
        self.uri = uri
        self._files = list(files or [])  # open HDF5 file, closed by close()
        self.manifest = manifest
        self.arrays = arrays  # {field: zarr.Array or h5py.Dataset}, read lazily
        self._table = table  # the source table's array (homogen.store.source_table), read on first use

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
        # Reopen by URI in another process (h5py handles cannot be pickled; this keeps both formats alike),
        # with check_chunks=False: the process that pickles this handle opened the store, and its chunks were
        # listed and checked there (open_dataset's default; validation opens without it and reports each
        # damaged chunk itself); a DataLoader worker or a spawned rank would repeat one listing per array (a
        # LIST each on object storage) and learn nothing new. The manifest, array metadata and codecs are
        # still checked.
        return (open_dataset, (self.uri, False))  # open_dataset(uri, check_chunks=False)

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

    # -- the source table -------------------------------------------------------------------
    @cached_property
    def sources(self) -> dict:
        """The manifest's ``source`` section with the per-image table: ``root``, ``digest``,
        ``images``, ``files`` (image_id, name, split, digest columns) and ``same_bytes``.

        The table is a file of its own beside the arrays (:mod:`homogen.store.source_table`), read
        and checked on first use, once per opened store; a store written before it moved holds it
        in the manifest.

        Raises:
            StoreError: the table is missing, a link, or not the one the manifest records (names it).
        """
        source = dict(self.manifest["source"])
        ref = source.get("table")
        if ref is None:  # an older store: the table is in the manifest
            source.setdefault("same_bytes", [])
            return source
        return {**source, **self._read_table(ref)}

    def _read_table(self, ref: dict) -> dict:
        hdf5 = self.manifest.get("format") == "hdf5"
        where = f"{self.uri} dataset /{TABLE}" if hdf5 else f"{redact(self.uri)}/{TABLE}"
        arr = self._table
        if arr is None:
            raise unreadable_table(where, "the array is missing")
        if tuple(arr.shape) != (ref["bytes"],) or np.dtype(arr.dtype) != np.uint8:  # never read an odd one
            raise StoreError(
                f"the source table {where} is not the one the manifest records ({arr.dtype}{tuple(arr.shape)}, the "
                f"manifest says {ref['bytes']} bytes of uint8): it was edited or damaged; regenerate the store or "
                f"restore it from a copy"
            )
        bad = {} if hdf5 else chunk_problems(self.uri, {TABLE: arr}).get(TABLE, {})
        if bad:
            k, why = next(iter(bad.items()))
            raise unreadable_table(where, f"chunk file {redact(self.uri)}/{TABLE}/{chunk_key(k, 1)} is {why}")
        try:
            raw = np.asarray(arr[:]).tobytes()
        except Exception as exc:  # noqa: BLE001 - a failed checksum: zarr's or libhdf5's own error
            raise unreadable_table(where, f"{type(exc).__name__}: {redact(str(exc))[:120]}") from exc
        return decode_table(raw, ref, where)


def _own_metadata(uri: str, group, name: str):
    """The metadata in array ``name``'s own ``zarr.json``.

    Raises:
        StoreError: that file is missing, unreadable, or not an array's (naming it).
    """
    where = f"{redact(uri)}/{name}/zarr.json"
    fix = "regenerate the store or restore it from a copy"
    try:
        node = group[name]
    except KeyError:
        raise StoreError(f"{where} is missing (the consolidated copy in zarr.json names the array): {fix}") from None
    except Exception as exc:  # noqa: BLE001 - a damaged file raises whatever zarr's parser meets
        raise StoreError(f"{where} cannot be read ({type(exc).__name__}: {redact(str(exc))[:120]}): {fix}") from exc
    if not isinstance(node, zarr.Array):
        raise StoreError(f"{where} is a group's, not an array's: {fix}")
    return node.metadata


def _check_arrays(uri: str, manifest: dict, arrays: dict, where: str) -> None:
    """Every field present, of the manifest's shape and the schema's dtype, and checksummed
    (Zarr: a ``crc32c`` codec; HDF5: Fletcher-32): a store re-encoded without its checksums would
    turn a later flipped bit into a wrong value that nothing reports."""
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
        if not _checksummed(a):
            what = "a crc32c codec" if isinstance(a, zarr.Array) else "a Fletcher-32 filter"
            raise StoreError(
                f"{redact(uri)}: array {f.name} has no checksum per chunk ({what} is required): it was re-encoded "
                f"after generation, so damage to it would go unnoticed; regenerate the store or restore it from a copy"
            )


def _checksummed(array) -> bool:
    if isinstance(array, zarr.Array):
        return any(isinstance(c, Crc32cCodec) for c in array.metadata.codecs)
    return bool(array.fletcher32)


def chunk_problems(uri: str, arrays: dict) -> dict[str, dict[int, str]]:
    """Per array of a Zarr store, the chunks that cannot be read as stored: missing (zarr would
    read them as the fill value, silently), a symbolic link (never followed: a link to
    ``/dev/zero`` would be read forever), or not a regular file. One listing per array."""
    fs, path = fsspec.core.url_to_fs(uri)
    local = is_local(uri)
    out: dict[str, dict[int, str]] = {}
    for name, arr in arrays.items():
        n, c = arr.shape[0], arr.chunks[0]
        base = f"{path}/{name}/"
        if local:
            kinds = _local_files(base.rstrip("/"))
        else:
            kinds = {p[len(base) :]: None for p in fs.find(base)} if n else {}
        bad = {}
        for k in range(-(-n // c)):
            key = chunk_key(k, arr.ndim)
            if key not in kinds:
                bad[k] = "missing from storage"
            elif kinds[key] is not None:
                bad[k] = kinds[key]
        if bad:
            out[name] = bad
    return out


def _local_files(folder: str) -> dict[str, str | None]:
    """Every entry under ``folder`` by relative key: None for a regular file, else what it is
    (a symbolic link, anywhere on the way, is never followed)."""
    if os.path.islink(folder):
        return {}  # the whole array folder is a link: every chunk counts as missing
    out: dict[str, str | None] = {}
    for dirpath, dirs, files in os.walk(folder, followlinks=False):
        rel = os.path.relpath(dirpath, folder)
        for entry in [*files, *(d for d in dirs if os.path.islink(os.path.join(dirpath, d)))]:
            full = os.path.join(dirpath, entry)
            key = entry if rel == "." else f"{rel}/{entry}".replace(os.sep, "/")
            mode = os.lstat(full).st_mode
            if stat.S_ISLNK(mode):
                out[key] = "a symbolic link (never followed inside a store)"
            elif not stat.S_ISREG(mode):
                out[key] = "not a regular file"
            else:
                out[key] = None
    return out


def missing_chunks(uri: str, arrays: dict) -> dict[str, list[int]]:
    """Per array of a Zarr store, the chunk numbers that cannot be read as stored (:func:`chunk_problems`)."""
    return {name: sorted(bad) for name, bad in chunk_problems(uri, arrays).items()}


def _normalise(uri) -> str:
    uri = str(uri).rstrip("/")
    return local_path(uri) if is_local(uri) else uri


def read_manifest(uri: str) -> dict:
    """The checked manifest of the finished store at ``uri`` (path or fsspec URL), read without
    opening its arrays: one small file for Zarr (the root ``zarr.json``), the root attribute for
    HDF5. For what needs only the version or the recipe (a run's dataset pin, a catalog).

    Raises:
        StoreError: as :func:`open_dataset` for the manifest, in one line naming the file and the fix.
    """
    uri = _normalise(uri)
    if detect_format(uri) == "hdf5":
        f = _h5_file(uri)
        try:
            return _h5_manifest(uri, f)
        finally:
            f.close()
    return check_manifest(uri, read_zarr_manifest(uri), f"{redact(uri)}/zarr.json")


def open_dataset(uri: str, check_chunks: bool = True) -> Dataset:
    """Open a finished store of either format (path or fsspec URL).

    ``check_chunks``: list each Zarr array's chunks and refuse a store that lacks one, or where
    one is a symbolic link or not a regular file (validation turns it off to report every damaged
    chunk itself).

    Raises:
        StoreError: no store, an old layout, an incomplete or edited manifest, damaged metadata
            (a truncated or bit-flipped ``zarr.json``, HDF5 header), an array without its
            checksum codec, a missing or linked chunk: each in one line naming the file and the fix.
    """
    uri = _normalise(uri)
    if detect_format(uri) == "hdf5":
        return _open_hdf5(uri)  # one file: no chunk can go missing alone
    where = f"{redact(uri)}/zarr.json"
    manifest = check_manifest(uri, read_zarr_manifest(uri), where)
    try:
        with quiet_zarr():
            root = zarr.open_group(uri, mode="r")
            arrays = {f: root[f] for f in FIELDS if f in root}
            table = root[TABLE] if TABLE in root else None
            for a in arrays.values():
                if not isinstance(a, zarr.Array):
                    raise ValueError(f"{a.path} is a group, not an array")
            # each array's own zarr.json, as a reader without the consolidated copy opens it
            own = zarr.open_group(uri, mode="r", use_consolidated=False)
            names = (*arrays, *([TABLE] if table is not None else []))
            differ = [n for n in names if _own_metadata(uri, own, n) != root[n].metadata]
    except StoreError:
        raise
    except Exception as exc:  # noqa: BLE001 - damaged metadata raises whatever zarr's parser meets
        raise StoreError(
            f"{redact(uri)}: the metadata of an array cannot be read ({type(exc).__name__}: {redact(str(exc))[:160]}): "
            f"a zarr.json in the store is damaged or was edited; regenerate the store or restore it from a copy"
        ) from exc
    if differ:
        raise StoreError(
            f"{redact(uri)}: the metadata of {', '.join(differ)} in {redact(uri)}/{differ[0]}/zarr.json is not its copy in "
            f"{where} (consolidated): one of them was edited, and readers that open the array by itself would read "
            f"other codecs or shapes; regenerate the store or restore it from a copy"
        )
    _check_arrays(uri, manifest, arrays, where)
    bad = chunk_problems(uri, arrays) if check_chunks else {}
    if bad:
        files = [
            f"{redact(uri)}/{f}/{chunk_key(k, arrays[f].ndim)} ({why})"
            for f, ks in bad.items()
            for k, why in ks.items()
        ]
        raise DamagedChunk(
            f"{redact(uri)} has {len(files)} chunk file(s) that cannot be read as stored ({', '.join(files[:3])}"
            f"{', ...' if len(files) > 3 else ''}): regenerate the dataset or restore the store from a copy"
        )
    return Dataset(uri, manifest, arrays, table=table)


def _h5_file(path: str) -> h5py.File:
    if not os.path.isfile(path):
        raise StoreError(f"no store at {path}: check the path, or generate it with `homogen generate`")
    try:
        return h5py.File(path, "r")
    except Exception as exc:  # noqa: BLE001 - OSError mostly; a damaged superblock may raise others
        raise StoreError(
            f"{path} is not a readable HDF5 file ({exc}): it is truncated or not a store; regenerate it"
        ) from exc


def _h5_manifest(path: str, f: h5py.File) -> dict:
    try:
        raw = f.attrs.get(ATTR)
        manifest = json.loads(raw) if raw is not None else None
    except ValueError as exc:
        raise StoreError(
            f"the manifest in {path} is not valid JSON ({exc}): it was edited or damaged; regenerate the store"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - a damaged header raises OSError, KeyError, RuntimeError, ...
        raise StoreError(
            f"the manifest in {path} cannot be read ({type(exc).__name__}: {str(exc)[:120]}): it was edited "
            f"or damaged; regenerate the store or restore it from a copy"
        ) from exc
    return check_manifest(path, manifest, path)


def _open_hdf5(path: str) -> Dataset:
    f = _h5_file(path)
    try:
        manifest = _h5_manifest(path, f)
        try:
            arrays = {name: f[name] for name in FIELDS if name in f}
            table = f[TABLE] if TABLE in f else None
            for a in arrays.values():
                if not isinstance(a, h5py.Dataset):
                    raise TypeError(f"{a.name} is a group, not a dataset")
            _check_arrays(path, manifest, arrays, path)
        except StoreError:
            raise
        except Exception as exc:  # noqa: BLE001 - damaged object headers raise whatever libhdf5 meets
            raise StoreError(
                f"{path}: the metadata of a dataset cannot be read ({type(exc).__name__}: {str(exc)[:120]}): "
                f"the file is damaged; regenerate the store or restore it from a copy"
            ) from exc
    except BaseException:
        f.close()
        raise
    return Dataset(path, manifest, arrays, [f], table)
