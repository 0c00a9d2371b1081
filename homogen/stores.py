"""Zarr v3 (default) and HDF5 stores of one schema: one array per field at the root.

Layout (schema 2, fields in :mod:`homogen.schema`):

- Zarr ``OUT.zarr/``: the root group's attribute ``homogen`` is the manifest; each field is one
  array at the root (``OUT.zarr/pairs``, ``OUT.zarr/offsets``, ...), chunked along the pair axis,
  with ``dimension_names`` and consolidated metadata. Every chunk ends in a CRC32C checksum
  (zarr's ``crc32c`` codec, after zstd/Blosc), so a flipped bit is a read error, never a value.
- HDF5 ``OUT.h5``: the same fields as one dataset each at the root (gzip + shuffle + Fletcher-32
  checksum per chunk, dimension labels), manifest in the root attribute ``homogen`` (JSON).

Writing, in steps that each survive a kill:

1. :meth:`StoreWriter.prepare` writes the root with the manifest (``state: generating``) in one
   atomic write.
2. Shards (any number of processes at once) are staged beside the store, in ``OUT.zarr.parts/``
   or ``OUT.h5.parts/``: each under a temporary name, renamed when complete (on object stores
   its ``complete`` attribute is written last). Writers of different shards share no file.
3. :meth:`StoreWriter.commit` puts the staged rows, in shard order, into the root arrays (only
   the rows of images that decoded: no hole, no padding row is ever visible), then flips the
   manifest to ``complete`` in one write, then deletes the staged parts. Chunks that line up
   with a shard's chunks are not decoded: hard-linked (Zarr) or copied as stored bytes (HDF5);
   the rest are re-encoded. HDF5 is written
   as a new file and renamed over the root: HDF5 virtual datasets would leave one file per
   shard, read missing parts as fill values without an error, and resolve their links relative
   to the reader's working directory, so a real copy is the layout a plain ``h5py`` user can trust.

The rows, and so the dataset, do not depend on the shard size, the chunk size or the number of
workers. A re-run resumes a store of the same version; a partly generated one with another shard
or chunk size is refused before any write.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import uuid
import warnings
from typing import TYPE_CHECKING, Iterator

import fsspec
import h5py
import numpy as np
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

from homogen.outputs import (
    StoreConflict,
    StoreError,
    StoreLocked,
    check_replaceable,
    check_writable,
    is_local,
    local_path,
    output_lock,
)
from homogen.redaction import redact
from homogen.schema import BY_NAME, FIELDS, SCHEMA, SCHEMA_VERSION, SPLIT_CODES, shard_name, split_code
from homogen.versions import GENERATOR_VERSION

if TYPE_CHECKING:
    from homogen.generate import Plan, ShardResult

ATTR = "homogen"
"""Root attribute holding the manifest."""

_STAGED = re.compile(r"\.?(tmp-)?shard-\d{5,}(\.h5)?(\.tmp-[0-9a-f]{8}|-[0-9a-f]{8})?")
"""Names in ``OUT.parts`` (and in a schema-1 root): staged shards and their temporaries."""

_HEADER_CACHE: dict = {}
"""The last header :meth:`StoreWriter.shard_info` parsed, with the identity of its file."""

__all__ = [
    "ATTR",
    "Dataset",
    "StoreConflict",
    "StoreError",
    "StoreLocked",
    "detect_format",
    "is_local",
    "local_path",
    "open_dataset",
    "open_writer",
]


class DamagedChunk(StoreError):
    """A chunk failed its checksum or is missing; the message names the array, the chunk and the file."""


def detect_format(url: str) -> str:
    """'hdf5' for ``*.h5``/``*.hdf5`` or an existing HDF5 file, else 'zarr'."""
    u = url.rstrip("/")
    if u.endswith((".h5", ".hdf5")):
        return "hdf5"
    if is_local(u) and os.path.isfile(local_path(u)) and h5py.is_hdf5(local_path(u)):
        return "hdf5"
    return "zarr"


@contextlib.contextmanager
def quiet_zarr() -> Iterator[None]:
    """Zarr warns that consolidated metadata is not in the v3 spec yet; we know, and use it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata")
        yield


# --------------------------------------------------------------------------------------- writing


class StoreWriter:
    """Writes one dataset: header, staged shards, commit; subclasses know the format."""

    format = "?"

    def __init__(self, url: str, chunk_size: int = 256):
        self.url = url.rstrip("/")
        self.chunk_size = int(chunk_size)
        self.parts = self.url + ".parts"

    # -- lifecycle --------------------------------------------------------------------------
    def lock(self, wait_s: float = 0.0):
        """Hold the output for one generation (:func:`homogen.outputs.output_lock`)."""
        return output_lock(self.url, wait_s)

    def prepare(self, plan: "Plan", overwrite: bool = False) -> dict:
        """Create the output for ``plan``'s version, or resume it; refuse one that holds anything else.

        Returns:
            the header now at the output (the one resumed, or the one just written).

        Raises:
            StoreConflict: another version, an old-layout store, or data that is not a store;
                or a partly generated store of this version with another shard or chunk size
                (naming both values).
        """
        check_writable(self.url, self.format)
        header = self.read_header()
        if (
            header is not None
            and header.get("schema_version") == SCHEMA_VERSION
            and header.get("dataset_version") == plan.version
        ):
            self._check_resumable(header, plan)
            return header
        if header is not None or self.exists_nonempty():
            ours = header is not None or self.only_staged_parts()
            if not overwrite or not ours:
                if not ours:
                    what = "data that is not a homogen store"
                elif header is None:
                    what = "the staged shards of another generation"
                elif header.get("schema_version") != SCHEMA_VERSION:
                    what = f"a schema-{header.get('schema_version')!s:.8} store (an older layout) of version {header.get('dataset_version')!s:.20}"
                else:
                    what = f"dataset version {header.get('dataset_version')!s:.20}"
                fix = (
                    "choose another output (--overwrite only ever replaces a homogen store)"
                    if not ours
                    else "choose another output, or pass overwrite=True (--overwrite) to replace it"
                )
                raise StoreConflict(
                    f"output {redact(self.url)} holds {what}, and this config makes version {plan.version}: {fix}"
                )
            check_replaceable(self.url, plan.config.source.root, self.store_names())
            self.remove()
        existed = self.exists_nonempty()
        header = _header(plan, "generating", self)
        try:
            self.write_header(header)
        except OSError as exc:
            if not existed:
                self.remove()  # a full disk at start leaves nothing behind
            fix = "free space" if "disk is full" in _reason(exc) else "fix the output"
            raise StoreError(f"could not create {redact(self.url)} ({_reason(exc)}): {fix}, then re-run") from exc
        return header

    def _check_resumable(self, header: dict, plan: "Plan") -> None:
        if header.get("state") == "complete":
            return  # the dataset is complete: whatever the shard or chunk size, nothing to write
        for key, now in (("shard_size", plan.config.shard_size), ("chunk_size", self.chunk_size)):
            if header.get(key) != now:
                raise StoreConflict(
                    f"output {redact(self.url)} is a partly generated store with {key} {header.get(key)}, "
                    f"and this run asks for {key} {now}: re-run with {key}={header.get(key)} to finish it, "
                    f"or pass overwrite=True (--overwrite) to start again"
                )

    def shard_info(self, index: int) -> dict | None:
        """What a complete shard holds (``pairs``, ``images``, ``quarantined``, ``splits``), else None.

        In a complete store every shard is done (its entry in the manifest, or an empty one when
        the store was made with another shard size).
        """
        header = self._header_for_shards()
        if header is not None and header.get("state") == "complete":
            shards = {s["index"]: s for s in header.get("shards", [])}
            if index not in shards:
                return {"pairs": 0, "images": 0, "quarantined": [], "splits": {}}
            return {k: shards[index][k] for k in ("pairs", "images", "quarantined", "splits")}
        return self.staged_info(index)

    def header_file(self) -> str | None:
        """The local file that holds the header (its identity changes with every header write), or None."""
        return None

    def _header_for_shards(self) -> dict | None:
        """The header, parsed once per process while its file stays the same.

        Every shard asks whether the store is complete, and the header holds the per-image source
        table (~10 MB of JSON for full COCO): parsing it per shard would cost minutes. Headers are
        replaced by rename, so (inode, mtime, size) changes with every write; remote stores are
        read each time.
        """
        path = self.header_file()
        try:
            st = os.stat(path) if path else None
        except FileNotFoundError:
            st = None
        if st is None:
            return self.read_header()
        key = (path, st.st_ino, st.st_mtime_ns, st.st_size)
        if _HEADER_CACHE.get("key") != key:
            _HEADER_CACHE.clear()
            _HEADER_CACHE.update(key=key, header=self.read_header())
        return _HEADER_CACHE["header"]

    def commit(self, plan: "Plan", results: list["ShardResult"] | None = None) -> dict:
        """Put every staged shard into the root arrays, mark the store complete, return the manifest.

        Idempotent: a commit killed at any step is finished by the next one.
        """
        header = self.read_header()
        if header is not None and header.get("state") == "complete" and header.get("dataset_version") == plan.version:
            self.remove_debris()
            return header
        infos = [self.staged_info(s.index) for s in plan.shards]
        missing = [s.index for s, i in zip(plan.shards, infos) if i is None]
        if missing:
            raise StoreError(
                f"cannot commit {redact(self.url)}: shards {missing[:10]} are not complete; re-run generation"
            )
        manifest = _header(plan, "complete", self)
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
        manifest["shards"] = entries
        manifest["quarantine"] = [{**q, "path": redact(q["path"])} for i in infos for q in i["quarantined"]]
        manifest["num_pairs"] = start
        if start == 0:  # every image quarantined: an error, never an empty dataset that validates
            q = manifest["quarantine"]
            raise StoreError(
                f"no usable images: all {len(q)} images of the source were quarantined "
                f"(first: {q[0]['path']}: {q[0]['reason']}); nothing was committed to {redact(self.url)}: "
                f"fix or replace the images, then re-run"
            )
        manifest["num_images"] = plan.num_images - len(manifest["quarantine"])
        manifest["splits"] = {k: sum(i["splits"].get(k, 0) for i in infos) for k in SPLIT_CODES}
        try:
            self.assemble(entries, start, plan.config.sampling.patch_size, manifest)
        except OSError as exc:
            raise StoreError(
                f"could not write the arrays of {redact(self.url)} ({_reason(exc)}): free space or fix the output, "
                f"then re-run the same generation; the staged shards are kept"
            ) from exc
        self.remove_debris()
        return manifest

    # -- format-specific ----------------------------------------------------------------------
    def read_header(self) -> dict | None: ...
    def write_header(self, header: dict) -> None: ...
    def exists_nonempty(self) -> bool: ...
    def store_names(self) -> set[str]:
        """Names a store folder of this format may hold (what --overwrite may delete in it)."""
        return set()

    def only_staged_parts(self) -> bool:
        """The output holds nothing but staged shards (``OUT.parts`` of a generation whose root is gone)."""
        return False

    def remove(self) -> None: ...
    def staged_info(self, index: int) -> dict | None: ...
    def write_shard(self, index: int, arrays: dict[str, np.ndarray], info: dict) -> None: ...
    def assemble(self, shards: list[dict], n: int, patch_size: int, manifest: dict) -> None:
        """Write the root arrays (``n`` rows) from the staged ``shards`` and then ``manifest``."""

    def remove_debris(self) -> None:
        """Delete the staged parts and temporaries (after commit, or left by a killed process)."""


def _reason(exc: BaseException) -> str:
    full = (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or f"errno = {errno.ENOSPC}," in str(exc)
    return "the disk is full" if full else f"{type(exc).__name__}: {exc}"


def _write_failed(url: str, index: int, exc: BaseException) -> StoreError:
    """A shard write that failed (disk full, permissions), as an error that says what to do."""
    return StoreError(
        f"could not write {shard_name(index)} of {redact(url)} ({_reason(exc)}): free space or fix the output, "
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
        "shard_size": plan.config.shard_size,
        "fields": {f.name: list(f.dims) for f in SCHEMA},
        "split_codes": dict(SPLIT_CODES),
        "config": cfg,
        "source": plan.manifest_sources(),
    }


def _split_counts(arrays: dict[str, np.ndarray]) -> dict[str, int]:
    return {name: int(np.count_nonzero(arrays["split"] == code)) for name, code in SPLIT_CODES.items()}


def _chunks(n: int, chunk_size: int, row: tuple[int, ...]) -> tuple[int, ...]:
    return (max(1, min(chunk_size, n)),) + row


PIXEL_ZSTD_LEVEL = -3
"""zstd's fast mode for the pixels: 1.74x smaller than raw on the bundled photographs, read 2x and
written 1.6x faster than level 1 (1.98x smaller); see docs/BENCHMARKS.md, codec table."""


def _codecs(field: str, dtype: np.dtype, ndim: int) -> list:
    """zstd (fast mode) for pixels, Blosc zstd with byte shuffle for the small label arrays; each
    followed by a CRC32C of the compressed chunk."""
    if dtype == np.uint8 and ndim > 1:
        return [ZstdCodec(level=PIXEL_ZSTD_LEVEL), Crc32cCodec()]
    return [BloscCodec(cname="zstd", clevel=3, shuffle="shuffle"), Crc32cCodec()]


def _create_zarr_array(group, name: str, n: int, patch_size: int, chunk_size: int):
    f = BY_NAME[name]
    row = f.row_shape(patch_size)
    return group.create_array(
        name,
        shape=(n,) + row,
        dtype=f.dtype,
        chunks=_chunks(n, chunk_size, row),
        compressors=_codecs(name, f.dtype, 1 + len(row)),
        dimension_names=f.dims,
        fill_value=0,
        chunk_key_encoding={"name": "default", "separator": "/"},
        overwrite=True,
        # every chunk holds data: skip zarr's scan of each chunk for all-fill-value (~30% of the write)
        config={"write_empty_chunks": True},
    )


def chunk_key(index: int, ndim: int) -> str:
    """Zarr v3 key of chunk ``index`` along the pair axis of an ``ndim``-dimensional array."""
    return "c/" + "/".join([str(index)] + ["0"] * (ndim - 1))


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
        bare = names <= {"zarr.json"} and not _has_attributes(fs, f"{path}/zarr.json")
        return not bare or (fs.exists(parts) and bool(fs.ls(parts)))

    def store_names(self) -> set[str]:
        # schema 2: zarr.json and one folder per field; schema 1: one group per shard
        return {"zarr.json", *FIELDS} | {n for n in self._names(self.url) if _STAGED.fullmatch(n)}

    def _names(self, url: str) -> set[str]:
        fs, path = self._fs(url)
        try:
            return {p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)}
        except (FileNotFoundError, NotADirectoryError):
            return set()

    def only_staged_parts(self) -> bool:
        parts = self._names(self.parts)
        return not (self._names(self.url) - {"zarr.json"}) and bool(parts) and all(_STAGED.fullmatch(n) for n in parts)

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
        info = {**info, "splits": _split_counts(arrays)}
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

    def _write_group(self, url: str, arrays: dict[str, np.ndarray], info: dict) -> None:
        g = zarr.open_group(url, mode="w")
        n = len(arrays["image_id"])
        patch = arrays["pairs"].shape[-1]
        for name in FIELDS:
            arr = _create_zarr_array(g, name, n, patch, self.chunk_size)
            if n:
                arr[...] = arrays[name]
        g.attrs["complete"] = info  # last: on object stores this marks the shard complete

    def assemble(self, shards: list[dict], n: int, patch_size: int, manifest: dict) -> None:
        with quiet_zarr():
            root = zarr.open_group(self.url, mode="r+", use_consolidated=False)
            for name in FIELDS:
                arr = _create_zarr_array(root, name, n, patch_size, self.chunk_size)
                for s in shards:
                    if s["pairs"]:
                        self._copy_rows(arr, name, s)
            zarr.consolidate_metadata(self.url)
            # last, one write: the manifest says complete only when every row is in place
            root = zarr.open_group(self.url, mode="r+", use_consolidated=False)
            root.attrs.put({ATTR: manifest})
            zarr.consolidate_metadata(self.url)

    def _copy_rows(self, arr, name: str, shard: dict) -> None:
        """Rows of one staged shard into ``arr`` at ``shard['start']``: whole chunks are linked
        (same codecs and chunk length, so the same bytes), the rest decoded and re-encoded."""
        staged = f"{self.parts}/{shard['name']}/{name}"
        start, n, c = shard["start"], shard["pairs"], arr.chunks[0]
        done = 0
        if start % c == 0 and _chunk_len(staged) == c:
            done = (n // c) * c
            for k in range(n // c):
                self._link(
                    f"{staged}/{chunk_key(k, arr.ndim)}", f"{self.url}/{name}/{chunk_key(start // c + k, arr.ndim)}"
                )
        if done < n:  # zarr.open_array only here: it costs ~1 ms, six times a shard
            arr[start + done : start + n] = zarr.open_array(staged, mode="r")[done:n]

    def _link(self, src: str, dst: str) -> None:
        if is_local(self.url):
            s, d = local_path(src), local_path(dst)
            os.makedirs(os.path.dirname(d), exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                os.remove(d)
            try:
                os.link(s, d)
            except OSError:
                shutil.copyfile(s, d)  # a file system without hard links
        else:
            fs, _ = self._fs()
            fs.copy(src, dst)

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


def _chunk_len(url: str) -> int:
    """Rows per chunk of the Zarr v3 array at ``url``, from its zarr.json."""
    fs, path = fsspec.core.url_to_fs(url)
    return json.loads(fs.cat_file(f"{path}/zarr.json"))["chunk_grid"]["configuration"]["chunk_shape"][0]


def _has_attributes(fs, meta: str) -> bool:
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
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise StoreError(
            f"{redact(url)}/zarr.json is not valid JSON ({exc}): the file is truncated or was edited; "
            f"regenerate the store (or restore the file from a copy)"
        ) from exc
    header = doc.get("attributes", {}).get(ATTR) if isinstance(doc, dict) else None
    return dict(header) if isinstance(header, dict) else None


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
        tmp = f"{self.url}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            with h5py.File(tmp, "w") as f:
                f.attrs[ATTR] = json.dumps(header)
            os.replace(tmp, self.url)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)

    def exists_nonempty(self) -> bool:
        return os.path.exists(self.url) or (os.path.isdir(self.parts) and bool(os.listdir(self.parts)))

    def only_staged_parts(self) -> bool:
        try:
            parts = os.listdir(self.parts)
        except OSError:
            return False
        return not os.path.exists(self.url) and bool(parts) and all(_STAGED.fullmatch(n) for n in parts)

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
        info = {**info, "splits": _split_counts(arrays)}
        os.makedirs(self.parts, exist_ok=True)
        tmp = self._part(index) + f".tmp-{uuid.uuid4().hex[:8]}"
        # Built in memory, written with plain file I/O: a write error (disk full) is then an
        # OSError here, not a failed flush inside libhdf5 (which leaves the process to crash at exit).
        with h5py.File(f"{shard_name(index)}.h5", "w", driver="core", backing_store=False) as f:
            for name in FIELDS:
                _create_h5_dataset(f, name, arrays[name], self.chunk_size)
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

    def assemble(self, shards: list[dict], n: int, patch_size: int, manifest: dict) -> None:
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
                out.attrs[ATTR] = json.dumps(manifest)
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
    chunks = _chunks(len(data), chunk_size, data.shape[1:])
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


def check_manifest(uri: str, manifest: dict | None, where: str) -> dict:
    """Refuse a manifest this homogen cannot read, naming the file ``where`` and the fix."""
    if manifest is None:
        raise StoreError(
            f"{redact(uri)} is not a homogen store (no manifest in {where}): generate it with `homogen generate`"
        )
    schema = manifest.get("schema_version")
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
    bad = [
        k
        for k, t in (("dataset_version", str), ("num_pairs", int), ("config", dict), ("shards", list))
        if not isinstance(manifest.get(k), t)
    ]
    if bad:
        raise StoreError(
            f"the manifest in {where} of {redact(uri)} lacks or mistypes {bad}: it was edited; regenerate the store"
        )
    return manifest


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
