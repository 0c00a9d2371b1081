"""The output of a generation before anything is written: is it writable, and who holds it.

:func:`check_writable` refuses an output that cannot be written (a pseudo file system such as
``/proc``, a read-only folder, a path through a file) with one line naming the path and the fix,
before the store exists. :func:`check_replaceable` refuses, before anything is deleted, an output
that ``--overwrite`` must not delete. :func:`output_lock` holds a local output for one generation
(``filelock`` on ``OUT.lock`` beside the output's real path). :func:`real_path` is the one rule for
a local output's name; :func:`atomic_write` the one fsync'd write-then-rename.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import socket
import time
import uuid
from typing import Iterator

import filelock

from homogen.redaction import redact


class StoreError(RuntimeError):
    """A store cannot be opened or written as asked; the message says why and what to do."""


class StoreLocked(StoreError):
    """Another generation is writing the same output right now."""


class StoreConflict(StoreError):
    """The output holds something else (another dataset version, or not a homogen store)."""


def is_local(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def local_path(url: str) -> str:
    """The file-system path of a local output (``file://`` stripped).

    Raises:
        StoreError: a ``file://`` URL whose path is not absolute (``file://x/y`` names host x).
    """
    if not url.startswith("file://"):
        return url
    if not url[len("file://") :].startswith("/"):
        raise StoreError(
            f"output {url} is a file:// URL without an absolute path: write file:///abs/path or a plain path"
        )
    return url[len("file://") :]


def _why(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return "the disk is full: free space"
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return "it is read-only: choose a writable folder"
    return f"{exc.strerror or exc}: choose another output"


def check_writable(url: str, format: str | None = None) -> None:
    """Refuse a local output that cannot be created, before anything is written.

    A Zarr output (``format="zarr"``) is a folder: an existing regular file there is refused
    (naming it) rather than written through. Walks up to the nearest existing folder and creates (then deletes) a probe file there, so
    read-only mounts, pseudo file systems (``/proc``, ``/sys``) and full disks are refused with
    the real reason. Object-store URLs are left to the store (no cheap probe without writing).

    Raises:
        StoreError: one line naming the output, the folder and the fix.
    """
    if not is_local(url):
        return
    path = os.path.abspath(local_path(url))
    if path.startswith(("/proc/", "/sys/", "/dev/")) or path in ("/proc", "/sys", "/dev"):
        raise StoreError(f"output {path} is inside a pseudo file system: choose a folder on a disk")
    if format == "zarr" and os.path.exists(path) and not os.path.isdir(path):
        raise StoreError(
            f"output {path} is an existing file, and a Zarr store is a folder: choose another output "
            f"(-o), or remove that file"
        )
    parent = os.path.dirname(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise StoreError(f"output {path} cannot be created: {parent} is a file, not a folder; choose another output")
    probe = os.path.join(parent, f".homogen-probe-{uuid.uuid4().hex[:8]}")
    try:
        fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        try:
            os.write(fd, b"x")
        finally:
            os.close(fd)
    except OSError as exc:
        raise StoreError(f"output {path} cannot be written in {parent}: {_why(exc)}") from exc
    finally:
        with contextlib.suppress(OSError):
            os.remove(probe)


def real_path(url: str) -> str:
    """The one real name of a local output: absolute, every symlink (of the output itself or of a
    folder above it) resolved, so ``-o link.zarr`` and ``-o real.zarr`` are the same output."""
    return os.path.realpath(os.path.abspath(local_path(url)))


def atomic_write(path: str, data: bytes) -> None:
    """Write ``path`` whole or not at all: a temporary file beside it, fsync'd, renamed over it,
    then the folder fsync'd (the rename survives a power cut)."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


# ------------------------------------------------------------------------- replacing an output


def _inside(path: str, folder: str) -> bool:
    """``path`` is ``folder`` or lies below it (both absolute and resolved)."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def check_replaceable(url: str, source_root: str | None, store_names: set[str]) -> None:
    """Refuse to delete a local output that --overwrite must never delete, before anything is deleted.

    Refused: a filesystem root, the home folder, the working directory or any folder above it, the
    source (``source_root``) or any folder that contains it, and a folder holding anything but a
    homogen store, i.e. any entry whose name is not in ``store_names`` (the caller has already
    checked that a homogen manifest is there). Object-store URLs: only the source rule applies
    (by URL prefix).

    Raises:
        StoreConflict: one line naming the path, why, and the fix (choose another output).
    """
    fix = "choose another output (-o) for the new dataset"
    if not is_local(url):
        if source_root and "://" in source_root and _inside(source_root.rstrip("/"), url.rstrip("/")):
            raise StoreConflict(
                f"--overwrite refused: output {redact(url)} contains the source {redact(source_root)}: {fix}"
            )
        return
    path = real_path(url)
    why = None
    if path == os.path.dirname(path):
        why = "is a filesystem root"
    elif path == os.path.realpath(os.path.expanduser("~")):
        why = "is your home folder"
    elif _inside(os.path.realpath(os.getcwd()), path):
        why = "is the working directory or a folder above it"
    elif source_root and is_local(source_root) and _inside(real_path(source_root), path):
        why = f"contains the source images ({redact(source_root)})"
    elif os.path.isdir(path):
        other = sorted(set(os.listdir(path)) - store_names)
        if other:
            shown = ", ".join(other[:3]) + (", ..." if len(other) > 3 else "")
            why = f"holds files that are not part of a homogen store ({shown})"
    if why:
        raise StoreConflict(f"--overwrite refused: output {path} {why}, and --overwrite deletes it: {fix}")


# ----------------------------------------------------------------------------------- the lock


def read_lock(path: str) -> dict:
    """The holder recorded in a lock file; ``{}`` when empty, unreadable or not a lock."""
    try:
        with open(path) as f:
            holder = json.load(f)
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) and "pid" in holder else {}


def lock_path(url: str) -> str:
    """The lock file of a local output: beside its real path (:func:`real_path`), ``OUT.lock``."""
    return real_path(url).rstrip("/") + ".lock"


class _Replaced(Exception):
    """The lock file was removed or replaced between our open and our flock: lock the new one."""


def _claim(path: str, fd: int) -> None:
    """filelock's ``on_acquired``: keep the flock only if ``fd`` is still the file named ``path``
    (its holder unlinks it before releasing, so a waiter may have locked a removed inode), then
    write who holds it (for the message a second run prints)."""
    try:
        now = os.stat(path)
    except FileNotFoundError:
        raise _Replaced from None
    held = os.fstat(fd)
    if (held.st_dev, held.st_ino) != (now.st_dev, now.st_ino):
        raise _Replaced
    body = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S")})
    os.ftruncate(fd, 0)
    os.pwrite(fd, body.encode(), 0)


def _acquire(path: str, wait_s: float) -> filelock.FileLock:
    deadline = time.monotonic() + wait_s
    while True:
        lock = filelock.FileLock(
            path,
            timeout=max(0.0, deadline - time.monotonic()),
            thread_local=False,
            on_acquired=functools.partial(_claim, path),
        )
        try:
            lock.acquire()
            return lock
        except _Replaced:
            continue  # the holder released and removed it meanwhile: lock the file now there


@contextlib.contextmanager
def output_lock(url: str, wait_s: float = 0.0) -> Iterator[None]:
    """Hold the local output ``url`` for one generation; a second one waits ``wait_s`` then is refused.

    The lock is ``filelock.FileLock`` (``flock`` on ``OUT.lock`` beside the output's real path):
    the kernel releases it when its process dies, so there is no stale lock to take over and no
    race between two takers; exactly one of any number of racing processes holds it. A lock file
    left by a crash (any content) is simply locked again. Its content (JSON ``{pid, host, since}``)
    only names the holder. The file is removed on release, while still held; a waiter that then
    holds the removed file notices (:func:`_claim`) and locks the new one. Object stores take no lock (they rely on
    atomic shard writes and the version check).

    Raises:
        StoreLocked: a live process holds the lock (names pid, host, since and the lock file).
        StoreError: the lock cannot be written (names the path and the fix).
    """
    if not is_local(url):
        yield
        return
    check_writable(url)
    path = lock_path(url)
    folder = os.path.dirname(path)
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"could not create the folder {folder} of output {redact(url)}: {_why(exc)}") from exc
    try:
        lock = _acquire(path, wait_s)
    except filelock.Timeout:
        holder = read_lock(path)
        raise StoreLocked(
            f"{redact(url)} is being written by pid {holder.get('pid', '?')} on {holder.get('host', '?')} "
            f"since {holder.get('since', '?')}: wait for that run to finish (the lock {path} is released "
            f"when that process ends)"
        ) from None
    except OSError as exc:
        raise StoreError(f"could not take the lock {path}: {_why(exc)}, then re-run") from exc
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)  # removed while held; a waiter that locked it sees it gone (_claim) and retries
        lock.release()
