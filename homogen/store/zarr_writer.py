"""The Zarr v3 writer: the root group and its manifest, staged shard groups, the commit."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid

import fsspec
import numpy as np
import zarr

from homogen.schema import BY_NAME, FIELDS, shard_name
from homogen.store.manifest import complete
from homogen.store.paths import is_local, local_path
from homogen.store.source_table import NAME as TABLE
from homogen.store.writer import STAGED, StoreWriter, chunk_rows, split_counts, write_failed
from homogen.store.zarr_format import (
    ATTR,
    chunk_key,
    chunk_len,
    create_table_array,
    create_zarr_array,
    has_attributes,
    quiet_zarr,
    read_zarr_manifest,
)


class ZarrWriter(StoreWriter):
    format = "zarr"

    def __init__(self, url: str, chunk_size: int = 256):
        # file:// URLs as plain paths: zarr's local store creates folders, fsspec's does not
        super().__init__(local_path(url) if is_local(url) else url, chunk_size)

    def _fs(self, url: str | None = None):
        return fsspec.core.url_to_fs(url or self.url)

    def read_header(self) -> dict | None:
        return read_zarr_manifest(self.url, missing_ok=True)

    def header_file(self) -> str | None:
        return f"{self.url}/zarr.json" if is_local(self.url) else None

    def write_header(self, header: dict) -> None:
        # one write of zarr.json (zarr writes it under a temporary name and renames it locally):
        # the root never exists without its manifest
        with quiet_zarr():
            zarr.create_group(
                self.url, attributes={ATTR: header}, overwrite=False, zarr_format=3
            ) if not self._root_exists() else zarr.open_group(self.url, mode="r+", use_consolidated=False).attrs.put(
                {ATTR: header}
            )

    def _root_exists(self) -> bool:
        fs, path = self._fs()
        return fs.exists(f"{path}/zarr.json")

    def exists_nonempty(self) -> bool:
        """Anything but an empty group (a bare ``zarr.json``, as an older homogen killed between
        creating the root and writing its manifest left it) is something to keep."""
        fs, path = self._fs()
        _, parts = self._fs(self.parts)
        names = {p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)} if fs.exists(path) else set()
        bare = names <= {"zarr.json"} and not has_attributes(fs, f"{path}/zarr.json")
        return not bare or (fs.exists(parts) and bool(fs.ls(parts)))

    def store_names(self) -> set[str]:
        # schema 2: zarr.json and one folder per field; schema 1: one group per shard
        return {"zarr.json", TABLE, *FIELDS} | {n for n in self._names(self.url) if STAGED.fullmatch(n)}

    def _names(self, url: str) -> set[str]:
        fs, path = self._fs(url)
        try:
            return {p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)}
        except (FileNotFoundError, NotADirectoryError):
            return set()

    def only_staged_parts(self) -> bool:
        parts = self._names(self.parts)
        return not (self._names(self.url) - {"zarr.json"}) and bool(parts) and all(STAGED.fullmatch(n) for n in parts)

    def remove(self) -> None:
        for url in (self.url, self.parts):
            fs, path = self._fs(url)
            if fs.exists(path):
                fs.rm(path, recursive=True)

    def staged_info(self, index: int) -> dict | None:
        try:
            with quiet_zarr():
                g = zarr.open_group(f"{self.parts}/{shard_name(index)}", mode="r", use_consolidated=False)
        except (FileNotFoundError, zarr.errors.GroupNotFoundError, KeyError, ValueError):
            return None
        info = g.attrs.get("complete")
        return dict(info) if info else None

    def write_shard(self, index: int, arrays: dict[str, np.ndarray], info: dict) -> None:
        info = {**info, "splits": split_counts(arrays)}
        final = f"{self.parts}/{shard_name(index)}"
        if is_local(self.url):
            base = local_path(final)
            os.makedirs(os.path.dirname(base), exist_ok=True)
            tmp = os.path.join(os.path.dirname(base), f".tmp-{shard_name(index)}-{uuid.uuid4().hex[:8]}")
            try:
                self._write_group(tmp, arrays, info)
                os.rename(tmp, base)  # atomic: the shard appears complete or not at all
            except OSError as exc:
                if self.staged_info(index) is None:
                    raise write_failed(self.url, index, exc) from exc
                # another writer finished the same shard first: same bytes, keep theirs
            finally:
                if os.path.exists(tmp):
                    shutil.rmtree(tmp, ignore_errors=True)
        else:
            try:
                self._write_group(final, arrays, info)
            except OSError as exc:
                raise write_failed(self.url, index, exc) from exc

    def _write_group(self, url: str, arrays: dict[str, np.ndarray], info: dict) -> None:
        g = zarr.open_group(url, mode="w")
        n = len(arrays["image_id"])
        patch = arrays["pairs"].shape[-1]
        for name in FIELDS:
            arr = create_zarr_array(g, name, n, patch, self.chunk_size)
            if n:
                arr[...] = arrays[name]
        g.attrs["complete"] = info  # last: on object stores this marks the shard complete

    def assemble(self, shards: list[dict], n: int, patch_size: int, manifest: dict, table: bytes) -> None:
        with quiet_zarr():
            root = zarr.open_group(self.url, mode="r+", use_consolidated=False)
            create_table_array(root, table)
            arrays = {}
            for name in FIELDS:
                arr = arrays[name] = self._root_array(root, name, n, patch_size)
                for s in shards:
                    if s["pairs"]:
                        self._copy_rows(arr, name, s)
            zarr.consolidate_metadata(self.url)
            # last, one write: the manifest says complete only when every row is in place
            manifest = complete(manifest, arrays)
            root = zarr.open_group(self.url, mode="r+", use_consolidated=False)
            root.attrs.put({ATTR: manifest})
            zarr.consolidate_metadata(self.url)

    def _copy_rows(self, arr, name: str, shard: dict) -> None:
        """Rows of one staged shard into ``arr`` at ``shard['start']``: whole chunks are moved as
        stored (same codecs and chunk length, so the same bytes), the rest decoded and re-encoded."""
        staged = f"{self.parts}/{shard['name']}/{name}"
        start, n, c = shard["start"], shard["pairs"], arr.chunks[0]
        done = 0
        if start % c == 0 and chunk_len(staged) == c:
            done = (n // c) * c
            for k in range(n // c):
                self._move_chunk(
                    f"{staged}/{chunk_key(k, arr.ndim)}", f"{self.url}/{name}/{chunk_key(start // c + k, arr.ndim)}"
                )
        if done < n:  # zarr.open_array only here: it costs ~1 ms, six times a shard
            arr[start + done : start + n] = zarr.open_array(staged, mode="r")[done:n]

    def _root_array(self, root, name: str, n: int, patch_size: int):
        """The root array ``name`` of ``n`` rows: the one a killed commit of this plan created (its
        moved chunks are in it, and only there), else a new one."""
        field = BY_NAME[name]
        want = (n,) + field.row_shape(patch_size)
        try:
            old = root[name]
        except KeyError:
            old = None
        if (
            isinstance(old, zarr.Array)
            and tuple(old.shape) == want
            and np.dtype(old.dtype) == field.dtype
            and tuple(old.chunks) == chunk_rows(n, self.chunk_size, want[1:])
        ):
            return old
        return create_zarr_array(root, name, n, patch_size, self.chunk_size)

    def _move_chunk(self, src: str, dst: str) -> None:
        """One stored chunk file from a staged shard into the store, renamed: the staged name is gone,
        so nothing left in ``OUT.parts`` shares a file with the committed store (a hard link did: a
        write to a staged file left behind changed the store), and no byte is copied. A chunk a killed
        commit already moved is where it should be. Zarr's own API cannot move a compressed chunk
        without decoding it (docs/BENCHMARKS.md)."""
        if is_local(self.url):
            s, d = local_path(src), local_path(dst)
            os.makedirs(os.path.dirname(d), exist_ok=True)
            try:
                os.replace(s, d)  # atomic, on the same file system (OUT.parts sits beside OUT)
            except FileNotFoundError:
                if not os.path.isfile(d):
                    raise
        else:
            fs, _ = self._fs()
            if fs.exists(src):
                fs.mv(src, dst)
            elif not fs.exists(dst):
                raise FileNotFoundError(src)

    def remove_debris(self) -> None:
        fs, parts = self._fs(self.parts)
        if fs.exists(parts):
            fs.rm(parts, recursive=True)
        if is_local(self.url):
            root = local_path(self.url)
            for dirpath, _, names in os.walk(root):
                for f in names:
                    if f.endswith(".partial"):  # zarr's own atomic-write temporaries
                        with contextlib.suppress(FileNotFoundError):
                            os.remove(os.path.join(dirpath, f))
