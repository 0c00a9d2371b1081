"""Zarr v3 (default) and HDF5 stores of one schema, written shard by shard, read as one dataset.

Layout (both formats): one group or file per shard, each holding the schema's arrays chunked
along N, plus the manifest in the root's attributes.

- Zarr: ``OUT.zarr/`` root group (attribute ``homogen`` = manifest), ``OUT.zarr/shards/shard-00000/``.
- HDF5: ``OUT.h5`` root file (attribute ``homogen`` = manifest as JSON, external links
  ``shards/shard-00000`` to the parts), parts in ``OUT.h5.parts/shard-00000.h5``.

A shard becomes visible only when complete: on a local disk it is written under a temporary name
and renamed; on object storage its ``complete`` attribute is written last. Writers of different
shards never touch the same files, so shards can be written by many processes at once.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import shutil
import socket
import time
import uuid
from bisect import bisect_right
from typing import TYPE_CHECKING, Iterator

import fsspec
import h5py
import numpy as np
import zarr
from zarr.codecs import BloscCodec, ZstdCodec

from homogen.sources import redact
from homogen.schema import FIELDS, SCHEMA_VERSION, SPLIT_CODES, SPLIT_NAMES, shard_name, split_code  # noqa: F401 (re-exported)
from homogen.versions import GENERATOR_VERSION

if TYPE_CHECKING:
    from homogen.generate import Plan, ShardResult

ATTR = "homogen"


class StoreError(RuntimeError):
    """A store cannot be opened or written as asked; the message says why and what to do."""


class StoreConflict(StoreError):
    """The output holds something else (another dataset version, or not a homogen store)."""


class StoreLocked(StoreError):
    """Another generation is writing the same output right now."""


def is_local(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def local_path(url: str) -> str:
    return url[len("file://") :] if url.startswith("file://") else url


def detect_format(url: str) -> str:
    """'hdf5' for ``*.h5``/``*.hdf5`` or an existing HDF5 file, else 'zarr'."""
    u = url.rstrip("/")
    if u.endswith((".h5", ".hdf5")):
        return "hdf5"
    if is_local(u) and os.path.isfile(local_path(u)) and h5py.is_hdf5(local_path(u)):
        return "hdf5"
    return "zarr"


# --------------------------------------------------------------------------------------- writing


class StoreWriter:
    """Writes one dataset shard by shard; subclasses know the format."""

    format = "?"

    def __init__(self, url: str, chunk_size: int = 256):
        self.url = url.rstrip("/")
        self.chunk_size = chunk_size

    # -- lifecycle --------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, wait_s: float = 0.0) -> Iterator[None]:
        """Hold the output for one generation; a second one waits ``wait_s`` then is refused.

        Local outputs only (a lock file beside the store); object stores rely on the atomic
        shard writes and the version check of :meth:`prepare`.
        """
        if not is_local(self.url):
            yield
            return
        path = local_path(self.url) + ".lock"
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                break
            except FileExistsError:
                holder = _read_lock(path)
                if holder.get("host") == socket.gethostname() and not _pid_alive(holder.get("pid", -1)):
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(path)  # left by a process that died
                    continue
                if time.monotonic() >= deadline:
                    raise StoreLocked(
                        f"{self.url} is being written by pid {holder.get('pid')} on {holder.get('host')} "
                        f"since {holder.get('since')}: wait for that run to finish (or delete {path} "
                        f"if that process is gone)"
                    ) from None
                time.sleep(0.5)
        with os.fdopen(fd, "w") as f:
            json.dump({"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S")}, f)
        try:
            yield
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)

    def prepare(self, plan: "Plan", overwrite: bool = False) -> None:
        """Create the output for ``plan``'s version; refuse one that holds anything else."""
        header = self.read_header()
        if header is not None and header.get("dataset_version") == plan.version:
            return  # the same dataset: resume it
        if header is not None or self.exists_nonempty():
            if not overwrite:
                what = (
                    f"dataset version {header.get('dataset_version')}" if header else "data that is not a homogen store"
                )
                raise StoreConflict(
                    f"output {redact(self.url)} holds {what}, and this config makes version {plan.version}: "
                    f"choose another output, or pass overwrite=True (--overwrite) to replace it"
                )
            self.remove()
        self.write_header(_header(plan, "generating", self))

    def commit(self, plan: "Plan", results: list["ShardResult"]) -> dict:
        """Write the final manifest (after every shard is complete) and return it."""
        infos = [self.shard_info(s.index) for s in plan.shards]
        missing = [s.index for s, i in zip(plan.shards, infos) if i is None]
        if missing:
            raise StoreError(f"cannot commit {redact(self.url)}: shards {missing[:10]} are not complete; re-run generation")
        self.remove_debris()
        manifest = _header(plan, "complete", self)
        manifest["shards"] = [
            {"index": s.index, "name": s.name, "pairs": i["pairs"], "images": i["images"], "splits": i["splits"]}
            for s, i in zip(plan.shards, infos)
        ]
        manifest["quarantine"] = [
            {**q, "path": redact(q["path"])} for i in infos for q in i["quarantined"]
        ]
        manifest["num_pairs"] = sum(i["pairs"] for i in infos)
        manifest["num_images"] = plan.num_images - len(manifest["quarantine"])
        manifest["splits"] = {k: sum(i["splits"][k] for i in infos) for k in SPLIT_CODES}
        self.write_header(manifest)
        return manifest

    # -- format-specific ----------------------------------------------------------------------
    def read_header(self) -> dict | None: ...
    def write_header(self, header: dict) -> None: ...
    def exists_nonempty(self) -> bool: ...
    def remove(self) -> None: ...
    def shard_info(self, index: int) -> dict | None: ...
    def write_shard(self, index: int, arrays: dict[str, np.ndarray], info: dict) -> None: ...
    def remove_debris(self) -> None:
        """Delete temporaries left by writes that died part-way (a killed process)."""


def _write_failed(url: str, index: int, exc: BaseException) -> StoreError:
    """A shard write that failed (disk full, permissions), as an error that says what to do."""
    full = (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or f"errno = {errno.ENOSPC}," in str(exc)
    why = "the disk is full" if full else f"{type(exc).__name__}: {exc}"
    return StoreError(
        f"could not write {shard_name(index)} of {redact(url)} ({why}): free space or fix the output, "
        f"then re-run the same generation; the shards already complete are kept"
    )


def _header(plan: "Plan", state: str, writer: StoreWriter) -> dict:
    cfg = plan.config.model_dump(mode="json")
    cfg["source"]["root"] = redact(cfg["source"]["root"])
    cfg["output"] = redact(plan.output)
    return {
        "schema_version": SCHEMA_VERSION,
        "generator_version": GENERATOR_VERSION,
        "dataset_version": plan.version,
        "state": state,
        "format": writer.format,
        "chunk_size": writer.chunk_size,
        "config": cfg,
        "source": {"root": redact(plan.config.source.root), "digest": plan.digest, "images": plan.num_images},
    }


def _split_counts(arrays: dict[str, np.ndarray]) -> dict[str, int]:
    return {name: int(np.count_nonzero(arrays["split"] == code)) for name, code in SPLIT_CODES.items()}


def _read_lock(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(int(pid), 0)
    except (OSError, ValueError):
        return False
    return True


class ZarrWriter(StoreWriter):
    format = "zarr"

    def _fs(self):
        return fsspec.core.url_to_fs(self.url)

    def read_header(self) -> dict | None:
        try:
            root = zarr.open_group(self.url, mode="r")
        except (FileNotFoundError, zarr.errors.GroupNotFoundError, KeyError):
            return None
        header = root.attrs.get(ATTR)
        return dict(header) if header is not None else None

    def write_header(self, header: dict) -> None:
        zarr.open_group(self.url, mode="a").attrs[ATTR] = header

    def exists_nonempty(self) -> bool:
        fs, path = self._fs()
        return fs.exists(path) and bool(fs.ls(path))

    def remove(self) -> None:
        fs, path = self._fs()
        if fs.exists(path):
            fs.rm(path, recursive=True)

    def shard_info(self, index: int) -> dict | None:
        try:
            g = zarr.open_group(f"{self.url}/shards/{shard_name(index)}", mode="r")
        except (FileNotFoundError, zarr.errors.GroupNotFoundError, KeyError):
            return None
        info = g.attrs.get("complete")
        return dict(info) if info else None

    def write_shard(self, index: int, arrays: dict[str, np.ndarray], info: dict) -> None:
        info = {**info, "splits": _split_counts(arrays)}
        final = f"{self.url}/shards/{shard_name(index)}"
        if is_local(self.url):
            base = local_path(final)
            tmp = os.path.join(os.path.dirname(base), f".tmp-{shard_name(index)}-{uuid.uuid4().hex[:8]}")
            try:
                self._write_group(tmp, arrays, info)
                os.rename(tmp, base)  # atomic: the shard appears complete or not at all
            except OSError as exc:
                if self.shard_info(index) is None:
                    raise _write_failed(self.url, index, exc) from exc
                # another writer finished the same shard first: same bytes, keep theirs
            finally:
                if os.path.exists(tmp):
                    shutil.rmtree(tmp, ignore_errors=True)
        else:
            try:
                self._write_group(final, arrays, info)
            except OSError as exc:
                raise _write_failed(self.url, index, exc) from exc

    def remove_debris(self) -> None:
        if not is_local(self.url):
            return  # object stores: a shard is written in place; a rerun overwrites it
        root = glob.escape(local_path(self.url))
        for tmp in glob.glob(os.path.join(root, "shards", ".tmp-shard-*")):
            shutil.rmtree(tmp, ignore_errors=True)
        for partial in glob.glob(os.path.join(root, "*.partial")):  # zarr's own atomic-write temporaries
            with contextlib.suppress(FileNotFoundError):
                os.remove(partial)

    def _write_group(self, url: str, arrays: dict[str, np.ndarray], info: dict) -> None:
        g = zarr.open_group(url, mode="w")
        for name in FIELDS:
            data = arrays[name]
            chunks = (max(1, min(self.chunk_size, len(data))),) + data.shape[1:]
            arr = g.create_array(
                name, shape=data.shape, dtype=data.dtype, chunks=chunks, compressors=_compressor(data),
                # every chunk holds data: skip zarr's scan of each chunk for all-fill-value (~30% of the write)
                config={"write_empty_chunks": True},
            )
            if len(data):
                arr[...] = data
        g.attrs["complete"] = info  # last: on object stores this marks the shard complete


def _compressor(data: np.ndarray):
    """Plain zstd level 1 for pixels (overlapping crops of one frame compress ~1.5x, 3x faster than
    Blosc zstd-3 with bitshuffle, which compresses 8-bit photographs worse); Blosc with byte shuffle
    for the small numeric label arrays."""
    if data.dtype == np.uint8 and data.ndim > 1:
        return ZstdCodec(level=1)
    return BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")


class HDF5Writer(StoreWriter):
    format = "hdf5"

    def __init__(self, url: str, chunk_size: int = 256):
        if not is_local(url):
            raise StoreError(f"HDF5 stores need a local path (got {redact(url)}): use format='zarr' for URLs")
        super().__init__(local_path(url), chunk_size)
        self.parts = self.url + ".parts"

    def read_header(self) -> dict | None:
        if not os.path.isfile(self.url):
            return None
        try:
            with h5py.File(self.url, "r") as f:
                raw = f.attrs.get(ATTR)
        except OSError:
            return None
        return json.loads(raw) if raw is not None else None

    def write_header(self, header: dict) -> None:
        os.makedirs(self.parts, exist_ok=True)
        tmp = f"{self.url}.tmp-{uuid.uuid4().hex[:8]}"
        with h5py.File(tmp, "w") as f:
            f.attrs[ATTR] = json.dumps(header)
            g = f.create_group("shards")
            for s in header.get("shards", []):
                g[s["name"]] = h5py.ExternalLink(os.path.join(os.path.basename(self.parts), s["name"] + ".h5"), "/")
        os.replace(tmp, self.url)

    def exists_nonempty(self) -> bool:
        return os.path.exists(self.url) or (os.path.isdir(self.parts) and bool(os.listdir(self.parts)))

    def remove(self) -> None:
        if os.path.isfile(self.url):
            os.remove(self.url)
        shutil.rmtree(self.parts, ignore_errors=True)

    def _part(self, index: int) -> str:
        return os.path.join(self.parts, shard_name(index) + ".h5")

    def shard_info(self, index: int) -> dict | None:
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
        info = {**info, "splits": _split_counts(arrays)}
        os.makedirs(self.parts, exist_ok=True)
        tmp = self._part(index) + f".tmp-{uuid.uuid4().hex[:8]}"
        # Built in memory, written with plain file I/O: a write error (disk full) is then an
        # OSError here, not a failed flush inside libhdf5 (which leaves the process to crash at exit).
        with h5py.File(f"{shard_name(index)}.h5", "w", driver="core", backing_store=False) as f:
            for name in FIELDS:
                data = arrays[name]
                chunks = (max(1, min(self.chunk_size, len(data))),) + data.shape[1:]
                f.create_dataset(
                    name, data=data, chunks=chunks, maxshape=(None,) + data.shape[1:],
                    compression="gzip", compression_opts=4, shuffle=data.dtype != np.uint8,
                )
            f.attrs["complete"] = json.dumps(info)
            f.flush()
            image = f.id.get_file_image()
        try:
            with open(tmp, "wb") as out:
                out.write(image)
            os.replace(tmp, self._part(index))
        except OSError as exc:
            raise _write_failed(self.url, index, exc) from exc
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    def remove_debris(self) -> None:
        for tmp in glob.glob(os.path.join(glob.escape(self.parts), "*.h5.tmp-*")) + glob.glob(glob.escape(self.url) + ".tmp-*"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)


def open_writer(url: str, format: str | None = None, chunk_size: int = 256) -> StoreWriter:
    """A writer of ``format`` ('zarr' or 'hdf5'; default: from the path) at ``url``."""
    fmt = format or detect_format(url)
    if fmt == "zarr":
        return ZarrWriter(url, chunk_size)
    if fmt == "hdf5":
        return HDF5Writer(url, chunk_size)
    raise StoreError(f"unknown store format {fmt!r}: use 'zarr' or 'hdf5'")


# --------------------------------------------------------------------------------------- reading


class Dataset:
    """A finished store of either format, presented as one logical dataset.

    ``len(ds)`` pairs; ``ds[i]`` / ``ds[a:b]`` / ``ds.read(a, b)`` give a dict of the schema's
    arrays; :meth:`chunks` and :meth:`iter_chunks` walk it in storage-aligned blocks.
    """

    def __init__(self, uri: str, manifest: dict, shards: list[dict], files: list | None = None):
        self.uri = uri
        self._files = list(files or [])  # open HDF5 parts, closed by close()
        self.manifest = manifest
        self._shards = shards  # one {field: array-like} per shard, in order
        sizes = [s["image_id"].shape[0] for s in shards]
        self._starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)

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

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __repr__(self) -> str:
        return f"Dataset({redact(self.uri)!r}, version={self.version}, pairs={len(self)})"

    @property
    def shard_arrays(self) -> list[dict]:
        """One ``{field: array}`` per shard, in order (Zarr arrays or h5py datasets, read lazily)."""
        return list(self._shards)

    @property
    def shard_starts(self) -> np.ndarray:
        """(shards + 1,) global index where each shard starts, from the lengths actually stored."""
        return self._starts.copy()

    def close(self) -> None:
        """Release open files (HDF5 parts); Zarr arrays hold none."""
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
    def read(self, start: int, stop: int, fields: tuple[str, ...] = FIELDS) -> dict[str, np.ndarray]:
        """Pairs ``start:stop`` (global indices), concatenated across shards."""
        start, stop = max(0, int(start)), min(len(self), int(stop))
        parts: dict[str, list[np.ndarray]] = {f: [] for f in fields}
        s = max(0, bisect_right(self._starts, start) - 1)
        while start < stop and s < len(self._shards):
            lo, hi = self._starts[s], self._starts[s + 1]
            a, b = start - lo, min(stop, hi) - lo
            if b > a:
                for f in fields:
                    parts[f].append(np.asarray(self._shards[s][f][a:b]))
                start = lo + b
            s += 1
        return {f: (np.concatenate(v) if v else self._empty(f)) for f, v in parts.items()}

    def _empty(self, field: str) -> np.ndarray:
        ref = self._shards[0][field] if self._shards else None
        if ref is None:
            return np.empty((0,))
        return np.empty((0,) + tuple(ref.shape[1:]), ref.dtype)

    def __getitem__(self, idx):
        if isinstance(idx, slice):
            start, stop, step = idx.indices(len(self))
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
        out = []
        for s, shard in enumerate(self._shards):
            n = shard["image_id"].shape[0]
            step = _chunk_len(shard["pairs"]) or n or 1
            base = int(self._starts[s])
            out += [(base + a, base + min(a + step, n)) for a in range(0, n, step)]
        return out

    def iter_chunks(self, split: str | None = None, fields: tuple[str, ...] = FIELDS) -> Iterator[dict[str, np.ndarray]]:
        """Chunk by chunk, optionally only the rows of ``split`` ('train' or 'test')."""
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


def _chunk_len(arr) -> int:
    chunks = getattr(arr, "chunks", None)
    return int(chunks[0]) if chunks else 0


def _check_manifest(uri: str, manifest: dict | None) -> dict:
    if manifest is None:
        raise StoreError(f"{redact(uri)} is not a homogen store (no manifest): generate it with `homogen generate`")
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise StoreError(
            f"{redact(uri)} has schema version {manifest.get('schema_version')}, this homogen reads "
            f"{SCHEMA_VERSION}: regenerate the dataset with this version"
        )
    if manifest.get("state") != "complete":
        raise StoreError(
            f"{redact(uri)} is incomplete (generation did not finish): re-run the same generation to complete it"
        )
    return manifest


def open_dataset(uri: str) -> Dataset:
    """Open a finished store of either format (path or fsspec URL)."""
    uri = str(uri).rstrip("/")
    if detect_format(uri) == "hdf5":
        return _open_hdf5(local_path(uri))
    try:
        root = zarr.open_group(uri, mode="r")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, KeyError):
        raise StoreError(f"no store at {redact(uri)}: check the path, or generate it with `homogen generate`") from None
    raw = root.attrs.get(ATTR)
    manifest = _check_manifest(uri, dict(raw) if raw is not None else None)
    shards = []
    for s in manifest["shards"]:
        g = zarr.open_group(f"{uri}/shards/{s['name']}", mode="r")
        shards.append({f: g[f] for f in FIELDS})
    return Dataset(uri, manifest, shards)


def _open_hdf5(path: str) -> Dataset:
    if not os.path.isfile(path):
        raise StoreError(f"no store at {path}: check the path, or generate it with `homogen generate`")
    try:
        with h5py.File(path, "r") as f:
            raw = f.attrs.get(ATTR)
    except OSError as exc:
        raise StoreError(f"{path} is not a readable HDF5 file ({exc})") from None
    manifest = _check_manifest(path, json.loads(raw) if raw is not None else None)
    parts = path + ".parts"
    shards, files = [], []
    for s in manifest["shards"]:
        f = h5py.File(os.path.join(parts, s["name"] + ".h5"), "r")
        files.append(f)
        shards.append({name: f[name] for name in FIELDS})
    return Dataset(path, manifest, shards, files)
