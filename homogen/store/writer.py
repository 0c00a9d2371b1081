"""The write protocol shared by both formats: prepare, staged shards, commit (each step survives a kill).

1. :meth:`StoreWriter.prepare` writes the root with the manifest (``state: generating``) in one
   atomic write; an output holding anything else is refused, and ``--overwrite`` replaces only a
   homogen store (:func:`homogen.store.paths.check_replaceable`).
2. Shards (any number of processes at once) are staged beside the store, in ``OUT.zarr.parts/``
   or ``OUT.h5.parts/``: each under a temporary name, renamed when complete (on object stores
   its ``complete`` attribute is written last). Writers of different shards share no file.
3. :meth:`StoreWriter.commit` puts the staged rows, in shard order, into the root arrays (only
   the rows of images that decoded: no hole, no padding row is ever visible), then flips the
   manifest to ``complete`` in one write, then deletes the staged parts. Chunks that line up with
   a shard's chunks are not decoded: moved as stored bytes (Zarr: the chunk file renamed; HDF5: the
   raw chunk copied); the rest are re-encoded. Nothing in the store shares storage with a staged file.

The rows, and so the dataset, do not depend on the shard size, the chunk size or the number of
workers. A re-run resumes a store of the same version; a partly generated one with another shard
or chunk size, or made by other pixel-deciding library versions (:mod:`homogen.lineage.libraries`),
is refused before any write.
"""

from __future__ import annotations

import errno
import re
from typing import TYPE_CHECKING

import numpy as np

from homogen.lineage.array_digest import MANIFEST_KEY as ARRAY_DIGEST
from homogen.lineage.array_digest import digest_from_shards
from homogen.lineage.libraries import resume_mismatch, shards_mismatch
from homogen.redaction import redact
from homogen.schema import SCHEMA_VERSION, SPLIT_CODES, shard_name
from homogen.spelling import option
from homogen.store import manifest as manifests
from homogen.store.errors import StoreConflict, StoreError
from homogen.store.lock import output_lock
from homogen.store.manifest import commit_fields
from homogen.store.paths import check_protected, check_replaceable, check_writable, protected_reason
from homogen.store.source_table import reference

if TYPE_CHECKING:
    from homogen.generate import Plan, ShardResult

STAGED = re.compile(r"\.?(tmp-)?shard-\d{5,}(\.h5)?(\.tmp-[0-9a-f]{8}|-[0-9a-f]{8})?")
"""Names in ``OUT.parts`` (and in a schema-1 root): staged shards and their temporaries."""


class StoreWriter:
    """Writes one dataset: header, staged shards, commit; subclasses know the format."""

    format = "?"

    def __init__(self, url: str, chunk_size: int = 256):
        self.url = url.rstrip("/") or "/"  # "-o /" is the root, never "" (the working directory)
        self.chunk_size = int(chunk_size)
        self.parts = self.url + ".parts"

    # -- lifecycle --------------------------------------------------------------------------
    def lock(self, wait_s: float = 0.0):
        """Hold the output for one generation (:func:`homogen.store.lock.output_lock`)."""
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
            try:
                self._check_resumable(header, plan)
                return header
            except StoreConflict:
                if not overwrite:
                    raise  # with overwrite, a partial store that cannot be resumed is replaced (below)
        if header is not None or self.exists_nonempty():
            if overwrite:  # the home folder, the source...: that reason, before whether it holds a store
                check_protected(self.url, plan.config.source.root)
            ours = header is not None or self.only_staged_parts()
            if not overwrite or not ours:
                if not ours:
                    what = "data that is not a homogen store"
                elif header is None:
                    what = "the staged shards of another generation"
                elif header.get("schema_version") != SCHEMA_VERSION:
                    schema, version = header.get("schema_version"), header.get("dataset_version")
                    what = f"a schema-{schema!s:.8} store (an older layout) of version {version!s:.20}"
                else:
                    what = f"dataset version {header.get('dataset_version')!s:.20}"
                fix = (
                    f"choose another output ({option('overwrite')} only ever replaces a homogen store)"
                    if not ours
                    else f"choose another output, or pass {option('overwrite')} to replace it"
                )
                if ours and (why := protected_reason(self.url, plan.config.source.root)):  # never name a refused fix
                    fix = f"choose another output (this one {why}, which {option('overwrite')} never deletes)"
                raise StoreConflict(
                    f"output {redact(self.url)} holds {what}, and this config makes version {plan.version}: {fix}"
                )
            check_replaceable(self.url, plan.config.source.root, self.store_names())
            self.remove()
        existed = self.exists_nonempty()
        header = manifests.new_manifest(plan, "generating", self.format, self.chunk_size)
        try:
            self.write_header(header)
        except OSError as exc:
            if not existed:
                self.remove()  # a full disk at start leaves nothing behind
            fix = "free space" if "disk is full" in os_reason(exc) else "fix the output"
            raise StoreError(f"could not create {redact(self.url)} ({os_reason(exc)}): {fix}, then re-run") from exc
        return header

    def _check_resumable(self, header: dict, plan: "Plan") -> None:
        if header.get("state") == "complete":  # whatever the shard or chunk size, nothing to write
            manifests.check_manifest(self.url, header, self.header_file() or redact(self.url))  # an edit: one line
            return
        if why := resume_mismatch(header, {s.index: i for s in plan.shards if (i := self.staged_info(s.index))}):
            raise StoreConflict(
                f"output {redact(self.url)} is a partly generated store that {why}: finish it where it was started "
                f"(every worker with its libraries), or pass {option('overwrite')} to start again with these"
            )
        for key, now in (("shard_size", plan.config.shard_size), ("chunk_size", self.chunk_size)):
            if header.get(key) != now:
                raise StoreConflict(
                    f"output {redact(self.url)} is a partly generated store with {key} {header.get(key)}, "
                    f"and this run asks for {key} {now}: re-run with {option(key, header.get(key))} to finish it, "
                    f"or pass {option('overwrite')} to start again"
                )

    def shard_info(self, index: int) -> dict | None:
        """What a complete shard holds (``pairs``, ``images``, ``quarantined``, ``splits``), else None.

        In a complete store every shard is done (its entry in the manifest, or an empty one when
        the store was made with another shard size).
        """
        header = self.read_header()  # a small header: the source table is a file of its own
        if header is not None and header.get("state") == "complete":
            shards = {s["index"]: s for s in header.get("shards", [])}
            if index not in shards:
                return {"pairs": 0, "images": 0, "quarantined": [], "splits": {}}
            return {k: shards[index][k] for k in ("pairs", "images", "quarantined", "splits")}
        info = self.staged_info(index)  # the same keys (a staged shard also records its libraries' versions)
        return {k: info[k] for k in ("pairs", "images", "quarantined", "splits")} if info is not None else None

    def header_file(self) -> str | None:
        """The local file that holds the header (its identity changes with every header write), or None."""
        return None

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
        manifest = {
            **manifests.new_manifest(plan, "complete", self.format, self.chunk_size),
            **commit_fields(plan, infos),
        }
        if why := shards_mismatch({s.index: i for s, i in zip(plan.shards, infos)}, manifest["code"]):
            raise StoreError(
                f"cannot commit {redact(self.url)}: it holds {why}: run every worker with the same libraries, then "
                f"re-run with {option('overwrite')}"
            )
        if manifest["num_pairs"] == 0:  # every image quarantined: an error, never an empty dataset that validates
            q = manifest["quarantine"]
            raise StoreError(
                f"no usable images: all {len(q)} images of the source were quarantined "
                f"(first: {q[0]['path']}: {q[0]['reason']}); nothing was committed to {redact(self.url)}: "
                f"fix or replace the images, then re-run with {option('overwrite')}: changed images make a "
                f"new dataset version, which replaces this unfinished store"
            )
        table = plan.table_file()
        manifest["source"]["table"] = reference(table)
        if digest := digest_from_shards(infos, plan.config.sampling.patch_size):  # no decode of what is written
            manifest[ARRAY_DIGEST] = digest
        try:
            self.assemble(manifest["shards"], manifest["num_pairs"], plan.config.sampling.patch_size, manifest, table)
        except OSError as exc:
            raise StoreError(
                f"could not write the arrays of {redact(self.url)} ({os_reason(exc)}): free space or fix the output, "
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
    def assemble(self, shards: list[dict], n: int, patch_size: int, manifest: dict, table: bytes) -> None:
        """Write the root arrays (``n`` rows) from the staged ``shards`` and the source table's bytes
        (``table``, :mod:`homogen.store.source_table`), then, last and in one write,
        :func:`homogen.store.manifest.complete` of ``manifest`` and those arrays."""

    def remove_debris(self) -> None:
        """Delete the staged parts and temporaries (after commit, or left by a killed process)."""


def os_reason(exc: BaseException) -> str:
    full = (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or f"errno = {errno.ENOSPC}," in str(exc)
    return "the disk is full" if full else f"{type(exc).__name__}: {exc}"


def write_failed(url: str, index: int, exc: BaseException) -> StoreError:
    """A shard write that failed (disk full, permissions), as an error that says what to do."""
    return StoreError(
        f"could not write {shard_name(index)} of {redact(url)} ({os_reason(exc)}): free space or fix the output, "
        f"then re-run the same generation; the shards already complete are kept"
    )


def split_counts(arrays: dict[str, np.ndarray]) -> dict[str, int]:
    return {name: int(np.count_nonzero(arrays["split"] == code)) for name, code in SPLIT_CODES.items()}


def chunk_rows(n: int, chunk_size: int, row: tuple[int, ...]) -> tuple[int, ...]:
    return (max(1, min(chunk_size, n)),) + row


def open_writer(url: str, format: str | None = None, chunk_size: int = 256) -> StoreWriter:
    """A writer of ``format`` ('zarr' or 'hdf5'; default: from the path) at ``url``."""
    from homogen.store.dataset import detect_format
    from homogen.store.hdf5_writer import HDF5Writer
    from homogen.store.zarr_writer import ZarrWriter

    fmt = format or detect_format(url)
    if fmt == "zarr":
        return ZarrWriter(url, chunk_size)
    if fmt == "hdf5":
        return HDF5Writer(url, chunk_size)
    raise StoreError(f"unknown store format {fmt!r}: use 'zarr' or 'hdf5'")
