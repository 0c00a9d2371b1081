"""Loader throughput: model.data's chunk-wise stream, and a plain PyTorch DataLoader over the
store's root arrays, vs a per-sample random-access Dataset; and the pixel codecs of the store.

The baseline is the "seed-style" layout: one HDF5 file with one dataset per sample (the pair,
uncompressed, its offsets as an attribute), read by a map-style torch Dataset through a shuffling
DataLoader with default collation. "plain DataLoader" is README's 20-line ``Chunks`` Dataset (one
item per storage chunk, zarr only, no homogen code). All read the same generated pairs in the same
run, with the same batch size and worker count; the page cache is warm for all (just written).

Rates are pairs per second of wall time and, for the loaders that run in this process
(``workers=0``), per second of CPU time of this process (all its threads): on a machine shared
with other jobs the CPU figure is the stable one. Each is the best of ``--repeats`` interleaved
passes.

    python bench/loader.py                       # 32 photographs x 256 pairs = 8192 pairs
    python bench/loader.py --pairs-per-image 128 --workers 0 2 --read-threads 0 2
    python bench/loader.py --epochs-only --pairs-per-image 64 --epochs 6   # worker restarts per epoch only

"epochs" times several short epochs of the train split through ``make_loader`` with the DataLoader's
workers started every epoch (``persistent_workers=False``, the loader before issue 19) and started
once (the default now), interleaved, in the same run: seconds to the first batch of each epoch and
pairs per second over the epochs after the first.

"vs baseline" compares with the baseline at the same worker count. The codec table writes the
store's pixels with each candidate codec (each followed by the CRC32C checksum) and reads them
back chunk by chunk on one thread: compression ratio, write and read rates (CPU time).
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import tempfile
import time
import warnings

import h5py
import numpy as np
import torch
import zarr
from torch.utils.data import DataLoader, Dataset, RandomSampler
from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

from homogen.config import GenerateConfig, SamplingConfig, SourceConfig
from homogen.generate import generate
from homogen.stores import open_dataset
from machine import cpu_model  # bench/machine.py (the script folder is on sys.path)
from homogen.model.data import make_loader


class PerSampleH5(Dataset):
    """Map-style Dataset over one HDF5 dataset per sample (opened lazily, once per worker)."""

    def __init__(self, path: str):
        self.path = path
        with h5py.File(path, "r") as f:
            self.keys = sorted(f["pairs"].keys())
        self._file = None

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int):
        if self._file is None:
            self._file = h5py.File(self.path, "r")
        d = self._file["pairs"][self.keys[i]]
        return torch.from_numpy(d[()]), torch.from_numpy(d.attrs["offsets"])

    def __getstate__(self):
        return {**self.__dict__, "_file": None}


class Chunks(Dataset):
    """README's plain PyTorch Dataset: item k = the pairs of storage chunk k in one split (None: all)."""

    def __init__(self, path, split=None):
        self.path, self.split, self.root = path, split, None
        pairs = zarr.open_group(path, mode="r")["pairs"]
        self.n, self.c = pairs.shape[0], pairs.chunks[0]

    def __len__(self):
        return -(-self.n // self.c)

    def __getitem__(self, k):
        if self.root is None:
            self.root = zarr.open_group(self.path, mode="r")
        rows = slice(k * self.c, (k + 1) * self.c)
        if self.split is None:
            return torch.from_numpy(self.root["pairs"][rows]), torch.from_numpy(self.root["offsets"][rows])
        keep = self.root["split"][rows] == self.split
        return torch.from_numpy(self.root["pairs"][rows][keep]), torch.from_numpy(self.root["offsets"][rows][keep])

    def __getstate__(self):
        return {**self.__dict__, "root": None}


CODECS = {
    "zstd level 1 (the default before)": lambda: [ZstdCodec(level=1)],
    "zstd level -3 (fast)": lambda: [ZstdCodec(level=-3)],
    "Blosc lz4hc-5": lambda: [BloscCodec(cname="lz4hc", clevel=5, shuffle="noshuffle")],
    "Blosc lz4-5": lambda: [BloscCodec(cname="lz4", clevel=5, shuffle="noshuffle")],
    "none": lambda: [],
}


def codec_table(pixels: np.ndarray, tmp: str, chunk: int, repeats: int) -> list[tuple[str, float, float, float]]:
    """(codec, ratio, write pairs/s, read pairs/s) of ``pixels`` (N, 2, P, P) per codec + CRC32C,
    and HDF5 gzip-4 + Fletcher-32 (the HDF5 default); CPU time, best of ``repeats`` interleaved."""
    n = len(pixels)
    paths, write, read = {}, {}, {}
    for name, make in CODECS.items():
        paths[name] = os.path.join(tmp, f"codec-{len(paths)}.zarr")
        t = time.process_time()
        a = zarr.create_array(
            paths[name],
            shape=pixels.shape,
            dtype="uint8",
            chunks=(chunk,) + pixels.shape[1:],
            compressors=make() + [Crc32cCodec()],
            config={"write_empty_chunks": True},
        )
        a[...] = pixels
        write[name] = n / (time.process_time() - t)
    h5 = os.path.join(tmp, "codec.h5")
    name_h5 = "HDF5 gzip-4 (HDF5 default)"
    t = time.process_time()
    with h5py.File(h5, "w") as f:
        f.create_dataset(
            "pairs",
            data=pixels,
            chunks=(chunk,) + pixels.shape[1:],
            compression="gzip",
            compression_opts=4,
            fletcher32=True,
        )
    write[name_h5] = n / (time.process_time() - t)
    sizes = {
        k: sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(p) for f in fs) for k, p in paths.items()
    }
    sizes[name_h5] = os.path.getsize(h5)
    for _ in range(repeats):
        for name, p in paths.items():
            a = zarr.open_array(p, mode="r")
            t = time.process_time()
            for s in range(0, n, chunk):
                a[s : s + chunk]
            read[name] = max(read.get(name, 0.0), n / (time.process_time() - t))
        with h5py.File(h5, "r") as f:
            t = time.process_time()
            for s in range(0, n, chunk):
                f["pairs"][s : s + chunk]
            read[name_h5] = max(read.get(name_h5, 0.0), n / (time.process_time() - t))
    for p in paths.values():
        shutil.rmtree(p)
    os.remove(h5)
    return [(k, pixels.nbytes / sizes[k], write[k], read[k]) for k in write]


def write_per_sample_h5(ds, path: str) -> None:
    with h5py.File(path, "w") as f:
        g = f.create_group("pairs")
        for a, b in ds.chunks():
            block = ds.read(a, b, ("pairs", "offsets"))
            for i, (pair, off) in enumerate(zip(block["pairs"], block["offsets"])):
                d = g.create_dataset(f"{a + i:07d}", data=pair)
                d.attrs["offsets"] = off


def one_pass(loader) -> tuple[float, float, float]:
    """One full pass: (seconds to the first batch, samples per second of wall time, samples per
    second of this process's CPU time), both rates over the whole pass, startup included."""
    t0, c0 = time.perf_counter(), time.process_time()
    it = iter(loader)
    n = len(next(it)[0])
    t1 = time.perf_counter()
    n += sum(len(pairs) for pairs, _ in it)
    return t1 - t0, n / (time.perf_counter() - t0), n / max(time.process_time() - c0, 1e-9)


def best_rates(loaders: dict, repeats: int) -> dict[str, tuple[float, float, float]]:
    """Best of ``repeats`` passes per loader (shortest startup, highest rates), the loaders
    interleaved so that they share any background load of the machine alike."""
    best = {name: (math.inf, 0.0, 0.0) for name in loaders}
    for r in range(repeats):
        for name, loader in loaders.items():
            if hasattr(loader.dataset, "set_epoch"):
                loader.dataset.set_epoch(r)
            startup, rate, cpu_rate = one_pass(loader)
            b = best[name]
            best[name] = (min(b[0], startup), max(b[1], rate), max(b[2], cpu_rate))
    return best


def epoch_costs(store, workers: int, epochs: int, batch_size: int) -> dict[str, tuple[float, float, float]]:
    """Per loader setting (workers restarted each epoch, or persistent): (median seconds to the first
    batch, pairs/s over epochs 2.., first epoch's seconds); the two loaders' epochs interleaved."""
    loaders = {
        f"{workers} workers, restarted every epoch": make_loader(
            store, "train", batch_size=batch_size, num_workers=workers, pin_memory=False, persistent_workers=False
        ),
        f"{workers} workers, persistent": make_loader(
            store, "train", batch_size=batch_size, num_workers=workers, pin_memory=False, persistent_workers=True
        ),
    }
    firsts: dict[str, list[float]] = {k: [] for k in loaders}
    walls: dict[str, list[float]] = {k: [] for k in loaders}
    counts: dict[str, int] = {k: 0 for k in loaders}
    for epoch in range(epochs):
        for name, loader in loaders.items():
            loader.dataset.set_epoch(epoch)
            t0 = time.perf_counter()
            it = iter(loader)
            n = len(next(it)[0])
            firsts[name].append(time.perf_counter() - t0)
            n += sum(len(batch[0]) for batch in it)
            walls[name].append(time.perf_counter() - t0)
            if epoch:
                counts[name] += n
    return {k: (float(np.median(firsts[k][1:])), counts[k] / sum(walls[k][1:]), walls[k][0]) for k in loaders}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=32, help="bundled COCO photographs used (max 32)")
    ap.add_argument("--pairs-per-image", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--read-threads", type=int, nargs="+", default=[0, 2], help="PairStream reader threads (zarr)")
    ap.add_argument("--repeats", type=int, default=2, help="passes per loader (the best is reported)")
    ap.add_argument("--baseline-samples", type=int, default=2048, help="random samples per baseline pass")
    ap.add_argument("--workdir", default=None, help="where to write the stores (default: a temp dir)")
    ap.add_argument("--no-codecs", action="store_true", help="skip the codec table")
    ap.add_argument("--epochs", type=int, default=6, help="epochs of the worker-restart table")
    ap.add_argument("--epochs-only", action="store_true", help="only the worker-restart table (one zarr store)")
    args = ap.parse_args()
    warnings.filterwarnings("ignore", message="Consolidated metadata")

    print(
        f"machine: {cpu_model()}, nproc {os.cpu_count()}, torch {torch.__version__}, threads {torch.get_num_threads()}"
    )
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        sampling = SamplingConfig(pairs_per_image=args.pairs_per_image)
        source = SourceConfig(max_images=args.images)
        stores = {}
        if args.epochs_only:
            out = os.path.join(tmp, "ds.zarr")
            generate(GenerateConfig(output=out, sampling=sampling, source=source), progress=False)
            ds = open_dataset(out)
            workers = max(max(args.workers), 1)
            print(
                f"data: {ds.split_counts()['train']} train pairs in {len(ds.chunks())} chunks of "
                f"{ds.manifest['chunk_size']}; batch {args.batch_size}; {args.epochs} epochs"
            )
            rows = epoch_costs(ds, workers, args.epochs, args.batch_size)
            print(f"{'loader':<40}{'1st batch s':>12}{'pairs/s':>10}{'epoch 1 s':>11}")
            for name, (first, rate, e1) in rows.items():
                print(f"{name:<40}{first:>12.3f}{rate:>10,.0f}{e1:>11.2f}")
            (_, before, _), (_, after, _) = rows.values()
            print(f"persistent / restarted: {after / before:.2f}x pairs/s")
            print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
            return
        for name in ("ds.zarr", "ds.h5"):
            out = os.path.join(tmp, name)
            generate(GenerateConfig(output=out, sampling=sampling, source=source), progress=False)
            stores[name] = open_dataset(out)
        ds = stores["ds.zarr"]
        seed_path = os.path.join(tmp, "seed-style.h5")
        t0 = time.perf_counter()
        write_per_sample_h5(ds, seed_path)
        print(
            f"data: {len(ds)} pairs of 2x{ds.patch_size}x{ds.patch_size} uint8, chunks of "
            f"{ds.manifest['chunk_size']}; seed-style file written in {time.perf_counter() - t0:.1f} s "
            f"({os.path.getsize(seed_path) / 2**20:.0f} MiB)"
        )
        baseline = PerSampleH5(seed_path)
        rows = []  # (name, workers, startup, rate, cpu rate, baseline rates at these workers)
        for workers in args.workers:
            loaders = {
                "per-sample HDF5 (seed style)": DataLoader(
                    baseline,
                    batch_size=args.batch_size,
                    num_workers=workers,
                    sampler=RandomSampler(baseline, num_samples=min(len(baseline), args.baseline_samples)),
                )
            }
            for name, store in stores.items():
                for threads in args.read_threads if name == "ds.zarr" else [max(args.read_threads)]:
                    loaders[f"chunk stream, {name}, {threads} rd thr"] = make_loader(
                        store,
                        None,
                        batch_size=args.batch_size,
                        num_workers=workers,
                        pin_memory=False,
                        read_threads=threads,
                    )
            chunks = Chunks(stores["ds.zarr"].uri)
            loaders["plain DataLoader, ds.zarr"] = DataLoader(
                chunks, batch_size=None, shuffle=True, num_workers=workers
            )
            rates = best_rates(loaders, args.repeats)
            base = rates["per-sample HDF5 (seed style)"]
            rows += [(name, workers, *r, base) for name, r in rates.items()]
        print(
            f"{'loader':<34}{'workers':>8}{'startup s':>10}{'pairs/s':>10}{'vs baseline':>13}{'CPU pairs/s':>13}{'vs baseline':>13}"
        )
        for name, workers, startup, rate, cpu_rate, base in rows:
            cpu = f"{cpu_rate:>13,.0f}{cpu_rate / base[2]:>12.1f}x" if workers == 0 else f"{'-':>13}{'-':>13}"
            print(f"{name:<34}{workers:>8}{startup:>10.2f}{rate:>10,.0f}{rate / base[1]:>12.1f}x{cpu}")
        if not args.no_codecs:
            pixels = ds.arrays["pairs"][:]
            print(
                f"\npixel codecs (each + CRC32C; HDF5: + Fletcher-32), {len(pixels)} pairs, chunks of {ds.chunk_len}, CPU time:"
            )
            print(f"{'codec':<30}{'ratio':>7}{'write pairs/s':>15}{'read pairs/s':>14}")
            for name, ratio, w, r in codec_table(pixels, tmp, ds.chunk_len, args.repeats):
                print(f"{name:<30}{ratio:>7.2f}{w:>15,.0f}{r:>14,.0f}")
        print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
