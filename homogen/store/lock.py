"""One generation per output at a time: the output lock.

:func:`output_lock` is ``filelock.FileLock`` (``flock``) on ``OUT.lock`` beside the output's real
path (:func:`homogen.store.paths.real_path`), so an output reached through a symlink takes the same
lock as by its real name.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import socket
import time
from typing import Iterator

import filelock

from homogen.redaction import redact
from homogen.store.errors import StoreError, StoreLocked
from homogen.store.paths import check_writable, is_local, real_path, why_not_writable


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
        raise StoreError(
            f"could not create the folder {folder} of output {redact(url)}: {why_not_writable(exc)}"
        ) from exc
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
        raise StoreError(f"could not take the lock {path}: {why_not_writable(exc)}, then re-run") from exc
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)  # removed while held; a waiter that locked it sees it gone (_claim) and retries
        lock.release()
