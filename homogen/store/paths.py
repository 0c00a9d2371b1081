"""Where a store lives, before anything is written: the one rule for a local path, the one
atomic write, and the checks that an output can be written (:func:`check_writable`) and may be
replaced by ``--overwrite`` (:func:`protected_reason`, :func:`check_protected`, :func:`check_replaceable`).

A location is local when it has no ``scheme://`` or is a ``file://`` URL (:func:`is_local`); a
leading ``~`` is the home folder (as fsspec reads it: a quoted ``-o '~/x.zarr'`` once went to a
folder named ``~`` for zarr and to the home folder for fsspec); its one real name is :func:`real_path` (absolute, symlinks resolved): the lock, the overwrite rules
and every comparison of two locations use it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import uuid

from homogen.redaction import redact
from homogen.spelling import option
from homogen.store.errors import StoreConflict, StoreError


def is_local(url: str) -> bool:
    """A path of this machine: no ``scheme://``, or ``file://``."""
    return "://" not in url or url.startswith("file://")


def absolute_root(root: str) -> str:
    """A source root as a manifest records it: a relative local path made absolute (a store validated
    from another working directory must find the same images, never others of the same name); URLs
    unchanged."""
    return root if "://" in root else os.path.abspath(os.path.expanduser(root))


def local_path(url: str) -> str:
    """The file-system path of a local output (``file://`` stripped, a leading ``~`` expanded).

    Raises:
        StoreError: a ``file://`` URL whose path is not absolute (``file://x/y`` names host x).
    """
    if not url.startswith("file://"):
        return os.path.expanduser(url)
    if not url[len("file://") :].startswith("/"):
        raise StoreError(
            f"output {url} is a file:// URL without an absolute path: write file:///abs/path or a plain path"
        )
    return url[len("file://") :]


def why_not_writable(exc: OSError) -> str:
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
    if path == os.path.dirname(path):
        raise StoreError(
            f"output {path} is a filesystem root: a store is a folder of its own, choose one (-o DIR/name.zarr)"
        )
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
        raise StoreError(f"output {path} cannot be written in {parent}: {why_not_writable(exc)}") from exc
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
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"  # the writers' debris rule removes what a kill leaves
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


def protected_reason(url: str, source_root: str | None) -> str | None:
    """Why --overwrite must never delete this output whatever it holds (``is your home folder``), or None.

    A filesystem root, the home folder, the working directory or any folder above it, the source
    (``source_root``) or any folder that contains it. Compared by real path (:func:`real_path`), so
    ``~``, ``$HOME/``, ``$HOME/./`` and a symbolic link to the home folder are all the home folder.
    Object-store URLs: only the source rule applies (by URL prefix).
    """
    if not is_local(url):
        if source_root and "://" in source_root and _inside(source_root.rstrip("/"), url.rstrip("/")):
            return f"contains the source {redact(source_root)}"
        return None
    path = real_path(url)
    if path == os.path.dirname(path):
        return "is a filesystem root"
    if path == os.path.realpath(os.path.expanduser("~")):
        return "is your home folder"
    if _inside(os.path.realpath(os.getcwd()), path):
        return "is the working directory or a folder above it"
    if source_root and is_local(source_root) and _inside(real_path(source_root), path):
        return f"contains the source images ({redact(source_root)})"
    return None


def check_protected(url: str, source_root: str | None) -> None:
    """Refuse to let --overwrite delete an output that must never be deleted, whatever it holds
    (:func:`protected_reason`).

    These reasons come before whether the output holds a store (:meth:`StoreWriter.prepare` asks
    this first), so the message names the real reason.

    Raises:
        StoreConflict: one line naming the path, why, and the fix (choose another output).
    """
    why = protected_reason(url, source_root)
    if why is None:
        return
    flag = option("overwrite")
    if is_local(url):
        given, path = os.path.abspath(local_path(url)), real_path(url)
        shown = path if given.rstrip(os.sep) in (path, "") else f"{given} (really {path})"
    else:
        shown = redact(url)
    raise StoreConflict(
        f"{flag} refused: output {shown} {why}, and {flag} deletes it: choose another output for the new dataset"
    )


def check_replaceable(url: str, source_root: str | None, store_names: set[str]) -> None:
    """Refuse to delete a local output that --overwrite must never delete, before anything is deleted.

    Refused: what :func:`check_protected` refuses, then an output given by a symbolic link (name
    its real path), and a folder holding anything but a homogen store, i.e. any entry whose name is
    not in ``store_names`` (the caller has already checked that a homogen manifest is there).

    Raises:
        StoreConflict: one line naming the path, why, and the fix (choose another output).
    """
    check_protected(url, source_root)
    if not is_local(url):
        return
    flag = option("overwrite")
    given, path = os.path.abspath(local_path(url)), real_path(url)
    if os.path.islink(given.rstrip(os.sep)):
        raise StoreConflict(
            f"{flag} refused: output {given} is a symbolic link to {path}: {flag} replaces a store by its real "
            f"name; pass {option('output', path)}"
        )
    if os.path.isdir(path):
        other = sorted(set(os.listdir(path)) - store_names)
        if other:
            shown = ", ".join(other[:3]) + (", ..." if len(other) > 3 else "")
            raise StoreConflict(
                f"{flag} refused: output {path} holds files that are not part of a homogen store ({shown}), and "
                f"{flag} deletes it: choose another output for the new dataset"
            )
