"""The output of a generation before anything is written: is it writable, and who holds it.

:func:`check_writable` refuses an output that cannot be written (a pseudo file system such as
``/proc``, a read-only folder, a path through a file) with one line naming the path and the fix,
before the store exists. :func:`output_lock` holds a local output for one generation with a lock
file beside it (``OUT.lock``, JSON ``{pid, host, since}``), created atomically with its content:
a lock is never seen half-written, so an empty or unreadable lock is stale (left by a crash or a
full disk) and is taken over, as is one whose process is gone on this host.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import time
import uuid
from typing import Iterator

from homogen.redaction import redact


class StoreError(RuntimeError):
    """A store cannot be opened or written as asked; the message says why and what to do."""


class StoreLocked(StoreError):
    """Another generation is writing the same output right now."""


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


def read_lock(path: str) -> dict:
    """The holder recorded in a lock file; ``{}`` when empty, unreadable or not a lock."""
    try:
        with open(path) as f:
            holder = json.load(f)
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) and "pid" in holder else {}


def _pid_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (OSError, ValueError, TypeError):
        return False
    return True


def _stale(holder: dict) -> bool:
    return not holder or (holder.get("host") == socket.gethostname() and not _pid_alive(holder.get("pid")))


def _write_lock(path: str) -> bool:
    """Create ``path`` with this process as holder, atomically (content first, then the name).

    Returns False if a lock exists. A lock that cannot be written (disk full) leaves nothing.
    """
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    body = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S")})
    try:
        with open(tmp, "w") as f:
            f.write(body)
            f.flush()
        os.link(tmp, path)  # fails if the lock exists: never a half-written lock under its name
        return True
    except FileExistsError:
        return False
    except OSError as exc:
        raise StoreError(f"could not write the lock {path}: {_why(exc)}, then re-run") from exc
    finally:
        with contextlib.suppress(OSError):
            os.remove(tmp)


@contextlib.contextmanager
def output_lock(url: str, wait_s: float = 0.0) -> Iterator[None]:
    """Hold the local output ``url`` for one generation; a second one waits ``wait_s`` then is refused.

    Object stores take no lock (they rely on atomic shard writes and the version check).

    Raises:
        StoreLocked: a live process holds the lock (names pid, host, since and the lock file).
        StoreError: the lock cannot be written (names the path and the fix).
    """
    if not is_local(url):
        yield
        return
    check_writable(url)
    path = local_path(url).rstrip("/") + ".lock"
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"could not create the folder {folder} of output {redact(url)}: {_why(exc)}") from exc
    deadline = time.monotonic() + wait_s
    while not _write_lock(path):
        holder = read_lock(path)
        if _stale(holder):
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)  # left by a crash, a full disk, or a process that is gone
            continue
        if time.monotonic() >= deadline:
            raise StoreLocked(
                f"{redact(url)} is being written by pid {holder.get('pid')} on {holder.get('host')} "
                f"since {holder.get('since')}: wait for that run to finish (or delete {path} "
                f"if that process is gone)"
            )
        time.sleep(0.5)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
