"""Generation benchmark: homogen's generator against a naive baseline, on one core; peak memory.

Speed (one process pinned to one core, OpenCV/OpenMP/Blosc at one thread):

- **homogen**: ``homogen.generate.generate`` writing a compressed Zarr store (reduced JPEG decode,
  one decode per image, one 128x128 warp per pair, shards of chunked arrays).
- **naive baseline** (written here): every sample on its own, as a per-sample generator does:
  full-colour decode, grayscale, resize to 320x240, warp of the whole frame by H_BA, crop, and one
  HDF5 dataset per sample (labels as its attributes), as the seed's data files were written.
- **decode floor** (for reference): one strict grayscale decode per image, at 1/2, 1/4 or 1/8 size
  where that still covers the frame, else full size, and nothing else: no generator can beat it.
- **naive + one decode per image** (for reference, not the target): the same baseline decoding each
  image once for all its pairs, so the figure shows what the other savings are worth on their own.

All three draw the same geometry (``homogen.sampling``) from the same image records; the bench
checks the labels agree and reports how far the naive pixels are from homogen's (they differ only
by the reduced JPEG decode).

Memory: ``generate`` of 5,000 and 20,000 pairs in a fresh subprocess each, reporting peak RSS. The
20,000 pairs come from 5,000 image records at 4 pairs per image: hard links to the 32 bundled
photographs under distinct numeric names (so distinct image ids, hence distinct patches and offsets).

Run: ``python bench/generation.py`` (``--help`` for sizes). Targets: homogen >= 8x the naive
baseline's pairs/s (CPU time, the last line) at 4 pairs per image; peak RSS < 1 GB and not growing with the number of pairs.
"""

from __future__ import annotations

import os

# One core, one thread everywhere, before any numerical library starts its thread pools.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLOSC_NTHREADS"):
    os.environ.setdefault(_var, "1")
if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import h5py  # noqa: E402
import numpy as np  # noqa: E402
import simplejpeg  # noqa: E402

cv2.setNumThreads(1)

from machine import cpu_model  # noqa: E402  # bench/machine.py (the script folder is on sys.path)
from homogen.config import SAMPLE_ROOT, GenerateConfig, SamplingConfig, SourceConfig  # noqa: E402
from homogen.generate import generate, shard_arrays  # noqa: E402
from homogen.images import load_gray, read_bytes, reduction_factor  # noqa: E402
from homogen.sampling import pair_rng, patch_corners, patch_homography, sample_geometry  # noqa: E402
from homogen.sources import ImageRecord, list_images  # noqa: E402
from homogen.stores import SPLIT_CODES, open_dataset  # noqa: E402


def link_farm(folder: Path, n_images: int) -> Path:
    """``n_images`` hard links (copies where links fail) to the bundled photographs, cycling over
    them, named ``000000000001.jpg`` ... so each is a distinct image id of a folder source."""
    photos = sorted((Path(SAMPLE_ROOT) / "train2017").glob("*.jpg"))
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n_images):
        dst = folder / f"{i + 1:012d}.jpg"
        try:
            os.link(photos[i % len(photos)], dst)
        except OSError:
            shutil.copyfile(photos[i % len(photos)], dst)
    return folder


# ------------------------------------------------------------------------------ naive baseline


def naive_sample(path: str, image_id: int, k: int, cfg: SamplingConfig) -> tuple[np.ndarray, dict]:
    """One sample the naive way: full-colour decode, gray, resize, warp of the whole frame, crop.

    Returns:
        (2, P, P) uint8 pair and its labels.
    """
    colour = cv2.imread(path, cv2.IMREAD_COLOR)
    return naive_cut(colour, image_id, k, cfg)


def naive_cut(colour: np.ndarray, image_id: int, k: int, cfg: SamplingConfig) -> tuple[np.ndarray, dict]:
    """The recipe as written on one decoded colour frame (see :func:`naive_sample`)."""
    p = cfg.patch_size
    gray = cv2.cvtColor(colour, cv2.COLOR_BGR2GRAY)
    frame = cv2.resize(gray, (cfg.image_width, cfg.image_height), interpolation=cv2.INTER_AREA)
    g = sample_geometry(pair_rng(cfg.seed, image_id, k), cfg)
    corners = patch_corners(p, g.x, g.y)
    h_ab = cv2.getPerspectiveTransform(corners, corners + g.offsets.reshape(4, 2))
    warped = cv2.warpPerspective(frame, np.linalg.inv(h_ab), (cfg.image_width, cfg.image_height))
    pair = np.stack([frame[g.y : g.y + p, g.x : g.x + p], warped[g.y : g.y + p, g.x : g.x + p]])
    labels = {"offsets": g.offsets, "homography": patch_homography(g.offsets, p), "corners": corners}
    return pair, labels


def write_naive(f: h5py.File, n: int, pair: np.ndarray, labels: dict, rec: ImageRecord) -> None:
    """One HDF5 dataset per sample, labels as attributes."""
    d = f.create_dataset(f"sample_{n:07d}", data=pair)
    for key, value in labels.items():
        d.attrs[key] = value
    d.attrs["image_id"] = rec.image_id
    d.attrs["split"] = SPLIT_CODES[rec.split]


def naive_generate(records: list[ImageRecord], cfg: SamplingConfig, out: Path, decode_once: bool = False) -> int:
    """The naive baseline over ``records``; returns the number of pairs written."""
    n = 0
    with h5py.File(out, "w") as f:
        for rec in records:
            colour = cv2.imread(rec.path, cv2.IMREAD_COLOR) if decode_once else None
            for k in range(cfg.pairs_per_image):
                if decode_once:
                    pair, labels = naive_cut(colour, rec.image_id, k, cfg)
                else:
                    pair, labels = naive_sample(rec.path, rec.image_id, k, cfg)
                write_naive(f, n, pair, labels, rec)
                n += 1
    return n


# ------------------------------------------------------------------------------- decode floor


def decode_floor(records: list[ImageRecord], cfg: SamplingConfig) -> int:
    """The floor the issue names: one strict grayscale decode per image (at 1/2, 1/4, 1/8 size where
    that still covers the frame, else full size), nothing else; returns the pairs it would serve."""
    for rec in records:
        data = read_bytes(rec.path)
        h, w, _, _ = simplejpeg.decode_jpeg_header(data)
        f = reduction_factor(w, h, cfg.image_width, cfg.image_height)
        simplejpeg.decode_jpeg(data, colorspace="GRAY", min_height=-(-h // f), min_width=-(-w // f), strict=True)
    return len(records) * cfg.pairs_per_image


def frames_only(records: list[ImageRecord], cfg: SamplingConfig) -> int:
    """homogen's frames (strict decode, resize to 320x240, the header checks), no pairs."""
    for rec in records:
        load_gray(rec.path, cfg.image_width, cfg.image_height, min_side=cfg.patch_size)
    return len(records) * cfg.pairs_per_image


def pairs_in_memory(records: list[ImageRecord], cfg: GenerateConfig) -> int:
    """homogen's shard arrays (frames and pairs, shard by shard), not written anywhere."""
    n = 0
    for start in range(0, len(records), cfg.shard_size):
        n += len(shard_arrays(records[start : start + cfg.shard_size], cfg.sampling)[0]["image_id"])
    return n


# ------------------------------------------------------------------------------------- speed


def timed(fn) -> tuple[float, float, object]:
    """(wall seconds, CPU seconds of this process, all threads, result of ``fn()``)."""
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - w0, time.process_time() - c0, out


def check_same_work(store: Path, naive: Path) -> dict:
    """Labels of homogen's store and the naive file agree; pixel difference of the pairs."""
    ds = open_dataset(str(store))[:]
    with h5py.File(naive, "r") as f:
        names = sorted(f)
        pairs = np.stack([f[k][()] for k in names])
        offsets = np.stack([f[k].attrs["offsets"] for k in names])
    assert len(names) == len(ds["pairs"]), "homogen and the baseline made different numbers of pairs"
    assert np.array_equal(offsets, ds["offsets"]), "homogen and the baseline drew different offsets"
    diff = np.abs(pairs.astype(np.int16) - ds["pairs"])
    return {"mean_abs_diff": float(diff.mean()), "p99_abs_diff": float(np.percentile(diff, 99))}


def speed(n_images: int, pairs_per_image: int, tmp: Path, repeats: int = 3, shard_size: int | None = None) -> dict:
    src = link_farm(tmp / "speed-src", n_images)
    cfg = GenerateConfig(
        source=SourceConfig(root=str(src), kind="folder"),
        sampling=SamplingConfig(pairs_per_image=pairs_per_image),
        output=str(tmp / "homogen.zarr"),
        **({"shard_size": shard_size} if shard_size else {}),
    )
    records = list_images(cfg.source)
    for r in records:  # warm the page cache for everyone alike
        Path(r.path).read_bytes()
    runs = {
        "naive": lambda: naive_generate(records, cfg.sampling, tmp / "naive.h5"),
        "naive_once": lambda: naive_generate(records, cfg.sampling, tmp / "naive-once.h5", decode_once=True),
        "homogen": lambda: generate(cfg, progress=False)["num_pairs"],
        "floor": lambda: decode_floor(records, cfg.sampling),
        "frames": lambda: frames_only(records, cfg.sampling),
        "in_memory": lambda: pairs_in_memory(records, cfg),
    }
    wall = {k: [] for k in runs}
    cpu = {k: [] for k in runs}
    counts = {}
    for _ in range(repeats):  # interleaved, so a busy neighbour slows all alike; best of `repeats`
        for name, fn in runs.items():
            if name == "homogen":
                shutil.rmtree(tmp / "homogen.zarr", ignore_errors=True)  # else a re-run resumes (skips) it
            w, c, counts[name] = timed(fn)
            wall[name].append(w)
            cpu[name].append(c)
    n = counts["homogen"]
    assert len(set(counts.values())) == 1, counts
    rate = {k: {"wall": n / min(wall[k]), "cpu": n / min(cpu[k])} for k in runs}
    return {
        "images": n_images,
        "pairs_per_image": pairs_per_image,
        "pairs": n,
        "shard_size": cfg.shard_size,
        "rate": rate,
        "ratio": {m: rate["homogen"][m] / rate["naive"][m] for m in ("wall", "cpu")},
        "ratio_vs_decode_once": {m: rate["homogen"][m] / rate["naive_once"][m] for m in ("wall", "cpu")},
        "share_of_floor": {m: rate["homogen"][m] / rate["floor"][m] for m in ("wall", "cpu")},
        "floor_ratio": {m: rate["floor"][m] / rate["naive"][m] for m in ("wall", "cpu")},
        "store_mb": sum(f.stat().st_size for f in (tmp / "homogen.zarr").rglob("*") if f.is_file()) / 1e6,
        "naive_mb": (tmp / "naive.h5").stat().st_size / 1e6,
        "pixels_vs_naive": check_same_work(tmp / "homogen.zarr", tmp / "naive.h5"),
    }


# ------------------------------------------------------------------------------------ memory


def memory_child(src: str, n_images: int, out: str) -> None:
    """(In a fresh process) generate pairs from the first ``n_images`` of ``src``; print peak RSS."""
    cfg = GenerateConfig(source=SourceConfig(root=src, kind="folder", max_images=n_images), output=out)
    reset = _reset_peak_rss()  # imports peak higher than generation: measure generation's own peak
    t, _, manifest = timed(lambda: generate(cfg, progress=False))
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, whole process life
    print(
        json.dumps(
            {
                "pairs": manifest["num_pairs"],
                "seconds": t,
                "peak_rss_mb": peak_kb / 1024,
                "generation_peak_rss_mb": _status_kb("VmHWM") / 1024 if reset else None,
                "end_rss_mb": _status_kb("VmRSS") / 1024,
            }
        )
    )


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _status_kb(key: str) -> float:
    with open("/proc/self/status") as f:
        return float(next(line.split()[1] for line in f if line.startswith(key + ":")))


def memory(pair_counts: list[int], tmp: Path) -> list[dict]:
    ppi = SamplingConfig().pairs_per_image
    src = link_farm(tmp / "memory-src", max(pair_counts) // ppi)
    rows = []
    for pairs in pair_counts:
        out = tmp / f"memory-{pairs}.zarr"
        cmd = [sys.executable, __file__, "--memory-child", str(src), str(pairs // ppi), str(out)]
        res = subprocess.run(cmd, check=True, capture_output=True, text=True)
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
        shutil.rmtree(out, ignore_errors=True)
    return rows


# -------------------------------------------------------------------------------------- main


def machine() -> str:
    return f"{cpu_model()}, {os.cpu_count()} logical CPUs (pinned to 1), Python {platform.python_version()}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=128, help="image records for the speed run")
    ap.add_argument("--pairs-per-image", type=int, default=4)
    ap.add_argument("--shard-size", type=int, default=None, help="images per shard (default: GenerateConfig's)")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved timing rounds (best of)")
    ap.add_argument(
        "--memory-pairs",
        type=int,
        nargs="*",
        default=[5000, 20000],
        help="pair counts for the peak-memory runs (none: skip)",
    )
    ap.add_argument("--memory-child", nargs=3, metavar=("SRC", "IMAGES", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        memory_child(args.memory_child[0], int(args.memory_child[1]), args.memory_child[2])
        return

    print(f"machine: {machine()}")
    print(f"load average at start (1, 5, 15 min): {os.getloadavg()}")
    with tempfile.TemporaryDirectory(prefix="homogen-bench-") as d:
        tmp = Path(d)
        s = speed(args.images, args.pairs_per_image, tmp, args.repeats, args.shard_size)
        r = s["rate"]
        print(
            f"speed, {s['pairs']} pairs from {s['images']} image records, {s['pairs_per_image']} pairs per image, "
            f"shards of {s['shard_size']} images, one core, best of {args.repeats} interleaved runs; "
            "pairs/s by wall clock and by CPU time:"
        )
        print(
            f"  naive baseline (per-sample decode)  {r['naive']['wall']:7.1f} wall {r['naive']['cpu']:7.1f} cpu  ({s['naive_mb']:.1f} MB HDF5)"
        )
        print(
            f"  naive, one decode per image         {r['naive_once']['wall']:7.1f} wall {r['naive_once']['cpu']:7.1f} cpu"
        )
        print(
            f"  homogen (Zarr, compressed)          {r['homogen']['wall']:7.1f} wall {r['homogen']['cpu']:7.1f} cpu  ({s['store_mb']:.1f} MB Zarr)"
        )
        print(
            f"  decode floor (strict decode only)   {r['floor']['wall']:7.1f} wall {r['floor']['cpu']:7.1f} cpu  "
            f"(= {s['floor_ratio']['cpu']:.2f}x naive by cpu)"
        )
        print(f"  homogen's frames only (decode+resize){r['frames']['wall']:7.1f} wall {r['frames']['cpu']:7.1f} cpu")
        print(
            f"  homogen's pairs in memory (no store){r['in_memory']['wall']:7.1f} wall {r['in_memory']['cpu']:7.1f} cpu"
        )
        ms = {k: 1e3 * s["pairs_per_image"] / r[k]["cpu"] for k in ("floor", "frames", "in_memory", "homogen")}
        print(
            f"  CPU ms per image: decode {ms['floor']:.2f}, + resize and checks {ms['frames'] - ms['floor']:.2f}, "
            f"+ pairs {ms['in_memory'] - ms['frames']:.2f}, + store (compression, shards, commit) "
            f"{ms['homogen'] - ms['in_memory']:.2f} = {ms['homogen']:.2f}"
        )
        print(
            f"  ratio homogen / naive               {s['ratio']['wall']:7.2f}x wall {s['ratio']['cpu']:6.2f}x cpu  (target >= 8x)"
        )
        print(
            f"  homogen / decode floor              {s['share_of_floor']['wall']:7.0%} wall {s['share_of_floor']['cpu']:6.0%} cpu"
        )
        print(
            f"  ratio homogen / naive decode-once   {s['ratio_vs_decode_once']['wall']:7.2f}x wall "
            f"{s['ratio_vs_decode_once']['cpu']:6.2f}x cpu"
        )
        px = s["pixels_vs_naive"]
        print(
            f"  same labels; pixels vs naive: mean |diff| {px['mean_abs_diff']:.2f}, p99 {px['p99_abs_diff']:.0f} levels "
            "(reduced JPEG decode)"
        )
        if args.memory_pairs:
            rows = memory(sorted(args.memory_pairs), tmp)
            print("peak memory of generate (fresh process each):")
            for r in rows:
                gen = r["generation_peak_rss_mb"]
                print(
                    f"  {r['pairs']:6d} pairs  peak RSS {r['peak_rss_mb']:7.1f} MB (process), "
                    f"{gen if gen is not None else float('nan'):7.1f} MB (during generation), "
                    f"{r['end_rss_mb']:7.1f} MB at the end  ({r['pairs'] / r['seconds']:.0f} pairs/s wall)"
                )
            if len(rows) > 1:
                key = "generation_peak_rss_mb" if rows[0]["generation_peak_rss_mb"] is not None else "peak_rss_mb"
                print(
                    f"  growth {rows[0]['pairs']} -> {rows[-1]['pairs']} pairs: "
                    f"{rows[-1][key] - rows[0][key]:+.1f} MB peak during generation (target < 1024 MB, flat)"
                )

        print(f"load average at end (1, 5, 15 min): {os.getloadavg()}")
        print(f"homogen / naive: {s['ratio']['cpu']:.2f}x")


if __name__ == "__main__":
    main()
