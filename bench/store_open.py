"""Opening and validating a large store: homogen's reader against plain zarr in the same run.

    python bench/store_open.py                 # 32,000 image records x 4 pairs (128,000 pairs)
    python bench/store_open.py --images 4000

The store is made from ``--images`` image records (hard links to the 32 bundled photographs under
distinct ids, ``bench/generation.py``'s ``link_farm``). Each timing runs in a fresh process, so the
manifest is parsed as a new user's command would: ``zarr.open_group`` + listing the arrays (the
baseline), ``homogen.store.read_manifest`` (the header alone: a run's dataset pin),
``homogen.store.open_dataset`` (header, manifest check, arrays' metadata), the same plus reading
the per-image source table (``ds.sources``), and ``validate_dataset`` (every chunk, every check),
without and with ``regenerate=8`` (which reads 8 source images, never re-hashing the others).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from generation import link_farm  # bench/generation.py (the script folder is on sys.path)

from homogen.config import GenerateConfig, SamplingConfig, SourceConfig
from homogen.generate import generate

TIMED = {
    "zarr.open_group + arrays (baseline)": "import zarr; g = zarr.open_group(sys.argv[1], mode='r'); list(g.arrays())",
    "homogen read_manifest (header only)": "from homogen.store import read_manifest; read_manifest(sys.argv[1])",
    "homogen open_dataset": "from homogen.store import open_dataset; ds = open_dataset(sys.argv[1]); len(ds)",
    "open_dataset + ds.sources (the table)": "from homogen.store import open_dataset; "
    "ds = open_dataset(sys.argv[1]); len(ds.sources['files']['image_id'])",
    "homogen validate_dataset": "from homogen.validation import validate_dataset; "
    "r = validate_dataset(sys.argv[1], progress=False); assert r.passed, r",
    "validate_dataset, regenerate=8": "from homogen.validation import validate_dataset; "
    "r = validate_dataset(sys.argv[1], regenerate=8, progress=False); assert r.passed, r",
}


def timed(code: str, store: str) -> float:
    """Seconds of ``code`` alone, in a fresh process (imports excluded)."""
    probe = f"import sys, time\n{code.split(';')[0]}\nt = time.perf_counter()\n{code}\nprint(time.perf_counter() - t)"
    out = subprocess.run([sys.executable, "-c", probe, store], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=32_000)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        src = link_farm(Path(tmp) / "photos", args.images)
        store = os.path.join(tmp, "ds.zarr")
        t = time.perf_counter()
        manifest = generate(
            GenerateConfig(
                output=store,
                source=SourceConfig(root=str(src), kind="folder"),
                sampling=SamplingConfig(pairs_per_image=4),
            ),
            progress=False,
        )
        print(
            f"store: {manifest['num_pairs']:,} pairs from {args.images:,} image records, made in "
            f"{time.perf_counter() - t:.0f} s; load average {os.getloadavg()[0]:.2f}"
        )
        print(f"root zarr.json (the manifest header): {os.path.getsize(os.path.join(store, 'zarr.json')):,} bytes")
        base = None
        for name, code in TIMED.items():
            s = timed(code, store)
            base = base or s
            print(f"  {name:<38} {s:8.3f} s  {s / base:7.1f}x baseline")
        print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
