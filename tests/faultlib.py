"""Helpers of the fault-injection tests: generation in a real child process with a fault hook,
byte-for-byte comparison of store trees, and a small disk (a real tmpfs where mounting is allowed).

The child process runs :data:`DRIVER`: it generates a dataset from a JSON config, with a fault
hook at a chosen shard k: ``kill`` SIGKILLs the process part-way through a file write of shard k's
temporaries (at write number ``after_writes``, half its bytes on disk); ``hold`` signals that the
run holds the output (a file appears) and waits until released (another file appears).
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import hashlib
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parents[1]

DRIVER = r"""
import builtins, io, json, os, signal, sys, time
from homogen import stores
from homogen.config import GenerateConfig
from homogen.generate import generate

args = json.loads(sys.argv[1])
hook = args.get("hook") or {}
shard = "shard-%05d" % hook["shard"] if hook else None
writes = [0]
real_open = io.open


class DyingFile:
    # a file of shard k's temporaries: at write number hook["after_writes"], write half the
    # bytes, flush them to disk, and SIGKILL this process
    def __init__(self, f):
        self.f = f

    def write(self, data):
        writes[0] += 1
        if writes[0] >= hook["after_writes"]:
            view = memoryview(data).cast("B")
            self.f.write(view[: len(view) // 2])
            self.f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return self.f.write(data)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()

    def __getattr__(self, name):
        return getattr(self.f, name)


def open_(file, mode="r", *a, **kw):
    f = real_open(file, mode, *a, **kw)
    if "w" in mode and isinstance(file, (str, os.PathLike)) and shard in os.fspath(file) and ".tmp-" in os.fspath(file):
        return DyingFile(f)
    return f


def hold(cls):
    # at shard k, say that this run holds the output, and wait to be released
    original = cls.write_shard

    def write_shard(self, index, arrays, info):
        if index == hook["shard"]:
            open(hook["holding"], "w").close()
            deadline = time.monotonic() + 120
            while not os.path.exists(hook["release"]) and time.monotonic() < deadline:
                time.sleep(0.05)
        return original(self, index, arrays, info)

    cls.write_shard = write_shard


if hook.get("kind") == "kill":
    io.open = builtins.open = open_
elif hook.get("kind") == "hold":
    for cls in (stores.ZarrWriter, stores.HDF5Writer):
        hold(cls)
manifest = generate(GenerateConfig.model_validate(args["config"]), progress=False)
print(json.dumps({"version": manifest["dataset_version"], "pairs": manifest["num_pairs"]}))
"""


def child_env() -> dict[str, str]:
    """The environment of a child process: this checkout first on the import path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def start_generation(config: dict, cwd: Path, hook: dict | None = None) -> subprocess.Popen:
    """Start :data:`DRIVER` in ``cwd`` on ``config`` (a GenerateConfig as a dict) with ``hook``."""
    return subprocess.Popen(
        [sys.executable, "-c", DRIVER, json.dumps({"config": config, "hook": hook})],
        cwd=cwd,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_generation(
    config: dict, cwd: Path, hook: dict | None = None, timeout: float = 120
) -> subprocess.CompletedProcess:
    """:func:`start_generation` and wait for it."""
    proc = start_generation(config, cwd, hook)
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def run_cli(args: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """``homogen ARGS`` (the real command line) in a child process."""
    return subprocess.run(
        [sys.executable, "-c", "from homogen.cli import main; main()", *args],
        cwd=cwd,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 60) -> None:
    """Wait until ``path`` exists; fail early if ``proc`` ends first."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"process ended (rc {proc.returncode}) before {path} appeared: {proc.stderr.read()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.05)


def store_paths(output: Path) -> list[Path]:
    """Every file-system entry a store of either format owns: the root (Zarr folder, HDF5 file) and
    the shards staged beside it until commit (``OUT.parts``)."""
    return [output, Path(f"{output}.parts")]


def tree_digest(output: Path) -> dict[str, str]:
    """sha256 of every file of the store at ``output``, by path relative to its parent folder."""
    out = {}
    for root in store_paths(output):
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for f in files:
            out[str(f.relative_to(output.parent))] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def folder_digest(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder``, by path relative to it (two stores' shards compare equal)."""
    return {
        str(f.relative_to(folder)): hashlib.sha256(f.read_bytes()).hexdigest()
        for f in sorted(folder.rglob("*"))
        if f.is_file()
    }


def leftovers(output: Path) -> list[str]:
    """Temporary names (``.tmp-``, ``.partial``) anywhere in the store: debris of a failed write."""
    found = []
    for root in store_paths(output):
        if root.is_dir():
            found += [str(p) for p in root.rglob("*") if ".tmp-" in p.name or p.name.endswith(".partial")]
    found += [str(p) for p in output.parent.iterdir() if ".tmp-" in p.name]
    return sorted(found)


# ------------------------------------------------------------------------------------ small disk


def _mount_tmpfs(path: Path, size_kib: int) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(path)], capture_output=True, text=True
    )
    return proc.returncode == 0


class _FullDiskFile:
    """A file opened for writing on a full disk: created, but every ``write`` fails with ENOSPC
    once ``charge(nbytes)`` says there is no room."""

    def __init__(self, real, charge):
        self._real, self._charge = real, charge

    def write(self, data) -> int:
        self._charge(len(memoryview(data).cast("B")), self._real.name)
        return self._real.write(data)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._real.close()

    def __getattr__(self, name):
        return getattr(self._real, name)


def patch_file_writes(monkeypatch, applies, charge) -> None:
    """Route every Python file opened for writing whose path ``applies(path)`` through ``charge``
    (``charge(nbytes, path)`` raises ``OSError(ENOSPC)`` when the disk is full): the layer both
    store formats write through (Zarr's local store, and the HDF5 writer's file image)."""
    real_open = io.open

    def open_(file, mode="r", *args, **kw):
        f = real_open(file, mode, *args, **kw)
        if any(c in mode for c in "wax+") and isinstance(file, (str, os.PathLike)) and applies(os.fspath(file)):
            return _FullDiskFile(f, charge)
        return f

    monkeypatch.setattr(io, "open", open_)
    monkeypatch.setattr(builtins, "open", open_)


def enospc(path: str) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)


class SmallDisk:
    """A folder that holds at most ``size_kib`` KiB: a real tmpfs where this user may mount one,
    otherwise a byte budget on file writes under it (:func:`patch_file_writes`), raising
    ``OSError(ENOSPC)`` like a full disk.

    ``grow(size_kib)`` makes room (the user freeing space); ``real`` says which of the two it is.
    """

    def __init__(self, path: Path, size_kib: int, monkeypatch):
        self.path = path
        self.real = _mount_tmpfs(path, size_kib)
        self.budget = size_kib * 1024
        self.used = 0
        if not self.real:
            patch_file_writes(monkeypatch, lambda p: os.path.abspath(p).startswith(str(path)), self._charge)

    def grow(self, size_kib: int) -> None:
        if self.real:
            subprocess.run(["mount", "-o", f"remount,size={size_kib}k", str(self.path)], check=True)
        self.budget = size_kib * 1024

    def close(self) -> None:
        if self.real:
            subprocess.run(["umount", str(self.path)], check=False)

    def _charge(self, nbytes: int, where: str) -> None:
        if self.used + nbytes > self.budget:
            raise enospc(where)
        self.used += nbytes


@contextlib.contextmanager
def small_disk(path: Path, size_kib: int, monkeypatch) -> Iterator[SmallDisk]:
    disk = SmallDisk(path, size_kib, monkeypatch)
    try:
        yield disk
    finally:
        disk.close()
