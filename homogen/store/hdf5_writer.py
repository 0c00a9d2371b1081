"""The HDF5 writer: one file, the manifest as JSON in its root attribute, the source table as the
dataset ``/source_table``, shards staged as files."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid

import h5py
import numpy as np

from homogen.redaction import redact
from homogen.schema import BY_NAME, FIELDS, shard_name
from homogen.store.errors import StoreError
from homogen.store.manifest import ATTR, complete
from homogen.store.paths import atomic_write, is_local, local_path
from homogen.store.source_table import CHUNK_BYTES
from homogen.store.source_table import NAME as TABLE
from homogen.store.writer import STAGED, StoreWriter, chunk_rows, split_counts, write_failed


class HDF5Writer(StoreWriter):
    format = "hdf5"

    def __init__(self, url: str, chunk_size: int = 256):
        if not is_local(url):
            raise StoreError(f"HDF5 stores need a local path (got {redact(url)}): use format='zarr' for URLs")
        super().__init__(local_path(url), chunk_size)

    def header_file(self) -> str | None:
        return self.url

    def read_header(self) -> dict | None:
        if not os.path.isfile(self.url):
            return None
        try:
            with h5py.File(self.url, "r") as f:
                raw = f.attrs.get(ATTR)
        except OSError:
            return None
        try:
            return json.loads(raw) if raw is not None else None
        except ValueError as exc:
            raise StoreError(f"the manifest in {self.url} is not valid JSON ({exc}): regenerate the store") from exc

    def write_header(self, header: dict) -> None:
        with h5py.File("header.h5", "w", driver="core", backing_store=False) as f:
            f.attrs[ATTR] = json.dumps(header)
            f.flush()
            image = f.id.get_file_image()
        atomic_write(self.url, image)

    def exists_nonempty(self) -> bool:
        return os.path.exists(self.url) or (os.path.isdir(self.parts) and bool(os.listdir(self.parts)))

    def only_staged_parts(self) -> bool:
        try:
            parts = os.listdir(self.parts)
        except OSError:
            return False
        return not os.path.exists(self.url) and bool(parts) and all(STAGED.fullmatch(n) for n in parts)

    def remove(self) -> None:
        if os.path.isfile(self.url):
            os.remove(self.url)
        shutil.rmtree(self.parts, ignore_errors=True)

    def _part(self, index: int) -> str:
        return os.path.join(self.parts, shard_name(index) + ".h5")

    def staged_info(self, index: int) -> dict | None:
        part = self._part(index)
        if not os.path.isfile(part):
            return None
        try:
            with h5py.File(part, "r") as f:
                raw = f.attrs.get("complete")
        except OSError:
            return None
        return json.loads(raw) if raw is not None else None

    def write_shard(self, index: int, arrays: dict[str, np.ndarray], info: dict) -> None:
        info = {**info, "splits": split_counts(arrays)}
        os.makedirs(self.parts, exist_ok=True)
        # Built in memory, written with plain file I/O: a write error (disk full) is then an
        # OSError here, not a failed flush inside libhdf5 (which leaves the process to crash at exit).
        with h5py.File(f"{shard_name(index)}.h5", "w", driver="core", backing_store=False) as f:
            for name in FIELDS:
                _create_h5_dataset(f, name, arrays[name], self.chunk_size)
            f.attrs["complete"] = json.dumps(info)
            f.flush()
            image = f.id.get_file_image()
        try:
            atomic_write(self._part(index), image)
        except OSError as exc:
            raise write_failed(self.url, index, exc) from exc

    def assemble(self, shards: list[dict], n: int, patch_size: int, manifest: dict, table: bytes) -> None:
        tmp = f"{self.url}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            with h5py.File(tmp, "w") as out:
                for name in FIELDS:
                    f = BY_NAME[name]
                    ds = _create_h5_dataset(
                        out, name, np.empty((n,) + f.row_shape(patch_size), f.dtype), self.chunk_size, fill=False
                    )
                    for s in shards:
                        if s["pairs"]:
                            with h5py.File(self._part(s["index"]), "r") as part:
                                _copy_h5_rows(part[name], ds, s["start"])
                out.create_dataset(  # the source table beside the arrays (homogen.store.source_table)
                    TABLE,
                    data=np.frombuffer(table, np.uint8),
                    chunks=(max(1, min(len(table), CHUNK_BYTES)),),
                    compression="gzip",
                    compression_opts=4,
                    fletcher32=True,
                )
                out.attrs[ATTR] = json.dumps(complete(manifest, {name: out[name] for name in FIELDS}))
            os.replace(tmp, self.url)  # the root appears complete or not at all
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)

    def remove_debris(self) -> None:
        shutil.rmtree(self.parts, ignore_errors=True)
        folder = os.path.dirname(os.path.abspath(self.url))
        stem = os.path.basename(self.url) + ".tmp-"
        for name in os.listdir(folder):
            if name.startswith(stem):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(os.path.join(folder, name))


def _copy_h5_rows(src, dst, start: int) -> None:
    """All rows of ``src`` into ``dst`` at ``start``: whole chunks that line up are copied as
    stored bytes (compressed, with their checksum), the rest decoded and re-encoded."""
    n, c = src.shape[0], dst.chunks[0]
    done = 0
    if start % c == 0 and src.chunks[0] == c:
        done = (n // c) * c
        zeros = (0,) * (src.ndim - 1)
        for k in range(n // c):
            mask, raw = src.id.read_direct_chunk((k * c,) + zeros)
            dst.id.write_direct_chunk((start + k * c,) + zeros, raw, mask)
    if done < n:
        dst[start + done : start + n] = src[done:n]


def _create_h5_dataset(f, name: str, data: np.ndarray, chunk_size: int, fill: bool = True):
    """One field as an HDF5 dataset: chunked along pairs, gzip (+ shuffle for numbers), Fletcher-32
    checksum per chunk, dimension labels from the schema."""
    field = BY_NAME[name]
    chunks = chunk_rows(len(data), chunk_size, data.shape[1:])
    kw = dict(
        chunks=chunks,
        maxshape=(None,) + data.shape[1:],
        compression="gzip",
        compression_opts=4,
        shuffle=data.dtype != np.uint8,
        fletcher32=True,
    )
    ds = (
        f.create_dataset(name, data=data, **kw)
        if fill
        else f.create_dataset(name, shape=data.shape, dtype=data.dtype, **kw)
    )
    for i, dim in enumerate(field.dims):
        ds.dims[i].label = dim
    return ds
