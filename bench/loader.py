"""Loader throughput: model.data's chunk-wise stream vs a per-sample random-access Dataset.

The baseline is the "seed-style" layout: one HDF5 file with one dataset per sample (the pair,
uncompressed, its offsets as an attribute), read by a map-style torch Dataset through a shuffling
DataLoader with default collation. Both read the same generated pairs in the same run, with the
same batch size and worker count; the page cache is warm for both (they were just written).

    python bench/loader.py                       # 32 photographs x 256 pairs = 8192 pairs
    python bench/loader.py --pairs-per-image 128 --workers 0 2 --read-threads 0 2

"vs baseline" compares with the baseline at the same worker count; "vs base w2" with the baseline
at the largest worker count run (2 by default, which uses both cores like the reader threads do).
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time

import h5py
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler

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


def write_per_sample_h5(ds, path: str) -> None:
    with h5py.File(path, "w") as f:
        g = f.create_group("pairs")
        for a, b in ds.chunks():
            block = ds.read(a, b, ("pairs", "offsets"))
            for i, (pair, off) in enumerate(zip(block["pairs"], block["offsets"])):
                d = g.create_dataset(f"{a + i:07d}", data=pair)
                d.attrs["offsets"] = off


def one_pass(loader) -> tuple[float, float]:
    """One full pass: (seconds to the first batch, samples per second over the whole pass).

    The rate includes the startup (worker processes, opening files, the first buffer).
    """
    t0 = time.perf_counter()
    it = iter(loader)
    n = len(next(it)[0])
    t1 = time.perf_counter()
    n += sum(len(pairs) for pairs, _ in it)
    return t1 - t0, n / (time.perf_counter() - t0)


def best_rates(loaders: dict, repeats: int) -> dict[str, tuple[float, float]]:
    """Best of ``repeats`` passes per loader (shortest startup, highest rate), the loaders
    interleaved so that they share any background load of the machine alike."""
    best = {name: (math.inf, 0.0) for name in loaders}
    for r in range(repeats):
        for name, loader in loaders.items():
            if hasattr(loader.dataset, "set_epoch"):
                loader.dataset.set_epoch(r)
            startup, rate = one_pass(loader)
            best[name] = (min(best[name][0], startup), max(best[name][1], rate))
    return best


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
    args = ap.parse_args()

    print(f"machine: {cpu_model()}, nproc {os.cpu_count()}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        sampling = SamplingConfig(pairs_per_image=args.pairs_per_image)
        source = SourceConfig(max_images=args.images)
        stores = {}
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
        rows = []  # (name, workers, startup, rate, baseline rate at these workers)
        for workers in args.workers:
            loaders = {
                "per-sample HDF5 (seed style)": DataLoader(
                    baseline, batch_size=args.batch_size, num_workers=workers,
                    sampler=RandomSampler(baseline, num_samples=min(len(baseline), args.baseline_samples)),
                )
            }
            for name, store in stores.items():
                for threads in args.read_threads if name == "ds.zarr" else [max(args.read_threads)]:
                    loaders[f"chunk stream, {name}, {threads} rd thr"] = make_loader(
                        store, None, batch_size=args.batch_size, num_workers=workers, pin_memory=False,
                        read_threads=threads,
                    )
            rates = best_rates(loaders, args.repeats)
            base = rates["per-sample HDF5 (seed style)"][1]
            rows += [(name, workers, startup, rate, base) for name, (startup, rate) in rates.items()]
        base_wmax = rows[[r[1] for r in rows].index(max(args.workers))][4]
        print(f"{'loader':<34}{'workers':>8}{'startup s':>10}{'samples/s':>12}{'vs baseline':>13}{'vs base w' + str(max(args.workers)):>13}")
        for name, workers, startup, rate, base in rows:
            print(f"{name:<34}{workers:>8}{startup:>10.2f}{rate:>12,.0f}{rate / base:>12.1f}x{rate / base_wmax:>12.1f}x")

if __name__ == "__main__":
    main()
