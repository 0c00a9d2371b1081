"""Content digests of source files, computed in parallel threads.

A digest is xxh3-128 (xxhash) of the file's bytes: 32 hex characters. Chosen by measurement
(bench/hashing.py, docs/BENCHMARKS.md): on one core it hashes 3-6x faster than SHA-256 and 2x faster
than BLAKE3, and on a cold disk, read by threads, it costs about what reading the files costs. It
is not a cryptographic hash, and need not be: the digests detect changed images, they do not
authenticate them (whoever can replace an image can also rewrite the manifest and its version).

Files are read through fsspec (local paths and URLs alike); the planner calls :func:`digest_files`
once for the whole source list, never decoding an image. A file that does not exist, or is not a
regular file (a FIFO, socket or device: never opened), gets the
digest ``None`` (generation quarantines it with its reason, as before); any other read error stops
planning with the file's name.
"""

from __future__ import annotations

import os
import stat
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, Sequence

import fsspec
import xxhash
from tqdm.auto import tqdm

from homogen.redaction import redact
from homogen.sources import SourceError
from homogen.store.paths import is_local, local_path

HASH_NAME = "xxh3-128"
"""Recorded in the manifest beside the digests, so a later reader knows how to recompute them."""

BLOCK = 1 << 20
"""Read size: whole images in one or two reads, bounded memory for a huge file."""


class DigestError(SourceError):
    """A source file exists but cannot be read (permissions, network); names the file."""


def default_threads() -> int:
    """Threads for hashing: I/O-bound on network sources, so more than the cores (at most 32)."""
    return min(32, 4 * (os.cpu_count() or 1))


def bytes_digest(data: bytes) -> str:
    """The digest of bytes already read: equal to :func:`file_digest` of a file holding them."""
    return xxhash.xxh3_128(data).hexdigest()


def file_digest(path: str) -> str | None:
    """The digest of one file (local path or fsspec URL), 32 hex characters; ``None`` if it does
    not exist.

    Raises:
        DigestError: the file exists but cannot be read (permissions, network, a backend's error).
    """
    h = xxhash.xxh3_128()
    try:
        if is_local(path):  # never opens a FIFO, socket or device (it could block or never end)
            st = os.stat(local_path(path))
            if not stat.S_ISREG(st.st_mode):
                return None  # generation quarantines it, naming what it is (homogen.images.regular_file)
        with _open(path) as f:
            while block := f.read(BLOCK):
                h.update(block)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None
    except Exception as exc:  # noqa: BLE001 - OSError, and each fsspec backend's own error types
        reason = redact(f"cannot read source image {path} to hash it ({exc})")  # URLs in exc too
        raise DigestError(f"{reason}: check access to it, then retry") from exc
    return h.hexdigest()


def _open(path: str):
    """A plain file object for a local path (fsspec's wrapper costs ~70 us per file), else fsspec's;
    a local file is opened non-blocking (it was a regular file a moment ago; if it was swapped for
    a FIFO meanwhile, the open does not wait for a writer)."""
    if is_local(path):
        return open(os.open(local_path(path), os.O_RDONLY | os.O_NONBLOCK), "rb")
    return fsspec.open(path, "rb")


def digest_files(paths: Sequence[str], threads: int | None = None, progress: bool = False) -> list[str | None]:
    """:func:`file_digest` of every path, in the order given, hashed by ``threads`` threads
    (default :func:`default_threads`); ``progress`` shows a bar (full COCO takes ~40 s)."""
    threads = default_threads() if threads is None else threads
    bar = tqdm(total=len(paths), desc="hash source images", unit="image", disable=not progress)
    with bar:
        if threads <= 1 or len(paths) <= 1:
            return [_counted(file_digest(p), bar) for p in paths]
        with ThreadPoolExecutor(max_workers=min(threads, len(paths)), thread_name_prefix="digest") as pool:
            return [_counted(d, bar) for d in pool.map(file_digest, paths)]


def _counted(digest: str | None, bar) -> str | None:
    bar.update()
    return digest


def changed_files(
    paths: Iterable[str], digests: Iterable[str | None], threads: int | None = None
) -> list[tuple[str, str]]:
    """The ``(path, what)`` of every file whose digest is no longer the recorded one.

    ``what`` is ``"changed"``, ``"missing"`` (recorded, now gone) or ``"appeared"`` (recorded as
    missing, now present).
    """
    paths, digests = list(paths), list(digests)
    now = digest_files(paths, threads)
    out = []
    for path, was, is_ in zip(paths, digests, now):
        if was == is_:
            continue
        out.append((path, "missing" if is_ is None else "appeared" if was is None else "changed"))
    return out
