"""Hashing benchmark: what content-addressing the source images costs per 10,000 images.

The dataset version covers every source image's bytes (homogen.digests), so planning reads and
hashes every file. This bench times, on the same files in one run:

- **baseline**: SHA-256 (hashlib), one thread, the file read whole;
- SHA-256, BLAKE2b (hashlib), xxh3-128 (xxhash) and BLAKE3 (``pip install blake3``; skipped when
  absent), each at 1 thread and at
  ``homogen.digests.default_threads()`` threads (plain ``open``, whole-file reads);
- **homogen**: ``homogen.digests.digest_files`` itself (fsspec, 1 MiB blocks, default threads);
- **read only**: the same reads with no hashing, to show how much of the cost is I/O.

Two file sets: the 32 bundled photographs copied (real copies, distinct inodes, not links) into a
temporary folder until there are ``--copies`` files, and ``../shared/data/coco-mini`` (128 images)
when it exists. The files were just written or read, so they are in the page cache: the figures are
the CPU cost of hashing. The "cold cache" rows evict the files from the page cache before each run
(``posix_fadvise(DONTNEED)``), so they include reading the disk, as planning a fresh COCO copy does.

Run: ``python bench/hashing.py`` (``--copies N``, ``--repeat K``).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import xxhash

try:  # only for the comparison; homogen itself does not need it
    import blake3
except ImportError:
    blake3 = None

sys.path.insert(0, str(Path(__file__).parent))
from machine import cpu_model  # noqa: E402

from homogen.config import SAMPLE_ROOT  # noqa: E402
from homogen.digests import HASH_NAME, default_threads, digest_files  # noqa: E402

COCO_MINI = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco-mini"


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


HASHES = {
    "sha256": lambda b: hashlib.sha256(b).digest(),
    "blake2b": lambda b: hashlib.blake2b(b, digest_size=16).digest(),
    "xxh3-128": lambda b: xxhash.xxh3_128_digest(b),
    **({"blake3": lambda b: blake3.blake3(b).digest(16)} if blake3 else {}),
    "read only": lambda b: len(b),
}


def drop_cache(paths: list[str]) -> None:
    """Evict the files' pages from the page cache (posix_fadvise; no root needed for clean pages)."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def run_one(paths: list[str], fn, threads: int) -> None:
    def one(p: str):
        return fn(_read(p))

    if threads == 1:
        for p in paths:
            one(p)
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(one, paths))


def best_time(fn, repeat: int, before=None) -> float:
    """Best of ``repeat`` runs of ``fn``; ``before`` runs untimed ahead of each."""
    best = float("inf")
    for _ in range(repeat):
        if before is not None:
            before()
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def bench(name: str, paths: list[str], repeat: int) -> None:
    mb = sum(os.path.getsize(p) for p in paths) / 1e6
    per10k = 10_000 / len(paths)
    threads = default_threads()
    for p in paths:  # warm the page cache once, for every method alike
        _read(p)
    rows = []
    base = best_time(lambda: run_one(paths, HASHES["sha256"], 1), repeat)
    rows.append(("sha256 (baseline)", 1, base))
    for hname, fn in HASHES.items():
        for t in (1, threads):
            if hname == "sha256" and t == 1:
                continue
            rows.append((hname, t, best_time(lambda: run_one(paths, fn, t), repeat)))
    rows.append(
        (f"homogen.digests.digest_files ({HASH_NAME})", threads, best_time(lambda: digest_files(paths), repeat))
    )
    if hasattr(os, "posix_fadvise"):

        def cold():
            drop_cache(paths)

        for hname in [h for h in ("read only", "sha256", "xxh3-128", "blake3") if h in HASHES]:
            for t in (1, threads):
                rows.append(
                    (f"{hname}, cold cache", t, best_time(lambda: run_one(paths, HASHES[hname], t), repeat, cold))
                )
        rows.append(
            (
                f"homogen.digests.digest_files ({HASH_NAME}), cold cache",
                threads,
                best_time(lambda: digest_files(paths), repeat, cold),
            )
        )
    print(
        f"\n## {name}: {len(paths)} files, {mb:.1f} MB ({mb / len(paths) * 1000:.0f} kB/file); load {os.getloadavg()}"
    )
    print("| method | threads | s per 10k images | MB/s | speed vs baseline |")
    print("|---|---|---|---|---|")
    for label, t, sec in rows:
        print(f"| {label} | {t} | {sec * per10k:.2f} | {mb / sec:.0f} | {base / sec:.2f}x |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--copies", type=int, default=2048, help="files made from the 32 bundled photographs")
    ap.add_argument("--repeat", type=int, default=3, help="runs per method; the best is kept")
    args = ap.parse_args()
    print(
        f"machine: {cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"blake3 {blake3.__version__ if blake3 else 'not installed'}, xxhash {xxhash.VERSION}; "
        f"load before {os.getloadavg()}"
    )
    photos = sorted((Path(SAMPLE_ROOT) / "train2017").glob("*.jpg"))
    with tempfile.TemporaryDirectory(prefix="homogen-hash-") as tmp:
        paths = []
        for i in range(args.copies):
            dst = Path(tmp) / f"{i:012d}.jpg"
            shutil.copyfile(photos[i % len(photos)], dst)
            paths.append(str(dst))
        bench(f"bundled sample copied to {args.copies} files", paths, args.repeat)
    if COCO_MINI.is_dir():
        mini = sorted(str(p) for p in COCO_MINI.rglob("*.jpg"))
        bench(f"coco-mini ({len(mini)} images)", mini, max(args.repeat, 5))
    else:
        print(f"\n(coco-mini not found at {COCO_MINI.name}: skipped)")
    print(f"\nload after {os.getloadavg()}")


if __name__ == "__main__":
    main()
